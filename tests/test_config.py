"""Every config group option composes; bad overrides fail early with one clear message."""

import pytest
from omegaconf import OmegaConf

from lcc.job import validate
from tests.helpers import CONF_DIR, make_cfg, run_cli

GROUPS = ["model", "data", "ctx", "compressor", "calib", "logger"]


def options(group):
    """Every option of a group as Hydra sees it: YAML files and the schemas stored from lcc's classes."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option, tmp_path):
    extra = ["model.name_or_path=some/model"] if (group, option) == ("model", "hf") else []
    if (group, option) == ("compressor", "checkpoint"):
        extra.append("compressor.path=some/model")  # a hub id (no default checkpoint)
    if (group, option) == ("data", "hf"):
        extra += ["data.path=org/data", "data.split=test", "data.text_field=text"]
    if group == "data" and option == "text":
        (tmp_path / "x.txt").write_text("some text\n")
        extra.append(f"data.paths=[{tmp_path / 'x.txt'}]")
    cfg = make_cfg([f"{group}={option}", *extra], output_dir="/tmp/unused")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if not (group == "ctx" and cfg.ctx.tokens > cfg.model.max_context):
        validate(cfg)


def test_ctx_options_are_powers_of_two_k():
    assert {o: make_cfg([f"ctx={o}"]).ctx.tokens for o in options("ctx")} == {
        f"{k}k": k * 1024 for k in (1, 2, 4, 8, 16, 32, 64, 128)}


def test_defaults_are_embedded_model_and_pydoc():
    cfg = make_cfg([])
    assert cfg.model.name == "smollm2_135m" and cfg.data.kind == "pydoc" and cfg.logger.mode == "offline"


def test_context_beyond_trained_length_is_an_error_unless_allowed():
    from lcc import ConfigError
    cfg = make_cfg(["ctx=16k"], output_dir="/tmp/unused")  # SmolLM2 was trained to 8k
    with pytest.raises(ConfigError, match="allow_long_context"):
        validate(cfg)
    validate(make_cfg(["ctx=16k", "allow_long_context=true"], output_dir="/tmp/unused"))


@pytest.mark.parametrize("overrides,needles", [
    (["compressor.bits=9"], ["bits=9", "2..8"]),
    (["compressor=magnitude", "compressor.sparsity=1.2"], ["sparsity=1.2", "[0, 1)"]),
    (["compressor=quant", "compressor.sparsity=0.5"], ["sparsity"]),
    (["compressor=nope"], ["nope", "Available options", "quant"]),
    (["ctx=3k"], ["3k", "Available options"]),
    (["model=tiny", "ctx=8k"], ["allow_long_context"]),
])
def test_bad_overrides_fail_with_clear_message_and_write_nothing(tmp_path, overrides, needles):
    out = tmp_path / "run"
    p = run_cli(*overrides, "logger=none", f"hydra.run.dir={out}")
    assert p.returncode != 0
    for n in needles:
        assert n in p.stderr, (n, p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    assert not (out / "result.json").exists()


def test_bad_level_in_a_sweep_launches_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    p = run_cli("-m", "model=tiny", "compressor.bits=3,9", "logger=none", f"hydra.sweep.dir={sweep}")
    assert p.returncode != 0
    assert "1 of 2 jobs have invalid configs; nothing was launched" in p.stderr
    assert "bits=9" in p.stderr
    assert not list(sweep.glob("*/result.json")) if sweep.exists() else True
