"""lcc's presses give kvpress 0.5.5's answers: the same scores and the same kept positions in every layer and
head, on SmolLM2-135M (fp32, CPU) over 512 tokens of CPython's docs, ratio 0.5.

The fixture holds kvpress's own outputs, recorded in a venv of its own (kvpress pins transformers < 5.3):
    /work/venvs/kvpress/bin/python scripts/compare_presses.py record --out tests/fixtures/kvpress_presses.json
(the venv: ``pip install torch==2.13.0 'transformers>=4.56,<5.3' kvpress==0.5.5``)."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "kvpress_presses.json"
sys.path.insert(0, str(ROOT / "scripts"))
import compare_presses as C  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    return C.load_fixture(str(FIXTURE))


@pytest.fixture(scope="module")
def smollm2_dir():
    from lcc.models import _load_gguf_cached, cache_root, smollm2_gguf
    _load_gguf_cached(smollm2_gguf(), torch.float32)
    return str(next((cache_root() / "models").glob("SmolLM2-135M-Instruct*[0-9]")))


def test_fixture_records_kvpress_0_5_5(reference):
    ref, meta = reference
    assert meta["kvpress"] == "0.5.5" and meta["ratio"] == str(C.RATIO) and "record" in meta["command"]
    assert {k.split(".")[0] for k in ref if k != "input_ids"} == set(C.PRESSES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(C.PRESSES))
def test_press_matches_kvpress(name, reference, smollm2_dir):
    ref, _ = reference
    model = C.load(smollm2_dir, C.PRESSES[name][2])
    r = C.compare_one(name, ref, model, ref["input_ids"].view(1, -1))
    assert r["layers"] == 30 and r["count_differ"] == 0
    assert r["score_rel_max"] < 1e-5, r
    assert r["kept_differ"] == 0, r
