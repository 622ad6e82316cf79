"""word2vec corpora of any size: tokenized piece by piece into the token cache, a run's view derived in blocks,
batched from memory or from the memory-mapped files, the same words and sentences either way."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch
from conftest import FAST
from hypothesis import given, settings, strategies as st
from omegaconf import OmegaConf

from dlcli.data import corpus as corpus_module, corpus_stream, token_stream
from dlcli.data.corpus import file_task, relation_sentences, tokenizer
from dlcli.data.corpus_stream import Stream, corpus_of, split_sentences, split_tensors, tokens_of_file


def corpus_cfg(path, cache_dir, **extra):
    cfg = OmegaConf.load(corpus_module.__file__.replace("dlcli/data/corpus.py", "conf/dataset/corpus.yaml"))
    cfg.path, cfg.cache_dir, cfg.min_count = str(path), str(cache_dir), 1
    cfg.update(extra)
    return cfg


def lines_as_read(path) -> list[str]:
    with open(path, encoding="utf-8") as f:  # Python's text mode: universal newlines
        return list(f)


def reference_tokens(lines, lowercase, punctuation, max_sentence):
    """The corpus as it was read before the cache (line after line): words in first-seen order, the id stream and a
    sentence id per word (a line, cut every max_sentence words)."""
    tokenize, index, ids, sent, n = tokenizer(lowercase, punctuation), {}, [], [], 0
    for line in lines:
        tokens = tokenize(line)
        for i, t in enumerate(tokens):
            ids.append(index.setdefault(t, len(index)))
            sent.append(n + i // max_sentence)
        n += -(-len(tokens) // max_sentence)
    return list(index), np.array(ids, np.int64), np.array(sent, np.int64)


def boundaries(sent) -> np.ndarray:
    """Where a new sentence begins: what the trainers see of sentence ids (they only compare neighbours')."""
    sent = np.asarray(sent)
    return np.flatnonzero(sent[1:] != sent[:-1])


# Characters that stress the piece and line boundaries: line breaks of every kind, other whitespace, punctuation,
# apostrophes, underscores, multi-byte UTF-8, a capital sigma (lower-cased by its context)
ALPHABET = st.sampled_from(list("ab AΣ\n\r\t\x0b\u2028'’_.,é😀"))


@settings(max_examples=60, deadline=None)
@given(text=st.text(ALPHABET, max_size=200), piece=st.integers(1, 12), cut=st.integers(1, 4),
       lowercase=st.booleans(), punctuation=st.sampled_from(["split", "drop", "keep"]))
def test_pieces_tokenize_exactly_as_the_lines_read_at_once(tmp_path_factory, text, piece, cut, lowercase,
                                                           punctuation):
    folder = tmp_path_factory.mktemp("t")
    path = folder / "t.txt"
    path.write_bytes(text.encode())
    words, ids, sent = reference_tokens(lines_as_read(path), lowercase, punctuation, cut)
    old = token_stream.PIECE_BYTES, corpus_stream.MAX_SENTENCE
    token_stream.PIECE_BYTES, corpus_stream.MAX_SENTENCE = piece, cut  # pieces end inside lines and sentences
    try:
        # in memory, written to the cache, read from it
        for cache, from_cache in ((None, False), (folder / "cache", False), (folder / "cache", True)):
            tokens = tokens_of_file(path, lowercase, punctuation, cache, "dataset.path", print)
            assert tokens.words == words and tokens.from_cache == from_cache
            got_ids, got_sent = split_tensors(tokens.ids, tokens.starts)
            assert got_ids.tolist() == ids.tolist() and got_sent.tolist() == sent.tolist()
    finally:
        token_stream.PIECE_BYTES, corpus_stream.MAX_SENTENCE = old


def reference_view(words, ids, sent, val, test, seed, min_count):
    """A run's view as the corpus task made it before (whole arrays): splits of whole sentences, the vocabulary of
    the train split sorted by count (ties in first-seen order)."""
    which = split_sentences(int(sent.max()) + 1, val, test, seed).numpy()[sent]
    counts = np.bincount(ids[which == 0], minlength=len(words))
    keep = [i for i in sorted(range(len(words)), key=lambda i: -counts[i]) if counts[i] >= min_count]
    remap = np.full(len(words), -1)
    remap[keep] = np.arange(len(keep))
    new = remap[ids]
    splits = {k: (new[(which == n) & (new >= 0)], sent[(which == n) & (new >= 0)])
              for n, k in enumerate(("train", "val", "test"))}
    return [words[i] for i in keep], counts[keep], splits


def test_a_runs_view_derived_in_blocks_is_the_whole_arrays_view(tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(relation_sentences(400, seed=3)) + "\n\n" + "filler words " * 40 + "\n")
    words, ids, sent = reference_tokens(lines_as_read(path), True, "split", 10)
    vocab, counts, splits = reference_view(words, ids, sent, 0.1, 0.1, 7, 3)
    monkeypatch.setattr(corpus_stream, "MAX_SENTENCE", 10)
    monkeypatch.setattr(corpus_stream, "BLOCK", 37)  # blocks end inside sentences
    for cache, from_cache in ((None, False), (tmp_path / "cache", False), (tmp_path / "cache", True)):
        tokens = tokens_of_file(path, True, "split", cache, "dataset.path", print)
        view = corpus_of(tokens, 0.1, 0.1, 7, 3, None, cache, print)
        assert view.from_cache == from_cache and view.vocab == vocab and view.counts.tolist() == counts.tolist()
        assert view.corpus_words == len(ids)
        for k, (want_ids, want_sent) in splits.items():
            got_ids, got_sent = view.splits[k]
            assert got_ids.dtype == np.uint8 and got_ids.tolist() == want_ids.tolist()  # < 256 words: uint8
            assert boundaries(split_tensors(got_ids, got_sent)[1]).tolist() == boundaries(want_sent).tolist()
            stream = Stream(got_ids, got_sent)  # any chunk: the same words and sentence boundaries
            for a, b in ((0, 5), (3, 40), (len(want_ids) - 7, len(want_ids) + 10)):
                c_ids, c_sent = stream.chunk(max(a, 0), b)
                assert c_ids.dtype == c_sent.dtype == torch.int64
                assert c_ids.tolist() == want_ids[max(a, 0):b].tolist()
                assert boundaries(c_sent).tolist() == boundaries(want_sent[max(a, 0):b]).tolist()
    assert corpus_of(tokens, 0.1, 0.1, 7, 2, None, tmp_path / "cache", print).from_cache is False  # other settings


def test_mapped_and_in_memory_tasks_batch_exactly_alike(tmp_path):
    """The same chunks for the C++ trainer (chunk) and the same batches for batched gradients, shuffled or not."""
    path = tmp_path / "c.txt"
    path.write_text("\n".join(relation_sentences(600, seed=4)) + "\n")
    mem = file_task(path, corpus_cfg(path, tmp_path / "cache", in_memory=True), "corpus", "dataset.path")
    mapped = file_task(path, corpus_cfg(path, tmp_path / "cache", in_memory=False), "corpus", "dataset.path")
    assert not mem.streams and "tokenized into token cache" in mem.loading and "batches from memory" in mem.loading
    assert "read from token cache" in mapped.loading and "memory-mapped" in mapped.loading
    assert isinstance(mapped.streams["train"].ids, np.memmap) and mapped.meta == mem.meta
    for split in ("train", "val", "test"):
        assert mem.size(split) == mapped.size(split) > 0
        for shuffle in (False, True):
            for a, b in zip(mem.batches(split, 50, shuffle=shuffle, seed=3),
                            mapped.batches(split, 50, shuffle=shuffle, seed=3), strict=True):
                assert all(torch.equal(x, y) for x, y in zip(a, b))
    for a in range(0, mem.size("train"), 333):
        x, y = mem.chunk("train", a, a + 333), mapped.chunk("train", a, a + 333)
        assert torch.equal(x[0], y[0])
        assert boundaries(x[1]).tolist() == boundaries(y[1]).tolist()
    assert torch.equal(mem.example_input(), mapped.example_input())


def test_a_corpus_past_the_limit_is_never_whole_in_memory(tmp_path, monkeypatch):
    """Past IN_MEMORY_WORDS (lowered here) a corpus is tokenized in bounded pieces, derived in bounded blocks, and
    read chunk by chunk from the memory-mapped cache: Python's allocations stay far below the corpus's int64 size."""
    path = tmp_path / "big.txt"
    path.write_text("\n".join(relation_sentences(24_000, seed=1)) + "\n")  # ~125k words, ~800 KB
    monkeypatch.setattr(corpus_module, "IN_MEMORY_WORDS", 10_000)
    monkeypatch.setattr(token_stream, "PIECE_BYTES", 1 << 12)
    monkeypatch.setattr(corpus_stream, "BLOCK", 1 << 12)
    # (the file's digest reads 16 MB blocks whatever its size: a key from the settings alone here)
    monkeypatch.setattr(corpus_stream, "content_digest", lambda _path, *settings: f"k{abs(hash(settings))}")
    cfg = corpus_cfg(path, tmp_path / "cache")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        task = file_task(path, cfg, "corpus", "dataset.path")
        for _ in task.batches("train", 512, shuffle=True, seed=0):
            pass
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    words = task.meta["corpus_words"]
    assert words > 100_000 and task.streams and "memory-mapped" in task.loading
    # (~370 KB here, against 2 MB for the words and sentence ids as int64 arrays)
    assert peak < 16 * words / 3, f"{peak:,} bytes at the peak for {words:,} words"
    files = {p.name.split(".", 1)[1]: p for p in (tmp_path / "cache" / "tokens").iterdir()}
    assert files["ids"].stat().st_size == 4 * words  # the tokens: uint32 ids in first-seen order
    view = json.loads(files["train.ids"].with_name(files["train.ids"].name.split(".")[0] + ".json").read_text())
    assert view["arrays"]["train.ids"] == ["uint8", task.size("train")]  # the run's view: < 256 words, uint8


def test_bad_settings_and_an_unwritable_cache_are_one_line_each(tmp_path, capsys):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(relation_sentences(300, seed=2)) + "\n")
    with pytest.raises(Exception, match=r"dataset.in_memory=maybe: choose auto, true or false"):
        file_task(path, corpus_cfg(path, tmp_path / "c", in_memory="maybe"), "corpus", "dataset.path")
    with pytest.raises(Exception, match=r"dataset.punctuation=some: choose one of: split, drop, keep"):
        file_task(path, corpus_cfg(path, tmp_path / "c", punctuation="some"), "corpus", "dataset.path")
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the cache folder should be: not writable, even by root
    task = file_task(path, corpus_cfg(path, blocker), "corpus", "dataset.path")
    assert "tokenized into memory" in task.loading and task.size("train") > 0
    err = capsys.readouterr().err
    assert "cannot write the token cache" in err and "DL_CACHE_DIR" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == ""


