"""Pretrained word vectors in the first layer of every word-level model: text classifiers, word-level language models,
seq2seq with word tokens (source and target tables alike, each matched against its own vocabulary).

    model.pretrained_embeddings=PATH   a word2vec file (text or binary: told by its first record), a dl cbow/skipgram
                                       run dir or checkpoint, or a recipe (skipgram:gutenberg: models/vectors_recipe.py)
    model.freeze_embeddings=true       the tables stay as loaded (requires_grad off: no optimizer, no weight decay)
    model.embedding_projection=auto    the one size rule: auto, the model's embedding width (embedding_size, or the
                                       transformer's d_model) becomes the vectors' width; true, the width stays and a
                                       learned Linear maps the vectors to it; false, the two must already agree

A vocabulary word takes the file's vector of the same word: matched exactly, or case-insensitively when the vocabulary
has no capitals (the dataset lowercases); the special tokens and the words not in the file keep the family's own
random start. Frozen, the whole table is frozen, those random rows included (fine-tune when coverage is low).

A family calls three things, once each: `vectors = WordVectors(cfg, meta, size, key)` (what the file asks of the
model: `vectors.width`), `vectors.table(side)` for each embedding table, and `vectors.fill(model)` at the end of its
build, after any init of its own. dl train then calls `describe` (the coverage, into meta["pretrained"] and
summary.json). A checkpoint's meta carries that record, so a restored model is built in the same shape without the
file (the rows are in its weights): dl eval, dl sample and a resume never read the file again.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dlcli.base.errors import UserError
from dlcli.base.tokens import SPECIALS
from dlcli.models.vectors_file import read_word2vec
from dlcli.models.vectors_recipe import KEY, is_recipe, recipe_vectors

LEVELS = {"vocab": "level", "src_vocab": "src_level", "tgt_vocab": "tgt_level"}  # a vocabulary -> its meta level key
SIDES = {"vocab": "vocabulary", "src_vocab": "source", "tgt_vocab": "target"}
PROJECTIONS = ("auto", True, False)
NOT_TEXT = ("<pad>", "<bos>", "<eos>")  # ids that are not tokens of the text (token coverage leaves them out)


class Projected(nn.Module):
    """The vectors' table, then a learned map to the model's width (model.embedding_projection=true)."""

    def __init__(self, table: nn.Embedding, width: int):
        super().__init__()
        self.table = table
        self.projection = nn.Linear(table.embedding_dim, width, bias=False)

    def forward(self, ids: Tensor) -> Tensor:
        return self.projection(self.table(ids))


def table_of(module: nn.Module) -> nn.Embedding:
    """The nn.Embedding whose rows are the word vectors (itself, or inside a projection)."""
    return module.table if isinstance(module, Projected) else module


class WordVectors:
    """What model.pretrained_embeddings asks of one model being built. Without the key, tables are made as ever."""

    def __init__(self, cfg: Any, meta: dict, size: int, key: str):
        self.meta, self.size, self.key = meta, size, key
        self.source = str(cfg.get("pretrained_embeddings") or "").strip() or None
        self.freeze = cfg.get("freeze_embeddings", False)
        projection = cfg.get("embedding_projection", "auto")
        if not isinstance(self.freeze, bool):  # (dl train's config check says so first; a model built by hand)
            raise UserError(f"model.freeze_embeddings={self.freeze}: choose true or false")
        if not any(projection is p or projection == p == "auto" for p in PROJECTIONS):  # by type: 1 is not true
            raise UserError(f"model.embedding_projection={projection}: choose auto, true or false")
        self.record = meta.get("pretrained")  # a checkpoint's: the shapes, not the rows (those are its weights)
        self.tables: list[tuple[str, nn.Embedding]] = []
        self.words: list[str] = []  # the file's, until the rows are in the tables
        self.rows: Tensor | None = None
        self.file_words = 0
        if self.record:
            self.dim, self.width, self.project = self.record["dim"], self.record["width"], self.record["projection"]
        elif self.source:
            self.file, self.format, self.words, self.rows = load(self.source)
            self.file_words = len(self.words)
            self.dim, self.project = self.rows.shape[1], projection is True
            if projection is False and self.dim != size:
                raise UserError(f"{key}={size} but the vectors in {self.source} have {self.dim} dimensions: set "
                                f"{key}={self.dim}, or model.embedding_projection=auto (the width follows the "
                                "vectors) or true (a learned projection)")
            self.width = size if self.project else self.dim
        else:
            if self.freeze:
                raise UserError("model.freeze_embeddings=true freezes pretrained vectors: give "
                                "model.pretrained_embeddings=PATH too (or leave freeze_embeddings=false)")
            self.dim, self.width, self.project = size, size, False

    @property
    def active(self) -> bool:
        return bool(self.record or self.source)

    def table(self, side: str = "vocab", padding_idx: int | None = None) -> nn.Module:
        """The embedding of vocabulary `side` (meta[side]): plain, sized for the vectors, or with a projection."""
        size = int(self.meta[f"{side}_size"])
        if not self.active or self.meta.get(LEVELS[side]) == "char":  # characters: a table of the model's width
            return nn.Embedding(size, self.width, padding_idx=padding_idx)
        table = nn.Embedding(size, self.dim, padding_idx=padding_idx)
        self.tables.append((side, table))
        return Projected(table, self.width) if self.project else table

    def tied(self, module: nn.Module, key: str) -> nn.Parameter:
        """The table's weight for an output layer that shares it (tie_weights / tie_embeddings)."""
        if self.active and (self.project or self.freeze):
            raise UserError(f"{key}=true shares the input embedding with the output layer, which "
                            f"{'a projection' if self.project else 'model.freeze_embeddings=true'} does not allow; "
                            f"set {key}=false" + ("" if self.freeze else " or model.embedding_projection=auto"))
        return module.weight

    def fill(self, model: nn.Module) -> nn.Module:
        """The end of a build: the vectors' rows into the tables (after the family's own init), frozen if asked."""
        if not self.active:
            return model
        if not self.tables:
            raise UserError(self._no_words())
        if not self.record:
            self._load()
        found = (self.record or {}).get("sides") or {side: {"found": int(t.word_vectors[1].sum())}
                                                     for side, t in self.tables}
        for side, table in self.tables:
            if found.get(side, {}).get("found"):  # a side with no word in the file stays as ever: trainable
                table.weight.requires_grad_(not self.freeze)
        return model

    def _load(self) -> None:
        matched = []
        for side, table in self.tables:
            vocab = self.meta[side]
            ids = match(vocab, self.words, self.meta.get("lowercase", not any(w != w.lower() for w in vocab)))
            found = ids >= 0
            with torch.no_grad():
                table.weight[found] = self.rows[ids[found]].to(table.weight.dtype)
                rest = ~found
                if table.padding_idx is not None:
                    rest[table.padding_idx] = False  # the pad row stays zero
                if found.any() and rest.any():  # words not in the file: the family's init, at the vectors' scale
                    table.weight[rest] *= table.weight[found].std() / table.weight[rest].std().clamp_min(1e-12)
            table.word_vectors = (self, found)  # for describe(): which rows came from the file
            matched.append(int(found.sum()))
        if not any(matched):
            side = self.tables[0][0]
            words = [w for w in self.meta[side] if w not in SPECIALS]
            raise UserError(f"{KEY}={self.source}: none of the {len(words):,} vocabulary words is in the file's "
                            f"{len(self.words):,}; the vocabulary starts {', '.join(map(repr, words[:5]))}, the file "
                            f"{', '.join(map(repr, self.words[:5]))}: a case or tokenization mismatch? (the dataset's "
                            "tokenizer must split words as the vectors' corpus was split)")
        self.words, self.rows = [], None  # in the tables now (the file stays cached by _read)

    def _no_words(self) -> str:
        levels = [k for k in LEVELS.values() if self.meta.get(k) == "char"]
        if levels:
            return (f"{KEY}={self.source or self.record.get('source')}: this model reads characters "
                    f"(dataset.{levels[0]}=char); word vectors need word tokens (dataset.{levels[0]}=word)")
        return (f"{KEY}={self.source or self.record.get('source')}: this model reads no words here (a "
                f"{self.meta.get('kind', '?')} task on {'vectors' if 'input_shape' in self.meta else 'sequences'}); "
                "word vectors go with text: dataset=text_classes, text with dataset.level=word, pairs of words")


