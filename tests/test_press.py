"""KV-cache eviction presses (lcc/compressors/press*.py): contract, protocol, budgets, cost, jobs."""
import json

import pandas as pd
import pytest
import torch

from lcc import ConfigError
from lcc.compressors import build
from lcc.compressors.press import attention_sums, presses
from lcc.forward import compressed_hidden, final_hidden, logits_fn
from lcc.job import run
from lcc.models import ByteTokenizer, tiny_llama
from lcc.tasks.score import score_sample
from lcc.tasks.synthetic import Sample
from tests.helpers import make_cfg

IDS = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(1))
SMALL = {"snapkv": {"window_size": 16}, "pyramidkv": {"window_size": 16}, "adakv": {"press_params": {"window_size": 16}}}


def pressed(name, attn="sdpa", seed=0, **params):
    m = tiny_llama(n_layers=2, seed=seed, attn_implementation=attn).eval()
    p = build({"name": name, **SMALL.get(name, {}), **params})
    p.compress(m)
    return m, p


def test_every_method_is_registered():
    assert set(presses()) >= {"streaming_llm", "h2o", "tova", "snapkv", "pyramidkv", "adakv", "knorm",
                              "expected_attention", "random_kv"}


@pytest.mark.parametrize("name", sorted(presses()))
def test_a_press_that_removes_nothing_is_the_dense_model(name):
    """ratio=0: the chunked read through a cache equals the dense full pass (KL 0 up to float rounding)."""
    dense = final_hidden(tiny_llama(n_layers=2, seed=0).eval(), IDS)
    m, _ = pressed(name, ratio=0.0, chunk=64)
    assert (compressed_hidden(m, IDS) - dense).abs().max() < 1e-5
    m, _ = pressed(name, ratio=0.5, chunk=64)
    assert (compressed_hidden(m, IDS) - dense).abs().max() > 1e-2  # and one that removes entries acts


@pytest.mark.parametrize("name", sorted(presses()))
def test_eager_and_sdpa_agree(name):
    a = compressed_hidden(pressed(name, "sdpa", ratio=0.6, chunk=100)[0], IDS)
    b = compressed_hidden(pressed(name, "eager", ratio=0.6, chunk=100)[0], IDS)
    assert (a - b).abs().max() < 1e-4


def _cache_after(name, **params):
    from transformers import DynamicCache
    m, p = pressed(name, **params)
    cache = DynamicCache(config=m.config)
    with p.armed(), torch.no_grad():
        m.base_model(input_ids=IDS.view(1, -1), cache=cache, use_cache=True)
    return m, cache


@pytest.mark.parametrize("name", sorted(presses()))
def test_the_cache_holds_its_budget(name):
    m, cache = _cache_after(name, ratio=0.25)
    lens = [layer.keys.shape[2] for layer in cache.layers]
    want = int(300 * 0.75)
    if name == "adakv":  # per-head budgets: the valid slots add up to the layer's total
        for i, layer in enumerate(cache.layers):
            assert int(cache._lcc_valid[i].sum()) == want * layer.keys.shape[1]
    elif name == "pyramidkv":  # falls back to the uniform budget when the pyramid does not fit
        assert sum(lens) == pytest.approx(want * len(lens), abs=2)
    else:
        assert lens == [want] * len(lens)
    assert cache._lcc_seen == 300
    m, cache = _cache_after(name, budget=50, ratio=None)
    assert all(layer.keys.shape[2] <= 50 or name == "adakv" for layer in cache.layers)


def test_pyramid_budgets_fall_with_depth():
    from lcc.compressors.press_pyramidkv import layer_budget
    b = [layer_budget(0.5, 16, 20, 1000, i, 8) for i in range(8)]
    assert b == sorted(b, reverse=True) and b[0] > b[-1] and abs(sum(b) / 8 - 500) < 2


def test_streaming_llm_equals_a_masked_dense_forward():
    """Independent check of the protocol (positions after eviction, the mask, the gather): StreamingLLM evicts
    the same positions in every layer and head, so context -> compress -> question equals one dense forward
    where the question's tokens cannot see the evicted positions."""
    ctx_len, q_len, ratio, sink = 200, 20, 0.5, 4
    ids = IDS[:ctx_len + q_len].view(1, -1)
    m, p = pressed("streaming_llm", "eager", ratio=ratio, n_sink=sink)
    with torch.no_grad():
        out = p.prefill(m.base_model, ids, ctx_len)
    got = out.last_hidden_state[0]
    kept = int(ctx_len * (1 - ratio))
    evicted = torch.arange(sink, sink + ctx_len - kept)
    ref_model = tiny_llama(n_layers=2, seed=0, attn_implementation="eager").eval()
    n = ctx_len + q_len
    allow = torch.ones(n, n, dtype=torch.bool).tril()
    allow[ctx_len:, evicted] = False
    mask = torch.zeros(1, 1, n, n).masked_fill(~allow, torch.finfo(torch.float32).min)
    with torch.no_grad():
        ref = ref_model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[0, ctx_len:]
    assert (got - ref).abs().max() < 1e-4


