#!/usr/bin/env bash
# Issue 20 evidence, part 2: compressed checkpoints made locally from the embedded SmolLM2 (GGUF types written
# with the gguf package's quantize(), compressed-tensors written with its own API) against the dense model:
# per-token KL at 1k and 2k (n_docs=2, bf16), beside lcc's in-memory quant w4g64 sym for scale.
# Usage: scripts/issue20_checkpoints.sh OUT_DIR
set -euo pipefail
OUT=${1:?out dir}
export OMP_NUM_THREADS=1
PY=${PYTHON:-python}
CK=$OUT/checkpoints; mkdir -p $CK
for t in Q8_0 Q5_0 Q4_0; do [ -f $CK/smollm2-$t.gguf ] || $PY -m lcc.checkpoints gguf $t $CK/smollm2-$t.gguf; done
[ -f $CK/smollm2-ct-w4g64/config.json ] || $PY -m lcc.checkpoints ct 4 64 $CK/smollm2-ct-w4g64
[ -f $CK/smollm2-ct-w8g64/config.json ] || $PY -m lcc.checkpoints ct 8 64 $CK/smollm2-ct-w8g64
P="$CK/smollm2-Q8_0.gguf,$CK/smollm2-Q5_0.gguf,$CK/smollm2-Q4_0.gguf,$CK/smollm2-ct-w4g64,$CK/smollm2-ct-w8g64"
$PY -m lcc.sweep -m compressor=checkpoint "compressor.path=$P" ctx=1k,2k n_docs=2 dtype=bfloat16 logger=none \
    hydra.sweep.dir=$OUT/kl_checkpoints
$PY -m lcc.sweep -m compressor=quant compressor.bits=4 compressor.group_size=64 compressor.sym=true ctx=1k,2k \
    n_docs=2 dtype=bfloat16 logger=none hydra.sweep.dir=$OUT/kl_quant
