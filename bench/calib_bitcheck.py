#!/usr/bin/env python3
"""Bit-for-bit check of the calibrated compressors across code versions: SmolLM2-135M, blocks 0-2, 4 x 128
pydoc calibration tokens, one thread; prints a sha256 of all weights after gptq (plain, and act_order with
static groups) and sparsegpt. Run it on two checkouts and compare the hashes:

    PYTHONPATH=/path/to/main python bench/calib_bitcheck.py
    LCC_CALIB_BATCH=1 python bench/calib_bitcheck.py     # issue 12's code, one sample per forward
"""
import sys, torch, hashlib, os
torch.set_num_threads(1)
from omegaconf import OmegaConf
import lcc
from lcc import compressors
from lcc.data import calibration_batch
from lcc.models import load_model
from pathlib import Path
conf = Path(lcc.__file__).parent / "conf"
model, tok, _ = load_model(OmegaConf.load(conf/"model"/"smollm2_135m.yaml"), torch.device("cpu"), torch.float32)
calib = calibration_batch({"data": OmegaConf.load(conf/"data"/"pydoc.yaml"), "n_samples": 4, "seqlen": 128, "seed": 0}, tok)
dense = {k: v.clone() for k, v in model.state_dict().items()}
for cfg in [{"name": "gptq", "targets": {"layers": [0, 3]}}, {"name": "gptq", "act_order": True, "static_groups": True, "targets": {"layers": [0, 3]}}, {"name": "sparsegpt", "targets": {"layers": [0, 3]}}]:
    model.load_state_dict(dense)
    compressors.build(cfg).compress(model, calib)
    h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:16]
    print(lcc.__file__.split("/")[2:4], os.environ.get("LCC_CALIB_BATCH"), cfg, h, flush=True)
