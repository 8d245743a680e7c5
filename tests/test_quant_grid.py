"""The quantization grids are GPTQ's (IST-DASLab/gptq quant.py), checked against a transcription of its
``Quantizer.find_params`` / ``quantize`` (per channel, weights): the independent implementation."""
from __future__ import annotations

import pytest
import torch

from lcc.compressors.quantize import fake_quant, qparams


def reference_fake_quant(x: torch.Tensor, bits: int, sym: bool) -> torch.Tensor:
    """IST-DASLab/gptq quant.py, Quantizer(perchannel=True, sym=sym, mse=False).find_params(x, weight=True)
    followed by quantize(x), transcribed line by line (one row = one channel)."""
    maxq = torch.tensor(2 ** bits - 1)
    tmp = torch.zeros(x.shape[0])
    xmin = torch.minimum(x.min(1)[0], tmp)
    xmax = torch.maximum(x.max(1)[0], tmp)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        tmp = xmin < 0
        if torch.any(tmp):
            xmin[tmp] = -xmax[tmp]
    tmp = (xmin == 0) & (xmax == 0)
    xmin[tmp] = -1
    xmax[tmp] = +1
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    scale, zero = scale.reshape(-1, 1), zero.reshape(-1, 1)
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def rows() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, generator=g)
    x[1] = x[1].abs()            # no negative value: the reference keeps xmin = 0 (sym)
    x[2] = -x[2].abs()           # no positive value
    x[3] = 0                     # all zero
    x[4, :5] = torch.tensor([3.0, -1.0, 0.5, 2.0, -3.0])  # ties at +-absmax
    x[5] *= 1e-6                 # tiny range
    return x


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_symmetric_grid_is_gptqs(bits):
    x = rows()
    assert torch.equal(fake_quant(x, bits, group_size=-1, sym=True), reference_fake_quant(x, bits, sym=True))
    # groups: each group of 32 is its own channel of the reference
    ours = fake_quant(x, bits, group_size=32, sym=True)
    ref = reference_fake_quant(x.reshape(-1, 32), bits, sym=True).reshape(x.shape)
    assert torch.equal(ours, ref)


def test_symmetric_scale_and_zero_point():
    x = torch.tensor([[-2.0, 0.5, 1.0, 1.5]])
    scale, zero = qparams(x, 4, sym=True)
    assert torch.allclose(scale, torch.tensor([[4.0 / 15]])) and zero.item() == 8.0  # 2*absmax/(2^b-1), middle


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_asymmetric_grid_is_gptqs(bits):
    x = rows()
    x = x[[i for i in range(len(x)) if i != 3]]  # all-zero rows: same output (zeros), different scale rule
    assert torch.allclose(fake_quant(x, bits, group_size=-1), reference_fake_quant(x, bits, sym=False),
                          rtol=0, atol=1e-6 * x.abs().max().item())


def test_gptq_symmetric_uses_the_same_grid():
    """Without error feedback (identity Hessian) GPTQ quantizes each column on the same grid as RTN."""
    from lcc.compressors.gptq import gptq_quantize

    W = rows()[6:38]
    H = torch.eye(W.shape[1])
    Q, _ = gptq_quantize(W, H, 4, group_size=-1, sym=True, percdamp=0.0)
    assert torch.allclose(Q, reference_fake_quant(W, 4, sym=True), atol=1e-6)
