"""Composition: several compressors applied one after the other in one job, e.g. SparseGPT then 4-bit.

``stages`` is a list of compressor configs (each with ``name`` and its own parameters, optionally its own
``targets``; without, the compose-level ``targets`` apply). Each stage is validated like a top-level
compressor. Every calibrated stage runs its own pass of the sequential engine on the model as the previous
stages left it.

Zeros stay zero: after a pruning stage (magnitude, random, wanda, sparsegpt) the zero pattern of every
targeted Linear is recorded; a later GPTQ stage receives it and quantizes sparsity-aware (masked weights are
fixed to zero and their error is compensated, SparseGPT's joint mode); after every later stage the mask is
re-applied (a no-op for the project's grids, where 0 is exactly representable, but it guarantees the
sparsity whatever the stage does).
"""
from __future__ import annotations

from typing import Any

import torch

from lcc import ConfigError
from lcc.compressors.base import Compressor, Targets, get, qualify, register, target_linears

PRUNERS = {"magnitude", "random", "wanda", "sparsegpt"}


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return obj


@register
class Compose(Compressor):
    """A chain of compressors, e.g. ``stages: [{name: sparsegpt, sparsity: 0.5}, {name: quant, bits: 4}]``."""

    name = "compose"
    params = {"stages": [{"name": "sparsegpt", "sparsity": 0.5}, {"name": "quant", "bits": 4}]}
    calibrated = True  # class default; the instance attribute says whether any stage needs calibration

    @property
    def cacheable(self) -> bool:  # type: ignore[override]
        """Weight-only if every stage is (then lcc.job caches the union of the stages' target weights)."""
        return all(getattr(s, "cacheable", False) for s in self.instances)

    @property
    def zeroes_only(self) -> bool:  # type: ignore[override]
        """Only zeroes weights if every stage does (a chain of masking pruners): the cache stores bit masks."""
        return all(getattr(s, "zeroes_only", False) for s in self.instances)

    @classmethod
    def check(cls, kw):
        if "stages" not in kw:
            return
        stages = _plain(kw["stages"])
        if not isinstance(stages, (list, tuple)) or not stages:
            raise ConfigError(f"stages={stages!r} is invalid; valid: a non-empty list of compressor configs")
        for i, st in enumerate(stages):
            st = _plain(st)
            if not isinstance(st, dict) or "name" not in st:
                raise ConfigError(f"stages[{i}]={st!r} is invalid; valid: a mapping with a 'name'")
            if st["name"] == "compose":
                raise ConfigError(f"stages[{i}].name='compose' is invalid; compositions do not nest")
            stage_cls = get(st["name"])
            try:
                stage_cls.validate({k: v for k, v in st.items() if k not in ("name", "targets")})
                Targets.check(st.get("targets"))
            except ConfigError as e:
                raise ConfigError(qualify(str(e), stage_cls.params, prefix=f"stages[{i}].")) from None

    def __init__(self, targets=None, **kw):
        super().__init__(targets, **kw)
        self.stages = _plain(self.stages)
        self.instances: list[Compressor] = []
        for st in self.stages:
            st = dict(_plain(st))
            name = st.pop("name")
            st_targets = st.pop("targets", None)
            self.instances.append(get(name)(targets=st_targets if st_targets is not None else targets, **st))
        self.calibrated = any(getattr(s, "calibrated", False) for s in self.instances)

    @property
    def needs_calibration(self) -> bool:
        return self.calibrated

    @property
    def acts_at_runtime(self) -> bool:  # type: ignore[override]
        return any(s.acts_at_runtime for s in self.instances)

    def check_targets(self, model) -> None:
        for s in self.instances:
            s.check_targets(model)

    def level(self) -> str:
        return "+".join(f"{s.name}:{s.level()}" for s in self.instances)

    def compress(self, model, calib=None):
        masks: dict[str, torch.Tensor] = {}
        facts: dict[str, Any] = {}
        for i, stage in enumerate(self.instances):
            if masks and hasattr(stage, "zero_masks"):
                stage.zero_masks = masks
            f = stage.compress(model, calib if stage.calibrated else None)
            facts.update({f"stage{i}.{stage.name}.{k}": v for k, v in (f or {}).items()})
            with torch.no_grad():
                for name, lin in target_linears(model, stage.targets).items():
                    if name in masks:
                        lin.weight.data[masks[name].to(lin.weight.device)] = 0
                if stage.name in PRUNERS:
                    for name, lin in target_linears(model, stage.targets).items():
                        m = lin.weight.data == 0
                        masks[name] = m | masks[name].to(m.device) if name in masks else m
        all_lins = {}
        for stage in self.instances:
            all_lins.update(target_linears(model, stage.targets))
        zeros = sum(int((lin.weight == 0).sum()) for lin in all_lins.values())
        total = sum(lin.weight.numel() for lin in all_lins.values())
        facts["sparsity_achieved"] = zeros / max(total, 1)
        for k, v in list(facts.items()):
            if k.endswith(".effective_bits"):
                facts["effective_bits"] = v
        return facts
