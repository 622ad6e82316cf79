"""Text classification: `text_classes`, the user's own labelled texts, and `reviews`, generated movie reviews.

A file is `label<TAB>text` a line (no header), or a CSV with a header whose columns `dataset.text` and `dataset.label`
are read (by the extension: .csv). Texts are tokenized as dataset=corpus tokenizes (lower-casing, punctuation split /
dropped / kept; `level=char`: the characters of that), cut to their first `max_len` tokens, and held as rows of ids
right-padded with <pad> (id 0) on the device; the models take each row's length from its pads. The vocabulary comes
from the train split alone (the 4 special tokens first, then by count; rarer than `min_freq` or past `max_vocab`:
<unk>). Val/test are a seeded stratified split (every class in every split) or files of their own. The vocabulary
and class names are stored with the checkpoint (meta.preprocessing), so `dl eval` encodes texts as in training.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dlcli.base.errors import UserError
from dlcli.base.task import stratified_indices
from dlcli.base.tokens import PAD, SPECIALS, UNK
from dlcli.data.classification import ClassifyTask
from dlcli.data.corpus import tokenizer
from dlcli.data.download import read_user_text
from dlcli.data.pairs import encode
from dlcli.data.tabular import read_csv

LEVELS = ("word", "char")
SPLITS = ("train", "val", "test")
Row = tuple[str, str, str]  # (where: the file and line, label, text)


# ------------------------------------------------------------------------------------------------------ reading
def read_rows(path: str, cfg: Any, what: str) -> list[Row]:
    """The file's labelled texts: label<TAB>text lines, or a CSV's text and label columns (by the extension)."""
    if Path(str(path)).suffix.lower() == ".csv":
        rows = _csv_rows(path, str(cfg.text), str(cfg.label), what)
    else:
        rows = _tsv_rows(path, what)
    if not rows:
        raise UserError(f"{what}={path}: the file holds no labelled texts (expected label<TAB>text a line, or a "
                        "CSV file with a header)")
    for where, label, text in rows:
        if not label:
            raise UserError(f"{where} has no label")
        if not text:
            raise UserError(f"{where} has an empty text")
    return rows


def _tsv_rows(path: str, what: str) -> list[Row]:
    rows = []
    for number, line in enumerate(read_user_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab:
            raise UserError(f"{what}={path}: line {number} has no tab; expected label<TAB>text, got {line[:60]!r}")
        rows.append((f"{what}={path}: line {number}", label.strip(), text.strip()))
    return rows


def _csv_rows(path: str, text_column: str, label_column: str, what: str) -> list[Row]:
    header, rows = read_csv(path, what=what)
    for key, column in (("text", text_column), ("label", label_column)):
        if column not in header:
            raise UserError(f"dataset.{key}={column}: no such column in {path}; its columns: {', '.join(header)}")
    t, y = header.index(text_column), header.index(label_column)
    return [(f"{what}={path}: data row {i}", r[y], r[t]) for i, r in enumerate(rows, 1)]


# ------------------------------------------------------------------------------------------------------ tokens
def text_tokenizer(level: str, lowercase: bool, punctuation: str) -> Callable[[str], list[str]]:
    """dataset=corpus's tokenizer; at char level, the characters of its words joined by single spaces (punctuation
    marks are characters already: split keeps them as keep does, drop removes them)."""
    if level not in LEVELS:
        raise UserError(f"dataset.level={level}: choose one of: {', '.join(LEVELS)}")
    words = tokenizer(lowercase, "keep" if level == "char" and punctuation == "split" else punctuation)
    if level == "word":
        return words
    return lambda text: list(" ".join(words(text)))


def vocabulary(token_rows: list[list[str]], min_freq: int, max_vocab: int | None) -> list[str]:
    """The special tokens, then the tokens seen at least min_freq times, most frequent first (ties by name), at most
    max_vocab of them."""
    counts = Counter(t for tokens in token_rows for t in tokens)
    kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    return SPECIALS + [t for t in kept if t not in SPECIALS][:max_vocab]


def sorted_labels(labels: set[str]) -> list[str]:
    """Class names in order: whole numbers by value (1, 2, 10), then the rest alphabetically."""
    def key(label: str) -> tuple[bool, int, str]:
        try:
            return False, int(label), label
        except ValueError:
            return True, 0, label
    return sorted(labels, key=key)


# ------------------------------------------------------------------------------------------------------ the task
def _settings(cfg: Any) -> tuple[int, int | None, int]:
    """dataset.min_freq, max_vocab (null: no limit) and max_len, each a positive integer."""
    values = {"min_freq": cfg.min_freq, "max_vocab": cfg.get("max_vocab"), "max_len": cfg.max_len}
    for key, value in values.items():
        if (value is not None or key != "max_vocab") and (type(value) is not int or value < 1):
            raise UserError(f"dataset.{key}={value}: must be a positive integer"
                            f"{' or null (no limit)' if key == 'max_vocab' else ''}")
    return values["min_freq"], values["max_vocab"], values["max_len"]


def text_task(parts: dict[str, list[Row]], cfg: Any, loss_cfg: Any, source: str,
              preprocessing: dict | None) -> ClassifyTask:
    """parts: each split's rows (or "all": one file to split by class). preprocessing: a checkpoint's vocabulary and
    class names (dl eval), reused, not refitted."""
    min_freq, max_vocab, max_len = _settings(cfg)
    tokenize = text_tokenizer(str(cfg.level), bool(cfg.lowercase), str(cfg.punctuation))
    train_rows = parts.get("all") or parts["train"]
    names = preprocessing["class_names"] if preprocessing else sorted_labels({label for _, label, _ in train_rows})
    if len(names) < 2:
        raise UserError(f"{source}: every text has the label {names[0]!r}; a classifier needs two classes or more")
    tokens, labels = {}, {}
    for split, rows in parts.items():
        tokens[split], labels[split] = _encode_rows(rows, names, tokenize, f"{cfg.punctuation}")
    if "all" in parts:
        cut = stratified_indices(labels["all"], float(cfg.val_fraction), float(cfg.test_fraction), int(cfg.seed),
                                 names, source)
        tokens = {s: [tokens["all"][i] for i in idx.tolist()] for s, idx in zip(SPLITS, cut)}
        labels = {s: labels["all"][idx] for s, idx in zip(SPLITS, cut)}
    vocab = preprocessing["vocab"] if preprocessing else vocabulary(tokens["train"], min_freq, max_vocab)
    cut_texts = sum(len(t) > max_len for rows in tokens.values() for t in rows)
    splits = {s: (encode([t[:max_len] for t in tokens[s]], vocab, False) if tokens[s] else
                  torch.zeros(0, 1, dtype=torch.long), labels[s]) for s in SPLITS}  # empty: build_task says so
    meta = {"vocab": vocab, "vocab_size": len(vocab), "num_classes": len(names), "class_names": names,
            "pad_id": PAD, "unk_id": UNK, "level": str(cfg.level), "lowercase": bool(cfg.lowercase),
            "punctuation": str(cfg.punctuation), "max_len": max_len,
            "preprocessing": {"vocab": vocab, "class_names": names}}
    task = ClassifyTask(splits, meta, loss_cfg)
    longest = max(x.shape[1] for x, _ in splits.values())
    task.loading = (f"{len(vocab):,} tokens in the vocabulary ({cfg.level} level), {len(names)} classes, texts up "
                    f"to {longest} tokens")
    if cut_texts:
        total = sum(len(rows) for rows in tokens.values())
        task.warnings.append(f"{cut_texts} of {total} texts are longer than dataset.max_len={max_len} tokens and "
                             "were cut to their start; raise dataset.max_len to keep more")
    return task


def _encode_rows(rows: list[Row], names: list[str], tokenize: Callable[[str], list[str]],
                 punctuation: str) -> tuple[list[list[str]], torch.Tensor]:
    """Each row's tokens and class id; a label outside `names` or a text without tokens is one line naming it."""
    index = {name: i for i, name in enumerate(names)}
    tokens = []
    for where, label, text in rows:
        if label not in index:
            raise UserError(f"{where} has the label {label!r}, which the training texts do not have (classes: "
                            f"{', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")
        tokens.append(tokenize(text))
        if not tokens[-1]:
            raise UserError(f"{where} has no tokens once tokenized ({text[:40]!r}, dataset.punctuation="
                            f"{punctuation})")
    return tokens, torch.tensor([index[label] for _, label, _ in rows])


