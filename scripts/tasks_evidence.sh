#!/usr/bin/env bash
# The evidence of docs/results.md ("Retrieval beside KL"), one command: passkey and niah on SmolLM2-135M-Instruct,
# dense vs quant w3/w4, magnitude 30/50 %, wanda 50 % (lcc/conf/experiment/tasks.yaml), ctx 1k..8k, five needle
# depths, N prompts per depth (default 20, the floor), and the mean KL of the same compressors at the
# same contexts; then reduce, the markdown tables of docs/results.md, and copies of the outputs in OUT_DIR.
#
#   bash scripts/tasks_evidence.sh OUT_DIR [key=value ...]       # extra keys go to every job
#   bash scripts/tasks_evidence.sh /tmp/evidence device=cuda     # on a GPU (two sweeps, one process each)
#   N=2 CTXS=1k bash scripts/tasks_evidence.sh /tmp/ev_small     # a small CPU run
#
# Environment: N (prompts per depth, 20), CTXS (the grid's 1k,2k,4k,8k), N_DOCS (KL windows per job, 4), BUDGET_S (seconds for the
# whole script: the task sweep is stopped in time to reduce what finished; running the same command again with
# the same OUT_DIR resumes: finished jobs are skipped, the dense scores come from the dense cache), PY (.venv/bin/python). Hydra's basic launcher runs the jobs one after
# another in one process per sweep; every job prints a progress bar per model (prompts/s).
# Outputs in OUT_DIR: tasks/ and kl/ (the sweeps: every job's files, reduce's sensitivity.md/.csv, tasks.csv,
# tasks_by_depth.csv, plots/), and at the top: results_tables.md (scripts/results_tables.py), tasks.csv,
# tasks_by_depth.csv, kl_sensitivity.csv, tasks_sensitivity.md, passkey_depth_ctx.png, niah_depth_ctx.png.
set -uo pipefail
out=${1:?usage: tasks_evidence.sh OUT_DIR [key=value ...]}
shift
PY=${PY:-.venv/bin/python}
N=${N:-20}
N_DOCS=${N_DOCS:-4}
mkdir -p "$out"
common=(logger=none dtype=bfloat16 calib.n_samples=16 calib.seqlen=512 "$@")
# on a CPU one thread per process is fastest on a loaded 2-core machine; a GPU run does not care
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
t0=$(date +%s)
stamp() { echo "[tasks_evidence] $(( $(date +%s) - t0 )) s: $*"; }

stamp "preparing the embedded model (dequantized once into \$LCC_CACHE)"
$PY -m lcc.models || exit 1

ctx=()
[ -n "${CTXS:-}" ] && ctx=(ctx="$CTXS")   # default: the grid's 1k..8k
stamp "mean KL: 5 compressors x ${CTXS:-1k..8k}, n_docs=$N_DOCS (experiment=tasks with task=kl)"
$PY -m lcc.sweep -m experiment=tasks task=kl "${ctx[@]}" n_docs="$N_DOCS" "${common[@]}" \
  hydra.sweep.dir="$out/kl" hydra.sweeper.reduce=false || stamp "KL sweep: exit $? (reduced below)"

stamp "passkey + niah: 5 compressors x ${CTXS:-1k..8k} x 5 depths x $N prompts"
budget=()   # BUDGET_S bounds the whole script: the task sweep gets what is left minus ~40 s for reduce
[ -n "${BUDGET_S:-}" ] && budget=(timeout --signal=INT "$(( BUDGET_S - ($(date +%s) - t0) - 40 > 10 ? BUDGET_S - ($(date +%s) - t0) - 40 : 10 ))")
"${budget[@]}" $PY -m lcc.sweep -m experiment=tasks "${ctx[@]}" ++task.n_samples="$N" "${common[@]}" \
  hydra.sweep.dir="$out/tasks" hydra.sweeper.reduce=false || stamp "task sweep: exit $? (reduced below)"

stamp "reduce"
rc=0
for d in kl tasks; do
  [ -d "$out/$d" ] && { $PY -m lcc.reduce "$out/$d" > "$out/$d.reduce.log" 2>&1 || { rc=1; stamp "reduce $d failed: $out/$d.reduce.log"; }; }
done
cp "$out/kl/sensitivity.csv" "$out/kl_sensitivity.csv" 2>/dev/null || rc=1
for f in tasks.csv tasks_by_depth.csv; do cp "$out/tasks/$f" "$out/$f" 2>/dev/null || rc=1; done
cp "$out/tasks/sensitivity.md" "$out/tasks_sensitivity.md" 2>/dev/null
cp "$out"/tasks/plots/*_depth_ctx.png "$out"/ 2>/dev/null || rc=1
$PY scripts/results_tables.py "$out/tasks" "$out/kl" -o "$out/results_tables.md" || rc=1
stamp "done (exit $rc); outputs in $out"
ls -l "$out"
exit $rc