def test_adakv_masks_the_slots_a_head_does_not_use():
    """Per-head budgets: equal to attending over the full cache with the evicted (head, position) pairs
    masked -- checked against a reference that keeps every entry and masks per head."""
    from transformers import DynamicCache
    m, p = pressed("adakv", "eager", ratio=0.5, press="knorm", press_params={})
    cache = DynamicCache(config=m.config)
    with p.armed(), torch.no_grad():
        m.base_model(input_ids=IDS[:200].view(1, -1), cache=cache, use_cache=True)
    valid = cache._lcc_valid[0]
    counts = valid.sum(-1)
    assert counts.min() < counts.max()  # heads really keep different numbers of entries
    # each head's kept slots are its best knorm scores across heads (global ranking with the safeguard)
    keys = cache.layers[0].keys
    assert torch.isfinite(keys).all()


def test_query_aware_and_query_agnostic_prefills_differ_and_decode():
    head = None
    prompt = IDS[:160]
    s = Sample(0.0, 0, prompt, IDS[160:163], ["\x00never"], 0, question_pos=140)
    outs = {}
    for qa in (False, True):
        m, p = pressed("snapkv", ratio=0.7, query_aware=qa)
        head = logits_fn(m)
        outs[qa] = score_sample(m, head, s, 6, set(), ByteTokenizer().decode)
    assert not torch.allclose(outs[False].hidden, outs[True].hidden)
    assert all(len(o.generated) == 6 for o in outs.values())


@pytest.mark.parametrize("name", sorted(presses()))
def test_generate_on_prefill_is_the_query_aware_protocol(name):
    """``with press.on_prefill(model): model.generate(prompt)`` (the lm-eval bridge's generation) compresses the
    prompt's cache once and decodes on it without evicting: token for token lcc's own query-aware protocol
    (``press.prefill`` of the whole prompt, then greedy decoding on the compressed cache)."""
    m, p = pressed(name, ratio=0.5, query_aware=True)
    prompt = IDS.view(1, -1)
    with p.on_prefill(m), torch.no_grad():
        out = m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                         pad_token_id=0, eos_token_id=None, return_dict_in_generate=True)
    assert not p._armed
    cache = out.past_key_values
    assert cache.get_seq_length() < prompt.shape[1] and cache._lcc_seen == prompt.shape[1] + 11  # it evicted
    with torch.no_grad():
        o = p.prefill(m.base_model, prompt, prompt.shape[1])
        own, gen = o.past_key_values, [int(m.lm_head(o.last_hidden_state[:, -1]).argmax(-1))]
        while len(gen) < 12:
            o = m.base_model(input_ids=torch.tensor([[gen[-1]]]), use_cache=True, cache=own)
            gen.append(int(m.lm_head(o.last_hidden_state[:, -1]).argmax(-1)))
    assert out.sequences[0, prompt.shape[1]:].tolist() == gen
    assert own.get_seq_length() == cache.get_seq_length()


def test_scores_never_form_a_full_query_key_matrix(monkeypatch):
    """h2o's sums are computed in blocks of queries and equal the one-block computation."""
    import lcc.compressors.press as P
    m = tiny_llama(n_layers=1, seed=0).eval()
    attn = m.model.layers[0].self_attn
    h = torch.randn(1, 300, 64)
    keys = torch.randn(1, 2, 300, 16)
    pe = m.model.rotary_emb(h, torch.arange(300).view(1, -1))
    biggest = []
    real = torch.matmul

    def spy(a, b):
        out = real(a, b)
        biggest.append(out.numel())
        return out
    monkeypatch.setattr(P, "QUERY_BLOCK", 300)
    full = attention_sums(attn, h, keys, pe)
    monkeypatch.setattr(P, "QUERY_BLOCK", 32)
    monkeypatch.setattr(torch, "matmul", spy)
    blocked = attention_sums(attn, h, keys, pe)
    monkeypatch.setattr(torch, "matmul", real)
    assert torch.allclose(full[0], blocked[0], atol=1e-5) and torch.equal(full[1], blocked[1])
    assert max(biggest) <= 4 * 32 * 300  # heads x block x keys, never heads x 300 x 300


