"""The compressor contract, checked over the whole registry: every compressor composes from its Hydra config,
compresses the tiny model, and its declared capabilities tell the truth (storage MASK: only zeros added;
WEIGHTS: only its touched Linears' parameters changed; no hooks left behind; the cache codec of its storage
reproduces the compressed model from the dense one). And: a new compressor is one module, nothing else."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from lcc import ConfigError
from lcc.cache import CODECS
from lcc.compressors import REGISTRY, Storage, build
from lcc.models import tiny_llama
from tests.helpers import ROOT, make_cfg, package_with_module

#: besides every registered compressor at its defaults: compositions of each storage kind, and levels that
#: change a capability (mixed with a calibrated saliency)
EXTRA = {
    "compose(masks)": ["compressor=compose", "compressor.stages=[{name: magnitude, sparsity: 0.3},"
                                             "{name: random, sparsity: 0.2}]"],
    "compose(wanda+gptq)": ["compressor=compose", "compressor.stages=[{name: wanda},{name: gptq, bits: 3}]"],
    "compose(kv)": ["compressor=compose", "compressor.stages=[{name: quant},{name: kv}]"],
    "mixed(wanda)": ["compressor=mixed", "compressor.saliency=wanda"],
    "quant_wa(weights only)": ["compressor=quant_wa", "compressor.a_bits=16"],
    "sparsegpt(2:4)": ["compressor=sparsegpt", "compressor.nm_n=2", "compressor.nm_m=4"],
    "fp8(W8A16 block)": ["compressor=fp8", "compressor.weights=block", "compressor.acts=none", "compressor.block=16"],
    "nvfp4(W4A4)": ["compressor=nvfp4", "compressor.acts=true"],
    "mxfp4(W4A4)": ["compressor=mxfp4", "compressor.acts=true"],
    "kv(fp8)": ["compressor=kv", "compressor.format=fp8", "compressor.fp8_scale=head"],
    "compose(nvfp4+kv fp8)": ["compressor=compose", "compressor.stages=[{name: nvfp4},{name: kv, format: fp8}]"],
}


def _tiny_checkpoint() -> str:
    """A saved checkpoint of the tiny model with other weights: what compressor=checkpoint loads."""
    import tempfile
    d = tempfile.mkdtemp(prefix="lcc-tiny-ckpt-")
    tiny_llama(n_layers=2, seed=1).save_pretrained(d)
    return d


#: compressors whose defaults leave a required parameter unset (checkpoint: which checkpoint)
REQUIRED = {"checkpoint": {"path": _tiny_checkpoint()}}
CASES = {name: [f"compressor={name}", *(f"compressor.{k}={v}" for k, v in REQUIRED.get(name, {}).items())]
         for name in sorted(REGISTRY)} | EXTRA
#: cases whose every touched Linear ends on an integer grid (the cache stores them as codes)
QUANTIZERS = {"quant", "gptq", "mixed", "mixed(wanda)", "quant_wa(weights only)", "compose", "compose(wanda+gptq)"}
CALIB = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))


def hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_registry_is_discovered():
    import pkgutil

    import lcc.compressors as pkg
    modules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    assert {REGISTRY[n].__module__.rsplit(".", 1)[1] for n in REGISTRY} <= modules
    assert {"none", "quant", "magnitude", "random", "wanda", "sparsegpt", "gptq", "quant_wa", "mixed", "kv",
            "compose"} <= set(REGISTRY)


@pytest.mark.parametrize("case", sorted(CASES))
def test_declared_capabilities_tell_the_truth(case):
    comp = build(make_cfg(["model=tiny", *CASES[case]]).compressor)
    model = tiny_llama(n_layers=2, seed=0).eval()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config_before = model.config.to_dict()
    n_hooks = hooks(model)
    touched = {f"model.{n}.{p}" if not n.startswith("lm_head") else f"{n}.{p}"
               for n, lin in comp.touched_linears(model).items() for p, _ in lin.named_parameters(recurse=False)}
    if comp.needs_calibration():
        with pytest.raises(ConfigError, match="calib"):
            comp.compress(tiny_llama(n_layers=2, seed=0).eval(), None)
    facts = comp.compress(model, CALIB if comp.needs_calibration() else None)
    json.dumps(facts)  # facts are JSON (result.json, the cache's meta.json)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    storage = comp.storage()
    if not comp.acts_at_runtime():
        assert hooks(model) == n_hooks, "a compressor that does not act at run time left hooks behind"
        assert model.config.to_dict() == config_before, "a compressor that does not act at run time changed the config"
    if storage is Storage.NONE:
        return
    assert not comp.acts_at_runtime(), "a cacheable compressor acts at run time"
    assert changed and changed <= touched, f"changed outside touched_linears: {sorted(changed - touched)}"
    if storage is Storage.MASK:
        for k in changed:
            kept = after[k] != 0
            assert torch.equal(after[k][kept], before[k][kept]), f"{k}: a MASK compressor changed a kept weight"
    # the codec of its storage turns the dense model into the compressed one, bit for bit
    codec = CODECS[storage]
    entry, info = codec.encode(comp.touched_linears(model), comp.quant_grids())
    json.dumps(info)  # stored in meta.json
    if storage is Storage.WEIGHTS:  # a quantizer's weights are stored as codes, every other one as a full copy
        quantizes = case in QUANTIZERS
        assert info["summary"] == {**info["summary"], "coded": len(touched) if quantizes else 0,
                                   "full_copies": 0 if quantizes else len(touched)}, info["summary"]
    fresh = tiny_llama(n_layers=2, seed=0).eval()
    lins = comp.touched_linears(fresh)
    codec.apply(lins, codec.load(lins, entry, info))
    if storage is Storage.MASK:  # a masked weight may be -0.0 instead of 0.0 (docs/caching.md)
        assert all(torch.equal(v, after[k]) for k, v in fresh.state_dict().items())
    else:  # bit for bit
        assert all(torch.equal(v.view(torch.uint8), after[k].view(torch.uint8)) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_defaults_live_in_python_only(name):
    """compressor=<name> is the class's schema: its keys and defaults are the fields (no YAML copy)."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(make_cfg([f"compressor={name}"]).compressor, resolve=True)
    cls = REGISTRY[name]
    def default(f):
        if f.metadata.get("config", dataclasses.MISSING) is not dataclasses.MISSING:
            return f.metadata["config"]  # the value a config spells out for a Python default that is "left out"
        return f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
    fields = {f.name: default(f) for f in cls.param_fields()}
    targets = {"targets": {"modules": None, "layers": None, "lm_head": False}} if cls.uses_targets else {}
    assert node == {"name": name, **targets, **fields}
    assert not (ROOT / "lcc" / "conf" / "compressor").exists()
    req = REQUIRED.get(name, {})
    assert build({**node, **req}).params() == build({"name": name, **req}).params()