def test_the_cache_follows_the_files_content(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("one two three one two\n" * 50)
    first = tokens_of_file(path, True, "split", tmp_path / "cache", "dataset.path", print)
    path.write_text("four five six four five\n" * 50)  # changed under its cache: a new entry, never the old one
    second = tokens_of_file(path, True, "split", tmp_path / "cache", "dataset.path", print)
    assert first.key != second.key and not second.from_cache and second.words == ["four", "five", "six"]
    assert tokens_of_file(path, False, "split", tmp_path / "cache", "dataset.path", print).key != second.key


@pytest.mark.slow
def test_a_mapped_corpus_trains_the_vectors_the_in_memory_one_does(dl, tmp_path):
    """End to end through the C++ trainer (one thread: bit for bit): the first run tokenizes into the cache and
    trains from the map, the second reads the cache into memory; the same vectors."""
    (dl.cwd / "c.txt").write_text("\n".join(relation_sentences(1500, seed=6)) + "\n")
    env = {"DL_CACHE_DIR": str(tmp_path / "cache")}
    args = ["train", "model=skipgram", "dataset=corpus", "dataset.path=c.txt", "model.vector_size=16",
            "trainer.epochs=1", *FAST]
    out = dl.ok(*args, "dataset.in_memory=false", env=env).stdout
    assert "tokenized into token cache" in out and "batches read from the memory-mapped file" in out
    mapped = (dl.last_run() / "vectors.txt").read_text()
    out = dl.ok(*args, env=env).stdout
    assert "read from token cache" in out and "batches from memory" in out
    assert (dl.last_run() / "vectors.txt").read_text() == mapped


def kernel():
    from dlcli.models.word2vec import cpu_kernel

    k = cpu_kernel()
    assert k is not None  # CI has a compiler: the op must build
    return k


def test_more_pieces_than_threads_train_each_piece_once():
    """Pieces handed out dynamically (split > 1) on 2 threads: every piece trained once (the pairs a dynamic window
    of 4 gives), the same result every time whatever the threads' timing (lr 0: scores only), the tables unchanged;
    one thread ignores split (bit for bit the single piece)."""
    k = kernel()
    ids = torch.randint(0, 4, (20_000,), generator=torch.Generator().manual_seed(0))
    sent = torch.zeros_like(ids)
    prob, alias = k.alias_table(torch.tensor([4.0, 3, 2, 1]))
    w_in = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    w_out = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    start = (w_in.clone(), w_out.clone())
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [k.train_chunk(w_in, w_out, w_in[:0], ids, sent, torch.ones(4), prob, alias, *NO_PATHS, 4, 3, False,
                              0.0, 9, 2, 2, 8) for _ in range(4)]
    finally:
        torch.set_num_threads(threads)
    assert int(runs[0][2]) / len(ids) == pytest.approx(5.0, rel=0.02)  # 2 x mean reach 2.5; a piece missing: -6%
    assert all(torch.equal(r[1], runs[0][1]) and torch.equal(r[2], runs[0][2]) for r in runs)
    assert torch.equal(w_in, start[0]) and torch.equal(w_out, start[1])
    one = [w.clone() for w in start], [w.clone() for w in start]
    for tables, split in zip(one, (1, 8)):
        k.train_chunk(*tables, w_in[:0], ids, sent, torch.ones(4), prob, alias, *NO_PATHS, 4, 3, True, 0.05, 9, 1, 2,
                      split)
    assert all(torch.equal(a, b) for a, b in zip(*one)) and not torch.equal(one[0][0], start[0])


NO_PATHS = (torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long))
