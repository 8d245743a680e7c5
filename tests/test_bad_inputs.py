"""Issue 9's "Done means": a table of bad overrides driven through the real command line: exit status 1, one
message naming the key and the valid choices, no traceback, nothing launched (no job folder, no result.json,
no model loaded).

* without ``-m``: one ``python -m lcc.sweep <overrides>`` per case, all started at once from a thread pool
  (each validates and exits: ~1.5 s of CPU);
* with ``-m``: ONE ``python -m lcc.sweep -m experiment=<grid>`` whose sweeper grid holds every case as a job
  (an experiment file in a folder added with hydra.searchpath): the sweeper validates every job before
  launching any and reports all bad jobs, each with its message, in one error.

With LCC_BAD_INPUTS_MD=<file> the table of cases and their messages is written there as markdown."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # ~60 subprocesses: about 90 s of CPU


def cases() -> list[tuple[str, list[str], list[str]]]:
    """(id, overrides, needles): the first needle is the message's start (``<key>=<value>``), the others name
    the valid choices or the reason. ``<dir>``, ``<binary>``... stand for the files made by the ``files`` fixture."""
    hf = ["model=hf", "model.name_or_path=org/model"]
    TF = "true or false"
    return [
        # class 1: booleans are booleans
        ("trust_remote_code=no", [*hf, "model.trust_remote_code=no"], ["model.trust_remote_code='no'", TF]),
        ("trust_remote_code='false'", [*hf, "model.trust_remote_code='false'"], ["model.trust_remote_code='false'", TF]),
        ("trust_remote_code=0", [*hf, "model.trust_remote_code=0"], ["model.trust_remote_code=0", TF]),
        ("resume=yes", ["resume=yes"], ["resume='yes'", TF]),
        ("allow_long_context=1", ["allow_long_context=1"], ["allow_long_context=1", TF]),
        ("cache.enabled=no", ["cache.enabled=no"], ["cache.enabled='no'", TF]),
        ("cache.dense=off", ["cache.dense=off"], ["cache.dense='off'", TF]),
        ("cache.compressed=maybe", ["cache.compressed=maybe"], ["cache.compressed='maybe'", "auto", "true"]),
        ("quant sym=no", ["compressor.sym=no"], ["compressor.sym='no'", TF]),
        ("gptq act_order=1", ["compressor=gptq", "compressor.act_order=1"], ["compressor.act_order=1", TF]),
        ("wanda propagate=nope", ["compressor=wanda", "compressor.propagate=nope"], ["compressor.propagate='nope'", TF]),
        ("targets.lm_head=yes", ["compressor.targets.lm_head=yes"], ["compressor.targets.lm_head='yes'", TF]),
        ("kv pre_rope=on", ["compressor=kv", "compressor.pre_rope=on"], ["compressor.pre_rope='on'", TF]),
        ("quant_wa a_sym=0", ["compressor=quant_wa", "compressor.a_sym=0"], ["compressor.a_sym=0", TF]),
        ("data.add_bos=no", ["data.add_bos=no"], ["data.add_bos='no'", TF]),
        ("calib.data.join_docs=maybe", ["calib=c4", "calib.data.join_docs=maybe"], ["calib.data.join_docs='maybe'", TF]),
        # class 4/5: every key checked before launch, with a message instead of a traceback
        ("device=tpu", ["device=tpu"], ["device='tpu'", "auto, cpu, cuda"]),
        ("device=cuda:x", ["device=cuda:x"], ["device='cuda:x'", "cuda:<N>"]),
        ("dtype=float8", ["dtype=float8"], ["dtype='float8'", "bfloat16"]),
        ("seed=abc", ["seed=abc"], ["seed='abc'", "an integer"]),
        ("seed=-1", ["seed=-1"], ["seed=-1", "an integer in 0.."]),
        ("n_docs=0", ["n_docs=0"], ["n_docs=0", "an integer >= 1"]),
        ("n_docs=2.5", ["n_docs=2.5"], ["n_docs=2.5", "an integer >= 1"]),
        ("chunk_size=0", ["chunk_size=0"], ["chunk_size=0", "an integer >= 1"]),
        ("ctx.tokens=1", ["ctx.tokens=1"], ["ctx.tokens=1", "an integer >= 2"]),
        ("ctx.tokens=abc", ["ctx.tokens=abc"], ["ctx.tokens='abc'", "an integer >= 2"]),
        ("ctx=16k on an 8k model", ["ctx=16k"], ["ctx=16384 tokens exceeds", "allow_long_context=true"]),
        ("calib.seqlen=abc", ["calib.seqlen=abc"], ["calib.seqlen='abc'", "an integer >= 1"]),
        ("calib.n_samples=0", ["calib.n_samples=0"], ["calib.n_samples=0", "an integer >= 1"]),
        ("calib.seed=x", ["calib.seed=x"], ["calib.seed='x'", "an integer"]),
        ("logger.mode=bogus", ["logger.mode=bogus"], ["logger.mode='bogus'", "offline, online"]),
        ("logger.kind=tensorboard", ["logger.kind=tensorboard"], ["logger.kind='tensorboard'", "wandb, none"]),
        ("+sede=1 (unknown key)", ["+sede=1"], ["sede is not a key of lcc's config", "seed"]),
        ("+model.foo=1 (unknown key)", ["+model.foo=1"], ["model.foo is not a key of model kind gguf", "max_context"]),
        ("cache.dir=<a file>", ["cache.dir=<file>"], ["cache.dir='<file>' is a file", "a folder"]),
        # class 5/6: data paths and text
        ("data.paths=<a folder>", ["data=text", "data.paths=[<dir>]"], ["data.paths", "matches folder", "text files"]),
        ("data.paths=<no match>", ["data=text", "data.paths=[/nonexistent/*.txt]"], ["data.paths", "matches no file"]),
        ("data.paths=<binary file>", ["data=text", "data.paths=[<binary>]"], ["data.paths", "NUL byte", "UTF-8 text files"]),
        ("data.paths=<latin-1 file>", ["data=text", "data.paths=[<latin1>]"], ["data.paths", "not UTF-8 text", "decode_errors=replace"]),
        ("data=text without paths", ["data=text"], ["data.paths is missing", "data.paths="]),
        ("data.decode_errors=ignore", ["data=text", "data.paths=[<text>]", "data.decode_errors=ignore"],
         ["data.decode_errors='ignore'", "strict, replace"]),
        ("data.path=<missing local dataset>", ["data=wikitext2", "data.path=/nonexistent/ds"], ["data.path='/nonexistent/ds' is a local path", "hub id"]),
        # model paths
        ("model=hf, missing local path", ["model=hf", "model.name_or_path=/nonexistent/model"], ["model.name_or_path='/nonexistent/model' is a local path that does not exist", "hub id"]),
        ("model=hf, folder without config.json", ["model=hf", "model.name_or_path=<dir>"], ["has no config.json", "hub id"]),
        ("model=hf without name_or_path", ["model=hf"], ["model.name_or_path is missing", "hub id"]),
        ("model.attn_implementation=fast", [*hf, "model.attn_implementation=fast"], ["model.attn_implementation='fast'", "sdpa"]),
        ("tiny model.n_heads=5", ["model=tiny", "model.n_heads=5"], ["model.n_heads=5", "a divisor of model.hidden_size"]),
        # compressor parameters
        ("quant bits=9", ["compressor.bits=9"], ["compressor.bits=9", "2..8"]),
        ("quant group_size=0", ["compressor.group_size=0"], ["compressor.group_size=0", "-1"]),
        ("magnitude sparsity=1.2", ["compressor=magnitude", "compressor.sparsity=1.2"], ["compressor.sparsity=1.2", "[0, 1)"]),
        ("magnitude 1:3 with sparsity 0.5", ["compressor=magnitude", "compressor.nm_n=1", "compressor.nm_m=3"],
         ["compressor.sparsity=0.5 contradicts N:M 1:3", "sparsity=0.666667", "sparsity=null"]),
        ("quant +sparsity=0.5 (not its parameter)", ["+compressor.sparsity=0.5"], ["does not take ['sparsity']", "valid parameters: ['bits', 'group_size', 'sym']"]),
        ("targets.layers=[1]", ["compressor.targets.layers=[1]"], ["compressor.targets.layers=[1]", "[start, stop)"]),
        ("targets.modules=[]", ["compressor.targets.modules=[]"], ["compressor.targets.modules=[]", "attn, mlp"]),
        ("kv key_mode=row", ["compressor=kv", "compressor.key_mode=row"], ["compressor.key_mode='row'", "channel"]),
        ("mixed saliency=random", ["compressor=mixed", "compressor.saliency=random"], ["compressor.saliency='random'", "max_abs"]),
        ("compose stage bits=9", ["compressor=compose", "compressor.stages=[{name:quant,bits:9}]"], ["compressor.stages[0].bits=9", "2..8"]),
    ]


CASES = cases()


def with_files(items: list[str], files: dict[str, Path]) -> list[str]:
    return [re.sub(r"<(\w+)>", lambda m: str(files.get(m.group(1), m.group(0))), x) for x in items]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    (d / "folder").mkdir()
    (d / "folder" / "a.txt").write_text("text\n")
    (d / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (d / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 100)
    (d / "text.txt").write_text("fine text\n" * 100)
    (d / "a_file").write_text("x")
    return {"dir": d / "folder", "binary": d / "binary.bin", "latin1": d / "latin1.txt", "text": d / "text.txt",
            "file": d / "a_file"}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "lcc.sweep", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=600)


def slug(cid: str) -> str:
    return re.sub(r"\W+", "_", cid)


def _grid_entry(overrides: list[str]) -> dict[str, str]:
    """A sweeper grid entry whose lines ``key=value`` are exactly these overrides (values kept as text)."""
    return dict(o.split("=", 1) for o in overrides)


@pytest.fixture(scope="module")
def results(files, tmp_path_factory):
    """Every case once as a single run, and all cases as the jobs of one multirun, all at once."""
    base = tmp_path_factory.mktemp("runs")
    conf = base / "conf" / "experiment"
    conf.mkdir(parents=True)
    grid = [_grid_entry(with_files(o, files)) for _, o, _ in CASES]
    (conf / "bad_inputs.yaml").write_text("# @package _global_\n" + json.dumps({"hydra": {"sweeper": {"grid": grid}}}))
    jobs = {cid: [*with_files(o, files), f"hydra.run.dir={base / slug(cid)}"] for cid, o, _ in CASES}
    jobs["-m"] = ["-m", "experiment=bad_inputs", f"hydra.searchpath=[file://{base / 'conf'}]",
                  f"hydra.sweep.dir={base / 'multirun'}"]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {k: pool.submit(_run, args) for k, args in jobs.items()}
        out = {k: f.result() for k, f in futures.items()}
    table = os.environ.get("LCC_BAD_INPUTS_MD")
    if table:
        lines = ["| # | bad input (overrides) | message (single run; `-m` prints the same line for its job) |",
                 "|---|---|---|"]
        for i, (cid, overrides, _) in enumerate(CASES, 1):
            err = out[cid].stderr.strip().splitlines()
            msg = " ".join(x.strip() for x in err[1:] or err)
            ov = " ".join(overrides).replace("|", "\\|")
            msg = msg.replace(str(base.parent), "<tmp>").replace("|", "\\|")
            lines.append(f"| {i} | `{ov}` | {msg} |")
        Path(table).write_text("\n".join(lines) + "\n")
    return base, out


def test_the_table_has_at_least_40_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("cid,overrides,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_override_is_refused_before_launch(results, files, cid, overrides, needles):
    base, out = results
    p = out[cid]
    err = p.stderr
    needles = with_files(needles, files)
    assert p.returncode == 1, (cid, p.returncode, err[-2000:])
    assert "Traceback" not in err and "Error executing job" not in err, err[-2000:]
    assert err.startswith("invalid config; nothing was launched:\n"), err[-2000:]
    for n in needles:
        assert n in err, (cid, n, err[-2000:])
    assert err.count(needles[0]) == 1, (cid, err)  # one message
    assert re.search(r"\bvalid\b", err.split("\n", 1)[1]), err  # ... that gives the valid choices
    assert not (base / slug(cid)).exists()  # no job folder: Hydra never created it
    assert "loaded model" not in err + p.stdout


def test_a_multirun_of_every_case_launches_nothing_and_names_each_jobs_problem(results, files):
    base, out = results
    p = out["-m"]
    err = p.stderr
    all_cases = CASES
    assert p.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert f"{len(all_cases)} of {len(all_cases)} jobs have invalid configs; nothing was launched" in err
    blocks = re.split(r"\n  job (\d+) \[", err)[1:]
    found = {int(blocks[j]): blocks[j + 1] for j in range(0, len(blocks), 2)}
    assert sorted(found) == list(range(len(all_cases)))
    for j, (cid, overrides, needles) in enumerate(all_cases):
        needles = with_files(needles, files)
        problem = found[j].split("]", 1)[1] if "]:" in found[j] else found[j]
        for n in needles:
            assert n in found[j], (cid, n, found[j])
        assert problem.count(needles[0]) == 1 and re.search(r"\bvalid\b", problem), (cid, found[j])
    sweep = base / "multirun"
    assert not sweep.exists() or [f.name for f in sweep.iterdir()] == ["multirun.yaml"]
