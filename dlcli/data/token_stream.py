"""Token ids of a text of any size, for language models.

A text file is read and tokenized piece by piece (8 MB at a time: memory stays bounded whatever the file's size), in
two passes (count the vocabulary, then write ids), into a flat id file of the narrowest type the vocabulary allows
(uint8 / uint16 / uint32) in the cache (data/cache.py), keyed by the file's bytes and the tokenizer settings. A second
run on the same file maps that file and starts at once. Characters go through NumPy (code points and a lookup table),
words through one dict lookup each.

Tokens: `char`, every character; `word`, whitespace-separated words with each line break a token of its own. Line
breaks are read as Python's text mode reads them ("\\r\\n" and "\\r" become "\\n").
"""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcli.base.errors import UserError
from dlcli.data.cache import content_digest

PIECE_BYTES = 1 << 23
FORMAT = 1  # bump when the id files change meaning: old entries are then never read
UNK = "<unk>"


@dataclass
class TokenIds:
    ids: np.ndarray  # one id per token: a memory-mapped cache file, or an array in memory
    vocab: list[str]
    unk: str | None  # "<unk>" when rare or unknown tokens map to it
    unseen: list[str]  # tokens outside a given vocabulary that has no <unk> (then ids hold -1 for them)
    cache: Path | None = None  # the id file, when cached
    from_cache: bool = False  # read from an earlier run's cache
    once: float = 0.0  # the share of distinct tokens seen once (0 when the vocabulary was given)


def text_pieces(path: Path, what: str) -> Iterator[str]:
    """The file's text in pieces that end at whitespace (no token is cut), universal newlines."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry, offset = "", 0
    with open(path, "rb") as f:
        while True:
            block = f.read(PIECE_BYTES)
            final = not block
            pending = len(decoder.getstate()[0])
            try:
                text = carry + decoder.decode(block, final=final)
            except UnicodeDecodeError as e:
                raise UserError(f"{what}={path}: not UTF-8 text (byte {offset - pending + e.start}); save it as "
                                "UTF-8") from None
            offset += len(block)
            held = "\r" if not final and text.endswith("\r") else ""  # may be half of a "\r\n"
            text = text[:len(text) - len(held)].replace("\r\n", "\n").replace("\r", "\n")
            if final:
                if text:
                    yield text
                return
            cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
            carry = text[cut + 1:] + held
            if cut >= 0:
                yield text[:cut + 1]


def words(piece: str) -> list[str]:
    lines = piece.split("\n")
    out: list[str] = []
    for line in lines[:-1]:
        out += line.split()
        out.append("\n")
    out += lines[-1].split()
    return out


def count(pieces: Iterable[str], level: str) -> Counter:
    counts: Counter = Counter()
    for piece in pieces:
        if level == "char":
            found = np.bincount(_code_points(piece))
            counts.update({chr(c): int(found[c]) for c in np.flatnonzero(found)})
        else:
            counts.update(words(piece))
    return counts


def vocabulary(counts: Counter, min_freq: int) -> list[str]:
    """Sorted tokens seen at least min_freq times, then <unk> if any were left out."""
    vocab = sorted(t for t, c in counts.items() if c >= min_freq)
    if len(vocab) < len(counts):
        vocab.append(UNK)
    return vocab


def vocabulary_of(pieces: Iterable[str], level: str, min_freq: int, vocab: list[str] | None) -> tuple[list[str], float]:
    """The given vocabulary, or one counted from the pieces; and the share of distinct tokens seen once (0 when
    given)."""
    if vocab is not None:
        return vocab, 0.0
    counts = count(pieces, level)
    return vocabulary(counts, min_freq), sum(1 for c in counts.values() if c == 1) / max(len(counts), 1)


class Encoder:
    """Tokens -> ids by a vocabulary; tokens outside it get <unk>'s id, or -1 when it has none."""

    def __init__(self, vocab: list[str], level: str):
        self.level = level
        self.index = {t: i for i, t in enumerate(vocab)}
        self.unk_id = self.index.get(UNK, -1)
        if level == "char":  # code point -> id; the last entry (and any code point past it) is unk_id
            self.table = np.full(max((ord(t) for t in vocab if len(t) == 1), default=0) + 2, self.unk_id, np.int64)
            for t, i in self.index.items():
                if len(t) == 1:
                    self.table[ord(t)] = i

    def __call__(self, piece: str) -> np.ndarray:
        if self.level == "char":
            return self.table[np.minimum(_code_points(piece), len(self.table) - 1)]
        tokens = words(piece)
        return np.fromiter((self.index.get(t, self.unk_id) for t in tokens), dtype=np.int64, count=len(tokens))

    def unseen(self, ids: np.ndarray, pieces: Iterable[str]) -> list[str]:
        if not (ids < 0).any():
            return []
        return sorted(t for t in count(pieces, self.level) if t not in self.index)

    @property
    def unk(self) -> str | None:
        return UNK if self.unk_id >= 0 else None


