"""Launcher presets (lcc/conf/launcher/) and site defaults from a user config folder, composed through the CLI."""
import pytest
import yaml

from tests.helpers import run_cli

WARNINGS = ("ConfigStore schema", "deprecated", "Warning")


def launcher_cfg(*overrides, env=None):
    p = run_cli(*overrides, "--cfg", "hydra", "-p", "hydra.launcher", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    for w in WARNINGS:  # Hydra's "validated against ConfigStore schema with the same name" deprecation
        assert w not in p.stderr and w not in p.stdout, p.stderr
    return yaml.safe_load(p.stdout)


def test_slurm_preset_composes_without_deprecation_warning_and_takes_the_fields_users_set():
    cfg = launcher_cfg("launcher=slurm")
    assert cfg["_target_"].endswith("SlurmLauncher")
    assert cfg["max_num_timeout"] == 3 and cfg["array_parallelism"] == 64 and cfg["srun_args"] == []
    assert cfg["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"
    cfg = launcher_cfg("launcher=slurm", "hydra.launcher.gres=gpu:a100:1", "hydra.launcher.constraint=h100",
                       "hydra.launcher.exclude='node[01-02]'", "hydra.launcher.mem_per_gpu=40G",
                       "hydra.launcher.srun_args=['--cpu-bind=none']", "hydra.launcher.array_parallelism=8",
                       "+hydra.launcher.additional_parameters.requeue=true")
    assert (cfg["gres"], cfg["constraint"], cfg["exclude"], cfg["mem_per_gpu"]) == (
        "gpu:a100:1", "h100", "node[01-02]", "40G")
    assert cfg["srun_args"] == ["--cpu-bind=none"] and cfg["array_parallelism"] == 8
    assert cfg["additional_parameters"] == {"requeue": True}


def test_local_preset_and_a_bad_field():
    cfg = launcher_cfg("launcher=local")
    assert cfg["_target_"].endswith("LocalLauncher") and cfg["gpus_per_node"] == 0
    p = run_cli("launcher=slurm", "hydra.launcher.gpus=1", "--cfg", "hydra")
    assert p.returncode != 0 and "gpus" in p.stderr and "LccSlurmQueueConf" in p.stderr


@pytest.mark.parametrize("how", ["LCC_CONFIG_DIR", "XDG_CONFIG_HOME"])
def test_site_defaults_from_the_user_config_folder(tmp_path, how):
    conf = tmp_path / "cfg" if how == "LCC_CONFIG_DIR" else tmp_path / "xdg" / "lcc"
    (conf / "local").mkdir(parents=True)
    (conf / "local" / "default.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /launcher: slurm\n"
        "hydra:\n  launcher:\n    partition: gpu\n    setup: ['export HF_HOME=/scratch']\nn_docs: 7\n")
    (conf / "model").mkdir()
    (conf / "model" / "mine.yaml").write_text("name: mine\nkind: hf\nname_or_path: /models/mine\n")
    env = {"LCC_CONFIG_DIR": str(conf)} if how == "LCC_CONFIG_DIR" else {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "LCC_CONFIG_DIR": None}
    cfg = launcher_cfg(env=env)
    assert cfg["partition"] == "gpu" and cfg["setup"] == ["export HF_HOME=/scratch"]
    p = run_cli("model=mine", "--cfg", "job", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    job = yaml.safe_load(p.stdout)
    assert job["n_docs"] == 7 and job["model"]["name_or_path"] == "/models/mine"
    assert yaml.safe_load(run_cli("--cfg", "job", "-p", "n_docs", env={"LCC_CONFIG_DIR": str(tmp_path / "none"),
                                                                       "XDG_CONFIG_HOME": str(tmp_path)}).stdout) == 4
