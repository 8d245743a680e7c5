"""Compare the composed job configs of two lcc source trees: the resolved config (key order included), the config
hash (lcc.job.config_hash: the job's identity, what resume checks) and the keys left out of job folder names, for
a list of override sets: every compressor, every task, every option of every other group, every job of every
experiment preset, and some combined overrides.

    python scripts/compare_configs.py SRC_BEFORE SRC_AFTER     # each tree composed in its own process

Each tree is imported from its own folder (PYTHONPATH=<tree>), so the two never share a ConfigStore. Prints one
line per override set that differs and a summary; exits 1 if any differs.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

OUTPUT_DIR = "/tmp/lcc-compare-configs"  # output_dir is volatile (not in the hash); fixed so that it resolves


def split_top(value: str) -> list[str]:
    """A sweep value ``a,b,[c,d]`` -> ``["a", "b", "[c,d]"]`` (commas inside brackets and braces stay)."""
    out, depth, cur = [], 0, ""
    for ch in value:
        depth += ch in "[{" and 1 or (-1 if ch in "]}" else 0)
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def experiment_jobs(conf: Path) -> list[list[str]]:
    """Every job of every experiment preset: the cartesian product of each grid entry's values."""
    from omegaconf import OmegaConf

    jobs = []
    for f in sorted((conf / "experiment").glob("*.yaml")):
        grid = OmegaConf.to_container(OmegaConf.load(f))["hydra"]["sweeper"]["grid"]
        for entry in grid:
            keys = list(entry)
            values = [split_top(str(entry[k]).lower() if isinstance(entry[k], bool) else str(entry[k])) for k in keys]
            for combo in itertools.product(*values):
                jobs.append([f"experiment={f.stem}", *(f"{k}={v}" for k, v in zip(keys, combo))])
    return jobs


def override_sets(text_file: str) -> list[list[str]]:
    from lcc.compressors import REGISTRY as COMPRESSORS
    from lcc.tasks import REGISTRY as TASKS

    conf = Path(__import__("lcc").__file__).parent / "conf"
    sets: list[list[str]] = [[]]
    sets += [[f"compressor={c}", *(["compressor.path=org/model"] if c == "checkpoint" else [])]
             for c in sorted(COMPRESSORS)]
    sets += [[f"task={t}"] for t in sorted(TASKS)]
    sets += [[f"model={m}", *(["model.name_or_path=org/model"] if m == "hf" else [])]
             for m in ("smollm2_135m", "tiny", "tiny_arch", "hf", "llama31_8b", "llama2_7b_32k", "mistral_7b_v02",
                       "qwen25_7b")]
    sets += [[f"data={d}", *([f"data.paths=[{text_file}]"] if d == "text" else [])]
             for d in ("pydoc", "text", "wikitext2", "wikitext103", "pg19")]
    sets += [[f"ctx={k}k"] for k in (1, 2, 4, 8, 16, 32, 64, 128)]
    sets += [[f"calib={c}"] for c in ("pydoc", "c4", "pg19", "wikitext2")]
    sets += [[f"logger={x}"] for x in ("wandb", "none")]
    sets += [["model=tiny", "task=passkey", "task.n_samples=2", "task.max_new_tokens=8", "ctx=2k", "compressor=gptq",
              "calib=c4", "calib.n_samples=16"],
             ["model=hf", "model.name_or_path=org/m", "data=wikitext2", "logger=none", "cache.enabled=false",
              "cache.dir=/tmp/c", "resume=false"],
             ["model=tiny_arch", "model.arch=llama", "compressor=wanda", "compressor.sparsity=0.3",
              "compressor.targets.modules=[mlp]"],
             ["task=lm_eval", "task.tasks=[arc_easy]", "task.limit=5", "model=tiny"],
             ["task=niah", "task.n_keys=3", "task.n_queries=2", "task.value_type=word", "data=pg19"],
             ["task=vt", "task.n_hops=2", "task.depths=[0.5]"],
             ["seed=3", "n_docs=8", "device=cpu", "dtype=bf16", "allow_long_context=true", "chunk_size=256", "ctx=16k"],
             ["logger=wandb", "logger.mode=online", "logger.tags=[a,b]", "logger.entity=me"],
             ["data=wikitext2", "+data.data_files=x.json"],
             ["compressor=compose", "compressor.stages=[{name: rotate},{name: kv, bits: 4}]"]]
    return sets + experiment_jobs(conf)


