#!/usr/bin/env bash
# Issue 20 evidence, part 1: RULER's offline tasks (generated haystacks) through the lm-eval bridge on the
# embedded SmolLM2-135M-Instruct, dense beside quant w3/w4 (then magnitude 30 %, wanda 50 %), ctx 1k and 2k.
# CPU-sized: task.limit=5 prompts per task and length, bf16, one thread. docs/results.md reads the reduce.
# Usage: scripts/issue20_ruler.sh OUT_DIR [LIMIT]
set -euo pipefail
OUT=${1:?out dir}; LIMIT=${2:-5}
export OMP_NUM_THREADS=1
PY=${PYTHON:-python}
TASKS="[niah_single_1,niah_multikey_2,niah_multikey_3,ruler_vt,ruler_fwe]"  # ruler_cwe: refused (docs/tasks.md)
COMMON=(task=lm_eval "task.tasks=$TASKS" task.limit=$LIMIT dtype=bfloat16 logger=none)
$PY -m lcc.sweep -m "${COMMON[@]}" compressor=quant compressor.bits=4,3 ctx=1k,2k hydra.sweep.dir=$OUT/quant
$PY -m lcc.sweep -m "${COMMON[@]}" compressor=magnitude compressor.sparsity=0.3 ctx=1k,2k hydra.sweep.dir=$OUT/magnitude
$PY -m lcc.sweep -m "${COMMON[@]}" compressor=wanda compressor.sparsity=0.5 calib.n_samples=16 calib.seqlen=512 \
    ctx=1k,2k hydra.sweep.dir=$OUT/wanda
