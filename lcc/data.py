"""Texts -> token ids -> evaluation windows and calibration batches.

Every source gives a list of documents. ``join_docs`` sources (pydoc, WikiText) are one stream; for the
others (PG-19 books, local files) a window never crosses a document boundary. Windows are
non-overlapping slots of ``ctx`` tokens chosen by a seeded permutation, each scored from its first token.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from lcc import ConfigError
from lcc.checks import text_file_problem, text_files

log = logging.getLogger(__name__)

KINDS = ("pydoc", "hf", "text")


def load_texts(cfg: Any) -> list[str]:
    kind = cfg.kind
    if kind == "pydoc":
        import pydoc_data.topics as topics

        return ["\n\n".join(topics.topics[k] for k in sorted(topics.topics))]
    if kind == "hf":
        import datasets

        kw = {"data_files": cfg.data_files} if cfg.get("data_files") else {}
        ds = datasets.load_dataset(cfg.path, cfg.get("config_name"), split=cfg.split, **kw)
        texts = [t for t in ds[cfg.text_field] if t]
        return ["".join(texts)] if cfg.get("join_docs") else texts
    if kind == "text":
        texts = read_text_files(cfg)
        return ["\n\n".join(texts)] if cfg.get("join_docs") else texts
    raise ConfigError(f"data.kind={kind!r} is invalid; valid choices: {', '.join(KINDS)}")


def read_text_files(cfg: Any) -> list[str]:
    """The texts of ``data.paths`` (files or globs, sorted). Every pattern must match, every match must be a
    file, and a file must be UTF-8 text without NUL bytes unless ``decode_errors: replace`` (then undecodable
    bytes become U+FFFD). Raises ConfigError naming the pattern or the file."""
    paths = cfg.paths if isinstance(cfg.paths, str) else list(cfg.paths)
    errors = cfg.get("decode_errors", "strict")
    files, problems = text_files(paths, "data.paths")
    if problems:
        raise ConfigError("; ".join(problems))
    texts = []
    for f in files:
        if errors == "strict" and (why := text_file_problem(f)):
            raise ConfigError(f"data.paths: {why}; valid: UTF-8 text files (or data.decode_errors=replace)")
        with open(f, encoding="utf-8", errors="strict" if errors == "strict" else "replace") as fh:
            texts.append(fh.read())
    return texts


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def token_stream(cfg: Any, tokenizer: Any) -> torch.Tensor:
    """The whole source as one 1-D LongTensor (documents joined with a blank line)."""
    return encode(tokenizer, "\n\n".join(load_texts(cfg)))


def eval_windows(cfg: Any, tokenizer: Any, ctx: int, n_docs: int, seed: int) -> torch.Tensor:
    """``n_docs`` windows of ``ctx`` tokens as a LongTensor [n_docs, ctx], deterministic by ``seed``.

    With ``add_bos`` and a tokenizer that has a BOS token, each window is BOS + (ctx - 1) text tokens.
    """
    if ctx < 2:
        raise ConfigError(f"ctx.tokens={ctx} is invalid; valid: an integer >= 2")
    if n_docs < 1:
        raise ConfigError(f"n_docs={n_docs} is invalid; valid: an integer >= 1")
    bos = getattr(tokenizer, "bos_token_id", None) if cfg.get("add_bos", True) else None
    body = ctx - 1 if bos is not None else ctx
    gen = torch.Generator().manual_seed(seed)
    texts = load_texts(cfg)
    order = torch.randperm(len(texts), generator=gen).tolist() if len(texts) > 1 else [0]
    slots: list[torch.Tensor] = []
    total = 0
    for i in order:  # tokenize documents in seeded order until there is ample choice of windows
        ids = encode(tokenizer, texts[i])
        total += len(ids)
        slots += [ids[j * body:(j + 1) * body] for j in range(len(ids) // body)]
        if len(slots) >= 8 * n_docs:
            break
    if len(slots) < n_docs:
        raise ConfigError(
            f"data={cfg.name} is too short for n_docs={n_docs} windows of ctx={ctx} tokens: it has "
            f"{total} tokens, i.e. {len(slots)} such window(s). Lower n_docs or ctx, or choose a larger data set.")
    pick = sorted(torch.randperm(len(slots), generator=gen)[:n_docs].tolist())
    windows = torch.stack([slots[j] for j in pick])
    if bos is not None:
        windows = torch.cat([torch.full((n_docs, 1), bos, dtype=torch.long), windows], 1)
    log.info("data %s: %d windows of %d tokens (source: %d tokens read)", cfg.name, n_docs, ctx, total)
    return windows


def calibration_batch(cfg_calib: Any, tokenizer: Any) -> torch.LongTensor:
    """``n_samples`` random windows of ``seqlen`` tokens from the calibration stream, seeded by ``seed``.

    ``cfg_calib`` is a ``calib`` config (``data``, ``n_samples``, ``seqlen``, ``seed``); the stream comes
    from ``token_stream(cfg_calib.data, tokenizer)`` (a 1-D LongTensor)."""
    get = cfg_calib.get if hasattr(cfg_calib, "get") else (lambda k, d=None: getattr(cfg_calib, k, d))
    n, seqlen, seed = int(get("n_samples", 128)), int(get("seqlen", 2048)), int(get("seed", 0))
    if n < 1:
        raise ConfigError(f"calib.n_samples={n} is invalid; valid: a positive integer")
    if seqlen < 1:
        raise ConfigError(f"calib.seqlen={seqlen} is invalid; valid: a positive integer")
    stream = torch.as_tensor(token_stream(get("data"), tokenizer)).long().flatten()
    if stream.numel() < seqlen:
        name = get("data", {}).get("name", "?") if hasattr(get("data", {}), "get") else "?"
        raise ConfigError(f"calib.seqlen={seqlen} is longer than the calibration stream {name!r} "
                          f"({stream.numel()} tokens); lower calib.seqlen or choose a larger calib.data")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seqlen + 1, (n,), generator=g)
    return torch.stack([stream[s:s + seqlen] for s in starts.tolist()])