def text_classes(cfg: Any, loss_cfg: Any, preprocessing: dict | None = None) -> ClassifyTask:
    if cfg.get("path") in (None, "???") or not str(cfg.path).strip():
        raise UserError("dataset=text_classes needs dataset.path=FILE (label<TAB>text a line, or a CSV with text "
                        "and label columns), e.g. dl train model=lstm dataset=text_classes dataset.path=texts.tsv")
    source = f"dataset.path={cfg.path}"
    rows = read_rows(str(cfg.path), cfg, "dataset.path")
    if not (cfg.get("val_path") or cfg.get("test_path")):
        return text_task({"all": rows}, cfg, loss_cfg, source, preprocessing)
    if not (cfg.get("val_path") and cfg.get("test_path")):
        raise UserError("give both dataset.val_path and dataset.test_path (or neither, to split by fraction)")
    parts = {"train": rows, **{s: read_rows(str(cfg[f"{s}_path"]), cfg, f"dataset.{s}_path") for s in ("val", "test")}}
    return text_task(parts, cfg, loss_cfg, source, preprocessing)


# ------------------------------------------------------------------------------------------------------ generated
SUBJECTS = ("the film", "this movie", "the plot", "the acting", "the ending", "the script", "the music", "the cast")
LINKS = ("was", "is", "felt", "seemed")
ADVERBS = ("really", "quite", "very", "truly", "so")
OPINIONS = {"positive": ("good", "great", "wonderful", "brilliant", "moving", "funny", "clever", "charming"),
            "negative": ("bad", "awful", "boring", "dull", "weak", "clumsy", "predictable", "tedious"),
            "neutral": ("long", "short", "quiet", "loud", "ordinary", "old", "french", "silent")}
