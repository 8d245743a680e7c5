"""Metrics against brute-force references."""
import math

import numpy as np
import pytest
import torch

from lcc.metrics import (bin_means, chunked_token_metrics, mean_se, octave_bins, slope_vs_log2, summarize,
                         token_metrics)
from lcc.metrics.bins import bin_log2_centers


def brute_force(lp_logits, lq_logits, targets):
    kl, nll_p, nll_q, agree = [], [], [], []
    for zp, zq, y in zip(lp_logits.double().tolist(), lq_logits.double().tolist(), targets.tolist()):
        zp_max, zq_max = max(zp), max(zq)
        sp = sum(math.exp(z - zp_max) for z in zp)
        sq = sum(math.exp(z - zq_max) for z in zq)
        p = [math.exp(z - zp_max) / sp for z in zp]
        q = [math.exp(z - zq_max) / sq for z in zq]
        kl.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
        nll_p.append(-math.log(p[y]))
        nll_q.append(-math.log(q[y]))
        agree.append(float(p.index(max(p)) == q.index(max(q))))
    return kl, nll_p, nll_q, agree


def test_token_metrics_match_brute_force():
    g = torch.Generator().manual_seed(0)
    zp = torch.randn(40, 17, generator=g) * 3
    zq = zp + torch.randn(40, 17, generator=g) * 0.7
    y = torch.randint(0, 17, (40,), generator=g)
    m = token_metrics(zp, zq, y)
    kl, nll_p, nll_q, agree = brute_force(zp, zq, y)
    assert torch.allclose(m["kl"].double(), torch.tensor(kl, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(m["nll_p"].double(), torch.tensor(nll_p, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(m["nll_q"].double(), torch.tensor(nll_q, dtype=torch.float64), atol=1e-5)
    assert m["agree"].tolist() == agree
    assert 0 < sum(agree) < 40  # the test data exercise both outcomes
    assert all(v.dtype == torch.float32 for v in m.values())


def test_identical_distributions_give_exactly_zero_kl():
    z = torch.randn(30, 50)
    assert torch.equal(token_metrics(z, z.clone(), torch.zeros(30, dtype=torch.long))["kl"], torch.zeros(30))


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_equals_unchunked(chunk):
    g = torch.Generator().manual_seed(1)
    hp, hq = torch.randn(100, 8, generator=g), torch.randn(100, 8, generator=g)
    w = torch.randn(33, 8, generator=g)
    y = torch.randint(0, 33, (100,), generator=g)
    head = lambda h: h @ w.T  # noqa: E731
    full = token_metrics(head(hp), head(hq), y)
    ch = chunked_token_metrics(hp, hq, head, head, y, chunk)
    for k in full:
        assert torch.allclose(full[k], ch[k], atol=1e-6), k


def test_octave_bins():
    assert octave_bins(1023) == [(1, 64), (64, 128), (128, 256), (256, 512), (512, 1024)]
    assert octave_bins(1000) == [(1, 64), (64, 128), (128, 256), (256, 512), (512, 1001)]
    assert octave_bins(50) == [(1, 51)]
    assert octave_bins(64) == [(1, 64), (64, 65)]
    for t in (10, 63, 64, 65, 300, 4095, 4096):  # the bins partition positions 1..t
        b = octave_bins(t)
        assert b[0][0] == 1 and b[-1][1] == t + 1
        assert all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))


def test_bin_means_brute_force():
    rng = np.random.default_rng(0)
    v = rng.random((3, 300))
    bins = octave_bins(300)
    got = bin_means(v, bins)
    for d in range(3):
        for j, (lo, hi) in enumerate(bins):
            vals = [v[d, p - 1] for p in range(lo, hi)]  # position p is column p - 1
            assert got[d, j] == pytest.approx(sum(vals) / len(vals))


def test_mean_se_by_hand():
    m, se = mean_se(np.array([1.0, 2.0, 3.0, 4.0]))
    assert m == 2.5
    assert se == pytest.approx(math.sqrt(((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 3) / 2)
    m1, se1 = mean_se(np.array([5.0]))
    assert m1 == 5.0 and math.isnan(se1)


def test_slope_on_hand_made_lines():
    x = np.array([5.0, 6.5, 7.5, 8.5])
    y = np.stack([3 + 0.5 * x, 1 - 0.25 * x, np.full(4, 2.0)])
    assert slope_vs_log2(y, x) == pytest.approx([0.5, -0.25, 0.0])
    assert math.isnan(slope_vs_log2(np.ones((2, 1)), np.array([1.0]))[0])


def test_bin_centers_are_mean_log2_position():
    c = bin_log2_centers([(64, 128)])
    assert c[0] == pytest.approx(np.mean([math.log2(p) for p in range(64, 128)]))


def test_summarize_on_constructed_data():
    d, t = 4, 1023
    pos = np.arange(1, t + 1)
    # KL rises by exactly 0.01 per doubling of position in every document, plus a per-doc offset
    kl = np.stack([0.1 * (i + 1) + 0.01 * np.log2(pos) for i in range(d)])
    nll_p = np.full((d, t), 2.0)
    nll_q = np.full((d, t), 2.5)
    agree = np.zeros((d, t))
    agree[:, ::2] = 1
    s, curve = summarize({"kl": kl, "nll_p": nll_p, "nll_q": nll_q, "agree": agree})
    assert s["kl_slope"] == pytest.approx(0.01, rel=1e-9)
    assert s["kl_slope_se"] == pytest.approx(0.0, abs=1e-12)
    assert s["kl_mean"] == pytest.approx(kl.mean())
    assert s["kl_se"] == pytest.approx(np.std(kl.mean(1), ddof=1) / 2)
    assert s["delta_nll"] == pytest.approx(0.5)
    assert s["ppl_compressed"] / s["ppl_dense"] == pytest.approx(math.exp(0.5))
    assert s["top1_agree"] == pytest.approx(agree.mean())
    assert s["kl_max"] == pytest.approx(kl.max())
    assert s["kl_p99"] == pytest.approx(np.quantile(kl, 0.99))
    assert [c["bin_lo"] for c in curve] == [1, 64, 128, 256, 512]
    assert s["kl_slope_late"] is None  # one bin at or after 512: no slope


def test_late_slope_ignores_the_early_positions():
    d, t = 3, 8191
    pos = np.arange(1, t + 1)
    # high early KL that decays (a U's left arm), then a rise of 0.02 per doubling from position 512 on
    kl = np.stack([np.where(pos < 512, 1.0 / np.sqrt(pos), 0.1 + 0.02 * np.log2(pos / 512)) + 0.01 * i
                   for i in range(d)])
    s, curve = summarize({"kl": kl, "nll_p": kl * 0, "nll_q": kl * 0, "agree": kl * 0})
    assert s["kl_slope"] < 0.0  # the all-bins slope is dominated by the early positions
    assert s["kl_slope_late"] == pytest.approx(0.02, rel=0.05)


def test_registry_names_every_summary_key_once():
    from lcc.metrics import registry

    rng = np.random.default_rng(0)
    arrays = {k: rng.random((3, 700)) for k in ("kl", "nll_p", "nll_q", "agree")}
    s, curve = summarize(arrays)
    keys = registry.summary_keys()
    assert list(s) == keys and len(set(keys)) == len(keys)
    assert set(curve[0]) == {"bin_lo", "bin_hi", "log2_pos"} | {
        k for m in registry.METRICS if m.curve for k in (m.name, m.se if m.curve_se else None) if k}
    assert registry.log_line(s).startswith(f"KL {s['kl_mean']:.4g} ± {s['kl_se']:.2g}  slope")


def test_a_per_prompt_metric_plugs_into_the_registry(monkeypatch):
    """A task metric (accuracy over prompts) is one Series and one Metric: summarize, the log line and the
    table list pick it up; the prompt is its unit of uncertainty."""
    from lcc.metrics import registry
    from lcc.metrics.registry import Metric, Series, binomial

    monkeypatch.setattr(registry, "SERIES", [*registry.SERIES, Series("correct", "answered exactly", per="prompt")])
    monkeypatch.setattr(registry, "METRICS", [*registry.METRICS, Metric(
        "acc", "correct", binomial, "accuracy", se="acc_se", table=True, log="acc {v:.2f}")])
    s, curve = summarize({"correct": np.array([1.0, 0.0, 1.0, 1.0, np.nan])})
    assert s == {"acc": 0.75, "acc_se": pytest.approx(math.sqrt(0.75 * 0.25 / 4))} and curve == []
    assert registry.log_line(s) == "acc 0.75"
    assert "acc" in [m.name for m in registry.table_metrics()] and "acc_se" in registry.summary_keys()


@pytest.mark.slow
def test_a_new_metric_is_one_registry_entry(tmp_path):
    """Copy the package, add one Metric to the registry and nothing else: a sweep's summaries, the job's log
    line, reduce's csv and tables and the tidy bins all carry it."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    import pandas as pd

    from tests.helpers import ROOT

    src = tmp_path / "src"
    shutil.copytree(ROOT / "lcc", src / "lcc", ignore=shutil.ignore_patterns("__pycache__"))
    reg = src / "lcc" / "metrics" / "registry.py"
    text = reg.read_text()
    anchor = '    Metric("ppl_dense", "nll_p", perplexity, "perplexity of the dense model"),\n'
    assert anchor in text
    reg.write_text(text.replace(anchor, anchor + '    Metric("nll_gap", "delta_nll", mean_over_units, "NLL gap (test)", '
                                               'se="nll_gap_se", table=True, curve=True, log="gap {v:.3g}"),\n'))
    env = {**os.environ, "PYTHONPATH": str(src)}
    sweep = tmp_path / "sweep"
    p = subprocess.run([sys.executable, "-m", "lcc.sweep", "-m", "model=tiny", "ctx.tokens=256", "n_docs=2",
                        "logger=none", "compressor=quant", "compressor.bits=3,4", "cache.enabled=false",
                        f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, text=True, capture_output=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (p.stdout + p.stderr).count("  gap ") == 2  # the log line of each job
    for f in sweep.glob("*/result.json"):
        r = json.loads(f.read_text())
        assert r["summary"]["nll_gap"] == r["summary"]["delta_nll"] and "nll_gap_se" in r["summary"]
        assert all(b["nll_gap"] == b["delta_nll"] for b in r["curve"])
    csv = pd.read_csv(sweep / "sensitivity.csv")
    assert "nll_gap" in csv and "nll_gap_se" in csv and len(csv) == 2
    assert "## NLL gap (test) ± SE" in (sweep / "sensitivity.md").read_text()
    assert "nll_gap" in pd.read_parquet(sweep / "curves.parquet")


@pytest.mark.slow
def test_a_new_task_metric_is_one_registry_entry(tmp_path):
    """Copy the package, add one per-prompt Series and one Metric of family ``synthetic`` to the registry and
    nothing else: a task job's summary and per-depth rows, its log line, reduce's tasks.csv, tasks_by_depth.csv
    and task tables carry it."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    import pandas as pd

    from tests.helpers import ROOT

    src = tmp_path / "src"
    shutil.copytree(ROOT / "lcc", src / "lcc", ignore=shutil.ignore_patterns("__pycache__"))
    reg = src / "lcc" / "metrics" / "registry.py"
    text = reg.read_text()
    s_anchor = '    Series("top1_answer", '
    m_anchor = '    Metric("top1_answer", '
    assert s_anchor in text and m_anchor in text
    text = text.replace(s_anchor, '    Series("nll_gap", "answer NLL gap (test)", per="prompt", '
                                  'derive=lambda a: a["nll_compressed"] - a["nll_dense"]),\n' + s_anchor)
    text = text.replace(m_anchor, '    Metric("nll_gap", "nll_gap", prompt_mean, "answer NLL gap (test)", se="nll_gap_se", '
                                  'table=True, log="gap {v:.3g}", family="synthetic"),\n' + m_anchor)
    reg.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(src)}
    sweep = tmp_path / "sweep"
    p = subprocess.run([sys.executable, "-m", "lcc.sweep", "-m", "model=tiny", "ctx.tokens=512", "logger=none",
                        "task=passkey", "++task.n_samples=2", "++task.max_new_tokens=6", "compressor=quant",
                        "compressor.bits=3,4", "cache.enabled=false", f"hydra.sweep.dir={sweep}"],
                       cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (p.stdout + p.stderr).count("  gap ") == 2  # the log line of each job
    for f in sweep.glob("*/result.json"):
        r = json.loads(f.read_text())
        rows = pd.read_parquet(f.parent / "samples.parquet")
        gap = rows.nll_compressed - rows.nll_dense
        assert r["summary"]["nll_gap"] == pytest.approx(gap.mean()) and r["summary"]["nll_gap_se"] > 0
        for d in r["by_depth"]:
            assert d["nll_gap"] == pytest.approx(gap[rows.depth == d["depth"]].mean())
    assert "nll_gap" in pd.read_csv(sweep / "tasks.csv") and "nll_gap_se" in pd.read_csv(sweep / "tasks.csv")
    assert "nll_gap" in pd.read_csv(sweep / "tasks_by_depth.csv")
    assert "## Tasks: answer NLL gap (test) ± SE" in (sweep / "sensitivity.md").read_text()


def test_task_metrics_come_from_the_registry():
    """Task jobs' W&B keys, log line, tables and heatmap panels are the registry's synthetic / lm_eval entries."""
    from lcc import names
    from lcc.metrics import registry
    from lcc import tasks

    syn = [m.name for m in registry.metrics("synthetic")]
    assert syn[:3] == ["n_prompts", "acc_dense", "acc_compressed"] and "kl_answer" in syn
    assert names.TASK_HEATMAP == {"dense": "acc_dense", "compressed": "acc_compressed"}
    assert [t.key for t in names.TASK_TABLES] == [m.name for m in registry.table_metrics("synthetic")]
    res = {"task": "passkey", "metrics": "synthetic", "compressor": "quant", "level": "w3", "ctx": 512,
           "summary": {"acc_dense": 1.0, "acc_dense_se": 0.0, "acc_compressed": 0.5, "acc_compressed_se": 0.25,
                       "kl_answer": 0.125, "kl_answer_se": 0.01}}
    assert names.wandb_summary(res) == registry.wandb_keys("synthetic") and "acc_dense_se" in names.wandb_summary(res)
    assert tasks.get("passkey").done_line(res) == ("passkey quant w3 ctx=512  acc_dense 1 ± 0  acc_compressed 0.5 ± 0.25  "
                              "kl_answer 0.125 ± 0.01")
    lm = {"task": "lm_eval", "lm_eval": [], "summary": {}}
    assert "matching" in names.wandb_summary(lm) and "kl_mean" not in names.wandb_summary(lm)
    assert names.wandb_summary({"summary": {}}) == names.WANDB_SUMMARY
