"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

Hadamard rotation (QuaRot, Ashkboos et al. 2024): rotate the residual stream and a few activations so that
outliers spread over all channels, without changing the model's function; then W4A4 (``quant_wa``) and 4-bit KV
(``kv``) quantize the rotated tensors: ``compressor=compose`` with ``stages: [{name: rotate}, {name: quant_wa, ...}]``.

For a Llama-like model (RMSNorm, ``structure.py``), in float64, cast back to the weights' dtype:

1. **norms fused**: every RMSNorm weight is multiplied into the input columns of the Linears that read it
   (q/k/v, gate/up, and the final norm into ``lm_head``) and set to 1 (RMSNorm without weight commutes with an
   orthogonal rotation of its input);
2. **residual rotation** Q = diag(±1)·H/√d, a randomised Hadamard matrix (signs from ``seed``): the embeddings
   ``E Q``, every Linear that reads the residual ``W Q`` (q/k/v, gate/up, lm_head), every Linear that writes it
   ``Qᵀ W`` (o_proj, down_proj, and their bias ``b Q``). Tied embeddings (SmolLM2) are untied: the embedding and
   the head get new, separate parameters (the dense head the evaluation captured keeps the old tensor);
3. **values**: a Hadamard H_h (head_dim) per head, folded offline into ``v_proj``'s output rows (``H_hᵀ W_v``)
   and ``o_proj``'s input columns (``W_o H_h`` per head): the value cache holds rotated values;
4. **online** (``online: true``): a Hadamard before ``down_proj`` (intermediate size) and before ``o_proj``
   (the attention width), forward pre-hooks that rotate the input, with the inverse folded into the weight
   (``W H``); queries and keys after RoPE are rotated by H_h per head inside ``kv``'s attention function (the
   attribute ``_lcc_qk_rotation``; q·kᵀ is unchanged, so without ``kv`` it does nothing), so 4-bit keys are
   quantized rotated. With ``kv``'s ``pre_rope: true`` keys are quantized before that rotation.

