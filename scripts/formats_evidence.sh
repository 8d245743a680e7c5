#!/usr/bin/env bash
# The complete table of issue 19 (docs/results.md, "Deployed formats"): SmolLM2-135M-Instruct, the rows of
# lcc/conf/experiment/formats.yaml (FP8_DYNAMIC, NVFP4A16 / NVFP4, MXFP4A16 / MXFP4, MXFP8A16, FP8 KV, 4-bit KV,
# quant w4, gptq w4) at 1k, 2k, 4k, 8k: mean KL and late slope (N_DOCS windows), then passkey and niah with N prompts
# per needle depth (5 depths: 5N per task cell; N=4 is the floor of 20), then reduce and the tables.
#
#   bash scripts/formats_evidence.sh OUT_DIR [key=value ...]          # extra keys go to every job
#   bash scripts/formats_evidence.sh /tmp/formats device=cuda         # on a GPU
#   CTXS=1k,2k N=4 N_DOCS=2 bash scripts/formats_evidence.sh /tmp/f  # what docs/results.md ran on the 2-core CPU
#
# Environment: N (prompts per depth, 4), N_DOCS (KL windows per job, 4), CTXS (default: the grid's 1k..8k), PY.
# Running it again with the same OUT_DIR resumes (finished jobs are skipped).
set -uo pipefail
out=${1:?usage: formats_evidence.sh OUT_DIR [key=value ...]}
shift
PY=${PY:-.venv/bin/python}
N=${N:-4}
N_DOCS=${N_DOCS:-4}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$out"
common=(logger=none cache.compressed=false "$@")
ctx=()
[ -n "${CTXS:-}" ] && ctx=(ctx="$CTXS")
$PY -m lcc.models || exit 1
$PY -m lcc.sweep -m experiment=formats task=kl "${ctx[@]}" n_docs="$N_DOCS" "${common[@]}" \
  hydra.sweep.dir="$out/kl" hydra.sweeper.reduce=false || echo "KL sweep: exit $? (reduced below)"
$PY -m lcc.sweep -m experiment=formats "${ctx[@]}" ++task.n_samples="$N" "${common[@]}" \
  hydra.sweep.dir="$out/tasks" hydra.sweeper.reduce=false || echo "task sweep: exit $? (reduced below)"
rc=0
for d in kl tasks; do
  [ -d "$out/$d" ] && { $PY -m lcc.reduce "$out/$d" > "$out/$d.reduce.log" 2>&1 || rc=1; }
done
$PY scripts/results_tables.py "$out/tasks" "$out/kl" -o "$out/results_tables.md" || rc=1
echo "outputs: $out/kl/sensitivity.md, $out/tasks/sensitivity.md, $out/results_tables.md"
exit $rc
