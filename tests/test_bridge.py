"""Issue 20: RULER (and any long-context lm-eval task) through the lm-eval bridge, the shared dense cache of
lm-eval results, the dense scores equal to lm-eval's own command, and compressor=checkpoint (a compressed
checkpoint in the dense model's place: GGUF types, compressed-tensors, any folder transformers loads)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lcc import ConfigError
from lcc.job import run, validate
from tests.helpers import ROOT, make_cfg

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    """A seeded random Llama (2 layers, hidden 64) with SmolLM2's real tokenizer, saved as an HF folder: fast,
    and RULER can size its prompts with the tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lcc.models import prepare_embedded

    tok = AutoTokenizer.from_pretrained(prepare_embedded())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # peaked distributions, as lcc's tiny model
    d = tmp_path_factory.mktemp("tiny_hf")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def hf(d: Path, *extra: str) -> list[str]:
    return ["model=hf", f"model.name_or_path={d}", "logger=none", *extra]


# ---- checks before launch ----------------------------------------------------------------------------
@pytest.mark.parametrize("over,msg", [
    (["ctx=8k", "task.metadata={max_seq_lengths:[16384]}"],
     r"RULER length 16384 .* exceeds model smollm2_135m's context of 8192"),
    (["ctx=1k", "task.metadata={max_seq_lengths:[2048]}"],
     r"RULER length 2048 .* exceeds the model input of 1024 tokens"),
    (["ctx=1k", "task.metadata={max_seq_lengths:[abc]}"], r"task.metadata.max_seq_lengths=\['abc'\] is invalid"),
    (["ctx=1k", "task.tasks=[niah_single_9]"], r"unknown lm-eval task\(s\) \['niah_single_9'\].*niah_single_1"),
    (["ctx=1k", "task.metadata=5"], r"task.metadata=5 is invalid"),
    (["ctx=1k", "task.tasks=[niah_single_1,ruler_cwe]"], r"\['ruler_cwe'\] cannot be compared dense vs compressed"),
])
def test_ruler_bad_inputs_fail_before_launch(over, msg):
    with pytest.raises(ConfigError, match=msg):
        validate(make_cfg(["task=lm_eval", "task.tasks=[niah_single_1]", *over], "-"))


