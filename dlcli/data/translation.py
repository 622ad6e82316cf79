"""Real sentence pairs for the encoder-decoder models: eng_fra (Tatoeba English-French) and any TSV the user names.

eng_fra follows the PyTorch seq2seq tutorial: ASCII-folded, lower-cased, punctuation split off, pairs with at most
`max_len` words a side and (optionally) English starting with "i am", "he is", ... . The split groups pairs by
source sentence, so no test source was seen in training with another translation.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from dlcli.base.errors import UserError
from dlcli.data.download import download_zip_member, find_or_download, read_user_text
from dlcli.data.pairs import Seq2SeqTask, make_seq2seq_task, stored_vocabs, tokens_of

ENG_FRA = {"file": "eng-fra.txt", "subdirs": ("eng-fra",),
           "sha256": "2546838ae46e0eac4c02ab7032ea0a02a006074a5340077a36a9444f41e02888",
           # the 2017-09-29 manythings.org release (fra.txt in fra-eng.zip), pinned at a commit that keeps it
           "url": "https://raw.githubusercontent.com/genimind/seq2seq/4f3f8eb0adde54fcc8b89394336b002e7961244c/"
                  "fra-eng.zip", "member": "fra.txt"}
ENG_PREFIXES = ("i am ", "i m ", "he is ", "he s ", "she is ", "she s ", "you are ", "you re ", "we are ", "we re ",
                "they are ", "they re ")
DIRECTIONS = ("eng-fra", "fra-eng")


def normalize(text: str) -> str:
    """ASCII-fold, lower-case, split off . ! ? and drop everything else that is not a letter."""
    text = "".join(c for c in unicodedata.normalize("NFD", text.lower().strip()) if unicodedata.category(c) != "Mn")
    text = re.sub(r"([.!?])", r" \1", text)
    return re.sub(r"[^a-z.!?]+", " ", text).strip()


def split_by_source(pairs: list[tuple[list[str], list[str]]], cfg: Any) -> dict[str, list]:
    """Seeded split into train/val/test by distinct source sentence (all its translations go to one split)."""
    sources = sorted({" ".join(s) for s, _ in pairs})
    perm = torch.randperm(len(sources), generator=torch.Generator().manual_seed(int(cfg.seed))).tolist()
    n_val, n_test = int(len(sources) * float(cfg.val_fraction)), int(len(sources) * float(cfg.test_fraction))
    where = {}
    for rank, i in enumerate(perm):
        where[sources[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for s, t in pairs:
        out[where[" ".join(s)]].append((s, t))
    return out


def eng_fra(cfg: Any, loss_cfg: Any, stored_meta: dict | None = None) -> Seq2SeqTask:
    if cfg.direction not in DIRECTIONS:
        raise UserError(f"dataset.direction={cfg.direction}: choose one of: {', '.join(DIRECTIONS)}")

    def fetch(name: str, dest: Path, sha256: str) -> Path:
        return download_zip_member(cfg.get("url") or ENG_FRA["url"], ENG_FRA["member"], dest, sha256)

    files = find_or_download("eng-fra", cfg.root, ENG_FRA["subdirs"], {ENG_FRA["file"]: ENG_FRA["sha256"]},
                             "", bool(cfg.download), fetch=fetch)
    max_len = int(cfg.max_len)
    pairs = []
    for line in files[ENG_FRA["file"]].read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) < 2:
            continue
        eng, fra = normalize(cols[0]), normalize(cols[1])
        if cfg.prefixes and not (eng + " ").startswith(ENG_PREFIXES):
            continue
        src, tgt = (eng, fra) if cfg.direction == "eng-fra" else (fra, eng)
        s, t = src.split(), tgt.split()
        if 0 < len(s) <= max_len and 0 < len(t) <= max_len:
            pairs.append((s, t))
    if not pairs:
        raise UserError(f"dataset=eng_fra: no pairs left after the filters (max_len={max_len}, "
                        f"prefixes={cfg.prefixes})")
    return make_seq2seq_task(split_by_source(pairs, cfg), ("word", "word"), loss_cfg, int(cfg.min_freq),
                             stored_vocabs(stored_meta), {"direction": str(cfg.direction)})


LEVELS = ("auto", "char", "word")


def choose_level(texts: list[str], side: str) -> tuple[str, str]:
    """dataset.<side>_level=auto: word tokens, unless words would be mostly one-off symbols (ids, numbers, names):
    char level when most lines are one word of a vocabulary mostly seen once, or when words seen once make up most
    of the text. Returns the level and why, for the one line dl train prints."""
    lines = [t.split() for t in texts]
    counts = Counter(w for words in lines for w in words)
    single = sum(len(words) <= 1 for words in lines) / max(len(lines), 1)
    types_once = sum(n == 1 for n in counts.values()) / max(len(counts), 1)
    tokens_once = sum(n for n in counts.values() if n == 1) / max(sum(counts.values()), 1)
    if tokens_once > 0.5:
        return "char", f"{tokens_once:.0%} of the {side} words occur once"
    if single > 0.5 and types_once > 0.5:
        return "char", f"{single:.0%} of the {side}s are one word, {types_once:.0%} of them seen once"
    return "word", f"{1 - tokens_once:.0%} of the {side} words recur"


def pairs_file(cfg: Any, loss_cfg: Any, stored_meta: dict | None = None) -> Seq2SeqTask:
    """Any TSV: source<TAB>target a line (more columns are ignored; blank lines skipped)."""
    if cfg.get("path") in (None, "???"):
        raise UserError("dataset=pairs needs dataset.path=FILE.tsv (source<TAB>target per line), e.g. "
                        "dl train model=attention dataset=pairs dataset.path=pairs.tsv")
    asked = (str(cfg.src_level), str(cfg.tgt_level))
    for key, level in zip(("src_level", "tgt_level"), asked):
        if level not in LEVELS:
            raise UserError(f"dataset.{key}={level}: choose one of: {', '.join(LEVELS)}")
    max_len = cfg.get("max_len")
    texts = []
    for number, line in enumerate(read_user_text(cfg.path, "dataset.path").splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise UserError(f"dataset.path={cfg.path} line {number}: expected source<TAB>target, got {line[:60]!r}")
        texts.append(tuple(c.strip().lower() if cfg.lowercase else c.strip() for c in cols[:2]))
    levels, chosen = [], {}
    for i, (key, level) in enumerate(zip(("src_level", "tgt_level"), asked)):
        if stored_meta and stored_meta.get("kind") == "seq2seq":  # a trained model's levels (dl eval, dl sample)
            level = stored_meta[key]
        elif level == "auto":
            level, why = choose_level([t[i] for t in texts], ("source", "target")[i])
            chosen[f"dataset.{key}"] = f"{level} ({why})"
        levels.append(level)
    pairs = []
    for src, tgt in texts:
        s, t = tokens_of(src, levels[0]), tokens_of(tgt, levels[1])
        if max_len is None or (len(s) <= int(max_len) and len(t) <= int(max_len)):
            pairs.append((s, t))
    if len(pairs) < 10:
        raise UserError(f"dataset.path={cfg.path}: {len(pairs)} usable pairs; need at least 10")
    task = make_seq2seq_task(split_by_source(pairs, cfg), (levels[0], levels[1]), loss_cfg, int(cfg.min_freq),
                             stored_vocabs(stored_meta))
    task.chosen.update(chosen)
    return task


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"eng_fra": eng_fra, "pairs": pairs_file}
