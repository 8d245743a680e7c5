"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

Runtime attention functions registered with transformers' attention interface: ``kv`` (quantized KV cache) and
the KV-eviction presses each wrap the model's own attention implementation (eager, sdpa, ...) under a name of
their own (``<prefix><base>``), and set ``config._attn_implementation`` to it. Also the KV cache's keyword
argument, whose name changed across transformers versions."""
from __future__ import annotations

import sys
from typing import Callable

from lcc import ConfigError

#: the names a forward takes its KV cache under, across transformers versions
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")


def cache_kwarg(base) -> str:
    """The keyword under which ``base`` (a base model: ``model.base_model``) takes a KV cache (``cache`` in 5.x)."""
    import inspect
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def cache_of(kwargs: dict):
    """The KV cache passed in a forward's ``kwargs`` (under any of ``CACHE_KWARGS``), or None."""
    return next((kwargs[k] for k in CACHE_KWARGS if kwargs.get(k) is not None), None)


def base_function(base: str, module) -> Callable:
    """The attention function ``base`` names, for ``module`` (eager: the module's own file's, else Llama's)."""
    if base == "eager":
        fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if fn is None:
            from transformers.models.llama.modeling_llama import eager_attention_forward as fn
        return fn
    from transformers.modeling_utils import AttentionInterface
    return AttentionInterface._global_mapping[base]


def register_attention(prefix: str, base: str, make: Callable[[str], Callable], who: str) -> str:
    """Register ``<prefix><base>``: the attention function ``make(base)`` and ``base``'s mask function (sdpa's
    where ``base`` has none). Returns the name; ``who`` names the compressor in the error for an unknown base."""
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    name = prefix + base
    if name not in AttentionInterface._global_mapping:
        if base != "eager" and base not in AttentionInterface._global_mapping:
            raise ConfigError(f"{who}: the model's attention implementation {base!r} is not supported; "
                              f"valid: eager, {', '.join(sorted(AttentionInterface._global_mapping))}")
        AttentionInterface.register(name, make(base))
    if name not in AttentionMaskInterface._global_mapping:
        mask_base = base if base in AttentionMaskInterface._global_mapping else "sdpa"
        AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[mask_base])
    return name
