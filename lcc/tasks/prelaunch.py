"""Checks of a task job that need the model's tokenizer but no model, run before launch (``lcc.validate``):
the tokenizer is loaded where that is possible offline and cheap (the tiny model's byte tokenizer, the embedded
SmolLM2's, an ``hf`` model's from a local folder or the local hub cache), so that a ctx too short for a task's
prompts, a decoding budget shorter than an answer, ``task.chat_template=true`` on a tokenizer without one, and
``task=lm_eval`` on a model without a Hugging Face tokenizer fail before any job folder exists, with the numbers.
Where no tokenizer loads offline (a hub id not downloaded yet), the job checks the same things when it builds
its prompts, before it scores any."""
from __future__ import annotations

import functools
import logging
from typing import Any

from lcc import ConfigError
from lcc.models import ByteTokenizer, smollm2_tokenizer

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=16)
def _tokenizer(model_kind: str, name: str | None, trust: bool) -> Any:
    if model_kind == "tiny":
        return ByteTokenizer()
    if model_kind == "gguf":
        return smollm2_tokenizer()
    from transformers import AutoTokenizer
    if model_kind == "hf" and name:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust, local_files_only=True)
    return None


def tokenizer_of(model: Any) -> Any:
    """The tokenizer of a ``model`` config, or None where it does not load offline."""
    try:
        return _tokenizer(str(model.get("kind")), model.get("name_or_path"), model.get("trust_remote_code") is True)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - not available offline: the job checks its prompts itself
        log.debug("no tokenizer before launch for model %s: %s", model.get("name"), e)
        return None


def check_lm_eval(cfg: Any) -> None:
    """lm-eval drives a model through a Hugging Face tokenizer; the tiny model's byte tokenizer is not one."""
    tok = tokenizer_of(cfg.model)
    if tok is not None and not hasattr(tok, "apply_chat_template"):
        raise ConfigError(f"task=lm_eval needs a Hugging Face tokenizer; model={cfg.model.get('name')} has "
                          f"{type(tok).__name__}; valid: model=smollm2_135m, model=hf or a preset")