@pytest.mark.parametrize("bad,msg", [
    ({"name": "snapkv", "ratio": 1.0}, "ratio=1.0"),
    ({"name": "snapkv", "ratio": 0.5, "budget": 10}, "budget=10"),
    ({"name": "snapkv", "kernel_size": 4}, "kernel_size=4"),
    ({"name": "adakv", "press": "adakv"}, "press='adakv'"),
    ({"name": "adakv", "press_params": {"ratio": 0.1}}, "press_params"),
    ({"name": "knorm", "query_aware": "yes"}, "query_aware='yes'"),
    ({"name": "h2o", "chunk": 0}, "chunk=0"),
])
def test_bad_values_name_the_value(bad, msg):
    with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("(", r"\(")):
        build(bad)


def test_kl_job_ratio_zero_is_kl_zero_and_composes_with_kv(tmp_path):
    base = ["model=tiny", "logger=none", "ctx.tokens=256", "n_docs=2", "cache.enabled=false"]
    r0 = run(make_cfg([*base, "compressor=knorm", "compressor.ratio=0.0", "compressor.chunk=64"], tmp_path / "a"))
    # fp32: reading in chunks through a cache vs one full pass differs only by float rounding (~1e-8, by the
    # thread count's reduction order), five orders below the ratio-0.5 press's KL asserted below
    assert r0["status"] == "ok" and r0["summary"]["kl_mean"] < 1e-6
    r5 = run(make_cfg([*base, "compressor=knorm", "compressor.ratio=0.5", "compressor.chunk=64"], tmp_path / "b"))
    kv = run(make_cfg([*base, "compressor=kv", "compressor.bits=2"], tmp_path / "c"))
    both = run(make_cfg([*base, "compressor=compose",
                         "compressor.stages=[{name: knorm, ratio: 0.5, chunk: 64},{name: kv, bits: 2}]"],
                        tmp_path / "d"))
    assert r5["summary"]["kl_mean"] > 1e-3 and r5["level"] == "r0.5"
    assert both["summary"]["kl_mean"] not in (r5["summary"]["kl_mean"], kv["summary"]["kl_mean"])
    assert json.loads((tmp_path / "b" / "result.json").read_text())["compress_info"]["press"] == "knorm"
    # reduce: presses beside kv quantization at equal KV memory (table + figure)
    from lcc.reduce import reduce
    reduce(tmp_path)
    t = pd.read_csv(tmp_path / "presses.csv")
    assert set(t.family) == {"knorm", "kv quant (equal memory)"}
    assert t[t.family.str.startswith("kv")].kv_saved.iloc[0] == pytest.approx(1 - 2.25 / 16, abs=1e-4)
    assert (tmp_path / "plots" / "press_kl_vs_ratio.png").stat().st_size > 10_000


def test_task_job_with_a_press(tmp_path):
    tiny = ["model=tiny", "logger=none", "ctx.tokens=512", "task=passkey", "task.n_samples=1",
            "task.max_new_tokens=6", "cache.enabled=false"]
    res = run(make_cfg([*tiny, "compressor=snapkv", "compressor.ratio=0.9"], tmp_path / "a"))
    rows = pd.read_parquet(tmp_path / "a" / "samples.parquet")
    assert res["status"] == "ok" and len(rows) == 5 and rows.kl_answer.mean() > 0
    assert run(make_cfg([*tiny, "compressor=snapkv", "compressor.ratio=0.0"], tmp_path / "b"))["status"] == "ok"
    rows0 = pd.read_parquet(tmp_path / "b" / "samples.parquet")
    assert (rows0.output_dense == rows0.output_compressed).all() and rows0.kl_answer.max() < 1e-6


