"""The calibrated compressors' speed work changes no number beyond float rounding (issue 12):

* Linears that share one input (q/k/v, gate/up) share one statistic, found from the tensors themselves;
* GPTQ and SparseGPT walk such a group's stacked rows once: equal to separate walks row for row, since the
  OBS update acts within rows given one Hessian (SparseGPT's unstructured block mask chosen per member);
* calibration runs the blocks over batches of samples.

Tolerance of the stacked walks: exact equality is expected on the CPU (every per-column update is an outer
product, one multiplication per element, and the trailing block update is the same GEMM per row); the tests
allow 1e-6 absolute so that a BLAS choosing another kernel for the taller matrix (a different summation
order in the block update) would not fail them, while any difference in a rounding decision would move a
weight by a whole grid step (>= 1e-3 here) and fail them.
"""
import pytest
import torch

from lcc.compressors import build
from lcc.compressors.base import Targets
from lcc.compressors.engine import Stats, run_sequential, xtx_add
from lcc.compressors.gptq import gptq_quantize
from lcc.compressors.prune import sparsegpt_prune
from lcc.models import tiny_llama

ATOL = 1e-6
ROWS = [24, 16, 40]  # e.g. q, k, v of different widths (GQA)
COLS = 64


def hessian(cols=COLS, n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, cols, generator=g) * torch.linspace(0.2, 3.0, cols)  # uneven channels: act_order matters
    X[:, 5] = 0  # a dead input
    return 2 * X.t() @ X / n


def weights(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(r, COLS, generator=g) for r in ROWS]


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("static_groups", [False, True])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("gs", [16, -1])
def test_gptq_stacked_equals_separate(act_order, static_groups, sym, gs):
    H, ws = hessian(), weights()
    kw = dict(bits=3, group_size=gs, sym=sym, act_order=act_order, static_groups=static_groups, blocksize=32)
    sep = [gptq_quantize(w, H, **kw) for w in ws]
    Q, info = gptq_quantize(torch.cat(ws), H, **kw, row_splits=ROWS)
    for (q_sep, i_sep), q in zip(sep, Q.split(ROWS)):
        torch.testing.assert_close(q, q_sep, rtol=0, atol=ATOL)
    assert len(info["loss"]) == 3
    for (_, i_sep), loss in zip(sep, info["loss"]):
        assert loss == pytest.approx(i_sep["loss"], rel=1e-5)


def test_gptq_stacked_with_zero_masks():
    H, ws = hessian(), weights()
    g = torch.Generator().manual_seed(2)
    masks = [torch.rand(w.shape, generator=g) < 0.5 for w in ws]
    sep = [gptq_quantize(w, H, 4, 16, zero_mask=m)[0] for w, m in zip(ws, masks)]
    Q, _ = gptq_quantize(torch.cat(ws), H, 4, 16, zero_mask=torch.cat(masks), row_splits=ROWS)
    for q_sep, q, m in zip(sep, Q.split(ROWS), masks):
        torch.testing.assert_close(q, q_sep, rtol=0, atol=ATOL)
        assert (q[m] == 0).all()


@pytest.mark.parametrize("n_keep,m", [(0, 0), (2, 4)])
def test_sparsegpt_stacked_equals_separate(n_keep, m):
    H, ws = hessian(), weights()
    sep = [sparsegpt_prune(w, H, 0.5, n_keep, m, blocksize=32)[0] for w in ws]
    W, _ = sparsegpt_prune(torch.cat(ws), H, 0.5, n_keep, m, blocksize=32, row_splits=ROWS)
    for w_sep, w in zip(sep, W.split(ROWS)):
        assert torch.equal(w == 0, w_sep == 0)  # the same mask
        torch.testing.assert_close(w, w_sep, rtol=0, atol=ATOL)
    if not m:  # one mask over the stacked block would differ: the per-member choice matters
        joint, _ = sparsegpt_prune(torch.cat(ws), H, 0.5, blocksize=32)
        assert not torch.equal(joint == 0, W == 0)


class Seen(Stats):
    def __init__(self):
        self.n = {}

    def add_batch(self, name, inp):
        self.n[name] = self.n.get(name, 0) + inp.shape[0]

    def pop(self, name):
        return self.n.pop(name)


@pytest.mark.parametrize("share", [True, False])
def test_groups_are_found_from_the_inputs(share):
    model = tiny_llama(n_layers=2, seed=0).eval()
    calib = torch.randint(0, 256, (5, 16), generator=torch.Generator().manual_seed(0))
    stats, calls = Seen(), []

    def group_rule(names, lins, stat):
        calls.append(([n.split(".", 2)[2] for n in names], stat))
        return {n: {} for n in names}
    run_sequential(model, calib, Targets(), stats, None, group_rule=group_rule, share_inputs=share, batch_size=2)
    if share:
        expect = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                  ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    else:
        expect = [[n] for n in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]]
    assert [c[0] for c in calls] == expect * 2
    assert all(c[1] == 5 for c in calls)  # every sample reached every statistic once, in batches of 2


def _compressed(cfg, calib, **engine_kw):
    from unittest import mock

    import lcc.compressors.engine as engine

    model = tiny_llama(n_layers=2, seed=0).eval()
    orig = engine.run_sequential
    with mock.patch.object(engine, "run_sequential", lambda *a, **k: orig(*a, **{**k, **engine_kw})):
        facts = build(cfg).compress(model, calib)
    return model, facts


def _max_diff(a, b):
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("cfg", [{"name": "gptq", "bits": 3}, {"name": "gptq", "bits": 4, "act_order": True},
                                 {"name": "sparsegpt"}, {"name": "sparsegpt", "nm_n": 2, "nm_m": 4},
                                 {"name": "wanda"}])
def test_whole_model_same_with_and_without_groups(cfg):
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(3))
    on, f_on = _compressed(cfg, calib, share_inputs=True, batch_size=1)
    off, f_off = _compressed(cfg, calib, share_inputs=False, batch_size=1)
    assert _max_diff(on, off) <= ATOL
    for k in f_on:
        if isinstance(f_on[k], float):
            assert f_on[k] == pytest.approx(f_off[k], rel=1e-5), k


@pytest.mark.parametrize("cfg", [{"name": "gptq", "bits": 4}, {"name": "sparsegpt"}])
def test_batched_calibration_close_to_one_sample_at_a_time(cfg):
    """Batches of samples through a block change the forward's float rounding only: the weights agree up to
    a few grid flips' worth; the mean output difference is tiny."""
    calib = torch.randint(0, 256, (6, 32), generator=torch.Generator().manual_seed(4))
    one, _ = _compressed(cfg, calib, batch_size=1)
    many, _ = _compressed(cfg, calib, batch_size=4)
    ids = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = one(ids).logits, many(ids).logits
    rel = ((a - b).norm() / a.norm()).item()
    assert rel < 1e-3, rel
    frac = sum(((pa - pb).abs() > 1e-5).sum().item() for pa, pb in zip(one.parameters(), many.parameters())) \
        / sum(p.numel() for p in one.parameters())
    assert frac < 1e-3, frac


def test_xtx_add_cpu_is_the_fp32_product():
    x = torch.randn(3, 7, 5)
    H = torch.zeros(5, 5)
    got = xtx_add(H, x.reshape(-1, 5))
    torch.testing.assert_close(got, x.reshape(-1, 5).t() @ x.reshape(-1, 5))
    assert got is H  # in place on the fp32 path