ASIDES = ("i saw it on sunday", "my friend chose it", "we had popcorn", "it runs two hours", "the cinema was full",
          "it came out last year")
FLIPPED = {"positive": "negative", "negative": "positive", "neutral": "neutral"}


def review(rng: random.Random, negation_p: float) -> tuple[str, str]:
    """(label, text): one opinion, maybe negated ("not" flips positive and negative; neutral stays), among asides."""
    said = rng.choice(sorted(OPINIONS))
    negated = rng.random() < negation_p
    words = [rng.choice(SUBJECTS), rng.choice(LINKS), *(["not"] if negated else []),
             *([rng.choice(ADVERBS)] if rng.random() < 0.5 else []), rng.choice(OPINIONS[said])]
    clause, aside, r = " ".join(words), rng.choice(ASIDES), rng.random()
    text = f"{aside}, {clause}." if r < 0.3 else f"{clause}; {aside}." if r < 0.6 else f"{clause}."
    return FLIPPED[said] if negated else said, text[0].upper() + text[1:]


def reviews(cfg: Any, loss_cfg: Any, preprocessing: dict | None = None) -> ClassifyTask:
    n = int(cfg.n_samples)
    if n < 30:
        raise UserError(f"dataset.n_samples={n}: use at least 30")
    rng = random.Random(int(cfg.seed))
    rows = [(f"review {i}", *review(rng, float(cfg.negation_p))) for i in range(1, n + 1)]
    return text_task({"all": rows}, cfg, loss_cfg, "dataset=reviews", preprocessing)


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"text_classes": text_classes, "reviews": reviews}
