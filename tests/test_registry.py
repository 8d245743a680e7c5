"""The one registry (lcc.registry) behind compressors, tasks and cache codecs: a second entry under a taken name
is an error naming both; an unknown name names the valid choices and the closest ones."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from lcc import ConfigError
from lcc.cache import CODECS
from lcc.compressors import REGISTRY as COMPRESSORS
from lcc.compressors import Compressor
from lcc.registry import Registry
from lcc.tasks import REGISTRY as TASKS
from lcc.tasks.synthetic import SyntheticTask


def test_a_second_task_under_a_taken_name_is_an_error_naming_both():
    before = dict(TASKS.items())
    with pytest.raises(TypeError, match=r"two tasks are named 'passkey': lcc\.tasks\.passkey\.Passkey and "
                                        r"\S*test_registry\..*Clash"):
        @dataclass
        class Clash(SyntheticTask):
            name: ClassVar[str] = "passkey"
    assert dict(TASKS.items()) == before  # the first one stays


def test_a_second_compressor_under_a_taken_name_is_an_error_naming_both():
    with pytest.raises(TypeError, match=r"two compressors are named 'quant': lcc\.compressors\.simple\.Quant and "
                                        r"\S*test_registry\..*Other"):
        class Other(Compressor):
            name: ClassVar[str] = "quant"
    assert COMPRESSORS["quant"].__module__ == "lcc.compressors.simple"


def test_a_second_codec_for_a_storage_kind_is_an_error():
    class Other(type(CODECS[next(iter(CODECS))])):
        pass
    with pytest.raises(TypeError, match="two cache codecs are named"):
        CODECS.register(Other())


def test_unknown_names_give_the_choices_and_the_closest():
    with pytest.raises(ConfigError, match=r"unknown task 'paskey'; valid choices: .*passkey.*did you mean 'passkey'"):
        TASKS.get("paskey")
    with pytest.raises(ConfigError, match=r"unknown compressor .zzzzzz.; valid choices: .*quant") as e:
        COMPRESSORS.get("zzzzzz")
    assert "did you mean" not in str(e.value)


def test_the_same_class_again_replaces_itself():
    r: Registry[type] = Registry("thing")

    class A:
        name = "a"
    r.register(A)
    r.register(A)
    assert list(r) == ["a"] and r.get("a") is A
