"""lcc.validate: every key checked before launch; booleans are booleans; one definition of the volatile keys;
target sets that select nothing and compressions that change nothing are errors (issue 9)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lcc import ConfigError
from lcc.job import config_hash, job_config, run
from lcc.config import VOLATILE_KEYS, override_exclude_keys
from lcc.validate import problems, validate
from tests.helpers import CONF_DIR, make_cfg

TINY = ["model=tiny", "logger=none", "n_docs=2", "ctx.tokens=256"]


def bad(overrides: list[str]) -> list[str]:
    return problems(make_cfg(overrides, output_dir="/tmp/unused"))


# ---- class 1: booleans ------------------------------------------------------------------------------------
BOOLEAN_KEYS = [
    (["model=hf", "model.name_or_path=org/model"], "model.trust_remote_code"),
    ([], "resume"), ([], "allow_long_context"), ([], "cache.enabled"), ([], "cache.dense"),
    ([], "data.add_bos"), (["data=wikitext2"], "data.join_docs"), ([], "calib.data.add_bos"),
    (["compressor=quant"], "compressor.sym"), (["compressor=gptq"], "compressor.act_order"),
    (["compressor=gptq"], "compressor.static_groups"), (["compressor=gptq"], "compressor.propagate"),
    (["compressor=wanda"], "compressor.propagate"), (["compressor=sparsegpt"], "compressor.propagate"),
    (["compressor=mixed"], "compressor.sym"), (["compressor=kv"], "compressor.pre_rope"),
    (["compressor=kv"], "compressor.sym"), (["compressor=quant_wa"], "compressor.a_sym"),
    (["compressor=quant"], "compressor.targets.lm_head"),
]


@pytest.mark.parametrize("value", ["no", "'false'", "0", "1"])
@pytest.mark.parametrize("base,key", BOOLEAN_KEYS, ids=[k for _, k in BOOLEAN_KEYS])
def test_every_boolean_refuses_anything_but_a_boolean(base, key, value):
    found = bad([*base, f"{key}={value}"])
    assert len(found) == 1 and found[0].startswith(f"{key}=") and "true or false" in found[0], found
    assert bad([*base, f"{key}=false"]) == [] and bad([*base, f"{key}=true"]) == []


def test_trust_remote_code_no_never_runs_the_model_folders_code(tmp_path):
    """``bool('no')`` is True: before the fix, ``model.trust_remote_code=no`` imported the folder's Python.
    Here the folder's code would create a marker file; neither validation nor the loader may run it."""
    from lcc.models import load_model

    marker = tmp_path / "code_ran"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    (model_dir / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig",
                                           "AutoModelForCausalLM": "evil.EvilConfig"}}))
    found = bad(["model=hf", f"model.name_or_path={model_dir}", "model.trust_remote_code=no"])
    assert found == [found[0]] and found[0].startswith("model.trust_remote_code='no'")
    cfg = OmegaConf.create({"name": "m", "kind": "hf", "name_or_path": str(model_dir), "attn_implementation": "sdpa",
                            "trust_remote_code": "no", "device_map": None, "max_context": None})
    import torch
    with pytest.raises(ConfigError, match="trust_remote_code='no'"):
        load_model(cfg, torch.device("cpu"), torch.float32)
    assert not marker.exists()


# ---- class 4: every key checked, without a model ------------------------------------------------------------
@pytest.mark.parametrize("overrides,needle", [
    (["device=tpu"], "device='tpu'"), (["device=cuda:x"], "device='cuda:x'"), (["dtype=int4"], "dtype='int4'"),
    (["seed=abc"], "seed='abc'"), (["seed=1.5"], "seed=1.5"), (["n_docs=0"], "n_docs=0"),
    (["chunk_size=-1"], "chunk_size=-1"), (["calib.seqlen=abc"], "calib.seqlen='abc'"),
    (["calib.n_samples=0"], "calib.n_samples=0"), (["logger=wandb", "logger.mode=bogus"], "logger.mode='bogus'"),
    (["model=hf"], "model.name_or_path is missing"), (["+sede=1"], "sede is not a key"),
    (["model=tiny", "model.n_heads=5"], "model.n_heads=5"), (["data=text"], "data.paths is missing"),
])
def test_model_free_keys_are_checked_before_launch(overrides, needle):
    found = bad(overrides)
    assert len(found) == 1 and needle in found[0] and "valid" in found[0], found


def test_all_problems_of_a_job_are_reported_at_once():
    found = bad(["device=tpu", "seed=abc", "compressor.bits=9"])
    assert len(found) == 3
    with pytest.raises(ConfigError, match="3 invalid settings"):
        validate(make_cfg(["device=tpu", "seed=abc", "compressor.bits=9"], output_dir="/tmp/unused"))