def test_checkpoint_paths_that_are_not_checkpoints_fail_before_launch(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.gguf").write_bytes(b"NOPE")
    for path, msg in [(tmp_path / "empty", "folder without config.json: not a checkpoint"),
                      (tmp_path / "notes.txt", "a file but not a GGUF file"),
                      (tmp_path / "fake.gguf", "does not start with the GGUF magic"),
                      ("/nonexistent/ckpt", "does not exist and is not a hub id"),
                      ("", "'' is invalid")]:
        with pytest.raises(ConfigError, match=f"compressor.path=.*{msg}"):
            validate(make_cfg(["compressor=checkpoint", f"compressor.path={path}"], "-"))
    validate(make_cfg(["compressor=checkpoint", "compressor.path=org/model-w4"], "-"))  # a hub id: the real path


# ---- RULER through the bridge ----------------------------------------------------------------------------
@pytest.mark.slow
def test_ruler_runs_offline_at_ctx_with_dense_scores_cached_across_compressors(tiny_hf, tmp_path):
    """niah_single_1 (generated haystack) at ctx=1k: lcc passes the model's tokenizer and max_seq_lengths=[1024],
    the score lands as an accuracy (reduce's task tables); the second compressor reuses the dense lm-eval
    results from the shared dense cache (k compressors: k + 1 evaluations); kv acts in lm-eval's generation."""
    from lcc.tasks.report import load

    common = hf(tiny_hf, "task=lm_eval", "task.tasks=[niah_single_1]", "task.limit=2", "ctx=1k",
                f"cache.dir={tmp_path / 'cache'}")
    a = run(make_cfg([*common, "compressor=quant", "compressor.bits=2", "compressor.group_size=32"],
                     tmp_path / "a"))
    b = run(make_cfg([*common, "compressor=kv", "compressor.bits=2"], tmp_path / "b"))
    assert a["cache"]["dense"] == "miss" and b["cache"]["dense"] == "hit"
    assert a["cache"]["dense_key"] == b["cache"]["dense_key"]
    for res in (a, b):
        assert [r["metric"] for r in res["lm_eval"]] == ["1024,none"]  # the job's length; RULER's -1 rows dropped
        (r,) = res["ruler"]
        assert r["task"] == "niah_single_1" and r["length"] == 1024 and r["n_prompts"] == 2
        assert r["acc_dense"] == res["lm_eval"][0]["dense"]
        assert a["ruler"][0]["acc_dense"] == r["acc_dense"]
    sa, sb = (pd.read_parquet(tmp_path / x / "samples.parquet") for x in "ab")
    assert list(sa["1024_dense"]) == list(sb["1024_dense"])  # the same dense outcomes, once computed
    outs = lambda d: json.loads((tmp_path / "cache").joinpath("dense", a["cache"]["dense_key"], "meta.json")  # noqa
                                .read_text())["inputs"]["entry"]
    assert outs(None) == "lm_eval_dense"
    jobs = pd.DataFrame([{"job": "a", "status": "ok", "task": "lm_eval"}, {"job": "b", "status": "ok",
                                                                          "task": "lm_eval"}])
    per_job, _, lm = load(tmp_path, jobs)
    assert set(per_job.task) == {"niah_single_1"} and set(per_job.compressor) == {"quant", "kv"}
    assert {"acc_dense", "acc_compressed", "acc_delta", "n_prompts"} <= set(per_job.columns)


def test_a_press_with_log_likelihood_tasks_fails_before_launch(tmp_path):
    """A KV press acts on generation's cache; lm-eval's log-likelihood tasks read without one (the compressed
    side would be the dense model): refused, naming the task and its output type, alone or in compose."""
    from lcc.tasks.lm_eval import make_pydoc_task
    inc = make_pydoc_task(tmp_path / "tasks", n_docs=4)
    for comp in (["compressor=snapkv"], ["compressor=compose", "compressor.stages=[{name: quant},{name: h2o}]"]):
        with pytest.raises(ConfigError, match=r"\{'lcc_pydoc_cloze': 'multiple_choice'\} are not generation tasks"):
            validate(make_cfg(["task=lm_eval", "task.tasks=[lcc_pydoc_cloze]", f"task.include_path={inc}", *comp],
                              "-"))
    validate(make_cfg(["task=lm_eval", "task.tasks=[niah_single_1]", "compressor=snapkv"], "-"))


@pytest.mark.slow
def test_a_press_acts_in_lm_evals_generation(tiny_hf, tmp_path):
    """RULER through the bridge with a press: ratio 0 answers exactly as the dense model; streaming_llm keeping
    a tenth of each prompt's cache answers otherwise (the press compressed the cache of lm-eval's generate())."""
    common = hf(tiny_hf, "task=lm_eval", "task.tasks=[niah_single_1]", "task.limit=2", "ctx=1k",
                "compressor=streaming_llm", "cache.enabled=false")
    outs = {}
    for ratio in (0.0, 0.9):
        res = run(make_cfg([*common, f"compressor.ratio={ratio}"], tmp_path / str(ratio)))
        assert res["status"] == "ok"
        s = pd.read_parquet(tmp_path / str(ratio) / "samples.parquet")
        outs[ratio] = (list(s["output_dense"]), list(s["output_compressed"]))
    assert outs[0.0][0] == outs[0.0][1]
    assert outs[0.9][0] == outs[0.0][0] and outs[0.9][1] != outs[0.9][0]


def _samples(out: Path, task: str) -> dict[int, dict]:
    (f,) = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    return {s["doc_id"]: s for s in map(json.loads, f.read_text().splitlines())}


@pytest.mark.slow
def test_dense_scores_equal_lm_evals_own_command(tiny_hf, tmp_path):
    """The dense side of a task=lm_eval job equals `lm_eval --model hf --model_args pretrained=<folder>` on the
    same folder, tasks and length, sample for sample: RULER niah_single_1 (generated, greedy) and the offline
    multiple-choice task (log-likelihoods)."""
    from lcc.tasks.lm_eval import make_pydoc_task

    inc = make_pydoc_task(tmp_path / "inc", n_docs=6)
    res = run(make_cfg(hf(tiny_hf, "task=lm_eval", "task.tasks=[niah_single_1,lcc_pydoc_cloze]", "task.limit=3",
                          f"task.include_path={inc}", "ctx=1k", "compressor=none", "cache.enabled=false"),
                       tmp_path / "job"))
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
           f"pretrained={tiny_hf},dtype=float32,max_length=1024", "--device", "cpu", "--batch_size", "1",
           "--tasks", "niah_single_1,lcc_pydoc_cloze", "--include_path", str(inc), "--limit", "3",
           "--metadata", json.dumps({"max_seq_lengths": [1024]}), "--seed", "0,0,0,0", "--log_samples",
           "--output_path", str(tmp_path / "cli")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    ours = pd.read_parquet(tmp_path / "job" / "samples.parquet")
    for task, metric in [("niah_single_1", "1024"), ("lcc_pydoc_cloze", "acc")]:
        cli = _samples(tmp_path / "cli", task)
        mine = ours[ours.lm_task == task].set_index("doc_id")
        assert sorted(cli) == sorted(mine.index) == [0, 1, 2]
        for i, s in cli.items():
            assert mine.loc[i, f"{metric}_dense"] == float(s[metric]), (task, i)
            out = json.loads(mine.loc[i, "output_dense"])
            if task == "niah_single_1":  # the greedy generation, character for character
                assert out == s["filtered_resps"] and len(out[0]) > 20, (i, out, s["filtered_resps"])
            else:  # the log-likelihood of every choice, bit for bit
                assert [[float(a), str(b)] for a, b in out] == [[float(a), str(b)] for a, b in s["filtered_resps"]]
    # the generated outputs themselves, token for token (from the job's dense results)
    rows = {r["metric"]: r for r in res["lm_eval"]}
    assert rows["1024,none"]["dense"] == pytest.approx(
        sum(float(s["1024"]) for s in _samples(tmp_path / "cli", "niah_single_1").values()) / 3)


# ---- compressor=checkpoint -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_quantized(tiny_hf, tmp_path_factory) -> Path:
    """tiny_hf with lcc's own quant w4g32 applied and saved: a checkpoint whose weights lcc also makes in memory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lcc.compressors import build

    model = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32)
    build({"name": "quant", "bits": 4, "group_size": 32}).compress(model)
    d = tmp_path_factory.mktemp("tiny_q4")
    model.save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_hf).save_pretrained(d)
    return d


def test_checkpoint_in_the_dense_models_place_equals_the_in_memory_compressor(tiny_hf, tiny_quantized, tmp_path):
    """KL of compressor=checkpoint (the saved quant w4g32 model) equals KL of compressor=quant w4g32 on the
    same dense model, token for token: the checkpoint's weights replace the dense ones, the dense reference
    (and its head) stay the dense model's."""
    common = hf(tiny_hf, "ctx.tokens=256", "n_docs=2", "cache.enabled=false")
    q = run(make_cfg([*common, "compressor=quant", "compressor.bits=4", "compressor.group_size=32"], tmp_path / "q"))
    c = run(make_cfg([*common, "compressor=checkpoint", f"compressor.path={tiny_quantized}"], tmp_path / "c"))
    tq, tc = (load_file(tmp_path / x / "tokens.safetensors") for x in "qc")
    assert tq["kl"].mean() > 1e-3
    for k in ("kl", "nll_p", "nll_q", "agree"):
        assert torch.equal(tq[k], tc[k]), k
    assert c["level"] == f"{tiny_quantized.name} (not quantized)"  # a plain float checkpoint says so
    assert c["compress_info"]["changed_tensors"] == 14 and c["compress_info"]["tensors"] == 21


def test_checkpoint_with_another_tokenizer_fails_before_any_work(tiny_hf, tiny_quantized, tmp_path):
    from transformers import AutoTokenizer

    d = tmp_path / "other_tok"
    import shutil
    shutil.copytree(tiny_quantized, d)
    tok = AutoTokenizer.from_pretrained(tiny_hf)
    tok.add_tokens(["def", " the"])  # other ids for common pieces
    tok.save_pretrained(d)
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="has another tokenizer than the job's model: on the job's own inputs"):
        run(make_cfg(hf(tiny_hf, "ctx.tokens=256", "n_docs=1", f"cache.dir={cache}", "compressor=checkpoint",
                        f"compressor.path={d}"), tmp_path / "job"))
    assert not (cache / "dense").exists() or not any((cache / "dense").iterdir())  # no dense pass ran
    saved = json.loads((tmp_path / "job" / "result.json").read_text())
    assert saved["status"] == "failed"


