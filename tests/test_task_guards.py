"""Nothing silently wrong, round 2 (issue 16): decoding budgets follow the answer, scoring cannot credit a
repeated question, job folders are one-to-one with configs, impossible task settings fail before launch (with
the numbers), reduce lists every malformed result and still tables the good ones, and the minor items."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lcc import ConfigError, tasks
from lcc.io import files_problem, read_json
from lcc.job import run, validate
from lcc.models import ByteTokenizer
from lcc.tasks.synthetic import AUTO_MARGIN, PromptBuilder, distinct_number, matches
from tests.helpers import make_cfg, run_cli

TINY = ["model=tiny", "logger=none"]


# ---- 1. the decoding budget follows the answer ----------------------------------------------------------------
@pytest.mark.parametrize("name,extra", [("passkey", {"digits": 10}), ("niah", {"n_keys": 3, "n_queries": 3}),
                                        ("vt", {"n_hops": 8})])
def test_auto_budget_covers_the_longest_answer(name, extra):
    """The issue's settings: answers of 10 digits (passkey), 3 values (niah), 9 names (vt) were longer than
    the fixed budgets (8, 16, 30), so they scored 0 whatever the model said."""
    t = tasks.build({"name": name, "n_samples": 3, "haystack": "noise", **extra})
    assert t.max_new_tokens == "auto"
    samples = t.samples(ByteTokenizer(), 2048, 0)
    longest = max(s.answer.numel() for s in samples)
    assert t.decode_budget == longest + AUTO_MARGIN and t.params()["decode_budget"] == t.decode_budget


@pytest.mark.parametrize("over,longest", [(["task=passkey", "task.digits=10", "task.max_new_tokens=8"], 10),
                                          (["task=niah", "task.n_keys=3", "task.n_queries=3",
                                            "task.max_new_tokens=16"], 25)])
def test_an_explicit_budget_shorter_than_an_answer_is_refused_before_launch(over, longest):
    with pytest.raises(ConfigError, match=rf"task.max_new_tokens=\d+ is shorter than the longest reference answer"
                                          rf".*{longest} tokens of tiny's tokenizer.*valid: max_new_tokens >= "
                                          rf"{longest}, or auto"):
        validate(make_cfg([*TINY, *over], "-"))
    validate(make_cfg([*TINY, *over[:-1], f"task.max_new_tokens={longest}"], "-"))


def test_a_task_job_records_and_uses_the_budget(tmp_path):
    res = run(make_cfg([*TINY, "ctx.tokens=512", "task=passkey", "task.digits=10", "task.n_samples=1",
                        "task.depths=[0.5]", "compressor=quant"], tmp_path))
    rows = pd.read_parquet(tmp_path / "samples.parquet")
    assert res["task_params"]["decode_budget"] == 10 + AUTO_MARGIN == rows.answer_tokens.max() + AUTO_MARGIN
    assert all(len(o) <= 10 + AUTO_MARGIN for o in rows.output_dense)  # one byte token: one character at most


# ---- 2. scoring cannot credit a repeated question ---------------------------------------------------------------
def test_matching_is_on_word_boundaries():
    assert matches("The pass key is 71432.", ["71432"]) and matches("ARROW, lemon", ["arrow", "Lemon"])
    assert not matches("a narrow path", ["arrow"]) and not matches("714321", ["71432"])
    assert not matches("tower-2", ["tower-22"]) and matches("VAR ABCDE", ["abcde"])


@pytest.mark.parametrize("extra", [{"n_keys": 1}, {"n_keys": 4, "n_queries": 2, "n_values": 2}])
def test_niah_word_values_never_appear_in_the_keys_or_the_question(extra):
    """Seeds 1264, 1588, 1720 (depth 0, one prompt) drew a value ("valley") that was a key's noun
    ("wise-valley"): a dense output repeating the question scored 1. Keys and values now come from disjoint
    lists, no value is a substring of a key word or a frame word, and matching is on word boundaries."""
    from lcc.tasks.niah import FRAME_WORDS, VALUES
    from lcc.tasks.words import ADJECTIVES, WORDS
    assert len(VALUES) >= 100
    for v in VALUES:
        assert v not in FRAME_WORDS and not any(v in k or k in v for k in (*WORDS, *ADJECTIVES))
    t = tasks.build({"name": "niah", "value_type": "word", "depths": [0.0], "n_samples": 1, **extra})
    for seed in [1264, 1588, 1720, *range(300)]:
        sp = t.spec(np.random.default_rng([seed, 0, 0]), 0.0)
        keys = [n.split(" for ")[1].split(" is:")[0] for _, n in sp.needles]
        assert not set(sp.expected) & {w for k in keys for w in k.split("-")}
        echo = sp.question + " " + sp.answer_prefix + " " + " ".join(keys)   # the question, repeated
        assert not matches(echo, sp.expected), (seed, sp.expected, keys)
        assert matches(sp.answer, sp.expected)


# ---- 3. impossible task settings fail before launch, with the numbers ---------------------------------------------
@pytest.mark.parametrize("over,msg", [
    (["task=niah", "task.value_type=word", "task.n_keys=20", "task.n_values=10"],
     r"20 \* 10 = 200 distinct values .* more than the \d+ words"),
    (["task=niah", "task.digits=1", "task.n_keys=10"], r"10 \* 1 = 10 distinct values .* the 9 numbers .*digits >= 2"),
    (["task=vt", "task.digits=1", "task.n_chains=10"], r"n_chains=10 .* the 9 numbers of task.digits=1"),
    (["ctx.tokens=256", "task=passkey"], r"ctx.tokens=256 is too short for task=passkey .*needs 248 tokens.*"
                                         r"valid: ctx.tokens >= 264"),
    (["task=niah", "task.n_keys=100"], r"ctx.tokens=1024 is too short for task=niah .*task.n_keys=100"),
    (["task=vt", "task.n_hops=50", "task.n_chains=20"], r"ctx.tokens=1024 is too short for task=vt .*n_hops=50"),
    (["task=passkey", "task.chat_template=true"], "has no chat template"),
    (["task=lm_eval"], "task=lm_eval needs a Hugging Face tokenizer; model=tiny has ByteTokenizer"),
])
def test_impossible_task_settings_fail_validation(over, msg):
    with pytest.raises(ConfigError, match=msg):
        validate(make_cfg([*TINY, *over], "-"))


def test_more_than_18_digits_and_bounded_draws():
    s = tasks.build({"name": "passkey", "digits": 25, "n_samples": 2}).samples(ByteTokenizer(), 1024, 0)
    assert all(len(x.expected[0]) == 25 and x.expected[0][0] != "0" for x in s)
    rng = np.random.default_rng(0)
    used: set[str] = set()
    for _ in range(9):  # every 1-digit number, then none is left: an error, not an endless loop
        used.add(distinct_number(rng, 1, used))
    assert used == {str(i) for i in range(1, 10)}
    with pytest.raises(RuntimeError, match="no distinct"):
        distinct_number(rng, 1, used)


@pytest.mark.parametrize("content", ["", " \n\t\n  "])
@pytest.mark.parametrize("task", ["task=niah", "task=kl"])
def test_an_empty_or_blank_text_file_is_refused(tmp_path, content, task):
    f = tmp_path / "blank.txt"
    f.write_text(content)
    with pytest.raises(ConfigError, match="holds no text"):
        validate(make_cfg([*TINY, task, "data=text", f"data.paths=[{f}]"], "-"))


def test_an_empty_haystack_source_is_an_error_not_a_division_by_zero():
    class Empty:
        name = "text"
    b = PromptBuilder(ByteTokenizer(), 1024, "auto", Empty())
    b._stream = __import__("torch").zeros(0, dtype=__import__("torch").long)
    with pytest.raises(ConfigError, match="no text for the haystack"):
        b.text(100, np.random.default_rng(0))


def test_a_refused_sweep_leaves_no_folder(tmp_path):
    sweep = tmp_path / "sweep"
    p = run_cli("-m", *TINY, "task=niah", "task.digits=1", "task.n_keys=10", "compressor=quant",
                f"hydra.sweep.dir={sweep}")
    assert p.returncode != 0 and "Traceback" not in p.stderr and "10 distinct values" in p.stderr, p.stderr[-2000:]
    assert not sweep.exists()


# ---- 4. job folders are one-to-one with configs -------------------------------------------------------------------
def test_jobs_whose_folders_would_collide_are_refused_before_launch(tmp_path):
    (tmp_path / "d").mkdir()
    for f in (tmp_path / "d" / "a.txt", tmp_path / "d_a.txt"):
        f.write_text("Some text for a haystack. " * 50)
    sweep = tmp_path / "sweep"
    p = run_cli("-m", *TINY, "ctx.tokens=256", "n_docs=1", "compressor=magnitude", "data=text",
                f"data.paths={tmp_path}/d/a.txt,{tmp_path}/d_a.txt", f"hydra.sweep.dir={sweep}")
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "would be shared by jobs with different configs" in p.stderr and "job 0" in p.stderr and "job 1" in p.stderr
    assert not sweep.exists()


def test_folder_collisions_only_for_different_configs():
    from lcc.sweep import folder_collisions
    jobs = [{"num": 0, "overrides": ["a=x/y"], "dir": "a=x_y", "config_hash": "1"},
            {"num": 1, "overrides": ["a=x_y"], "dir": "a=x_y", "config_hash": "2"},
            {"num": 2, "overrides": ["b=1", "logger.mode=online"], "dir": "b=1", "config_hash": "3"},
            {"num": 3, "overrides": ["b=1", "logger.mode=offline"], "dir": "b=1", "config_hash": "3"}]
    (line,) = folder_collisions(jobs)
    assert "'a=x_y'" in line and "job 0" in line and "job 1" in line


# ---- 5. pydoc-task on a file -----------------------------------------------------------------------------------
def test_pydoc_task_into_an_existing_file_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    p = run_cli("pydoc-task", str(f), module="lcc.tasks")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "exists and is not a folder" in p.stderr


# ---- 6. reduce lists every malformed result and still tables the good ones ----------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("good")
    run(make_cfg([*TINY, "n_docs=2", "ctx.tokens=256", "compressor=quant"], root / "kl"))
    run(make_cfg([*TINY, "ctx.tokens=512", "task=passkey", "task.n_samples=1", "task.depths=[0.0,1.0]",
                  "compressor=quant"], root / "task"))
    return root / "kl", root / "task"


def _deep(n: int):
    return json.loads("[" * n + "]" * n)


MUTATIONS = {  # name: (which job, mutation of its result.json, a word of the reason)
    "kl_mean_str": ("kl", lambda r: r["summary"].update(kl_mean="0.3"), "kl_mean"),
    "kl_se_list": ("kl", lambda r: r["summary"].update(kl_se=[1, 2]), "kl_se"),
    "curve_x": ("kl", lambda r: r.update(curve=["x"]), "curve[0]"),
    "curve_bin_str": ("kl", lambda r: r["curve"][0].update(kl_mean="x"), "curve[0]"),
    "ctx_huge": ("kl", lambda r: r.update(ctx=10 ** 30), "out of range"),
    "ctx_bool": ("kl", lambda r: r.update(ctx=True), "'ctx'"),
    "level_num": ("kl", lambda r: r.update(level=3), "'level'"),
    "model_dict": ("kl", lambda r: r.update(model={"a": 1}), "'model'"),
    "deep_config": ("kl", lambda r: r["config"].update(x=_deep(200)), "nested deeper"),
    "by_depth_ints": ("task", lambda r: r.update(by_depth=[1, 2]), "by_depth[0]"),
    "by_depth_str": ("task", lambda r: r["by_depth"][0].update(acc_dense="x"), "acc_dense"),
    "task_summary_x": ("task", lambda r: r["summary"].update(acc_compressed="x"), "acc_compressed"),
    "lm_eval_1": ("task", lambda r: r.update(task="lm_eval", lm_eval=[1]), "lm_eval[0]"),
    "lm_eval_empty": ("task", lambda r: r.update(task="lm_eval", lm_eval=[]), "no rows"),
    "status_list": ("task", lambda r: r.update(status=["ok"]), "'status'"),
}


def test_reduce_lists_every_malformed_result_and_tables_the_good_ones(tmp_path, good):
    sweep = tmp_path / "sweep"
    kl, task = good
    shutil.copytree(kl, sweep / "good_kl")
    shutil.copytree(task, sweep / "good_task")
    for name, (which, mutate, _) in MUTATIONS.items():
        shutil.copytree(kl if which == "kl" else task, sweep / name)
        res = read_json(sweep / name / "result.json")
        mutate(res)
        (sweep / name / "result.json").write_text(json.dumps(res))
    (sweep / "nested").mkdir()  # a JSON nested too deeply for Python's parser
    (sweep / "nested" / "result.json").write_text("[" * 100000 + "]" * 100000)
    p = run_cli(str(sweep), module="lcc.reduce")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    text = (sweep / "sensitivity.md").read_text()
    assert f"{len(MUTATIONS) + 3} jobs: 2 ok" in text
    for name, (_, _, why) in MUTATIONS.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {name} "))
        assert "malformed" in line and why in line, line
    nested = next(ln for ln in text.splitlines() if ln.startswith("| nested "))
    assert "unreadable" in nested and "nested too deeply" in nested
    # the good jobs' tables, tidy file and figures are there
    assert list(pd.read_csv(sweep / "sensitivity.csv").job) == ["good_kl"]
    assert list(pd.read_csv(sweep / "tasks.csv").job) == ["good_task"]
    assert set(pd.read_parquet(sweep / "curves.parquet").job) == {"good_kl"}
    assert (sweep / "plots" / "passkey_depth_ctx.png").exists() and (sweep / "plots" / "kl_vs_position.png").exists()


# ---- 7. minor items ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,msg", [(["--sweep", "/nonexistent/sweep"], "no such folder"),
                                      (["--ctx", "0"], "not a context length"),
                                      (["--ctx=-1k"], "not a context length")])
def test_dashboard_refuses_a_missing_sweep_and_nonpositive_ctx(args, msg):
    from lcc.dashboard import main
    with pytest.raises(SystemExit, match=msg):
        main(["--project", "p", "--entity", "e", "--dry-run", *args])


def test_a_set_aside_result_keeps_its_files_verifiable(tmp_path):
    first = run(make_cfg([*TINY, "n_docs=1", "ctx.tokens=400", "task=passkey", "task.n_samples=1",
                          "task.depths=[0.5]", "compressor=quant"], tmp_path))
    run(make_cfg([*TINY, "n_docs=1", "ctx.tokens=400", "task=passkey", "task.n_samples=1",
                  "task.depths=[0.5]", "compressor=quant", "compressor.bits=3"], tmp_path))
    (stale,) = tmp_path.glob("result.stale-*.json")
    folder = tmp_path / stale.name[len("result."):-len(".json")]
    old = read_json(stale)
    assert old["config_hash"] == first["config_hash"] and (folder / "samples.parquet").exists()
    assert files_problem(folder, old) is None and files_problem(tmp_path, read_json(tmp_path / "result.json")) is None
