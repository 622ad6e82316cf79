"""Word2vec corpora of any size, tokenized once.

A corpus file is read in pieces (token_stream.text_pieces: 8 MB at a time, universal newlines) and tokenized into
word ids in first-seen order (uint32) plus the starts of its sentences (a sentence is a line, cut every MAX_SENTENCE
words as gensim does). With dataset.cache on (the default) they go into the token cache (data/cache.py), keyed by the
file's bytes and the tokenizer settings. A run's view is derived from them in blocks (memory stays bounded) and
cached too, keyed by the split and vocabulary settings: for train/val/test (whole sentences drawn with a seed) the
vocabulary ids of their words (uint8/16/32 as the vocabulary needs) and where their sentences start. A later run maps
those files and starts at once; the task holds them as int64 tensors when they fit, else reads chunks from the map
(Stream), converting only each chunk.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlcli.base.errors import UserError
from dlcli.data.cache import array_file, content_digest, map_entry, new_entry, write_meta
from dlcli.data.token_stream import id_dtype, text_pieces

MAX_SENTENCE = 10_000  # gensim truncates longer sentences; we cut them into pieces of this size
FORMAT = 1  # bump when the entries change meaning: old ones are then never read
PUNCTUATION = ("split", "drop", "keep")
BLOCK = 1 << 22  # words per block when deriving a run's view (~100 MB of temporaries whatever the corpus's size)
SPLITS = ("train", "val", "test")


def word_pattern(punctuation: str) -> str:
    """split: punctuation marks become tokens of their own; drop: removed; keep: split on whitespace only.
    Underscores (Gutenberg's _italics_) never count as letters."""
    if punctuation not in PUNCTUATION:
        raise UserError(f"dataset.punctuation={punctuation}: choose one of: {', '.join(PUNCTUATION)}")
    word = r"[^\W_]+(?:['’][^\W_]+)*"
    return {"split": word + r"|[^\w\s]", "drop": word, "keep": r"\S+"}[punctuation]


# ------------------------------------------------------------------------------------------------------ tokenizing
class Encoder:
    """Text pieces -> (word ids in first-seen order, starts of the sentences that begin in the piece). A piece may
    end inside a line (text8 is one line of 17M words): the line goes on in the next piece."""

    def __init__(self, lowercase: bool, punctuation: str):
        # One regex pass over a whole piece, line breaks matched as tokens too (id 0), then a dict lookup per token
        # in C (the defaultdict gives a new word the next id): ~5x the per-line loop (bench/corpus_read.py).
        self.pattern = re.compile(word_pattern(punctuation) + r"|\n")
        self.lowercase = lowercase
        self.index: defaultdict[str, int] = defaultdict()
        self.index.default_factory = self.index.__len__
        self.index["\n"]  # noqa: B018 - id 0: the line break
        self.words = 0  # words in earlier pieces
        self.line = 0  # words of the unfinished line in earlier pieces

    def __call__(self, piece: str) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.pattern.findall(piece.lower() if self.lowercase else piece)
        ids = np.fromiter(map(self.index.__getitem__, tokens), np.int64, len(tokens))
        breaks = np.flatnonzero(ids == 0)
        begins = np.concatenate([[0], breaks + 1])  # the piece's lines (the first may go on from earlier pieces,
        length = np.append(breaks, len(ids)) - begins  # the last may go on in the next)
        before = np.zeros(len(begins), np.int64)
        before[0] = self.line
        starts = sentence_cuts(self.words + begins - np.arange(len(begins)), before, length)
        self.line = int(before[-1] + length[-1])
        words = ids[ids != 0] - 1
        self.words += len(words)
        return words.astype(np.uint32), starts

    def vocabulary(self) -> list[str]:
        return list(self.index)[1:]


def sentence_cuts(offset: np.ndarray, before: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Where sentences start: line k's `length[k]` words begin at word `offset[k]` after `before[k]` words of it came
    earlier; a line is cut every MAX_SENTENCE words counted from its start (a line without words is no sentence)."""
    m = MAX_SENTENCE
    first = -(-before // m) * m  # the first cut at or after the words already seen
    n = -(-(before + length) // m) - first // m
    line = np.repeat(np.arange(len(n)), n)
    j = np.arange(len(line)) - np.repeat(np.cumsum(n) - n, n)
    return offset[line] + first[line] - before[line] + j * m


@dataclass
class Tokens:
    """A tokenized corpus: word ids in first-seen order, where each sentence starts, the words."""

    ids: np.ndarray  # uint32, memory-mapped from the cache or in memory
    starts: np.ndarray  # int64
    words: list[str]
    key: str | None = None  # the cache entry's name, when cached
    from_cache: bool = False


def tokens_of_pieces(pieces: Iterable[str], lowercase: bool, punctuation: str) -> Tokens:
    encoder = Encoder(lowercase, punctuation)
    ids, starts = [np.zeros(0, np.uint32)], [np.zeros(0, np.int64)]
    for piece in pieces:
        i, s = encoder(piece)
        ids.append(i)
        starts.append(s)
    return Tokens(np.concatenate(ids), np.concatenate(starts), encoder.vocabulary())


def tokens_of_file(path: Path, lowercase: bool, punctuation: str, cache: Path | None, what: str,
                   say: Callable[[str], None]) -> Tokens:
    """A text file's tokens: from the cache when an earlier run made them, else tokenized into it (cache None or
    not writable: into memory)."""
    word_pattern(punctuation)  # a bad setting is said before the file is read
    if cache is not None:
        key = content_digest(path, "corpus", FORMAT, lowercase, punctuation, MAX_SENTENCE)
        if (found := map_entry(cache / key)) is not None:
            meta, arrays = found
            return Tokens(arrays["ids"], arrays["starts"], meta["words"], key, True)
        try:
            return _write_tokens(cache / key, text_pieces(path, what), Encoder(lowercase, punctuation))
        except OSError as e:
            say(f"{what}={path}: cannot write the token cache in {cache} ({e.strerror}); tokenizing into memory "
                "(set DL_CACHE_DIR or dataset.cache_dir to a writable folder)")
    return tokens_of_pieces(text_pieces(path, what), lowercase, punctuation)


def _write_tokens(entry: Path, pieces: Iterable[str], encoder: Encoder) -> Tokens:
    with new_entry(entry, ["ids", "starts"]) as f:
        n = sentences = 0
        for piece in pieces:
            ids, starts = encoder(piece)
            ids.tofile(f["ids"])
            starts.tofile(f["starts"])
            n, sentences = n + len(ids), sentences + len(starts)
    write_meta(entry, {"format": FORMAT, "words": encoder.vocabulary()},
               {"ids": (np.uint32, n), "starts": (np.int64, sentences)})
    found = map_entry(entry)
    assert found is not None
    meta, arrays = found
    return Tokens(arrays["ids"], arrays["starts"], meta["words"], entry.name, False)


def read(array: np.ndarray, a: int, b: int) -> np.ndarray:
    """array[a:b] (whole arrays only); of a memory-mapped file, read from the file instead: pages read through the map
    would count in the process's memory (RSS) until it is unmapped, an epoch over a 1 GB corpus adding 1 GB."""
    if not isinstance(array, np.memmap) or b <= a:
        return array[a:b]
    b = min(b, len(array))
    with open(array.filename, "rb") as f:
        f.seek(array.offset + a * array.itemsize)
        return np.frombuffer(f.read((b - a) * array.itemsize), array.dtype)


def sentence_ids(starts: np.ndarray, a: int, b: int) -> np.ndarray:
    """The sentence (index into starts) of each word a..b-1 of a stream whose sentences begin at `starts`."""
    if b <= a:
        return np.zeros(0, np.int64)
    s0 = int(np.searchsorted(starts, a, "right")) - 1
    s1 = int(np.searchsorted(starts, b, "left"))
    edges = np.concatenate([[a], starts[s0 + 1:s1], [b]])
    return np.repeat(np.arange(s0, s1), np.diff(edges))


# ---------------------------------------------------------------------------------------------- one run's view
@dataclass
class Corpus:
    """One run's view of a corpus: per split (vocabulary ids of its words, where its sentences start), the vocabulary
    (sorted by count) and each word's count in the train split."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    vocab: list[str]
    counts: np.ndarray
    corpus_words: int
    cache: Path | None = None  # the train ids' file, when cached
    from_cache: bool = False


def split_sentences(n: int, val_fraction: float, test_fraction: float, seed: int) -> Tensor:
    """0/1/2 (train/val/test) per sentence: whole sentences drawn with a seed, at least one each when possible."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction)) if n >= 3 else 0
    n_test = max(1, round(n * test_fraction)) if n >= 3 else 0
    which = torch.zeros(n, dtype=torch.long)
    which[perm[:n_val]] = 1
    which[perm[n_val:n_val + n_test]] = 2
    return which


def corpus_of(tokens: Tokens, val_fraction: float, test_fraction: float, seed: int, min_count: int,
              max_vocab: int | None, cache: Path | None, say: Callable[[str], None]) -> Corpus:
    """The run's view of `tokens`: words seen >= min_count times in the train split (the max_vocab most frequent)
    kept, sorted by count as gensim does (ties in first-seen order). From the cache when an earlier run made it."""
    entry = None
    if cache is not None and tokens.key is not None:
        settings = (tokens.key, FORMAT, val_fraction, test_fraction, seed, min_count, max_vocab)
        entry = cache / hashlib.blake2b(repr(settings).encode(), digest_size=16).hexdigest()
        if (found := map_entry(entry)) is not None:
            meta, arrays = found
            return Corpus({k: (arrays[f"{k}.ids"], arrays[f"{k}.starts"]) for k in SPLITS}, meta["vocab"],
                          np.asarray(meta["counts"], np.int64), meta["corpus_words"], array_file(entry, "train.ids"),
                          True)
    which = split_sentences(len(tokens.starts), val_fraction, test_fraction, seed).numpy().astype(np.int8)
    counts = np.zeros(len(tokens.words), np.int64)
    for a, b in _blocks(len(tokens.ids)):
        counts += np.bincount(read(tokens.ids, a, b)[which[sentence_ids(tokens.starts, a, b)] == 0],
                              minlength=len(counts))
    order = np.argsort(-counts, kind="stable")
    keep = order[counts[order] >= min_count][:max_vocab or None]
    remap = np.full(len(tokens.words), -1, np.int64)
    remap[keep] = np.arange(len(keep))
    vocab = [tokens.words[i] for i in keep.tolist()]
    parts = _views(tokens, which, remap, id_dtype(len(vocab)))
    if entry is not None:
        try:
            return _write_corpus(entry, parts, vocab, counts[keep], len(tokens.ids))
        except OSError as e:
            say(f"cannot write the token cache in {cache} ({e.strerror}); keeping the corpus in memory (set "
                "DL_CACHE_DIR or dataset.cache_dir to a writable folder)")
            parts = _views(tokens, which, remap, id_dtype(len(vocab)))
    got: dict[str, list[list[np.ndarray]]] = {k: [[], []] for k in SPLITS}
    for block in parts:
        for k, (ids, starts) in zip(SPLITS, block):
            got[k][0].append(ids)
            got[k][1].append(starts)
    splits = {k: (np.concatenate(i) if i else np.zeros(0, id_dtype(len(vocab))),
                  np.concatenate(s) if s else np.zeros(0, np.int64)) for k, (i, s) in got.items()}
    return Corpus(splits, vocab, counts[keep], len(tokens.ids))


def _blocks(n: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, BLOCK):
        yield a, min(n, a + BLOCK)


def _views(tokens: Tokens, which: np.ndarray, remap: np.ndarray, dtype: np.dtype
           ) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """Block after block of the corpus, for each split: its words' vocabulary ids, and where (in the split) the
    sentences that open in the block start."""
    size, last = [0] * len(SPLITS), [-1] * len(SPLITS)  # per split: words so far, the sentence of its last word
    for a, b in _blocks(len(tokens.ids)):
        sent = sentence_ids(tokens.starts, a, b)
        new = remap[read(tokens.ids, a, b)]
        part = which[sent]
        out = []
        for k in range(len(SPLITS)):
            mine = (part == k) & (new >= 0)
            s = sent[mine]
            opens = np.flatnonzero(s != np.concatenate([[last[k]], s[:-1]]))
            out.append((new[mine].astype(dtype), size[k] + opens))
            if len(s):
                last[k] = int(s[-1])
            size[k] += len(s)
        yield out


def _write_corpus(entry: Path, parts: Iterator[list[tuple[np.ndarray, np.ndarray]]], vocab: list[str],
                  counts: np.ndarray, corpus_words: int) -> Corpus:
    names = [f"{k}.{a}" for k in SPLITS for a in ("ids", "starts")]
    dtype = id_dtype(len(vocab))
    sizes = dict.fromkeys(names, 0)
    with new_entry(entry, names) as f:
        for block in parts:
            for k, arrays in zip(SPLITS, block):
                for a, array in zip(("ids", "starts"), arrays):
                    array.tofile(f[f"{k}.{a}"])
                    sizes[f"{k}.{a}"] += len(array)
    write_meta(entry, {"format": FORMAT, "vocab": vocab, "counts": counts.tolist(), "corpus_words": corpus_words},
               {name: (dtype if name.endswith("ids") else np.int64, n) for name, n in sizes.items()})
    found = map_entry(entry)
    assert found is not None
    meta, arrays = found
    return Corpus({k: (arrays[f"{k}.ids"], arrays[f"{k}.starts"]) for k in SPLITS}, meta["vocab"],
                  np.asarray(meta["counts"], np.int64), corpus_words, array_file(entry, "train.ids"))


# ------------------------------------------------------------------------------------------------- reading a split
def split_tensors(ids: np.ndarray, starts: np.ndarray) -> tuple[Tensor, Tensor]:
    """A whole split in memory: word ids and a sentence id per word, int64."""
    lengths = np.diff(np.append(starts, len(ids)))
    return (torch.from_numpy(read(ids, 0, len(ids)).astype(np.int64)),
            torch.repeat_interleave(torch.arange(len(starts)), torch.from_numpy(lengths)))


class Stream:
    """A split read chunk by chunk from its arrays (memory-mapped cache files, or arrays in memory); only each chunk
    becomes int64 tensors. A chunk's sentence ids are the split's sentence indices: equal within a sentence,
    as the in-memory path's are."""

    def __init__(self, ids: np.ndarray, starts: np.ndarray):
        self.ids, self.starts = ids, starts

    def __len__(self) -> int:
        return len(self.ids)

    def chunk(self, a: int, b: int) -> tuple[Tensor, Tensor]:
        b = min(b, len(self.ids))
        return (torch.from_numpy(read(self.ids, a, b).astype(np.int64)),
                torch.from_numpy(sentence_ids(self.starts, a, b)))