def ids_of_text(text: str, level: str, min_freq: int, vocab: list[str] | None) -> TokenIds:
    """A text already in memory (tiny-shakespeare, the generated grammar)."""
    vocab, once = vocabulary_of([text], level, min_freq, vocab)
    encoder = Encoder(vocab, level)
    ids = encoder(text)
    return TokenIds(ids, vocab, encoder.unk, encoder.unseen(ids, [text]), once=once)


def ids_of_file(path: Path, level: str, min_freq: int, vocab: list[str] | None, cache: Path | None,
                what: str, say: Callable[[str], None]) -> TokenIds:
    """A text file's ids: from the cache when an earlier run made them, else tokenized into it (cache None or not
    writable: into memory, as a small file would be)."""
    def pieces() -> Iterator[str]:
        return text_pieces(path, what)

    entry = None
    if cache is not None:
        entry = cache / content_digest(path, FORMAT, level, min_freq, vocab)
        if (found := _read_entry(entry)) is not None:
            return found
    vocab, once = vocabulary_of(pieces(), level, min_freq, vocab)
    encoder = Encoder(vocab, level)
    if entry is not None:
        try:
            return _write_entry(entry, pieces(), encoder, vocab, once)
        except OSError as e:
            say(f"{what}={path}: cannot write the token cache in {entry.parent} ({e.strerror}); tokenizing into "
                "memory (set DL_CACHE_DIR or dataset.cache_dir to a writable folder)")
    ids = np.concatenate([encoder(p) for p in pieces()] or [np.zeros(0, np.int64)])
    return TokenIds(ids, vocab, encoder.unk, encoder.unseen(ids, pieces()), once=once)


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 1 << 8 else np.uint16 if vocab_size <= 1 << 16 else np.uint32)


# ------------------------------------------------------------------------------------------------------ internals
def _code_points(piece: str) -> np.ndarray:
    return np.frombuffer(piece.encode("utf-32-le"), dtype=np.uint32)


def _read_entry(entry: Path) -> TokenIds | None:
    try:
        meta = json.loads(entry.with_suffix(".json").read_text())
        ids = np.memmap(entry.with_suffix(".ids"), dtype=np.dtype(meta["dtype"]), mode="r")
    except (OSError, ValueError, KeyError):
        return None  # not made yet, or half-written by a run that was stopped: made again
    if len(ids) != meta["n"]:
        return None
    return TokenIds(ids, meta["vocab"], meta["unk"], meta["unseen"], entry.with_suffix(".ids"), True,
                    meta.get("once", 0.0))


def _write_entry(entry: Path, pieces: Iterable[str], encoder: Encoder, vocab: list[str], once: float) -> TokenIds:
    """ids into a temp file beside the entry, then renamed: a stopped run leaves no half entry behind."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    dtype, n, unseen = id_dtype(len(vocab)), 0, set()
    fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in pieces:
                ids = encoder(piece)
                if (ids < 0).any():  # reported by the caller; stored as 0
                    unseen.update(encoder.unseen(ids, [piece]))
                    ids[ids < 0] = 0
                ids.astype(dtype).tofile(f)
                n += len(ids)
        os.replace(tmp, entry.with_suffix(".ids"))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = {"format": FORMAT, "n": n, "dtype": dtype.name, "vocab": vocab, "unk": encoder.unk,
            "unseen": sorted(unseen), "once": once}
    entry.with_suffix(".json").write_text(json.dumps(meta))  # last: its presence says the ids are whole
    found = _read_entry(entry)
    assert found is not None
    found.from_cache = False
    return found
