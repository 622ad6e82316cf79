"""Word vectors after training: neighbours, analogies, word-similarity, word2vec text/binary export, a PCA map, and
the `dl sample` / `dl export` commands for embedding checkpoints. The word2vec file format itself (save_word2vec, and
read_word2vec for pretrained embeddings) is in models/vectors_file.py.

Scores follow gensim's KeyedVectors so numbers compare: cosine similarity; analogies by 3CosAdd over the most
frequent `restrict` words, the three question words excluded; similarity as Spearman's rho over pairs in vocabulary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.data.download import read_user_text

RESTRICT = 300_000  # gensim's evaluate_word_analogies(restrict_vocab=300000)


def unit_rows(vectors: Tensor) -> Tensor:
    v = vectors.float()
    return v / v.norm(dim=1, keepdim=True).clamp(min=1e-8)

# --------------------------------------------------------------------------------------------------------- files
def read_analogies(path: str | Path, lowercase: bool = True) -> list[tuple[str, list[str]]]:
    """questions-words.txt: `: section` headers, then four words a line. A malformed line is an error naming it."""
    out, section = [], None
    for n, line in enumerate(read_user_text(path, "dataset.analogies").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            section = line[1:].strip() or f"section@{n}"
            continue
        words = line.split()
        if len(words) != 4:
            raise UserError(f"dataset.analogies={path}: line {n} has {len(words)} word(s), expected 4 "
                            f"(a b c d: a is to b as c is to d): {line[:60]!r}")
        if section is None:
            raise UserError(f"dataset.analogies={path}: line {n} comes before any ': section' header")
        out.append((section, [w.lower() for w in words] if lowercase else words))
    if not out:
        raise UserError(f"dataset.analogies={path}: no questions found (expected ': section' lines, then "
                        "four words a line)")
    return out


def read_similarity(path: str | Path, lowercase: bool = True) -> list[tuple[str, str, float]]:
    """`word1 word2 score` a line (tabs or spaces; `#` comments and a header line without a number skipped)."""
    out = []
    for n, line in enumerate(read_user_text(path, "dataset.similarity").splitlines(), 1):
        parts = line.strip().split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            if len(parts) != 3:
                raise ValueError
            score = float(parts[2])
        except ValueError:
            if n == 1:  # a header such as "Word 1  Word 2  Human (mean)"
                continue
            raise UserError(f"dataset.similarity={path}: line {n} is not `word1 word2 score`: "
                            f"{line.strip()[:60]!r}") from None
        a, b = (parts[0].lower(), parts[1].lower()) if lowercase else (parts[0], parts[1])
        out.append((a, b, score))
    if not out:
        raise UserError(f"dataset.similarity={path}: no `word1 word2 score` lines found")
    return out

# ----------------------------------------------------------------------------------------------------- measures
def neighbours(unit: Tensor, vocab: list[str], query: Tensor, exclude: list[list[int]], topn: int
               ) -> list[list[tuple[str, float]]]:
    """Most cosine-similar words to each query vector, the excluded ids left out."""
    q = query / query.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    scores = q @ unit.T
    for i, ex in enumerate(exclude):
        scores[i, ex] = -math.inf
    top = scores.topk(min(topn, unit.shape[0] - 1), dim=1)
    return [[(vocab[j], float(s)) for s, j in zip(vals.tolist(), idx.tolist())]
            for vals, idx in zip(top.values, top.indices)]


def analogy_accuracy(unit: Tensor, index: dict[str, int], questions: list[tuple[str, list[str]]],
                     restrict: int = RESTRICT, chunk: int = 512) -> dict[str, Any]:
    """3CosAdd (b - a + c) over the `restrict` most frequent words; questions with a word outside them are counted
    as out-of-vocabulary, not silently dropped. Returns {correct, answered, oov, accuracy, sections{...}}."""
    limit = min(restrict, unit.shape[0])
    sub = unit[:limit]
    ids, names, oov = [], [], 0
    for section, words in questions:
        q = [index.get(w, limit) for w in words]
        if max(q) >= limit:
            oov += 1
            continue
        ids.append(q)
        names.append(section)
    correct = torch.zeros(0, dtype=torch.bool)
    if ids:
        q = torch.tensor(ids, device=unit.device)
        hits = []
        for s in range(0, len(q), chunk):
            a, b, c, d = q[s:s + chunk].unbind(1)
            scores = (sub[b] - sub[a] + sub[c]) @ sub.T
            rows = torch.arange(len(a), device=unit.device)
            for col in (a, b, c):
                scores[rows, col] = -math.inf
            hits.append((scores.argmax(1) == d).cpu())
        correct = torch.cat(hits)
    sections: dict[str, list[int]] = {}
    for name, ok in zip(names, correct.tolist()):
        s = sections.setdefault(name, [0, 0])
        s[0] += ok
        s[1] += 1
    answered = len(ids)
    right = int(correct.sum())
    return {"correct": right, "answered": answered, "oov": oov, "total": len(questions),
            "accuracy": right / answered if answered else float("nan"), "sections": sections}


def ranks(x: Tensor) -> Tensor:
    """Ranks with ties averaged (as Spearman's rho needs)."""
    order = x.argsort()
    r = torch.empty_like(x, dtype=torch.float64)
    r[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, r)
    counts = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(r))
    return (sums / counts)[inverse]