def test_checkpoint_of_another_architecture_fails_before_any_work(tiny_hf, tmp_path):
    from lcc.models import tiny_llama

    d = tmp_path / "other"
    tiny_llama(n_layers=3).save_pretrained(d)
    with pytest.raises(ConfigError, match="not a compressed version of the job's model: its config differs"):
        run(make_cfg(hf(tiny_hf, "ctx.tokens=256", "n_docs=1", "cache.enabled=false", "compressor=checkpoint",
                        f"compressor.path={d}"), tmp_path / "job"))


@pytest.mark.slow
def test_gguf_types_and_compressed_tensors_checkpoints_of_smollm2(tmp_path):
    """The embedded SmolLM2 (Q4_1 GGUF) re-quantized with the gguf package to Q8_0 and Q4_0, and written as a
    compressed-tensors w4g64 checkpoint with its own API: each loads in the dense model's place; Q8_0 is close
    to the dense model, 4-bit far from it."""
    from lcc.checkpoints import compressed_tensors_checkpoint, requantize_gguf
    from lcc.compressors.checkpoint import gguf_types
    from lcc.models import prepare_embedded, smollm2_gguf

    q8 = requantize_gguf(smollm2_gguf(), tmp_path / "q8_0.gguf", "Q8_0")
    q4 = requantize_gguf(smollm2_gguf(), tmp_path / "q4_0.gguf", "Q4_0")
    assert gguf_types(str(q8)) == {"Q8_0": 211, "F32": 61}
    ct = compressed_tensors_checkpoint(prepare_embedded(), tmp_path / "ct", bits=4, group_size=64)
    common = ["logger=none", "ctx.tokens=256", "n_docs=1", "dtype=bfloat16", f"cache.dir={tmp_path / 'cache'}"]
    kl = {}
    for name, path in [("q8", q8), ("q4", q4), ("ct", ct)]:
        res = run(make_cfg([*common, "compressor=checkpoint", f"compressor.path={path}"], tmp_path / name))
        kl[name] = res["summary"]["kl_mean"]
        assert res["compress_info"]["changed_tensors"] > 200
    assert res["level"] == "ct compressed-tensors:w4g64" and res["cache"]["dense"] == "hit"
    assert 0 < kl["q8"] < 0.05 < kl["q4"] and kl["ct"] > 0.05, kl


