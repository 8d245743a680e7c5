"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

Composition: several compressors applied one after the other in one job, e.g. SparseGPT then 4-bit.

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
from lcc.compressors.base import REGISTRY, Compressor, Storage, build, param, plain, qualify, target_linears


class Compose(Compressor):
    """A chain of compressors, e.g. ``stages: [{name: sparsegpt, sparsity: 0.5}, {name: quant, bits: 4}]``."""

    name = "compose"
    stages: list = param(default_factory=lambda: [{"name": "sparsegpt", "sparsity": 0.5},
                                                  {"name": "quant", "bits": 4, "group_size": 128}],
                         doc="compressor configs applied in order, each with its own parameters and optional "
                             "targets (default: the compose-level targets)")

    def __post_init__(self):
        super().__post_init__()
        stages = plain(self.stages)
        if not isinstance(stages, (list, tuple)) or not stages:
            raise ConfigError(f"stages={stages!r} is invalid; valid: a non-empty list of compressor configs")
        self.stages = stages = [plain(st) for st in stages]
        self.instances: list[Compressor] = []
        for i, st in enumerate(stages):
            if not isinstance(st, dict) or "name" not in st:
                raise ConfigError(f"stages[{i}]={st!r} is invalid; valid: a mapping with a 'name'")
            if st["name"] == "compose":
                raise ConfigError(f"stages[{i}].name='compose' is invalid; compositions do not nest")
            st = dict(st)
            if st.get("targets") is None:
                st["targets"] = self.targets
            try:
                self.instances.append(build(st))
            except ConfigError as e:
                keys = [f.name for f in REGISTRY[st["name"]].param_fields()] if st["name"] in REGISTRY else []
                raise ConfigError(qualify(str(e), keys, prefix=f"stages[{i}].")) from None

    # ---- capabilities: those of the stages -----------------------------------------------------------
    def needs_calibration(self) -> bool:
        return any(s.needs_calibration() for s in self.instances)

    def storage(self) -> Storage:
        """A keep-mask if every stage only zeroes weights; the weights if every stage changes weights only."""
        kinds = {s.storage() for s in self.instances}
        if kinds == {Storage.MASK}:
            return Storage.MASK
        return Storage.NONE if Storage.NONE in kinds else Storage.WEIGHTS

    def acts_at_runtime(self) -> bool:
        return any(s.acts_at_runtime() for s in self.instances)

    def prunes(self) -> bool:
        return any(s.prunes() for s in self.instances)

    def changes_weights(self) -> bool:
        return all(s.changes_weights() for s in self.instances)

    def check_targets(self, model) -> None:
        for s in self.instances:
            s.check_targets(model)

    def touched_linears(self, model):
        lins = {}
        for stage in self.instances:
            lins.update(stage.touched_linears(model))
        return lins

    def level(self) -> str:
        return "+".join(f"{s.name}:{s.level()}" for s in self.instances)

    def compress(self, model, calib=None):
        masks: dict[str, torch.Tensor] = {}
        facts: dict[str, Any] = {}
        self.clear_grids()
        for i, stage in enumerate(self.instances):
            if masks:
                stage.keep_zeros(masks)
            f = stage.compress(model, calib if stage.needs_calibration() else None)
            # grids: the last quantizing stage's; a pruning stage keeps them (its zeros are the codes of 0),
            # any other stage that rewrites a Linear makes its grid stale
            grids = stage.quant_grids()
            for name in stage.touched_linears(model):
                if name in grids:
                    self.record_grid(name, grids[name])
                elif stage.storage() is not Storage.MASK:
                    self.record_grid(name, None)
            facts.update({f"stage{i}.{stage.name}.{k}": v for k, v in (f or {}).items()})
            with torch.no_grad():
                for name, lin in target_linears(model, stage.targets).items():
                    if name in masks:
                        lin.weight.data[masks[name].to(lin.weight.device)] = 0
                if stage.prunes():
                    for name, lin in target_linears(model, stage.targets).items():
                        m = lin.weight.data == 0
                        masks[name] = m | masks[name].to(m.device) if name in masks else m
        all_lins = self.touched_linears(model)
        zeros = sum(int((lin.weight == 0).sum()) for lin in all_lins.values())
        total = sum(lin.weight.numel() for lin in all_lins.values())
        facts["sparsity_achieved"] = zeros / max(total, 1)
        for k, v in list(facts.items()):
            if k.endswith(".effective_bits"):
                facts["effective_bits"] = v
        return facts