def spearman(a: Tensor, b: Tensor) -> float:
    ra, rb = ranks(a.double()), ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))


def similarity_spearman(unit: Tensor, index: dict[str, int], pairs: list[tuple[str, str, float]]
                        ) -> dict[str, Any]:
    """Spearman's rho between human scores and cosine similarity, over the pairs whose words are both known."""
    known = [(index[a], index[b], s) for a, b, s in pairs if a in index and b in index]
    oov = len(pairs) - len(known)
    if len(known) < 2:
        return {"spearman": float("nan"), "pairs": len(known), "oov": oov}
    a = torch.tensor([k[0] for k in known], device=unit.device)
    b = torch.tensor([k[1] for k in known], device=unit.device)
    cos = (unit[a] * unit[b]).sum(1).cpu()
    return {"spearman": spearman(cos, torch.tensor([k[2] for k in known])), "pairs": len(known), "oov": oov}

# ------------------------------------------------------------------------------------------------ task hooks
def unit_vectors(task: Any, model: Any) -> tuple[list[str], Tensor, dict[str, int]]:
    """(vocabulary, unit-length word vectors, word -> row)."""
    vocab = task.meta["vocab"]
    return vocab, unit_rows(model.vectors()), {w: i for i, w in enumerate(vocab)}


def evaluate_embeddings(task: Any, model: Any, show: bool = False) -> dict[str, float]:
    """Per evaluation: analogy accuracy and similarity rho (with their OOV counts); neighbours of the probe words
    printed when `show`."""
    vocab, unit, index = unit_vectors(task, model)
    out: dict[str, float] = {}
    if task.questions:
        r = analogy_accuracy(unit, index, task.questions)
        out.update({"analogy": r["accuracy"], "analogy_oov": float(r["oov"])})
    if task.similarity:
        r = similarity_spearman(unit, index, task.similarity)
        out.update({"similarity": r["spearman"], "similarity_oov": float(r["oov"])})
    if show and task.probes:
        lines = []
        for w in task.probes:
            if w not in index:
                lines.append(f"  {w}: (not in the vocabulary)")
                continue
            near = neighbours(unit, vocab, unit[index[w]][None], [[index[w]]], 5)[0]
            lines.append(f"  {w}: " + ", ".join(f"{n} {s:.2f}" for n, s in near))
        make_console().print("nearest neighbours:\n" + "\n".join(lines), highlight=False)
    return out


def finish_run(task: Any, model: Any) -> dict[str, float]:
    """End of training (test split, best weights) and `dl eval --split test`: analogy counts, a few examples."""
    vocab, unit, index = unit_vectors(task, model)
    out: dict[str, float] = {}
    if task.questions:
        r = analogy_accuracy(unit, index, task.questions)
        out.update({"analogy_correct": float(r["correct"]), "analogy_answered": float(r["answered"]),
                    "analogy_oov": float(r["oov"])})
        if task.show:
            show_analogy_examples(unit, vocab, index, task.questions)
    return out


def show_analogy_examples(unit: Tensor, vocab: list[str], index: dict[str, int],
                          questions: list[tuple[str, list[str]]], per_section: int = 2) -> None:

    seen: dict[str, int] = {}
    lines = []
    for section, (a, b, c, d) in questions:
        if len(lines) >= 12:
            break
        if seen.get(section, 0) >= per_section or not all(w in index for w in (a, b, c, d)):
            continue
        seen[section] = seen.get(section, 0) + 1
        q = unit[index[b]] - unit[index[a]] + unit[index[c]]
        (best, score), = neighbours(unit, vocab, q[None], [[index[a], index[b], index[c]]], 1)[0][:1]
        mark = "✓" if best == d else f"✗ (expected {d})"
        lines.append(f"  {b} - {a} + {c} = {best} {score:.2f} {mark}")
    if lines:
        make_console().print("analogies (test):\n" + "\n".join(lines), highlight=False)
