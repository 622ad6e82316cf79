"""The word2vec C tool's vector files, as gensim's KeyedVectors.save_word2vec_format / load_word2vec_format write and
read them: a `count dimension` header, then one word and its vector a record: text (decimals, a line each) or binary
(little-endian float32 after the word and a space; a newline after each record or not). Headerless text files (GloVe:
`word v1 ... vd` from the first line) are read too. The format lives here, in the models layer, because the models'
pretrained embeddings read it (models/pretrained.py); `dl export` and every cbow/skipgram run write it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlcli.base.errors import UserError
from dlcli.base.overrides import is_number


def save_word2vec(path: Path, vocab: list[str], vectors: Tensor, binary: bool = False) -> Path:
    """The word2vec C tool's format: a `count size` header, then a word and its vector a line (text: decimals;
    binary: little-endian float32 after the word and a space). gensim's KeyedVectors.load_word2vec_format reads
    both."""
    v = vectors.detach().float().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "wb") as f:
            f.write(f"{len(vocab)} {v.shape[1]}\n".encode())
            if binary:
                arr = v.numpy().astype("<f4")
                for word, row in zip(vocab, arr):
                    f.write(word.encode() + b" " + row.tobytes() + b"\n")
            else:
                for word, row in zip(vocab, v.numpy()):  # row by row: v.tolist() would hold every float as an object
                    f.write((word + " " + " ".join(f"{x:.6g}" for x in row.tolist()) + "\n").encode())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave half a file behind
        raise
    return path


def read_word2vec(path: Path, what: str) -> tuple[list[str], Tensor, str]:
    """(words, vectors (count, dim) float32, "text" | "binary"). Text or binary is told by the first record: a
    text line is a word and `dim` numbers. A malformed file is one UserError naming the line (text) or record
    (binary). A word given twice keeps its first vector, as the file's order is usually by frequency."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{what}={path}: cannot read it ({e.strerror})") from None
    first, _, rest = data.partition(b"\n")
    fields = first.split()
    if len(fields) == 2 and all(f.isdigit() for f in fields):
        count, dim = int(fields[0]), int(fields[1])
        if count < 1 or dim < 1:
            raise UserError(f"{what}={path}: line 1 says {count} words of {dim} dimensions; nothing to read")
        if _is_text_line(rest.lstrip(b"\n").partition(b"\n")[0], dim):
            words, rows = _text_records(rest.split(b"\n"), dim, 2, path, what)
            fmt = "text"
        else:
            words, rows = _binary_records(rest, count, dim, path, what)
            fmt = "binary"
        if len(words) != count:
            raise UserError(f"{what}={path}: line 1 promises {count} words, the file holds {len(words)} (cut short, "
                            "or a wrong header)")
    elif len(fields) >= 2 and _is_text_line(first, len(fields) - 1):  # no header (GloVe)
        words, rows = _text_records(data.split(b"\n"), len(fields) - 1, 1, path, what)
        fmt = "text"
    else:
        raise UserError(f"{what}={path}: line 1 is {first[:60]!r}; a word2vec file starts with `count dimension` "
                        "(e.g. `71290 100`), or is text lines `word v1 v2 ...`")
    return _first_of_each(words, rows, fmt)


def _is_text_line(line: bytes, dim: int) -> bool:
    parts = line.split()
    if len(parts) != dim + 1:
        return False
    try:
        [float(p) for p in parts[1:]]
    except ValueError:
        return False
    return True


def _text_records(lines: list[bytes], dim: int, first_number: int, path: Path, what: str
                  ) -> tuple[list[str], np.ndarray]:
    words, values, numbers = [], [], []
    for number, line in enumerate(lines, first_number):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != dim + 1:
            raise UserError(f"{what}={path}: line {number} has {len(parts) - 1} numbers after its word, expected "
                            f"{dim}: {line[:60]!r}")
        words.append(_word(parts[0], f"line {number}", path, what))
        values.append(parts[1:])
        numbers.append(number)
    try:
        rows = np.array(values, dtype=np.float32).reshape(len(values), dim)
    except ValueError:  # find the line that does not hold numbers
        for number, row in zip(numbers, values):
            try:
                np.array(row, dtype=np.float32)
            except ValueError:
                bad = next(v for v in row if not is_number(v))
                raise UserError(f"{what}={path}: line {number} has {bad[:20]!r} where a number belongs") from None
        raise
    if not np.isfinite(rows).all():
        number = numbers[int(np.nonzero(~np.isfinite(rows).all(1))[0][0])]
        raise UserError(f"{what}={path}: line {number} holds nan or inf; every value must be a finite number")
    return words, rows


def _binary_records(data: bytes, count: int, dim: int, path: Path, what: str) -> tuple[list[str], np.ndarray]:
    size = 4 * dim
    words, rows, at = [], np.empty((count, dim), dtype=np.float32), 0
    for i in range(count):
        while at < len(data) and data[at:at + 1] == b"\n":  # the C tool ends each record with a newline
            at += 1
        space = data.find(b" ", at)
        if space < 0 or space + 1 + size > len(data):
            raise UserError(f"{what}={path}: binary record {i + 1} of {count} is cut short (after "
                            f"{len(words)} whole ones); the file is truncated or its header is wrong")
        words.append(_word(data[at:space], f"binary record {i + 1}", path, what))
        rows[i] = np.frombuffer(data, dtype="<f4", count=dim, offset=space + 1)
        at = space + 1 + size
    if data[at:].strip():
        raise UserError(f"{what}={path}: {len(data[at:].strip())} bytes follow the {count} records the header "
                        "promises (a wrong header?)")
    if not np.isfinite(rows).all():
        i = int(np.nonzero(~np.isfinite(rows).all(1))[0][0])
        raise UserError(f"{what}={path}: binary record {i + 1} ({words[i]!r}) holds nan or inf")
    return words, rows


def _word(raw: bytes, where: str, path: Path, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what}={path}: {where}: the word {raw[:30]!r} is not UTF-8 (binary data in a text "
                        "file?)") from None


def _first_of_each(words: list[str], rows: np.ndarray, fmt: str) -> tuple[list[str], Tensor, str]:
    seen: dict[str, int] = {}
    for i, w in enumerate(words):
        seen.setdefault(w, i)
    if len(seen) < len(words):
        keep = sorted(seen.values())
        words, rows = [words[i] for i in keep], rows[keep]
    return words, torch.from_numpy(np.ascontiguousarray(rows)), fmt
