"""`gutenberg_authors`: who wrote this paragraph? Paragraphs of a few authors of the shared Gutenberg corpus
(<root>/gutenberg/corpus.txt, one paragraph a line, books in the order of books.tsv, whose `paragraphs` column counts
each book's lines), labelled by the author's surname, made a text classification task by text_classes' machinery
(its tokenizer, vocabulary from the train split, padding, metrics).

Only paragraphs of at least `min_words` words (whitespace-separated, as books.tsv counts them) are drawn. The test
split comes from one book per author that training never sees (`authors: {author: held-out book}`): the model must
know the author's style, not the book's names and places. A book's parts count as one book (the held-out "Adventures
of Huckleberry Finn" holds out all its ", Part N" files; "The Prince and The Pauper" matches its ", Complete"). Val
and train come from the author's other books, drawn with `seed`: val first (`val_per_class`, the same whatever
per_class is), then train (`per_class`: the first N of one seeded order, so 100 examples are a subset of 300).
An author given `null` instead of a book has its test paragraphs drawn from its training books too.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

from dlcli.base.errors import UserError, choices
from dlcli.data.classification import ClassifyTask
from dlcli.data.text_classes import Row, text_task


def gutenberg_authors(cfg: Any, loss_cfg: Any, preprocessing: dict | None = None) -> ClassifyTask:
    folder = Path(str(cfg.root)).expanduser() / "gutenberg"
    books = _books(folder / "books.tsv")
    paragraphs = _paragraphs(folder / "corpus.txt", books)
    held = dict(cfg.authors or {})
    if len(held) < 2:
        raise UserError(f"dataset.authors: {len(held)} author(s); name two or more, as books.tsv spells them "
                        "(e.g. 'Austen, Jane'), each with the book held out for the test split")
    sizes = {key: int(cfg[key]) for key in ("per_class", "val_per_class", "test_per_class", "min_words")}
    for key, n in sizes.items():
        if n < 1:
            raise UserError(f"dataset.{key}={n}: must be a positive integer")
    rng = random.Random(int(cfg.seed))
    parts: dict[str, list[Row]] = {"train": [], "val": [], "test": []}
    for author, book in held.items():
        pool, tests = _pools(author, book, books, paragraphs, sizes["min_words"])
        label = author.split(",")[0].strip()
        need = {"val": sizes["val_per_class"], "train": sizes["per_class"]} | \
            ({"test": sizes["test_per_class"]} if book is not None else {})
        drawn = {"test": rng.sample(tests, min(sizes["test_per_class"], len(tests)))} if book is not None else {}
        order = rng.sample(pool, len(pool))
        drawn["val"], drawn["train"] = order[:need["val"]], order[need["val"]:need["val"] + need["train"]]
        if book is None:
            start = need["val"] + need["train"]
            drawn["test"] = order[start:start + sizes["test_per_class"]]
            need["test"] = sizes["test_per_class"]
        for split, rows in drawn.items():
            if len(rows) < need[split]:
                where = f"{book!r} (held out)" if split == "test" and book is not None else "the other books"
                raise UserError(f"dataset.authors: {author} has {len(rows)} paragraphs of >= {sizes['min_words']} "
                                f"words for {split} in {where}, {need[split]} wanted; lower dataset."
                                f"{'per_class' if split == 'train' else split + '_per_class'} or dataset.min_words")
            parts[split] += [(f"{author}, {title}: paragraph {n}", label, text) for title, n, text in rows]
    return text_task(parts, cfg, loss_cfg, f"dataset=gutenberg_authors ({folder})", preprocessing)


def _books(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise UserError(f"gutenberg_authors: {path} not found; set DL_DATA_DIR or dataset.root to the folder holding "
                        "gutenberg/corpus.txt and gutenberg/books.tsv")
    with open(path, newline="", encoding="utf-8") as f:
        books = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not books or not {"title", "author", "paragraphs"} <= set(books[0]):
        raise UserError(f"{path}: expected a tab-separated table with title, author and paragraphs columns")
    return books


def _paragraphs(path: Path, books: list[dict[str, str]]) -> list[list[str]]:
    """Each book's lines (books.tsv's `paragraphs` column says how many, in corpus order)."""
    if not path.is_file():
        raise UserError(f"gutenberg_authors: {path} not found; set DL_DATA_DIR or dataset.root to the folder holding "
                        "gutenberg/corpus.txt")
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and not lines[-1]:
        lines.pop()
    counts = [int(b["paragraphs"]) for b in books]
    if sum(counts) != len(lines):
        raise UserError(f"{path} has {len(lines):,} lines but books.tsv counts {sum(counts):,} paragraphs: the two "
                        "files do not belong together")
    out, at = [], 0
    for n in counts:
        out.append(lines[at:at + n])
        at += n
    return out


def _pools(author: str, book: str | None, books: list[dict[str, str]], paragraphs: list[list[str]],
           min_words: int) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]]:
    """(paragraphs of the author's other books, paragraphs of the held-out book): (title, number, text) each."""
    mine = [i for i, b in enumerate(books) if b["author"] == author]
    if not mine:
        raise UserError(f"dataset.authors: no books by {author!r} in books.tsv"
                        f"{choices(author, {b['author'] for b in books})}")
    held = [i for i in mine if book is not None and (books[i]["title"] == book or
                                                     books[i]["title"].startswith(f"{book}, "))]
    if book is not None and not held:
        titles = {books[i]["title"] for i in mine}
        raise UserError(f"dataset.authors: {author} has no book {book!r}{choices(book, titles)}")
    if book is not None and len(held) == len(mine):
        raise UserError(f"dataset.authors: {book!r} is all of {author}'s books in the corpus; hold out another one, "
                        "or null (test paragraphs from the training books)")
    pools: tuple[list, list] = ([], [])
    for i in mine:
        for n, text in enumerate(paragraphs[i], 1):
            if len(text.split()) >= min_words:
                pools[i in held].append((books[i]["title"], n, text))
    return pools


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"gutenberg_authors": gutenberg_authors}
