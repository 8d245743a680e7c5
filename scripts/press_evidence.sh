#!/usr/bin/env bash
# Evidence for KV-cache eviction (issue 18, docs/results.md "KV-cache eviction").
#   scripts/press_evidence.sh OUT [full|slice] [kl|tasks|all]
# full:  the grid -- every press at ratio 0.25/0.5/0.75, ctx 2k/4k/8k (KL vs position); passkey and niah
#        at ratio 0.25..0.9, ctx 2k/4k/8k, snapkv query-aware and agnostic, streaming_llm, kv 2/4-bit, 20 prompts
#        per cell (5 depths x 4). Hours on a GPU-less machine; minutes per job on a GPU.
# slice: what ran on the shared 2-core CPU for docs/results.md: the same grids at 1k/2k, fewer ratios for the tasks.
# Then: python -m lcc.reduce OUT   (all sweeps under OUT in one reduce: tables, figures, press figures)
set -euo pipefail
OUT=${1:?usage: press_evidence.sh OUT [full|slice] [kl|tasks|all]}
MODE=${2:-slice}
WHAT=${3:-all}
PY=${PYTHON:-python}
PRESSES=streaming_llm,h2o,tova,snapkv,pyramidkv,adakv,knorm,expected_attention,random_kv
COMMON=(logger=none dtype=bfloat16)
if [ "$MODE" = full ]; then
  CTXS=(2k 4k 8k); KL_RATIOS=0.25,0.5,0.75; TASK_RATIOS=0.25,0.5,0.75,0.9; SL_RATIOS=$TASK_RATIOS; NDOCS=4
else
  CTXS=(1k 2k); KL_RATIOS=0.25,0.5,0.75; TASK_RATIOS=0.5,0.75,0.9; SL_RATIOS=0.5,0.9; NDOCS=2
fi
for ctx in "${CTXS[@]}"; do
  if [ "$WHAT" != tasks ]; then
    $PY -m lcc.sweep -m compressor=$PRESSES ++compressor.ratio=$KL_RATIOS ctx=$ctx n_docs=$NDOCS "${COMMON[@]}" \
        hydra.sweep.dir="$OUT/kl_press_$ctx" hydra.sweeper.reduce=false
    $PY -m lcc.sweep -m compressor=kv compressor.bits=2,4 ctx=$ctx n_docs=$NDOCS "${COMMON[@]}" \
        hydra.sweep.dir="$OUT/kl_kv_$ctx" hydra.sweeper.reduce=false
  fi
  if [ "$WHAT" != kl ]; then
    T=(task=passkey,niah ++task.n_samples=4 ctx=$ctx "${COMMON[@]}" hydra.sweeper.reduce=false)
    # cache.press_prefill: each prompt is read once per mode, the other ratios replay it (docs/caching.md)
    $PY -m lcc.sweep -m "${T[@]}" compressor=snapkv ++compressor.ratio=$TASK_RATIOS \
        ++compressor.query_aware=false,true cache.press_prefill=true hydra.sweep.dir="$OUT/task_snapkv_$ctx"
    $PY -m lcc.sweep -m "${T[@]}" compressor=kv ++compressor.bits=2,4 hydra.sweep.dir="$OUT/task_kv_$ctx"
    $PY -m lcc.sweep -m "${T[@]}" compressor=streaming_llm ++compressor.ratio=$SL_RATIOS \
        hydra.sweep.dir="$OUT/task_streaming_$ctx"
  fi
done
$PY -m lcc.reduce "$OUT"
