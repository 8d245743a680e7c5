#!/usr/bin/env bash
# The evidence of docs/results.md ("Calibrated and rotated formats"), one command: SmoothQuant W8A8, AWQ W4A16,
# GPTQ W4A16, W4A4 (quant_wa) with and without Hadamard rotation, 4-bit KV with and without rotation, and rotation
# alone, on SmolLM2-135M-Instruct (lcc/conf/experiment/formats_calibrated.yaml): mean KL at 1k..8k (N_DOCS windows),
# then passkey and niah at 1k..8k, five needle depths, N prompts per depth (default 20); reduce and tables.
#
#   bash scripts/formats_calibrated_evidence.sh OUT_DIR [key=value ...]          # everything (a GPU: add device=cuda)
#   CTXS=1k,2k N_DOCS=2 TASKS=0 bash scripts/formats_calibrated_evidence.sh OUT  # the CPU run of docs/results.md
#
# Environment: CTXS (default: the grid's 1k,2k,4k,8k), N_DOCS (4), N (20 prompts per depth), TASKS (1: also the
# passkey/niah sweep), PY (.venv/bin/python). Running it again with the same OUT_DIR resumes (finished jobs are
# skipped; dense references come from the dense cache).
set -uo pipefail
out=${1:?usage: formats_calibrated_evidence.sh OUT_DIR [key=value ...]}
shift
PY=${PY:-.venv/bin/python}
N=${N:-20}
N_DOCS=${N_DOCS:-4}
TASKS=${TASKS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$out"
common=(logger=none "$@")
ctx=()
[ -n "${CTXS:-}" ] && ctx=(ctx="$CTXS")
rc=0
$PY -m lcc.sweep -m experiment=formats_calibrated "${ctx[@]}" n_docs="$N_DOCS" "${common[@]}" \
  hydra.sweep.dir="$out/kl" || rc=1
if [ "$TASKS" = 1 ]; then
  $PY -m lcc.sweep -m experiment=formats_calibrated task=passkey,niah ++task.n_samples="$N" "${ctx[@]}" \
    "${common[@]}" hydra.sweep.dir="$out/tasks" || rc=1
  $PY scripts/results_tables.py "$out/tasks" "$out/kl" -o "$out/results_tables.md" || rc=1
fi
tables="$out/kl/sensitivity.md"
[ "$TASKS" = 1 ] && tables="$tables $out/tasks/sensitivity.md $out/results_tables.md"
echo "[formats_calibrated_evidence] exit $rc; tables: $tables"
exit $rc