def test_model_paths_local_missing_is_named_hub_ids_stay_allowed(tmp_path):
    assert bad(["model=hf", "model.name_or_path=org/some-model"]) == []
    assert bad(["model=hf", "model.name_or_path=gpt2"]) == []
    (found,) = bad(["model=hf", f"model.name_or_path={tmp_path / 'nope'}"])
    assert "is a local path that does not exist" in found
    (found,) = bad(["model=hf", f"model.name_or_path={tmp_path}"])
    assert "has no config.json" in found
    (found,) = bad(["model=hf", "model.name_or_path=a/b/c"])  # not a hub id: a relative path
    assert "does not exist" in found


def test_text_data_must_be_utf8_text_unless_opted_in(tmp_path):
    (tmp_path / "ok.txt").write_text("hello wörld\n" * 10)
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 10)
    (tmp_path / "g" / "sub").mkdir(parents=True)
    (tmp_path / "g" / "a.txt").write_text("text\n")
    assert bad(["data=text", f"data.paths=[{tmp_path / 'ok.txt'}]"]) == []
    (found,) = bad(["data=text", f"data.paths=[{tmp_path / 'bin.dat'}]"])
    assert "bin.dat is not text: it has a NUL byte" in found and "decode_errors=replace" in found
    (found,) = bad(["data=text", f"data.paths=[{tmp_path / 'latin1.txt'}]"])
    assert "latin1.txt is not UTF-8 text: invalid byte at byte 3" in found
    (found,) = bad(["data=text", f"data.paths=[{tmp_path}]"])
    assert "matches folder" in found
    (found,) = bad(["data=text", f"data.paths=[{tmp_path}/g/*]"])  # a glob that matches a folder names it
    assert "g/sub" in found and "matches folder" in found
    assert bad(["data=text", f"data.paths=[{tmp_path / 'latin1.txt'}]", "data.decode_errors=replace"]) == []
    # the job side refuses the same file (a library caller that skips validation gets the same message)
    from lcc.data import load_texts
    cfg = OmegaConf.create({"name": "text", "kind": "text", "paths": [str(tmp_path / "bin.dat")],
                            "decode_errors": "strict"})
    with pytest.raises(ConfigError, match="NUL byte"):
        load_texts(cfg)
    (text,) = load_texts(OmegaConf.merge(cfg, {"decode_errors": "replace", "paths": [str(tmp_path / "latin1.txt")]}))
    assert "caf\ufffd" in text


def test_nm_advice_works_literally():
    (msg,) = bad(["compressor=magnitude", "compressor.nm_n=1", "compressor.nm_m=3"])
    assert "compressor.sparsity=0.5 contradicts N:M 1:3" in msg and "sparsity=0.666667" in msg
    assert "sparsity=null" in msg
    assert bad(["compressor=magnitude", "compressor.nm_n=1", "compressor.nm_m=3", "compressor.sparsity=0.666667"]) == []
    assert bad(["compressor=wanda", "compressor.nm_n=1", "compressor.nm_m=3", "compressor.sparsity=null"]) == []
    assert bad(["compressor=magnitude", "compressor.sparsity=null"])  # null needs N:M
    from lcc.compressors import build
    comp = build({"name": "magnitude", "sparsity": 0.666667, "nm_n": 1, "nm_m": 3})
    assert comp.sparsity == 1 - 1 / 3 and comp.level() == "1:3"


# ---- one definition of the volatile keys ----------------------------------------------------------------
def _hydra_cfg(overrides):
    import lcc.sweep  # noqa: F401  (resolvers)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("sweep", overrides=overrides, return_hydra_config=True)


def test_folder_name_exclusions_come_from_the_volatile_keys():
    c = _hydra_cfg([])
    assert list(c.hydra.job.config.override_dirname.exclude_keys) == override_exclude_keys()
    for k in override_exclude_keys():
        assert k in ("experiment", "launcher") or k.split(".")[0] in VOLATILE_KEYS
    # every key under a volatile node of every option of it is excluded
    for option in ("wandb", "none"):
        lg = _hydra_cfg([f"logger={option}"]).logger
        assert {f"logger.{k}" for k in lg} <= set(override_exclude_keys())
    assert {f"cache.{k}" for k in c.cache} <= set(override_exclude_keys())


def test_keys_that_change_numbers_or_placement_name_their_folder():
    def folder(*o):
        return _hydra_cfg(list(o)).hydra.job.override_dirname

    assert folder("device=cpu") != folder("device=cuda") and folder("dtype=bfloat16") != folder()
    assert folder("logger.mode=online", "logger.tags=[x]", "cache.dir=/x", "resume=false") == folder()
    base = job_config(make_cfg([], output_dir="/x"))
    assert config_hash({**base, "device": "cuda"}) != config_hash(base)
    assert config_hash({**base, "logger": {"kind": "none"}, "cache": {}, "output_dir": "/y"}) == config_hash(base)