def dump(text_file: str) -> None:
    """In the tree on PYTHONPATH: ``{overrides: {"config", "hash"}}`` and the folder-name exclusions, as JSON."""
    from hydra import compose, initialize_config_dir

    import lcc
    import lcc.sweep  # noqa: F401  (the stored configs and resolvers)
    from lcc.job import config_hash, job_config

    try:
        from lcc.config import override_exclude_keys
    except ImportError:  # before lcc.config
        from lcc.validate import override_exclude_keys
    conf = str(Path(lcc.__file__).parent / "conf")
    out = {"lcc": lcc.__file__, "exclude_keys": override_exclude_keys(), "jobs": {}}
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        for ov in override_sets(text_file):
            key = " ".join(ov)
            try:
                cfg = job_config(compose("sweep", overrides=[*ov, f"output_dir={OUTPUT_DIR}"]))
                out["jobs"][key] = {"config": json.dumps(cfg, default=str), "hash": config_hash(cfg)}
            except Exception as e:  # noqa: BLE001 - an override set that does not compose is a difference too
                out["jobs"][key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    json.dump(out, sys.stdout)


def main(before: str, after: str) -> int:
    with tempfile.TemporaryDirectory() as d:
        text = Path(d) / "x.txt"
        text.write_text("some text\n")
        res = {}
        for name, tree in (("before", before), ("after", after)):
            env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
            p = subprocess.run([sys.executable, __file__, "--dump", str(text)], env=env, cwd=d, text=True,
                               capture_output=True)
            if p.returncode:
                print(f"{name} ({tree}) failed:\n{p.stderr[-3000:]}")
                return 2
            res[name] = json.loads(p.stdout)
    b, a = res["before"], res["after"]
    print(f"before: {b['lcc']}\nafter:  {a['lcc']}")
    bad = 0
    if b["exclude_keys"] != a["exclude_keys"]:
        bad += 1
        print(f"folder-name exclusions differ:\n  before {b['exclude_keys']}\n  after  {a['exclude_keys']}")
    for key in sorted(set(b["jobs"]) | set(a["jobs"])):
        jb, ja = b["jobs"].get(key), a["jobs"].get(key)
        if jb == ja:
            continue
        bad += 1
        what = []
        if jb is None or ja is None:
            what.append("only in " + ("after" if jb is None else "before"))
        else:
            if jb.get("hash") != ja.get("hash"):
                what.append(f"hash {jb.get('hash')} -> {ja.get('hash')}")
            if "error" in jb or "error" in ja:
                what.append(f"error before={jb.get('error')} after={ja.get('error')}")
            elif jb["config"] != ja["config"]:
                cb, ca = json.loads(jb["config"]), json.loads(ja["config"])
                what.append("resolved config " + ("differs in key order only" if cb == ca else
                                                  f"differs:\n    before {jb['config']}\n    after  {ja['config']}"))
        print(f"[{key}]: {'; '.join(what)}")
    n = len(set(b["jobs"]) | set(a["jobs"]))
    errors = sum("error" in j for j in a["jobs"].values())
    diff = bad - (b["exclude_keys"] != a["exclude_keys"])
    print(f"{n} override sets: {n - diff} identical (resolved config, key order and config hash), {diff} different; "
          f"folder-name exclusions {'identical' if diff == bad else 'different'}; {errors} did not compose in 'after'")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--dump"]:
        dump(sys.argv[2])
    elif len(sys.argv) == 3:
        sys.exit(main(sys.argv[1], sys.argv[2]))
    else:
        sys.exit(__doc__)