A Hadamard matrix of order n is built as H_m ⊗ H_2^k (Sylvester) with H_m a Paley matrix (I: m = q + 1 for a prime
q ≡ 3 mod 4; II: m = 2(q + 1) for a prime q ≡ 1 mod 4): 576 = 36·16, 1536 = 12·128, 14336 = 28·512. An order with
no such factorisation with m <= 256 (11008 = 172·64 of Llama-2-7B) uses a random orthogonal matrix instead (QR of a Gaussian,
seeded; SpinQuant's initialisation), applied as a dense product, and says so in the facts (``orthogonal``).
The online transforms apply H_2^k as a fast Walsh-Hadamard butterfly and H_m as a small product, in fp32.
"""
from __future__ import annotations

import logging
import math
from functools import lru_cache

import torch
from torch import nn

from lcc import ConfigError
from lcc.compressors.base import Compressor, Storage, decoder_layers, ints, param
from lcc.compressors.structure import check_llama_like, model_name

log = logging.getLogger(__name__)

HOOK_ATTR = "_lcc_rotation_hooks"
#: the largest Paley factor used (QuaRot's largest hard-coded one is 172); beyond, the dense orthogonal fallback
MAX_PALEY = 256


# ---- Hadamard matrices -------------------------------------------------------------------------------------
def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, int(q ** 0.5) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q).view(1, -1) - torch.arange(q).view(-1, 1)) % q
    return chi[idx]


@lru_cache(maxsize=None)
def paley(m: int) -> torch.Tensor | None:
    """A ±1 Hadamard matrix of order m by Paley's constructions (or 1, 2), float64; None if neither applies."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if m == 2:
        return torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    H = None
    q = m - 1
    if m % 4 == 0 and _is_prime(q) and q % 4 == 3:  # Paley I
        S = torch.zeros(m, m, dtype=torch.float64)
        S[0, 1:], S[1:, 0], S[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
        H = torch.eye(m, dtype=torch.float64) + S
    q = m // 2 - 1
    if H is None and m % 4 == 0 and _is_prime(q) and q % 4 == 1:  # Paley II
        C = torch.zeros(m // 2, m // 2, dtype=torch.float64)
        C[0, 1:], C[1:, 0], C[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
        A = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        B = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        H = torch.kron(C, A) + torch.kron(torch.eye(m // 2, dtype=torch.float64), B)
    if H is not None and not torch.equal(H @ H.T, m * torch.eye(m, dtype=torch.float64)):
        raise AssertionError(f"Paley construction of order {m} is not Hadamard")
    return H


def hadamard_factor(n: int) -> int | None:
    """The smallest m with n = m · 2^k and a Paley/Sylvester Hadamard matrix of order m, or None."""
    k = 0
    while n % (2 ** (k + 1)) == 0:
        k += 1
    for j in range(k, -1, -1):  # largest power of two first: the smallest dense factor
        m = n // 2 ** j
        if m <= MAX_PALEY and paley(m) is not None:
            return m
    return None


class Rotation:
    """An orthogonal n x n transform ``x -> x R`` along the last dim: a normalised Hadamard matrix H_m ⊗ H_2^k
    (times random signs on the input side when ``signs`` is given), or a dense orthogonal matrix."""

    def __init__(self, n: int, signs: torch.Tensor | None = None, dense: torch.Tensor | None = None):
        self.n, self.signs, self.dense = n, signs, dense
        self.m = None if dense is not None else hadamard_factor(n)
        if dense is None and self.m is None:
            raise ValueError(f"no Hadamard matrix of order {n}")
        self.Hm = paley(self.m) if self.m else None
        self._dev: dict = {}

    @property
    def form(self) -> str:
        """What the result's facts call it: ``hadamard`` or ``orthogonal`` (a dense matrix)."""
        return "orthogonal" if self.dense is not None else "hadamard"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x R for x [..., n], computed in fp32 (float64 for float64 input), returned in x's dtype."""
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = x.to(dt)
        key = (y.device, dt)
        if key not in self._dev:
            self._dev[key] = (None if self.signs is None else self.signs.to(y.device, dt),
                              None if self.dense is None else self.dense.to(y.device, dt),
                              None if self.Hm is None else self.Hm.to(y.device, dt))
        signs, dense, Hm = self._dev[key]
        if signs is not None:
            y = y * signs
        if dense is not None:
            return (y @ dense).to(x.dtype)
        shape = y.shape
        p = self.n // self.m
        y = y.reshape(-1, self.m, p)
        h = 1
        while h < p:  # fast Walsh-Hadamard transform along the last axis (Sylvester order)
            y = y.view(-1, self.m, p // (2 * h), 2, h)
            y = torch.stack((y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]), dim=-2)
            h *= 2
        y = y.reshape(-1, self.m, p)
        if self.m > 1:
            y = torch.einsum("bjp,jk->bkp", y, Hm)
        return (y.reshape(shape) / math.sqrt(self.n)).to(x.dtype)

    def matrix(self, device=None) -> torch.Tensor:
        """R itself (float64): the transform of the identity's rows."""
        return self.apply(torch.eye(self.n, dtype=torch.float64, device=device))


def make_rotation(n: int, generator: torch.Generator | None = None, random_signs: bool = False) -> Rotation:
    signs = None
    if random_signs:
        signs = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
    if hadamard_factor(n) is not None:
        return Rotation(n, signs)
    log.warning("rotate: no Hadamard matrix of order %d; a random orthogonal matrix is used instead", n)
    g = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return Rotation(n, None, q * torch.sign(torch.diagonal(r)).view(1, -1))


# ---- the compressor ----------------------------------------------------------------------------------------
def _norm_is_rms(norm: nn.Module) -> bool:
    return "rmsnorm" in type(norm).__name__.lower() and "gemma" not in type(norm).__name__.lower()


class Rotate(Compressor):
    """QuaRot-style rotation: randomised Hadamard of the residual stream folded into the weights (norms fused,
    embeddings and head rotated, tied ones untied), values rotated per head, online Hadamards before
    down_proj/o_proj and on post-RoPE queries/keys for kv. Alone it leaves the model's outputs unchanged."""

    name = "rotate"
    seed: int = param(0, "seed of the residual rotation's random signs (and of any orthogonal fallback)",
                      ints(0, 2 ** 63 - 1))
    online: bool = param(True, "online Hadamards before down_proj and o_proj and on post-RoPE q/k (for kv); "
                               "false: only the rotations that fold into the weights")

    def check(self):
        t = self.targets
        if t.layers is not None or t.lm_head or list(t.entries) != ["*"]:
            raise ConfigError(f"rotate acts on the whole model; targets={{modules: {t.modules}, layers: {t.layers}, "
                              f"lm_head: {t.lm_head}}} is invalid; valid: the default targets (give the next "
                              f"stage of a compose its own targets instead)")

    def level(self) -> str:
        return f"hadamard-s{self.seed}" + ("" if self.online else "-offline")

    def storage(self) -> Storage:
        return Storage.NONE  # embeddings, norms and head change too

    def acts_at_runtime(self) -> bool:
        return self.online

    @staticmethod
    def remove(model) -> None:
        for h in getattr(model, HOOK_ATTR, []):
            h.remove()
        setattr(model, HOOK_ATTR, [])
        for m in model.modules():
            if hasattr(m, "_lcc_qk_rotation"):
                m._lcc_qk_rotation = None

    @torch.no_grad()
    def compress(self, model, calib=None):
        layers = decoder_layers(model)
        for layer in layers:
            check_llama_like(layer, "rotate", model)
            for n in ("input_layernorm", "post_attention_layernorm"):
                if not _norm_is_rms(getattr(layer, n)):
                    raise ConfigError(f"{model_name(model)} is not supported by rotate: it needs RMSNorm "
                                      f"(weight * x / rms(x)); {n} is "
                                      f"{type(getattr(layer, n)).__name__}")
        base = model.base_model
        final_norm = getattr(base, "norm", None)
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        if final_norm is None or not _norm_is_rms(final_norm) or head is None:
            raise ConfigError(f"{model_name(model)} is not supported by rotate: it needs a final RMSNorm "
                              f"(base_model.norm) and an output head")
        cfg = model.config
        d = emb.weight.shape[1]
        attn0 = layers[0].self_attn
        hd = getattr(attn0, "head_dim", None) or d // cfg.num_attention_heads
        g = torch.Generator().manual_seed(int(self.seed))
        Q = make_rotation(d, g, random_signs=True)
        Hh = make_rotation(hd)
        Rq = Q.matrix()
        Rh = Hh.matrix()
        dev_mats: dict = {}

        def mat(R, like):
            key = (id(R), like.device)
            if key not in dev_mats:
                dev_mats[key] = R.to(like.device)
            return dev_mats[key]

        def set_(lin_or_param_owner, attr, new):
            old = getattr(lin_or_param_owner, attr)
            setattr(lin_or_param_owner, attr, nn.Parameter(new.to(old.dtype), requires_grad=old.requires_grad))

        tied = head.weight is emb.weight
        # 1. norms into the Linears that read them, and the final norm into the head (a new parameter)
        for layer in layers:
            for norm, names in ((layer.input_layernorm, ("q_proj", "k_proj", "v_proj")),
                                (layer.post_attention_layernorm, ("gate_proj", "up_proj"))):
                mod = layer.self_attn if names[0] == "q_proj" else layer.mlp
                for n in names:
                    lin = getattr(mod, n)
                    lin.weight.data = (lin.weight.double() * norm.weight.double().view(1, -1)).to(lin.weight.dtype)
                norm.weight.data.fill_(1.0)
        hw = head.weight.double() * final_norm.weight.double().view(1, -1)
        final_norm.weight.data.fill_(1.0)
        # 2. the residual rotation
        set_(head, "weight", hw @ mat(Rq, hw))
        ew = emb.weight.double()
        set_(emb, "weight", ew @ mat(Rq, ew))
        if tied:
            cfg.tie_word_embeddings = False
        n_lin = 0
        for layer in layers:
            a, m = layer.self_attn, layer.mlp
            for lin in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj):
                w = lin.weight.double()
                lin.weight.data = (w @ mat(Rq, w)).to(lin.weight.dtype)
            for lin in (a.o_proj, m.down_proj):
                w = lin.weight.double()
                lin.weight.data = (mat(Rq, w).T @ w).to(lin.weight.dtype)
                if lin.bias is not None:
                    lin.bias.data = (lin.bias.double() @ mat(Rq, w)).to(lin.bias.dtype)
            n_lin += 7
            # 3. values per head: v_proj rows H_hᵀ W, o_proj columns W_o H_h per head
            wv = a.v_proj.weight.double()
            kvh = wv.shape[0] // hd
            Rhd = mat(Rh, wv)
            wv = torch.einsum("ij,hjk->hik", Rhd.T, wv.view(kvh, hd, -1)).reshape(wv.shape)
            a.v_proj.weight.data = wv.to(a.v_proj.weight.dtype)
            if a.v_proj.bias is not None:
                a.v_proj.bias.data = (a.v_proj.bias.double().view(kvh, hd) @ Rhd).reshape(-1).to(a.v_proj.bias.dtype)
            wo = a.o_proj.weight.double()
            nh = wo.shape[1] // hd
            wo = (wo.view(wo.shape[0], nh, hd) @ Rhd).reshape(wo.shape)
            a.o_proj.weight.data = wo.to(a.o_proj.weight.dtype)
        facts = {"residual": Q.form, "residual_dim": d, "head_dim_rotation": Hh.form, "untied": tied,
                 "n_linears": n_lin, "online_hooks": 0}
        if self.online:
            facts.update(self._online(model, layers, hd))
        return facts

    def _online(self, model, layers, hd) -> dict:
        """Online Hadamards before down_proj and o_proj (inverse folded into the weight), and q/k for kv."""
        inter = layers[0].mlp.down_proj.in_features
        width = layers[0].self_attn.o_proj.in_features
        g = torch.Generator().manual_seed(int(self.seed) + 1)
        rots = {inter: make_rotation(inter, g), width: make_rotation(width, g), hd: make_rotation(hd)}
        handles = getattr(model, HOOK_ATTR, [])

        def pre_hook(R):
            def hook(mod, args):
                return (R.apply(args[0]),) + tuple(args[1:])
            return hook

        mats: dict = {}
        for layer in layers:
            for lin in (layer.mlp.down_proj, layer.self_attn.o_proj):
                R = rots[lin.in_features]
                w = lin.weight.double()
                key = (lin.in_features, w.device)
                if key not in mats:
                    mats[key] = R.matrix(w.device)
                lin.weight.data = (w @ mats[key]).to(lin.weight.dtype)
                handles.append(lin.register_forward_pre_hook(pre_hook(R)))
            Rh = rots[hd]
            layer.self_attn._lcc_qk_rotation = Rh.apply
        setattr(model, HOOK_ATTR, handles)
        return {"online_hooks": 2 * len(layers), "down_proj_rotation": rots[inter].form,
                "o_proj_rotation": rots[width].form}