def test_experiments_only_set_a_grid_and_launchers_only_hydra():
    """``experiment`` and ``launcher`` are left out of folder names: safe only while an experiment sets nothing
    but the sweeper's grid (whose values are each job's own overrides) and a launcher preset nothing but
    Hydra's launcher."""
    for f in (Path(CONF_DIR) / "experiment").glob("*.yaml"):
        body = OmegaConf.load(f)
        assert set(body) == {"hydra"} and set(body.hydra) == {"sweeper"} and set(body.hydra.sweeper) == {"grid"}, f
    launchers = list((Path(CONF_DIR) / "launcher").glob("*.yaml"))
    for f in launchers:
        body = OmegaConf.load(f)
        assert set(body) <= {"defaults", "hydra"} and set(body.hydra) == {"launcher"}, f


# ---- class 2: targets that select nothing, compressions that change nothing ---------------------------------
@pytest.mark.parametrize("overrides,needles", [
    (["compressor=quant", "compressor.targets.modules=[nonexistent]"],
     ["['nonexistent'] match no module", "mlp.down_proj", "self_attn.q_proj", "2 layers"]),
    (["compressor=magnitude", "compressor.targets.modules=[mlp.down_proj,nonexistent]"], ["['nonexistent']"]),
    (["compressor=quant", "compressor.targets.layers=[5,8]"], ["targets.layers=[5, 8] is outside", "2 layers"]),
    (["compressor=gptq", "compressor.targets.layers=[0,3]", "calib.n_samples=2", "calib.seqlen=64"],
     ["is outside the model, which has 2 layers"]),
    (["compressor=kv", "compressor.targets.modules=[mlp]"], ["match no module", "self_attn", "2 layers"]),
    (["compressor=compose", "compressor.stages=[{name:magnitude,targets:{modules:[nope]}}]"], ["['nope']"]),
])
def test_a_target_set_that_selects_nothing_fails_the_job(tmp_path, overrides, needles):
    with pytest.raises(ConfigError) as e:
        run(make_cfg([*TINY, *overrides], tmp_path))
    for n in needles:
        assert n in str(e.value), str(e.value)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["status"] == "failed" and not (tmp_path / "curve.parquet").exists()


@pytest.mark.parametrize("overrides", [
    ["compressor=magnitude", "compressor.sparsity=0.0"],
    ["compressor=random", "compressor.sparsity=0.0"],
    ["compressor=quant_wa", "compressor.w_bits=16", "compressor.a_bits=16"],
])
def test_a_compressor_that_changes_no_weight_fails(tmp_path, overrides):
    with pytest.raises(ConfigError, match="changed no weight"):
        run(make_cfg([*TINY, *overrides], tmp_path))
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"


def test_changed_weights_are_recorded_and_runtime_compressors_pass(tmp_path):
    res = run(make_cfg([*TINY, "compressor=quant", "compressor.targets.modules=[mlp.down_proj]"], tmp_path / "q"))
    cov = res["weights"].pop("coverage")
    assert res["weights"] == {"targeted_linears": 2, "changed_linears": 2}
    # by kind: only the two down projections (64 x 128 each in the tiny model) are targeted and changed
    assert cov["mlp"]["targeted"] == cov["mlp"]["changed"] == 2 * 64 * 128 < cov["mlp"]["params"]
    assert cov["attention"]["targeted"] == 0 and cov["attention"]["params"] > 0
    kv = run(make_cfg([*TINY, "compressor=kv"], tmp_path / "kv"))  # acts in attention: weights unchanged is right
    assert kv["status"] == "ok" and kv["weights"]["changed_linears"] == 0 and kv["summary"]["kl_mean"] > 0


def test_weight_fingerprints_see_a_single_changed_bit():
    """Both fingerprints (xxh3 of the bytes on CPU; the on-device reduction used on GPUs, run here on CPU)."""
    import torch
    from lcc.compressors.base import bits_fingerprint, weight_fingerprint

    for fp in (weight_fingerprint, lambda lin: bits_fingerprint(lin.weight, chunk=1000)):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            lin = torch.nn.Linear(64, 48).to(dtype)
            before = fp(lin)
            with torch.no_grad():
                w = lin.weight.view(-1)
                for i in (0, 1234, 3071):
                    w[i] = -w[i]  # flips one sign bit
                    assert fp(lin) != before
                    w[i] = -w[i]
                    assert fp(lin) == before
                w[7], w[8] = w[8].clone(), w[7].clone()  # the same values in other places
                assert fp(lin) != before
