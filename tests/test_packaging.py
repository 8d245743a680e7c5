"""The built wheel is the package users get: install it into a fresh environment (the repository not on the
path), run one tiny job and a reduce through its console commands from another directory, with Hydra's help
and tab completion and site defaults from the user config folder."""
import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def sh(cmd, cwd, env, timeout=600):
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build from a copy: no build/ or egg-info left in the repository
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name) if src.exists() else (src.mkdir(), shutil.copy(ROOT / name, src / name))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "default.yaml")  # a developer's site file never ships
    for pkg in ("lcc", "hydra_plugins"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=ignore)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LCC_CONFIG_DIR")}
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src],
       cwd=tmp, env=env)
    (wheel,) = (tmp / "dist").glob("lcc-*.whl")
    # A fresh venv; the dev venv's site-packages (torch, hydra, ...) reach it as a plain path entry, so
    # that venv's editable lcc (its .pth finder) is NOT active there: lcc can only come from the wheel.
    venv = tmp / "venv"
    sh([sys.executable, "-m", "venv", venv], cwd=tmp, env=env)
    py = venv / "bin" / "python"
    site = sh([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp, env=env).stdout.strip()
    Path(site, "dev_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel], cwd=tmp, env=env)
    work = tmp / "elsewhere"
    work.mkdir()
    return {"wheel": wheel, "bin": venv / "bin", "py": py, "work": work, "env": env, "tmp": tmp}


def test_wheel_holds_configs_plugins_and_metadata(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert "lcc/conf/sweep.yaml" in names and "lcc/conf/launcher/slurm.yaml" in names
    assert "lcc/conf/local/default.yaml.example" in names and "lcc/conf/local/default.yaml" not in names
    assert "hydra_plugins/lcc_sweeper/lcc_sweeper.py" in names and "hydra_plugins/__init__.py" not in names
    meta = zipfile.ZipFile(installed["wheel"]).read(
        next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT" in meta and "Classifier: Intended Audience :: Science/Research" in meta
    entry = zipfile.ZipFile(installed["wheel"]).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for cmd in ("lcc-sweep = lcc.sweep:cli", "lcc-reduce = lcc.reduce:main", "lcc-dashboard = lcc.dashboard:main"):
        assert cmd in entry


def test_installed_package_runs_a_job_and_a_reduce_from_another_directory(installed):
    b, work, env = installed["bin"], installed["work"], dict(installed["env"])
    where = sh([installed["py"], "-c", "import lcc, sys, hydra_plugins.lcc_sweeper.lcc_sweeper as s; "
                "print(lcc.__file__); print(s.__file__); print(sys.path)"], cwd=work, env=env).stdout.splitlines()
    assert all(str(installed["tmp"] / "venv") in w for w in where[:2]), where
    assert str(ROOT) not in ast.literal_eval(where[2])  # the repository itself is not on sys.path
    sweep = installed["tmp"] / "runs" / "sw"
    p = sh([b / "lcc-sweep", "-m", "model=tiny", "logger=none", "n_docs=2", "ctx.tokens=256",
            "compressor=quant", f"hydra.sweep.dir={sweep}"], cwd=work, env=env)
    assert "1 jobs: 1 ok, 0 failed, 0 missing" in p.stderr
    assert (sweep / "compressor=quant,ctx.tokens=256,model=tiny,n_docs=2" / "result.json").exists()
    other = installed["tmp"] / "other"
    other.mkdir()
    p = sh([b / "lcc-reduce", sweep], cwd=other, env=env)
    assert "mean KL" in p.stdout and (sweep / "plots" / "kl_vs_position.pdf").exists()
    print("\n".join(["wheel: " + installed["wheel"].name, *where[:2], p.stdout.splitlines()[2]]))


def test_console_commands_give_hydra_help_and_tab_completion(installed):
    b, work, env = installed["bin"], installed["work"], installed["env"]
    assert "lcc-sweep (= python -m lcc.sweep)" in sh([b / "lcc-sweep", "--help"], cwd=work, env=env).stdout
    assert "Hydra (1." in sh([b / "lcc-sweep", "--hydra-help"], cwd=work, env=env).stdout
    install = sh([b / "lcc-sweep", "-sc", "install=bash"], cwd=work, env=env).stdout
    assert "complete -o nospace -o default -F hydra_bash_completion lcc-sweep" in install
    line = "lcc-sweep compressor=ma"
    out = sh([b / "lcc-sweep", "-sc", "query=bash"], cwd=work,
             env={**env, "COMP_LINE": line, "COMP_POINT": str(len(line))}).stdout.split()
    assert out == ["compressor=magnitude"]
    line = "lcc-sweep launcher="
    out = sh([b / "lcc-sweep", "-sc", "query=bash"], cwd=work,
             env={**env, "COMP_LINE": line, "COMP_POINT": str(len(line))}).stdout.split()
    assert out == ["launcher=local", "launcher=slurm"]
    assert "usage: lcc-reduce" in sh([b / "lcc-reduce", "--help"], cwd=work, env=env).stdout
    assert "usage: lcc-dashboard" in sh([b / "lcc-dashboard", "--help"], cwd=work, env=env).stdout


def test_installed_package_reads_site_defaults_from_the_user_config_folder(installed, tmp_path):
    conf = tmp_path / "lcc-conf"
    (conf / "local").mkdir(parents=True)
    (conf / "local" / "default.yaml").write_text("# @package _global_\nn_docs: 5\nlogger:\n  entity: my-team\n")
    env = {**installed["env"], "LCC_CONFIG_DIR": str(conf)}
    p = sh([installed["bin"] / "lcc-sweep", "--cfg", "job"], cwd=installed["work"], env=env)
    assert "n_docs: 5" in p.stdout and "entity: my-team" in p.stdout
