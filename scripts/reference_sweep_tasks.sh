#!/bin/bash
# The task part of the reference sweep (scripts/reference_sweep.sh has only task=kl jobs): passkey, niah and vt
# with a few prompts, a press on a KL job and on a task job, lm_eval on the offline task lcc_pydoc_cloze, and a
# dense-cache miss run then hit run of task jobs. Run it on two source trees and compare with
# scripts/compare_sweeps.py (which compares samples.parquet without its timing columns, by_depth and the
# lm_eval rows of task jobs).
# usage: scripts/reference_sweep_tasks.sh <source tree> <out dir>   (PY: the python, default this repo's .venv;
#        PYDOC_TASK: the folder of the local lm-eval task, fixed so that config hashes do not depend on OUT)
set -e
SRC=$1; OUT=$2
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
PYDOC_TASK=${PYDOC_TASK:-/tmp/lcc_ref_pydoc_task}
export PYTHONPATH=$SRC OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 TQDM_DISABLE=1 WANDB_MODE=offline
cd $SRC
run() { echo "+ $*"; $PY -m lcc.sweep -m "$@" 2>&1 | grep -E "done:|Error|error|invalid|nothing was launched" || true; }
[ -f $PYDOC_TASK/lcc_pydoc_cloze.yaml ] || $PY -m lcc.tasks pydoc-task $PYDOC_TASK --n-docs 20
T="model=tiny logger=none cache.enabled=false ctx.tokens=512 ++task.n_samples=1 ++task.max_new_tokens=32 calib.n_samples=8 calib.seqlen=256 hydra.sweep.dir=$OUT/tiny"
run $T task=passkey,niah,vt compressor=none,quant,wanda,kv
run $T task=passkey '++task.depths=[0.0,0.5]' compressor=snapkv,knorm ++compressor.ratio=0.5
run $T task=niah ++task.n_keys=2 ++task.value_type=word compressor=magnitude
S="model=smollm2_135m logger=none cache.enabled=false ctx=1k calib.n_samples=4 calib.seqlen=256 hydra.sweep.dir=$OUT/smol"
run $S task=passkey,niah,vt ++task.n_samples=1 '++task.depths=[0.0,1.0]' compressor=none,quant
run $S n_docs=2 compressor=knorm,snapkv ++compressor.ratio=0.5
run $S task=lm_eval ++task.include_path=$PYDOC_TASK '++task.tasks=[lcc_pydoc_cloze]' ++task.limit=4 compressor=none,quant,wanda
# the dense cache of task jobs: a miss run, then a hit run (resume=false) into a fresh cache dir
C="model=tiny logger=none ctx.tokens=512 ++task.n_samples=1 ++task.max_new_tokens=32 cache.dir=$OUT/cache"
run $C hydra.sweep.dir=$OUT/cache_miss task=passkey,vt compressor=quant,magnitude
run $C hydra.sweep.dir=$OUT/cache_hit resume=false task=passkey,vt compressor=quant,magnitude