def match(vocab: list[str], words: list[str], lowercase: bool) -> Tensor:
    """For each vocabulary entry, the row of its word in the file, or -1. Exact spellings win over other casings."""
    index: dict[str, int] = {}
    for i, w in enumerate(words):
        index.setdefault(w, i)
    if lowercase:
        for i, w in enumerate(words):
            index.setdefault(w.lower(), i)
    return torch.tensor([-1 if w in SPECIALS else index.get(w, -1) for w in vocab], dtype=torch.long)


# ------------------------------------------------------------------------------------------------------ the file
def load(source: str) -> tuple[Path, str, list[str], Tensor]:
    """(the file read, its format, words, vectors (n, dim) float32) for a path, run dir, checkpoint or recipe."""
    path = recipe_vectors(source) if is_recipe(source) else Path(source).expanduser()
    if not path.exists():
        raise UserError(f"{KEY}={source}: no such file or directory; give a word2vec file (text or binary), a dl "
                        "skipgram/cbow run dir or its checkpoint, or a recipe such as skipgram:gutenberg")
    if path.is_dir():
        found = next((path / n for n in ("vectors.txt", "vectors.bin", "checkpoints/best.pt", "checkpoints/last.pt")
                      if (path / n).is_file()), None)
        if found is None:
            raise UserError(f"{KEY}={source}: the folder holds no vectors.txt, vectors.bin or checkpoints/*.pt (a dl "
                            "skipgram/cbow run dir has them)")
        path = found
    stat = path.stat()
    words, rows, fmt = _read(str(path.resolve()), stat.st_mtime_ns, stat.st_size, source)
    return path.resolve(), fmt, words, rows


