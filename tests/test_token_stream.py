"""Token streams of any size: tokenized piece by piece into a cached id file, memory-mapped, batched from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST
from hypothesis import given, settings, strategies as st
from omegaconf import OmegaConf

from dlcli.data import language, token_stream
from dlcli.data.language import LMTask, MappedLMTask, text_file
from dlcli.data.token_stream import ids_of_file, ids_of_text, text_pieces


def tokenize(text: str, level: str) -> list[str]:
    """The tokenizer as it was before token_stream (the whole text at once): the reference the pieces must match."""
    if level == "char":
        return list(text)
    tokens: list[str] = []
    for line in text.splitlines(keepends=True):
        tokens += line.split()
        if line.endswith("\n"):
            tokens.append("\n")
    return tokens


# Characters that stress the piece boundaries: line breaks of every kind, whitespace, multi-byte UTF-8.
ALPHABET = st.sampled_from(list("ab \n\r\t\x0b\x1c\u2028é€😀"))


@settings(max_examples=60, deadline=None)
@given(text=st.text(ALPHABET, max_size=300), piece=st.integers(1, 12), level=st.sampled_from(["char", "word"]))
def test_pieces_tokenize_exactly_as_the_whole_text_read_at_once(tmp_path_factory, text, piece, level):
    path = tmp_path_factory.mktemp("t") / "t.txt"
    path.write_bytes(text.encode())
    as_read = path.read_text(encoding="utf-8")  # Python's text mode: universal newlines
    old = token_stream.PIECE_BYTES
    token_stream.PIECE_BYTES = piece  # a few bytes per piece: every boundary case, even mid-character
    try:
        assert "".join(text_pieces(path, "dataset.path")) == as_read
        tokens = ids_of_file(path, level, 1, None, None, "dataset.path", print)
    finally:
        token_stream.PIECE_BYTES = old
    assert [tokens.vocab[i] for i in tokens.ids] == tokenize(as_read, level)
    assert tokens.vocab == sorted(set(tokenize(as_read, level)))


def test_not_utf8_names_the_byte(tmp_path):
    from dlcli.base.errors import UserError

    path = tmp_path / "t.txt"
    path.write_bytes(b"hello world " * 3 + b"\xff rest")
    old = token_stream.PIECE_BYTES
    token_stream.PIECE_BYTES = 5
    try:
        with pytest.raises(UserError, match=r"dataset.path=.*t.txt: not UTF-8 text \(byte 36\)"):
            list(text_pieces(path, "dataset.path"))
    finally:
        token_stream.PIECE_BYTES = old


def lm_cfg(path, cache_dir, **extra):
    cfg = OmegaConf.load(language.__file__.replace("dlcli/data/language.py", "conf/dataset/text.yaml"))
    cfg.path, cfg.cache_dir, cfg.block_size = str(path), str(cache_dir), 16
    cfg.update(extra)
    return cfg


LOSS = OmegaConf.create({"name": "auto", "label_smoothing": 0.0})


def test_the_cache_is_made_once_read_after_and_remade_when_the_file_changes(tmp_path, capsys):
    path = tmp_path / "book.txt"
    path.write_text("the cat sat on the mat\n" * 200)
    first = text_file(lm_cfg(path, tmp_path / "cache"), LOSS)
    assert "tokenized into token cache" in first.loading
    entries = sorted((tmp_path / "cache" / "tokens").glob("*.ids"))
    assert len(entries) == 1 and entries[0].stat().st_size == path.stat().st_size  # 1 byte per char (uint8)
    again = text_file(lm_cfg(path, tmp_path / "cache"), LOSS)
    assert "read from token cache" in again.loading
    assert torch.equal(first.stream, again.stream)
    path.write_text("the dog sat on the log\n" * 200)  # changed under its cache: a new entry, the new text
    changed = text_file(lm_cfg(path, tmp_path / "cache"), LOSS)
    assert "tokenized into" in changed.loading and "d" in changed.meta["vocab"]
    assert len(list((tmp_path / "cache" / "tokens").glob("*.ids"))) == 2
    half = entries[0].with_suffix(".json")
    half.unlink()  # a run stopped between the ids and their record: made again, not read half
    path.write_text("the cat sat on the mat\n" * 200)
    assert "tokenized into" in text_file(lm_cfg(path, tmp_path / "cache"), LOSS).loading


def test_a_cache_dir_that_cannot_be_written_is_one_line_and_the_run_goes_on(tmp_path, capsys):
    path = tmp_path / "book.txt"
    path.write_text("abc def\n" * 100)
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the cache folder should be: not writable, even by root
    task = text_file(lm_cfg(path, blocker), LOSS)
    assert "tokenized into memory" in task.loading
    err = capsys.readouterr().err
    assert "cannot write the token cache" in err and "DL_CACHE_DIR" in err and len(err.strip().splitlines()) == 1


def test_a_mapped_stream_batches_exactly_as_the_in_memory_one(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("".join(chr(97 + (i * 7919) % 26) + (" " if i % 5 else "\n") for i in range(3000)))
    mem = text_file(lm_cfg(path, tmp_path / "c", in_memory=True), LOSS)
    mapped = text_file(lm_cfg(path, tmp_path / "c", in_memory=False), LOSS)
    assert type(mem) is LMTask and type(mapped) is MappedLMTask
    assert isinstance(mapped.streams["train"], np.memmap) and mapped.streams["train"].dtype == np.uint8
    for split in ("train", "val", "test"):
        assert mem.size(split) == mapped.size(split)
        for shuffle in (False, True):
            for a, b in zip(mem.batches(split, 7, shuffle=shuffle, seed=3),
                            mapped.batches(split, 7, shuffle=shuffle, seed=3), strict=True):
                assert all(torch.equal(x, y) and y.dtype == torch.int64 for x, y in zip(a, b))
    assert torch.equal(mem.example_input(), mapped.example_input())


def test_the_whole_text_is_never_in_memory_past_the_limit(tmp_path, monkeypatch):
    """A text past IN_MEMORY_TOKENS (lowered here) is read in bounded pieces, never whole, and batched from the
    memory-mapped cache file."""
    path = tmp_path / "big.txt"
    path.write_text("lorem ipsum dolor sit amet\n" * 20_000)  # 540 KB
    monkeypatch.setattr(language, "IN_MEMORY_TOKENS", 10_000)
    monkeypatch.setattr(token_stream, "PIECE_BYTES", 4096)
    seen = []
    pieces = token_stream.text_pieces
    monkeypatch.setattr(token_stream, "text_pieces", lambda p, w: (seen.append(len(s)) or s for s in pieces(p, w)))
    read_text = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: pytest.fail("the whole text was read")
                        if self == path else read_text(self, *a, **k))
    task = text_file(lm_cfg(path, tmp_path / "cache"), LOSS)
    assert type(task) is MappedLMTask and "memory-mapped" in task.loading
    assert max(seen) <= 4096 + 6 and sum(seen) == 2 * path.stat().st_size  # a piece + a word; two passes
    x, y = next(task.batches("train", 4, shuffle=True, seed=0))
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_word_level_ids_take_the_narrowest_type(tmp_path):
    words = [f"w{i}" for i in range(300)]  # 300 distinct words: past uint8
    path = tmp_path / "w.txt"
    path.write_text(" ".join(words * 3))
    tokens = ids_of_file(path, "word", 1, None, tmp_path / "cache", "dataset.path", print)
    assert tokens.ids.dtype == np.uint16 and [tokens.vocab[i] for i in tokens.ids[:3]] == words[:3]
    assert json.loads(tokens.cache.with_suffix(".json").read_text())["n"] == 900
    assert ids_of_text("a b a", "word", 2, None).vocab == ["a", "<unk>"]


def test_an_lm_on_a_mapped_text_trains_evaluates_and_samples(dl, tmp_path):
    (dl.cwd / "book.txt").write_text("to be or not to be, that is the question\n" * 400)
    env = {"DL_CACHE_DIR": str(tmp_path / "cache")}
    args = ["train", "model=lstm", "dataset=text", "dataset.path=book.txt", "dataset.block_size=16",
            "model.hidden_size=16", "model.num_layers=1", "trainer.epochs=2", *FAST]
    out = dl.ok(*args, "dataset.in_memory=false", env=env).stdout
    assert "batches read from the memory-mapped file" in out and "tokenized into token cache" in out
    run = dl.last_run()
    summary = json.loads((run / "summary.json").read_text())
    got = json.loads(dl.ok("eval", str(run), "--json", env=env).stdout)
    assert got["test/loss"] == pytest.approx(summary["test"]["test/loss"], rel=1e-5)
    assert dl.ok("sample", str(run), "--max-new-tokens", "20", env=env).stdout.strip()
    again = dl.ok(*args, env=env).stdout  # in memory, from the same cache entry
    assert "read from token cache" in again and "batches from memory" in again
    assert json.loads((dl.last_run() / "summary.json").read_text())["test"] == summary["test"]  # same batches