@pytest.mark.parametrize("cfg,needle", [
    ({"name": "gptq", "sym": 1}, "sym=1 is invalid; valid: true or false"),
    ({"name": "quant", "bits": "4"}, "bits='4' is invalid; valid: an integer in 2..8"),
    ({"name": "quant", "targets": {"lm_head": "yes"}}, "targets.lm_head='yes' is invalid"),
    ({"name": "quant", "targets": {"layer": [0, 1]}}, "targets.layer is not a targets key"),
    ({"name": "magnitude", "nm_n": 1, "nm_m": 4, "sparsity": 0.5}, "sparsity=0.5 contradicts N:M 1:4"),
    ({"name": "none", "targets": {"layers": [0, 1]}}, "compressor 'none' does not take ['targets']"),
])
def test_values_are_checked_on_construction(cfg, needle):
    with pytest.raises(ConfigError) as e:
        build(cfg)
    assert needle in str(e.value)


def test_nm_sparsity_null_is_taken_from_nm():
    assert build({"name": "magnitude", "nm_n": 1, "nm_m": 4, "sparsity": None}).sparsity == 0.75
    assert build({"name": "magnitude", "nm_n": 1, "nm_m": 4}).sparsity == 0.75  # left out in Python
    assert build({"name": "wanda"}).sparsity == 0.5 and build({"name": "wanda"}).level() == "sparsity=0.5"
    assert build(make_cfg(["compressor=wanda", "compressor.nm_n=1", "compressor.nm_m=4",
                           "compressor.sparsity=null"]).compressor).level() == "1:4"


NEW_MODULE = '''
"""A compressor that exists only in this test: every targeted weight times ``factor``."""
import torch

from lcc.compressors.base import Compressor, Storage, fraction, param, target_linears


class Scale(Compressor):
    """Multiply every targeted weight by ``factor``."""

    name = "scale_test"
    factor: float = param(0.5, "multiplier of the weights", fraction(lo_closed=False, hi_closed=True))

    def level(self):
        return f"x{self.factor}"

    def storage(self):
        return Storage.WEIGHTS

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = target_linears(model, self.targets)
        for lin in lins.values():
            lin.weight.mul_(self.factor)
        return {"n_linears": len(lins)}
'''


@pytest.mark.slow
def test_a_new_compressor_is_one_module(tmp_path):
    """Copy the package, add one module to lcc/compressors/ and nothing else: it is a Hydra config option,
    validated before launch, runs in a sweep, caches by its declared storage and shows in reduce's table."""
    run = package_with_module(tmp_path, "compressors/scale_test.py", NEW_MODULE)

    def sweep(*args):
        return run("lcc.sweep", "-m", "model=tiny", "ctx.tokens=128", "n_docs=2", "logger=none",
                   f"++cache.dir={tmp_path / 'cache'}", *args)

    bad = sweep("compressor=scale_test", "compressor.factor=0.5,2", f"hydra.sweep.dir={tmp_path / 'bad'}")
    assert bad.returncode != 0 and "nothing was launched" in bad.stderr
    assert "factor=2 is invalid; valid: a number in (0, 1]" in bad.stderr
    assert not list((tmp_path / "bad").glob("*/result.json"))

    p = sweep("compressor=scale_test", "compressor.factor=0.5,0.9", "++cache.compressed=true",
              f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert p.returncode == 0, p.stderr[-3000:]
    res = {r["level"]: r for r in (json.loads(f.read_text()) for f in (tmp_path / "sweep").glob("*/result.json"))}
    assert set(res) == {"x0.5", "x0.9"} and all(r["status"] == "ok" for r in res.values())
    assert res["x0.5"]["summary"]["kl_mean"] > res["x0.9"]["summary"]["kl_mean"] > 0
    assert {k: res["x0.5"]["weights"][k] for k in ("targeted_linears", "changed_linears")} == \
        {"targeted_linears": 14, "changed_linears": 14}
    assert res["x0.5"]["cache"]["compressed"] == "miss" and res["x0.5"]["compress_info"] == {"n_linears": 14}
    red = run("lcc.reduce", str(tmp_path / "sweep"), "--no-plots", timeout=300)
    assert red.returncode == 0 and "| scale_test   | x0.5" in red.stdout, red.stdout + red.stderr
