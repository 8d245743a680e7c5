"""Coverage: what a compressor targeted and changed, by module kind, in parameters.

Every parameter of the model belongs to one kind: the matrices of the decoder blocks by
``lcc.compressors.layers`` (``attention``, ``mlp``, ``experts``, ``shared_experts``, ``router``; a fused experts
module's every expert slice counts as a matrix), ``embeddings`` (the input embedding), ``head`` (the output head,
when not tied to the embedding), ``other`` (norms, biases, attention sinks, positional embeddings).
``coverage(...)`` gives, per kind present in the model, ``params`` (all of that kind), ``targeted`` (weights of the
matrices the compressor may change) and ``changed`` (weights of the targeted matrices whose bits changed); the
job records it in ``result.json`` (``weights.coverage``) and fails when a weight compressor leaves a targeted
matrix unchanged (:func:`unchanged_problem`).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from lcc.compressors.base import decoder_layers
from lcc.compressors.layers import block_targets, is_view

ORDER = ("attention", "mlp", "experts", "shared_experts", "router", "embeddings", "head", "other")


def matrix_kinds(model: nn.Module) -> dict[str, tuple[str, int]]:
    """``{qualified matrix name: (kind, number of weights)}`` of every targetable matrix of the decoder blocks
    (the names ``target_linears`` uses), plus ``lm_head``."""
    out: dict[str, tuple[str, int]] = {}
    for i, block in enumerate(decoder_layers(model)):
        for t in block_targets(block):
            out[f"layers.{i}.{t.name}"] = (t.kind, t.module.weight.numel())
    return out


def param_totals(model: nn.Module) -> dict[str, int]:
    """Parameters of the model by kind (each tensor counted once; tied weights once, as embeddings)."""
    kinds = matrix_kinds(model)
    totals = {k: 0 for k in ORDER}
    for kind, n in kinds.values():
        totals[kind] += n
    seen = {id(p) for p in _block_matrix_params(model)}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if emb is not None and p is emb.weight:
            totals["embeddings"] += p.numel()
        elif head is not None and p is getattr(head, "weight", None):
            totals["head"] += p.numel()
        else:
            totals["other"] += p.numel()
    return totals


def _block_matrix_params(model: nn.Module) -> list:
    """The parameters whose weights are counted as block matrices (3-D expert tensors as a whole)."""
    ps = []
    for block in decoder_layers(model):
        for t in block_targets(block):
            ps.append(getattr(t.module.owner, t.module.attr) if is_view(t.module) else t.module.weight)
    return ps


def coverage(model: nn.Module, targeted: dict[str, Any], changed: set[str]) -> dict[str, dict[str, int]]:
    """Per kind present in the model: ``params``, ``targeted`` and ``changed`` weights (see the module)."""
    kinds = matrix_kinds(model)
    totals = param_totals(model)
    rep = {k: {"params": totals[k], "targeted": 0, "changed": 0} for k in ORDER if totals[k]}
    for name, lin in targeted.items():
        kind = "head" if name == "lm_head" else kinds.get(name, ("other", 0))[0]
        if kind == "head" and "head" not in rep:  # a head tied to the embedding
            kind = "embeddings"
        row = rep.setdefault(kind, {"params": 0, "targeted": 0, "changed": 0})
        n = lin.weight.numel()
        row["targeted"] += n
        row["changed"] += n if name in changed else 0
    rep["total"] = {k: sum(r[k] for r in rep.values()) for k in ("params", "targeted", "changed")}
    return rep


def short(cov: dict[str, dict[str, int]] | None) -> str:
    """One cell for reduce's tables: the changed share of each kind's parameters, e.g.
    ``attention 100% · experts 100% · router 0%`` (kinds with no targeted parameter and ``other`` left out)."""
    if not cov:
        return ""
    parts = []
    for k in ORDER:
        r = cov.get(k)
        if not r or k == "other" or not r.get("params"):
            continue
        if r["targeted"] or k in ("attention", "mlp", "experts", "shared_experts"):
            parts.append(f"{k} {100 * r['changed'] / r['params']:.0f}%")
    return " · ".join(parts)


def unchanged_problem(comp_name: str, level: str, unchanged: list[str], n_targeted: int) -> str:
    """The error of a weight compressor that left targeted matrices unchanged, naming them."""
    import re

    groups = list(dict.fromkeys(re.sub(r"experts\.\d+\.", "experts.*.", n) for n in unchanged))
    shown = ", ".join(groups[:8]) + (f", ... ({len(groups) - 8} more)" if len(groups) > 8 else "")
    return (f"compressor {comp_name} ({level}) left {len(unchanged)} of its {n_targeted} targeted weight matrices "
            f"unchanged: {shown}. A result must not report dense weights as compressed")
