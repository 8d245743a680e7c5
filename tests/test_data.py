"""Evaluation windows from the real bundled text."""
import pytest
import torch
from omegaconf import OmegaConf

from lcc import ConfigError
from lcc.data import eval_windows, load_texts, token_stream
from lcc.models import ByteTokenizer

PYDOC = OmegaConf.create({"name": "pydoc", "kind": "pydoc", "add_bos": True})


def test_pydoc_is_real_english_text():
    (text,) = load_texts(PYDOC)
    assert len(text) > 300_000 and "the" in text and "Python" in text


def test_windows_are_deterministic_by_seed_and_non_overlapping():
    tok = ByteTokenizer()
    stream = token_stream(PYDOC, tok)
    a = eval_windows(PYDOC, tok, 512, 6, seed=0)
    b = eval_windows(PYDOC, tok, 512, 6, seed=0)
    c = eval_windows(PYDOC, tok, 512, 6, seed=1)
    assert a.shape == (6, 512) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every window is a contiguous slice of the real text, at a slot boundary, all distinct
    starts = []
    for w in a:
        s = next(i for i in range(0, len(stream) - 512, 512) if torch.equal(stream[i:i + 512], w))
        starts.append(s)
    assert len(set(starts)) == 6


def test_bos_is_prepended_when_the_tokenizer_has_one():
    class Tok(ByteTokenizer):
        bos_token_id = 300
    w = eval_windows(PYDOC, Tok(), 64, 2, seed=0)
    assert w.shape == (2, 64) and (w[:, 0] == 300).all() and (w[:, 1:] < 256).all()


def test_too_short_corpus_says_how_many_tokens_it_has():
    with pytest.raises(ConfigError, match=r"has \d+ tokens"):
        eval_windows(PYDOC, ByteTokenizer(), 65536, 100, seed=0)


def test_local_text_files_never_cross_documents(tmp_path):
    (tmp_path / "a.txt").write_text("a" * 1000)
    (tmp_path / "b.txt").write_text("b" * 1000)
    cfg = OmegaConf.create({"name": "text", "kind": "text", "paths": [str(tmp_path / "*.txt")],
                            "join_docs": False, "add_bos": False})
    w = eval_windows(cfg, ByteTokenizer(), 300, 6, seed=0)
    for row in w:
        assert len(set(row.tolist())) == 1  # each window lies inside one file
    with pytest.raises(ConfigError, match="matches no file"):
        eval_windows(OmegaConf.merge(cfg, {"paths": [str(tmp_path / "*.md")]}), ByteTokenizer(), 300, 1, 0)


def test_hf_kind_goes_through_load_dataset_offline(tmp_path):
    """kind=hf is datasets.load_dataset(path, config_name, split, data_files): exercised offline with the
    packaged 'text' builder on local files (the hub presets wikitext2/pg19/c4 use the same call)."""
    (tmp_path / "a.txt").write_text("first line of the corpus\n" * 200)
    (tmp_path / "b.txt").write_text("second file here\n" * 200)
    cfg = OmegaConf.create({"name": "local", "kind": "hf", "path": "text", "config_name": None,
                            "data_files": [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")],
                            "split": "train", "text_field": "text", "join_docs": True, "add_bos": False})
    (text,) = load_texts(cfg)
    assert text.count("first line of the corpus") == 200 and text.count("second file here") == 200
    w = eval_windows(cfg, ByteTokenizer(), 256, 4, seed=0)
    assert w.shape == (4, 256)