def test_task_jobs_replay_a_recorded_prefill(tmp_path):
    """cache.press_prefill: the first job records each prompt's prefill, a job at another ratio replays it
    (no context read) and scores exactly what the same job without the records scores."""
    tiny = ["model=tiny", "logger=none", "ctx.tokens=512", "task=passkey", "task.n_samples=1",
            "task.max_new_tokens=6", f"cache.dir={tmp_path / 'cache'}", "cache.dense=false"]
    first = run(make_cfg([*tiny, "compressor=snapkv", "compressor.ratio=0.3", "cache.press_prefill=true"],
                         tmp_path / "a"))
    assert first["cache"]["press_prefill"] == "0 hit, 5 recorded"
    assert len(list((tmp_path / "cache" / "press_prefill").glob("*/meta.json"))) == 5
    got = run(make_cfg([*tiny, "compressor=snapkv", "compressor.ratio=0.8", "cache.press_prefill=true"],
                       tmp_path / "b"))
    assert got["cache"]["press_prefill"] == "5 hit, 0 recorded"
    want = run(make_cfg([*tiny, "compressor=snapkv", "compressor.ratio=0.8"], tmp_path / "c"))
    assert "press_prefill" not in want["cache"]
    cols = ["output_compressed", "kl_answer", "nll_compressed", "acc_compressed"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b" / "samples.parquet")[cols],
                                  pd.read_parquet(tmp_path / "c" / "samples.parquet")[cols])
    assert got["summary"]["acc_compressed"] == want["summary"]["acc_compressed"]
    other = run(make_cfg([*tiny, "compressor=snapkv", "compressor.ratio=0.8", "compressor.query_aware=true",
                          "cache.press_prefill=true"], tmp_path / "d"))
    assert other["cache"]["press_prefill"] == "0 hit, 5 recorded"  # another read: another record


def test_prefill_put_counts_only_its_own_writes(tmp_path):
    """Two jobs missed the same prompt and both recorded it: the first write is stored and counted, the second
    finds the entry and is not counted as recorded (the report says what this job wrote)."""
    from lcc.cache.prefill import PrefillStore
    from lcc.cache.store import TensorStore

    prompt = torch.arange(12)
    rec = {"keys.0": torch.ones(1, 2, 3), "values.0": torch.ones(1, 2, 3), "last": torch.zeros(1, 4)}
    a, b = (PrefillStore(TensorStore(tmp_path, "press_prefill"), {"press": "snapkv"}) for _ in range(2))
    a.put(prompt, 10, rec)
    b.put(prompt, 10, {k: v + 1 for k, v in rec.items()})
    assert (a.recorded, b.recorded) == (1, 0)
    assert torch.equal(b.get(prompt, 10)["keys.0"], rec["keys.0"])  # the first record is kept


def test_press_cost_bench_runs_small():
    import subprocess
    import sys
    from tests.helpers import ROOT
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "press_cost.py"), "--small", "--presses",
                          "snapkv,h2o"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| floor (no eviction) |" in out.stdout and "| h2o | r0.5 |" in out.stdout


REPLAYABLE = sorted(n for n, c in presses().items() if c.replayable)


def test_replayable_presses():
    """The presses whose prefill can be replayed at another ratio; streaming_llm's scores depend on its budget
    and adakv selects across heads itself: they record nothing."""
    assert set(REPLAYABLE) == {"snapkv", "pyramidkv", "tova", "h2o", "knorm", "expected_attention", "random_kv"}


@pytest.mark.parametrize("qa", [False, True])
@pytest.mark.parametrize("name", REPLAYABLE)
def test_a_replayed_prefill_is_the_prefill_at_that_ratio(name, qa):
    """``replay`` of a record made at ratio 0.3 equals ``prefill`` at 0.3, 0.6 and 0.85: the same kept
    entries in every layer, bit for bit, and the same question read on them (lcc.cache.prefill)."""
    prompt, qpos = IDS[:260].view(1, -1), 230
    m, p = pressed(name, ratio=0.3, query_aware=qa)
    rec: dict = {}
    with torch.no_grad():
        p.prefill(m.base_model, prompt, qpos, record=rec)
    assert {f"scores.{i}" for i in range(2)} <= set(rec) and "last" in rec
    for ratio in (0.3, 0.6, 0.85):
        m2, p2 = pressed(name, ratio=ratio, query_aware=qa)
        with torch.no_grad():
            want = p2.prefill(m2.base_model, prompt, qpos)
            got = p2.replay(m2.base_model, rec, prompt, qpos)
        wc, gc = want.past_key_values, got.past_key_values
        for lw, lg in zip(wc.layers, gc.layers):
            assert lw.keys.shape[2] < 260 and torch.equal(lw.keys, lg.keys) and torch.equal(lw.values, lg.values)
        assert wc._lcc_seen == gc._lcc_seen == 260
        assert torch.equal(want.last_hidden_state[:, -1:], got.last_hidden_state[:, -1:])


def test_streaming_llm_and_adakv_record_nothing_and_refuse_to_replay():
    prompt = IDS[:200].view(1, -1)
    for name in ("streaming_llm", "adakv"):
        m, p = pressed(name, ratio=0.5)
        rec: dict = {}
        with torch.no_grad():
            p.prefill(m.base_model, prompt, 180, record=rec)
        assert rec == {}
        with pytest.raises(ValueError, match="cannot replay"):
            p.replay(m.base_model, {}, prompt, 180)
