"""Conformance over the architectures of lcc/archs.py (tiny random models from transformers' config classes:
dense, MoE, sliding window, fused projections, parallel residual, QK-norm, Conv1D): every compressor on a KL job
and task=passkey with a weight compressor and with kv, each a real ``lcc.job.run``. Each runs with full coverage
(every attention / MLP / expert weight changed; every attention wrapped by kv) or is refused before compressing
with a message naming the architecture. ``scripts/architectures.py`` runs the same cases into
docs/architectures.md."""
from __future__ import annotations

import pytest

from lcc.archs import ARCHS, COMPRESSORS, TASK_CASES, run_case


def test_the_matrix_covers_the_kinds_of_architecture():
    feats = " ".join(f for _, f in ARCHS.values())
    assert len(ARCHS) >= 15
    for kind in ("MoE", "sliding window", "fused", "parallel residual", "QK-norm", "Conv1D", "shared expert"):
        assert kind in feats, kind


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_compressor_runs_with_full_coverage_or_is_refused(arch, tmp_path):
    cases = [(c, "kl") for c in COMPRESSORS] + [(c, t) for t, c in TASK_CASES]
    bad = {}
    for comp, task in cases:
        r = run_case(arch, comp, task, tmp_path / f"{comp}-{task}")
        if r["status"] == "failed":
            bad[f"{comp}/{task}"] = r["reason"][:300]
    assert not bad, bad
