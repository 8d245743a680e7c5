#!/bin/bash
# A fixed reference sweep that touches every compressor (cache off, so every job computes), on model=tiny and a
# few on the embedded SmolLM2, plus a cache miss and a cache hit run. Run it on two source trees (e.g. exports
# of two commits: git archive <commit> | tar -x -C <dir>) and compare with scripts/compare_sweeps.py: a refactor
# must leave every number bit for bit as it was. CPU numbers depend on the thread count, which is fixed here.
# usage: scripts/reference_sweep.sh <source tree> <out dir>     (PY: the python to use, default this repo's .venv)
set -e
SRC=$1; OUT=$2
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
export PYTHONPATH=$SRC OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 TQDM_DISABLE=1 WANDB_MODE=offline
cd $SRC
T="model=tiny ctx=1k n_docs=2 cache.enabled=false logger=none calib.n_samples=8 calib.seqlen=256 hydra.sweep.dir=$OUT/tiny"
run() { echo "+ $*"; $PY -m lcc.sweep -m "$@" 2>&1 | grep -E "done:|Error|error" || true; }
run $T compressor=none,quant,magnitude,random,wanda,sparsegpt,gptq,quant_wa,mixed,kv,compose
run $T compressor=magnitude compressor.nm_n=2 compressor.nm_m=4
run $T compressor=wanda compressor.nm_n=2 compressor.nm_m=4
run $T compressor=sparsegpt compressor.nm_n=2 compressor.nm_m=4
run $T compressor=random compressor.sparsity=0.3 compressor.seed=7
run $T compressor=quant compressor.bits=3 compressor.sym=true compressor.group_size=32
run $T compressor=gptq compressor.act_order=true
run $T compressor=gptq compressor.act_order=true compressor.static_groups=true compressor.group_size=32 compressor.bits=3
run $T compressor=gptq compressor.propagate=false compressor.group_size=-1
run $T compressor=sparsegpt compressor.sparsity=0.3 compressor.blocksize=32
run $T compressor=mixed compressor.saliency=wanda,act_norm compressor.bits=3
run $T compressor=quant_wa compressor.a_bits=4 compressor.a_group_size=16 compressor.w_bits=16
run $T compressor=kv compressor.window=64 compressor.sink=4
run $T compressor=kv compressor.pre_rope=true compressor.key_mode=token compressor.bits=3
run $T compressor=compose 'compressor.stages=[{name:wanda,sparsity:0.5},{name:gptq,bits:4}]'
run $T compressor=compose 'compressor.stages=[{name:magnitude,sparsity:0.3},{name:random,sparsity:0.2}]'
# the caches' codecs: a miss run then a hit run (resume=false) into a fresh cache dir
C="model=tiny ctx=1k n_docs=2 logger=none calib.n_samples=8 calib.seqlen=256 cache.dir=$OUT/cache cache.compressed=true"
run $C hydra.sweep.dir=$OUT/cache_miss compressor=quant,magnitude,wanda,gptq,compose,mixed
run $C hydra.sweep.dir=$OUT/cache_hit resume=false compressor=quant,magnitude,wanda,gptq,compose,mixed
S="model=smollm2_135m ctx=1k n_docs=2 calib.n_samples=4 calib.seqlen=256 cache.enabled=false logger=none hydra.sweep.dir=$OUT/smol"
run $S compressor=none,quant,wanda,kv,quant_wa
run $S compressor=gptq compressor.act_order=true
run $S compressor=sparsegpt compressor.nm_n=2 compressor.nm_m=4
