"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

``python -m lcc.compressors``: every registered compressor with its parameters, defaults and valid values."""
from __future__ import annotations

import dataclasses
import textwrap

from lcc.compressors import REGISTRY


def describe() -> str:
    lines = []
    for name, cls in sorted(REGISTRY.items()):
        doc = " ".join((cls.__doc__ or "").split())
        lines += [f"{name}  ({cls.__module__}.{cls.__qualname__})", textwrap.indent(textwrap.fill(doc, 100), "    ")]
        for f in cls.param_fields():
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            if f.metadata.get("config", dataclasses.MISSING) is not dataclasses.MISSING:
                default = f.metadata["config"]
            valid = f.metadata.get("valid")
            text = f.metadata.get("doc", "") + (f" [valid: {valid.text}]" if valid else "")
            lines.append(f"    {f.name} = {default!r}: {text}")
        if cls.uses_targets:
            lines.append("    targets: modules (globs, or attn / mlp / experts / shared_experts / router), layers "
                         "[start, stop), lm_head")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
