"""Imports go one way (issue 17): no import cycle among lcc's modules, no import up the layers of
``scripts/import_graph.py`` (config and validation -> data and models -> compressors and metrics -> tasks -> job
-> sweep, reduce), and no function-level import of an lcc module hiding a cycle. Read from the source (``ast``)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import import_graph as ig  # noqa: E402

#: function-level imports of lcc's own modules that stay, with the reason (none: every cycle they held together
#: is gone; heavy optional packages such as lm-eval, wandb and matplotlib are not lcc modules)
FUNCTION_LEVEL: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def edges() -> list:
    return ig.imports()


def test_every_module_has_a_layer():
    assert ig.unplaced() == []


def test_no_import_cycle(edges):
    assert ig.cycles(ig.graph(edges)) == []


def test_no_cycle_through_function_level_imports(edges):
    """A function-level import must not close a cycle either (it only defers it to the first call)."""
    assert ig.cycles(ig.graph(edges, function_level=True)) == []


def test_no_import_goes_up_the_layers(edges):
    up = [f"{e.src}:{e.line} ({ig.LAYERS[ig.layer_of(e.src)][0]}) -> {e.dst} ({ig.LAYERS[ig.layer_of(e.dst)][0]})"
          for e in ig.violations(edges)]
    assert up == []


def test_function_level_imports_of_lcc_modules_are_the_listed_ones(edges):
    found = {(e.src, e.dst) for e in ig.own_function_level(edges)}
    assert found == set(FUNCTION_LEVEL), "move them to module level (or list one here, with the reason)"


def test_the_graph_reads_what_python_runs(tmp_path):
    """On a small package: module- and function-level imports, relative ones, TYPE_CHECKING left out, a
    discovering package's modules, cycles with and without function-level imports, an import up the layers."""
    pkg = tmp_path / "lcc"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "data.py": "from lcc import job\n",                                 # up: data -> job
        "job.py": "import lcc.data\n\ndef f():\n    from lcc.sub import b\n",
        "sub/__init__.py": "import importlib\nfor m in ('a', 'b'):\n    importlib.import_module(f'{__name__}.{m}')\n",
        "sub/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lcc import job\nfrom . import b\n",
        "sub/b.py": "def g():\n    from .a import x\n",                   # function-level: closes a <-> b
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    found = {(e.src, e.dst, e.function) for e in ig.imports(tmp_path)}
    assert found == {("lcc.data", "lcc.job", False), ("lcc.job", "lcc.data", False), ("lcc.job", "lcc.sub.b", True),
                     ("lcc.sub", "lcc.sub.a", False), ("lcc.sub", "lcc.sub.b", False),
                     ("lcc.sub.a", "lcc.sub.b", False), ("lcc.sub.b", "lcc.sub.a", True)}
    edges = ig.imports(tmp_path)
    assert ig.cycles(ig.graph(edges)) == [["lcc.data", "lcc.job"]]
    assert ig.cycles(ig.graph(edges, function_level=True)) == [["lcc.data", "lcc.job"], ["lcc.sub.a", "lcc.sub.b"]]
    layers = [("low", ("lcc", "lcc.data", "lcc.sub")), ("high", ("lcc.job",))]
    assert ig.unplaced(ig.modules(tmp_path), layers) == []
    assert [(e.src, e.dst) for e in ig.violations(edges, layers)] == [("lcc.data", "lcc.job")]