@functools.lru_cache(maxsize=2)  # a sweep's jobs, and seq2seq's two tables, read a file once (never written to)
def _read(path: str, _mtime: int, _size: int, source: str) -> tuple[list[str], Tensor, str]:
    if path.endswith(".pt") or zipfile.is_zipfile(path):
        return (*_checkpoint_vectors(Path(path), source), "dl checkpoint")
    words, rows, fmt = read_word2vec(Path(path), KEY)
    return words, rows, f"word2vec {fmt}"


def _checkpoint_vectors(path: Path, source: str) -> tuple[list[str], Tensor]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a checkpoint, or not one torch can open
        raise UserError(f"{KEY}={source}: {path} is not a checkpoint torch can open "
                        f"({(str(e).splitlines() or [type(e).__name__])[0][:120]})") from None
    meta = ckpt.get("meta") or {} if isinstance(ckpt, dict) else {}
    weights = ckpt.get("model", {}).get("input.weight") if isinstance(ckpt, dict) else None
    if meta.get("kind") != "embedding" or weights is None or "vocab" not in meta:
        raise UserError(f"{KEY}={source}: {path} holds a {meta.get('kind', 'non-dl')} model; word vectors come from a "
                        "cbow or skipgram run (its vectors.txt, run dir or checkpoint)")
    return list(meta["vocab"]), weights.float()


# ------------------------------------------------------------------------------------------------------ the record
def describe(model: nn.Module, task: Any) -> list[str]:
    """dl train, once the model is built: what was loaded and its coverage, as lines to print, also put in
    task.meta["pretrained"] (kept in checkpoints, written to summary.json). A resumed run's record is its
    checkpoint's."""
    plan = next((m.word_vectors[0] for m in model.modules() if isinstance(getattr(m, "word_vectors", None), tuple)),
                None)
    if plan is not None:
        counts = _train_counts(task, [side for side, _ in plan.tables])
        task.meta["pretrained"] = {
            "source": plan.source, "file": str(plan.file), "format": plan.format, "file_words": plan.file_words,
            "dim": plan.dim, "width": plan.width, "projection": plan.project, "freeze": plan.freeze,
            "size_key": plan.key, "asked_size": plan.size,
            "sides": {side: _coverage(task.meta[side], t.word_vectors[1], counts[side]) for side, t in plan.tables}}
    record = task.meta.get("pretrained")
    return lines(record) if record else []


def _coverage(vocab: list[str], found: Tensor, counts: Tensor | None) -> dict[str, Any]:
    words = sum(w not in SPECIALS for w in vocab)
    out = {"found": int(found.sum()), "words": words, "vocab_coverage": round(int(found.sum()) / max(words, 1), 4)}
    if counts is not None:
        text = torch.tensor([w not in NOT_TEXT for w in vocab])
        out["token_coverage"] = round(float(counts[found].sum() / counts[text].sum().clamp(min=1)), 4)
    return out


def _train_counts(task: Any, sides: list[str]) -> dict[str, Tensor]:
    """How often each vocabulary id occurs in the training split: the inputs (vocab, src_vocab) and the targets
    (tgt_vocab) of its batches."""
    position = {"vocab": 0, "src_vocab": 0, "tgt_vocab": 1}
    counts = {side: torch.zeros(int(task.meta[f"{side}_size"]), dtype=torch.long) for side in sides}
    for batch in task.batches("train", 4096):
        for side in sides:
            ids = batch[position[side]].flatten().cpu()
            counts[side] += torch.bincount(ids[ids >= 0], minlength=len(counts[side]))[:len(counts[side])]
    return counts


def lines(record: dict) -> list[str]:
    """Two lines: what was loaded and the size rule that applied; the coverage and whether the rows train."""
    asked, key = record["asked_size"], record["size_key"]
    if record["projection"]:
        size = f"a learned projection {record['dim']} -> {key}={asked} (model.embedding_projection=true)"
    elif asked != record["dim"]:
        size = (f"{key} {asked} -> {record['dim']}, the vectors' width (model.embedding_projection=auto; true keeps "
                f"{asked} with a learned projection)")
    else:
        size = f"{key}={asked}, as the vectors"
    first = (f"pretrained: {record['dim']}-d {record['format']} vectors of {record['file_words']:,} words from "
             f"{record['source']}; {size}")
    sides = record["sides"]
    parts = []
    for side, c in sides.items():
        tokens = f", {c['token_coverage']:.1%} of the training tokens" if "token_coverage" in c else ""
        name = f"{SIDES[side]} " if len(sides) > 1 else "vocabulary "
        parts.append(f"{name}{c['found']:,}/{c['words']:,} words found ({c['vocab_coverage']:.1%}){tokens}"
                     + ("" if c["found"] else " (left random and trainable)"))
    how = ("frozen (model.freeze_embeddings=true)" if record["freeze"] else "fine-tuned") + \
        "; words not found start random"
    return [first, f"pretrained: {'; '.join(parts)}; {how}"]