@pytest.mark.slow
def test_longbench_v1_and_v2_through_the_bridge_on_local_standins(tiny_hf, tmp_path):
    """LongBench (generation, QA F1) and LongBench v2 (multiple choice) through task=lm_eval, on local stand-ins in
    the data sets' format whose YAMLs include lm-eval's own task files (the hub is not reachable here)."""
    from lcc.tasks.bridge import make_standin

    inc = make_standin(tmp_path / "inc", "longbench_hotpotqa", n_docs=3, words=300)
    make_standin(inc, "longbench2", n_docs=3, words=300)
    res = run(make_cfg(hf(tiny_hf, "task=lm_eval", "task.tasks=[longbench_hotpotqa_local,longbench2_local]",
                          f"task.include_path={inc}", "task.limit=3", "ctx=1k", "compressor=quant",
                          "compressor.bits=2", "compressor.group_size=32", "cache.enabled=false"), tmp_path / "job"))
    got = {(r["lm_task"], r["metric"]) for r in res["lm_eval"]}
    assert {("longbench_hotpotqa_local", "qa_f1_score,none"), ("longbench2_local", "acc,none")} <= got
    s = pd.read_parquet(tmp_path / "job" / "samples.parquet")
    assert len(s) == 6 and s.output_dense.notna().all()
    assert "ruler" not in res
