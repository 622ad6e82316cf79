"""`dl sample` for word embeddings: the words nearest each --word (or each line of --input FILE) or a vector sum
("king - man + woman"). With --out or --json, one row per word: `id` (its place among the --word options, or its
line), `word`, `in_vocabulary`, then the --topn neighbours: JSON Lines a list of {word, similarity}; CSV
`neighbour_1`, `similarity_1`, ... A word the model does not know is a row marked `in_vocabulary` false (on the
terminal: a line saying so); when no word at all is known, that is one error line."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.table import Table
from torch import Tensor

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.base.targets import model_name
from dlcli.commands import predictions
from dlcli.commands.restore import Restored
from dlcli.data.word_vectors import neighbours, unit_rows

CHUNK = 256  # words looked up at once: a (CHUNK, vocabulary) score matrix, whatever the batch size in the config


@dataclass
class Query:
    id: int
    label: str
    vector: Tensor | None = None  # None: not in the vocabulary
    exclude: list[int] = field(default_factory=list)


@dataclass
class Space:
    """The unit word vectors and how words are looked up in them."""

    vocab: list[str]
    unit: Tensor
    lowercase: bool

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def key(self, word: str) -> str:
        return word.strip().lower() if self.lowercase else word.strip()

    def query(self, n: int, word: str) -> Query:
        i = self.index.get(self.key(word))
        return Query(n, self.key(word)) if i is None else Query(n, self.key(word), self.unit[i], [i])

    def unknown(self, words: list[str], what: str) -> UserError:
        shown = ", ".join(words[:5]) + (", ..." if len(words) > 5 else "")
        return UserError(f"{what} {shown}: not in the vocabulary ({len(self.vocab)} words, e.g. "
                         f"{', '.join(self.vocab[:8])})")


def sample_embeddings(r: Restored, words: list[str] | None, analogy: str | None, topn: int,
                      input_path: str | None = None, out: str | None = None, as_json: bool = False) -> int:
    """`dl sample CKPT [--word W ... | --input FILE | --analogy "king - man + woman"] [--topn N] [--out FILE]`."""
    space = Space(r.ckpt["meta"]["vocab"], unit_rows(r.model.vectors()), r.ckpt["meta"].get("lowercase", True))
    queries, total = _queries(r, space, words, analogy, input_path)
    looked_up = _looked_up(space, queries, topn, f"--input {input_path}")
    if predictions.wanted(out, as_json):
        rows = _rows(looked_up, min(topn, len(space.vocab) - 1), predictions.format_of(out, as_json))
        return predictions.write_rows(out, as_json, rows, total, "neighbours")
    console = make_console()
    count = 0
    for q, near in looked_up:
        count += 1
        if near is None:
            console.print(f"[yellow]{q.label}[/]: not in the vocabulary")
            continue
        table = Table(title=f"{model_name(r.cfg.model)}: nearest to {q.label}", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("word")
        table.add_column("cosine", justify="right")
        for i, (w, s) in enumerate(near, 1):
            table.add_row(str(i), w, f"{s:.4f}")
        console.print(table)
    return count


def _queries(r: Restored, space: Space, words: list[str] | None, analogy: str | None,
             input_path: str | None) -> tuple[Iterable[Query], int | None]:
    """What to look up, as a stream, and how many (None: not known before the end, as on stdin)."""
    if input_path is not None:
        if words or analogy:
            raise UserError(f"--input {input_path}: the words come from that file; give --word/--analogy or --input, "
                            "not both")
        if input_path == "-":
            return (space.query(n, w) for n, w in predictions.lines("-", "--input")), None
        known = [0]

        def count(n: int, word: str) -> None:
            known[0] += space.key(word) in space.index

        total = predictions.scan(input_path, "--input", count)
        if known[0] == 0:
            raise UserError(f"--input={input_path}: none of its {total} words is in the vocabulary "
                            f"({len(space.vocab)} words, e.g. {', '.join(space.vocab[:8])})")
        return (space.query(n, w) for n, w in predictions.lines(input_path, "--input")), total
    queries = []
    if analogy:
        terms = parse_analogy(analogy, space.lowercase)
        missing = [w for _, w in terms if w not in space.index]
        if missing:
            raise UserError(f"--analogy {analogy!r}: not in the vocabulary: {', '.join(missing)}")
        q = sum(sign * space.unit[space.index[w]] for sign, w in terms)
        queries.append(Query(1, analogy, q, [space.index[w] for _, w in terms]))
    given = words or ([] if analogy else list(r.cfg.dataset.get("probes") or space.vocab[:5]))
    looked = [space.query(len(queries) + i, w) for i, w in enumerate(given, 1)]
    if looked and not analogy and all(q.vector is None for q in looked):
        raise space.unknown([q.label for q in looked], "--word" if words else "dataset.probes")
    return queries + looked, len(queries) + len(looked)


def _looked_up(space: Space, queries: Iterable[Query], topn: int,
               source: str) -> Iterator[tuple[Query, list[tuple[str, float]] | None]]:
    """Each query with its neighbours (None: an unknown word), CHUNK queries at a time."""
    found = seen = 0
    for chunk in predictions.chunked(queries, CHUNK):
        known = [q for q in chunk if q.vector is not None]
        near = iter(neighbours(space.unit, space.vocab, torch.stack([q.vector for q in known]),
                               [q.exclude for q in known], topn) if known else [])
        found, seen = found + len(known), seen + len(chunk)
        for q in chunk:
            yield q, (next(near) if q.vector is not None else None)
    if seen == 0:
        raise UserError(f"{source}: no words to look up (one word per line)")
    if found == 0:  # words from standard input: known only now (the other sources are checked before any work)
        raise UserError(f"{source}: none of its words is in the vocabulary ({len(space.vocab)} words, "
                        f"e.g. {', '.join(space.vocab[:8])})")


def _rows(looked_up: Iterable[tuple[Query, list[tuple[str, float]] | None]], k: int, fmt: str) -> Iterator[dict]:
    for q, near in looked_up:
        row: dict[str, Any] = {"id": q.id, "word": q.label, "in_vocabulary": near is not None}
        if fmt == "jsonl":
            row["neighbours"] = [{"word": w, "similarity": round(s, 6)} for w, s in near or []]
        else:
            cells = near or []
            for i in range(k):
                row[f"neighbour_{i + 1}"] = cells[i][0] if i < len(cells) else ""
                row[f"similarity_{i + 1}"] = round(cells[i][1], 6) if i < len(cells) else ""
        yield row


def parse_analogy(text: str, lowercase: bool) -> list[tuple[int, str]]:
    """'king - man + woman' -> [(+1, king), (-1, man), (+1, woman)]."""
    tokens = text.replace("+", " + ").replace("-", " - ").split()
    terms, sign = [], 1
    expect_word = True
    for t in tokens:
        if t in "+-":
            if expect_word:
                raise UserError(f"--analogy {text!r}: two operators in a row; write it like 'king - man + woman'")
            sign, expect_word = (1 if t == "+" else -1), True
            continue
        if not expect_word:
            raise UserError(f"--analogy {text!r}: put + or - between words, e.g. 'king - man + woman'")
        terms.append((sign, t.lower() if lowercase else t))
        expect_word = False
    if not terms or expect_word:
        raise UserError(f"--analogy {text!r}: write words joined by + and -, e.g. 'king - man + woman'")
    return terms
