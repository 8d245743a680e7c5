"""Shared test helpers: compose lcc's real config with overrides, like the CLI does."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

import lcc.sweep  # noqa: F401  (registers the lcc_subdir resolver and the compressor configs)

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(ROOT / "lcc" / "conf")


def make_cfg(overrides: list[str], output_dir: str | Path | None = None):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        extra = [f"output_dir={output_dir}"] if output_dir is not None else []
        return compose("sweep", overrides=list(overrides) + extra)


def run_cli(*args: str, module: str = "lcc.sweep", cwd: str | Path | None = None, timeout: int = 900,
            env: dict | None = None):
    """Run ``python -m <module> args`` in a subprocess (``env``: extra environment variables, None removes
    one); returns CompletedProcess (text)."""
    extra = env or {}
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    env.update({k: v for k, v in extra.items() if v is not None})
    for k in [k for k, v in extra.items() if v is None]:
        env.pop(k, None)
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def package_with_module(tmp_path: Path, rel: str, source: str):
    """A copy of the lcc package under ``tmp_path/src`` with one module added at ``lcc/<rel>``, and a function
    ``run(module, *args, timeout=600)`` that runs ``python -m <module> <args>`` on that copy (cwd ``tmp_path``):
    the contract tests' "a new X is one module, nothing else edited"."""
    import shutil
    import textwrap
    src = tmp_path / "src"
    shutil.copytree(ROOT / "lcc", src / "lcc", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "lcc" / rel).write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(src)}
    env.pop("HYDRA_FULL_ERROR", None)

    def run(module: str, *args: str, timeout: int = 600):
        return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=timeout)
    return run
