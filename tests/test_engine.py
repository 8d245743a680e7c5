"""The sequential calibration engine: capture, statistics, propagation, targets, calibration windows."""
import sys
import types

import pytest
import torch

from lcc import ConfigError
from lcc.compressors.base import Targets
from lcc.compressors.engine import Stats, capture_inputs, run_sequential
from lcc.data import calibration_batch
from lcc.models import tiny_llama


class Recorder(Stats):
    """Records the inputs of every Linear (the statistic: how many it saw) and, as the per-layer rule,
    scales weights by ``factor``."""

    def __init__(self, factor=1.0):
        self.inputs, self.factor, self.order = {}, factor, []

    def add_batch(self, name, inp):  # a batch of samples: [batch, seqlen, in_features]
        self.inputs.setdefault(name, []).extend(x.clone() for x in inp.split(1))

    def pop(self, name):
        return len(self.inputs[name])

    def rule(self, name, linear, seen):
        self.order.append(name)
        linear.weight.data.mul_(self.factor)
        return {"seen": seen}


def run(model, calib, targets, rec, **kw):
    return run_sequential(model, calib, targets, rec, rec.rule, **kw)


def real_inputs(model, calib, name):
    """Inputs of a Linear ``layers.i.x.y`` during an ordinary forward of ``model``."""
    _, i, rest = name.split(".", 2)
    lin = model.model.layers[int(i)].get_submodule(rest)
    got = []
    h = lin.register_forward_hook(lambda m, inp, out: got.append(inp[0].clone()))
    with torch.no_grad():
        for s in range(calib.shape[0]):
            model(calib[s:s + 1])
    h.remove()
    return got


@pytest.fixture
def calib():
    return torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_engine_replays_the_real_forward(calib, attn):
    model = tiny_llama(n_layers=3, seed=0, attn_implementation=attn).eval()
    rec = Recorder(1.0)
    facts = run(model, calib, Targets(), rec)
    for name in ("layers.0.self_attn.q_proj", "layers.2.mlp.down_proj", "layers.1.self_attn.o_proj"):
        ref = real_inputs(model, calib, name)
        assert len(rec.inputs[name]) == 3
        for a, b in zip(rec.inputs[name], ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert facts["layers.1.mlp.up_proj"] == {"seen": 3}
    assert len(rec.order) == 3 * 7


def test_captured_kwargs_drop_the_cache(calib):
    model = tiny_llama(n_layers=2, seed=0).eval()
    inps, layer_args = capture_inputs(model, calib)
    assert len(inps) == 3 and inps[0].shape == (1, 24, 64)
    kw = layer_args[0][1]
    assert "position_embeddings" in kw
    assert "past_key_values" not in kw and "past_key_value" not in kw
    assert kw.get("use_cache", False) is False
    torch.testing.assert_close(inps[1], model.model.embed_tokens(calib[1:2]))


def test_propagate_flag_changes_later_inputs(calib):
    name = "layers.1.self_attn.q_proj"
    dense = tiny_llama(n_layers=2, seed=0).eval()
    dense_inputs = real_inputs(dense, calib, name)

    m_prop = tiny_llama(n_layers=2, seed=0).eval()
    rec_p = Recorder(0.3)
    run(m_prop, calib, Targets(), rec_p, propagate=True)
    m_dense = tiny_llama(n_layers=2, seed=0).eval()
    rec_d = Recorder(0.3)
    run(m_dense, calib, Targets(), rec_d, propagate=False)

    # propagate=False: layer 1 saw the dense outputs of layer 0
    for a, b in zip(rec_d.inputs[name], dense_inputs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # propagate=True: layer 1 saw the outputs of the compressed layer 0, i.e. what the compressed model computes
    half = tiny_llama(n_layers=2, seed=0).eval()
    for lin in half.model.layers[0].modules():
        if isinstance(lin, torch.nn.Linear):
            lin.weight.data.mul_(0.3)
    for a, b in zip(rec_p.inputs[name], real_inputs(half, calib, name)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    diff = (rec_p.inputs[name][0] - rec_d.inputs[name][0]).abs().max().item()
    assert diff > 1e-2
    # layer 0 sees the same inputs either way (gate_proj's input, which up_proj shares, is recorded once)
    torch.testing.assert_close(rec_p.inputs["layers.0.mlp.gate_proj"][0], rec_d.inputs["layers.0.mlp.gate_proj"][0])


def test_targets_restrict_layers_and_modules(calib):
    model = tiny_llama(n_layers=3, seed=0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = Recorder(0.0)
    run(model, calib, Targets(modules=["mlp"], layers=[1, 2]), rec)
    assert sorted(rec.order) == ["layers.1.mlp.down_proj", "layers.1.mlp.gate_proj", "layers.1.mlp.up_proj"]
    after = model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.gate_proj.weight",
                       "model.layers.1.mlp.up_proj.weight"]


def test_engine_needs_calibration():
    with pytest.raises(ConfigError, match="calib"):
        run(tiny_llama(n_layers=1), None, Targets(), Recorder())


@pytest.fixture
def fake_stream(monkeypatch):
    stream = torch.arange(1000)
    mod = sys.modules.get("lcc.data")
    if mod is None:
        mod = types.ModuleType("lcc.data")
        monkeypatch.setitem(sys.modules, "lcc.data", mod)
    monkeypatch.setattr(mod, "token_stream", lambda data, tok: stream, raising=False)
    return stream


def test_calibration_batch_windows(fake_stream):
    cfg = {"data": {"name": "fake"}, "n_samples": 5, "seqlen": 64, "seed": 3}
    a = calibration_batch(cfg, None)
    b = calibration_batch(cfg, None)
    c = calibration_batch({**cfg, "seed": 4}, None)
    assert a.shape == (5, 64) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    for row in a:  # contiguous windows of the stream
        assert torch.equal(row, torch.arange(int(row[0]), int(row[0]) + 64))
    with pytest.raises(ConfigError, match="seqlen=2000"):
        calibration_batch({**cfg, "seqlen": 2000}, None)
