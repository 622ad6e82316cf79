"""Sequence-to-sequence tasks: a source sequence in, a target sequence out (the encoder-decoder models' data).

The task (Seq2SeqTask) and the generated offline datasets live here: `reverse`, `sort`, `addition` ("123+45" ->
"168"), `dates` (human date formats -> ISO 8601). Generated tasks take separate train and test length ranges, so
length generalisation can be measured. Real sentence pairs (eng_fra, any TSV) are in translation.py.

Batches are (src, tgt): src (N, S) right-padded with PAD; tgt (N, T) = BOS y1 .. yk EOS PAD ... . The model is
trained teacher-forced on tgt[:, :-1] -> tgt[:, 1:]; exact match and BLEU come from free (greedy) decoding.
"""

from __future__ import annotations

import datetime
import math
import random
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlcli.base.errors import UserError
from dlcli.base.task import Task
from dlcli.base.tokens import BOS, EOS, PAD, SPECIALS, UNK
from dlcli.data.classification import label_smoothing_for
from dlcli.models.decoding import greedy_decode

DECODE_BATCH = 512


class Seq2SeqTask(Task):
    """Metrics: loss, ppl and acc (per target token, teacher-forced); after each evaluation exact (the greedy
    output equals the target) and bleu (sacrebleu, 0-100, characters or words as the target side's tokens)."""

    kind = "seq2seq"
    eval_metric_names = ("exact", "bleu")
    auto_target = 400_000  # pairs: dates' 40k-pair defaults reach exact 0.99+ in about this many

    def __init__(self, splits: dict[str, tuple[Tensor, Tensor]], meta: dict, loss_cfg: Any):
        super().__init__(splits, meta)
        self.label_smoothing = label_smoothing_for(loss_cfg, self.kind)

    def example_input(self, n: int = 2) -> tuple[Tensor, Tensor]:
        src, tgt = self.splits["train"]
        return src[:n], tgt[:n, :-1]

    def step(self, model: nn.Module, batch: tuple) -> tuple[Tensor, dict[str, Tensor]]:
        src, tgt = batch
        logits = model(src, tgt[:, :-1]).float()
        gold = tgt[:, 1:]
        loss = F.cross_entropy(logits.flatten(0, 1), gold.flatten(), ignore_index=PAD,
                               label_smoothing=self.label_smoothing)
        with torch.no_grad():
            scored = gold != PAD
            n = scored.sum().float()
            stats = {"loss": loss.detach() * n, "n": n,
                     "correct": ((logits.argmax(-1) == gold) & scored).sum().float()}
        return loss, stats

    def summarize(self, stats: dict[str, Tensor]) -> dict[str, float]:
        s = {k: v.item() for k, v in stats.items()}
        loss = s["loss"] / s["n"]
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "acc": s["correct"] / s["n"]}

    def decode_split(self, model: nn.Module, split: str) -> tuple[list[str], list[str], list[int]]:
        """Greedy outputs, references and source lengths (in tokens) of a whole split."""
        src_all, tgt_all = self.splits[split]
        hyps, refs, lengths = [], [], []
        for i in range(0, len(src_all), DECODE_BATCH):
            src, tgt = src_all[i:i + DECODE_BATCH], tgt_all[i:i + DECODE_BATCH]
            out, _ = greedy_decode(model, src, self.max_output_len())
            hyps += [self.target_text(row) for row in out.tolist()]
            refs += [self.target_text(row) for row in tgt.tolist()]
            lengths += (src != PAD).sum(1).tolist()
        return hyps, refs, lengths

    def max_output_len(self) -> int:
        return max_output_len(self.meta)

    def eval_metrics(self, model: nn.Module, split: str) -> dict[str, float]:
        hyps, refs, _ = self.decode_split(model, split)
        return {"exact": sum(h == r for h, r in zip(hyps, refs)) / len(refs), "bleu": bleu(hyps, refs, self.meta)}

    def breakdown(self, model: nn.Module, split: str = "test") -> dict[str, Any]:
        """Exact match per source length: where a fixed context vector runs out of room and attention does not."""
        hyps, refs, lengths = self.decode_split(model, split)
        by_len: dict[int, list[int]] = {}
        for h, r, n in zip(hyps, refs, lengths):
            by_len.setdefault(n, []).append(h == r)
        return {"exact_by_source_length": {str(n): {"examples": len(v), "exact": sum(v) / len(v)}
                                           for n, v in sorted(by_len.items())}}

    def target_text(self, ids: list[int]) -> str:
        return ids_to_text(ids, self.meta["tgt_vocab"], self.meta["tgt_level"])

    def source_text(self, ids: list[int]) -> str:
        return ids_to_text(ids, self.meta["src_vocab"], self.meta["src_level"])


def max_output_len(meta: dict) -> int:
    """How long free decoding may run: the longest target seen (BOS and EOS included) and a little slack."""
    return int(meta["max_tgt_len"]) + 5


def bleu(hyps: list[str], refs: list[str], meta: dict) -> float:
    import sacrebleu  # slow to import (~0.3 s): only when a BLEU score is asked for

    tokenize = "char" if meta["tgt_level"] == "char" else "13a"
    return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score)

# ------------------------------------------------------------------------------------------------ tokens and vocabs
def tokens_of(text: str, level: str) -> list[str]:
    if level == "char":
        return list(text)
    if level == "word":
        return text.split()
    raise UserError(f"level={level}: choose char or word")


def ids_to_text(ids: list[int], vocab: list[str], level: str) -> str:
    """Token ids -> text, from after BOS up to EOS; pads and BOS dropped."""
    words = []
    for i in ids:
        if i == EOS:
            break
        if i in (PAD, BOS):
            continue
        words.append(vocab[i] if i < len(vocab) else "<unk>")
    return ("" if level == "char" else " ").join(words)


def visible_tokens(ids: list[int], vocab: list[str]) -> list[str]:
    """A source row's tokens without its padding (the columns of an attention plot)."""
    return [vocab[i] for i in ids if i != PAD]


def output_tokens(ids: list[int], vocab: list[str]) -> list[str]:
    """Decoded ids up to and including <eos> (what each attention row was computed for)."""
    tokens = []
    for i in ids:
        tokens.append(vocab[i])
        if i == EOS:
            break
    return tokens


def build_vocab(seqs: list[list[str]], min_freq: int = 1) -> list[str]:
    counts = Counter(t for s in seqs for t in s)
    return SPECIALS + sorted(t for t, c in counts.items() if c >= min_freq)


def encode(seqs: list[list[str]], vocab: list[str], bos_eos: bool) -> Tensor:
    index = {t: i for i, t in enumerate(vocab)}
    rows = [[index.get(t, UNK) for t in s] for s in seqs]
    if bos_eos:
        rows = [[BOS, *r, EOS] for r in rows]
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def make_seq2seq_task(pairs: dict[str, list[tuple[list[str], list[str]]]], levels: tuple[str, str], loss_cfg: Any,
                      min_freq: int = 1, vocabs: tuple[list[str], list[str]] | None = None,
                      extra_meta: dict | None = None) -> Seq2SeqTask:
    """pairs: split -> [(source tokens, target tokens)]. vocabs: a trained model's (dl eval), else built from train."""
    if vocabs is None:
        vocabs = (build_vocab([s for s, _ in pairs["train"]], min_freq),
                  build_vocab([t for _, t in pairs["train"]], min_freq))
    splits = {}
    for name, items in pairs.items():
        if not items:
            raise UserError(f"the {name} split has no sentence pairs; loosen the filters or add data")
        splits[name] = (encode([s for s, _ in items], vocabs[0], False), encode([t for _, t in items], vocabs[1], True))
    meta = {"kind": "seq2seq", "src_vocab": vocabs[0], "tgt_vocab": vocabs[1], "src_vocab_size": len(vocabs[0]),
            "tgt_vocab_size": len(vocabs[1]), "pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK,
            "src_level": levels[0], "tgt_level": levels[1],
            "max_src_len": max(s[0].shape[1] for s in splits.values()),
            "max_tgt_len": max(s[1].shape[1] for s in splits.values()), **(extra_meta or {})}
    return Seq2SeqTask(splits, meta, loss_cfg)


def stored_vocabs(stored_meta: dict | None) -> tuple[list[str], list[str]] | None:
    if stored_meta and stored_meta.get("kind") == "seq2seq":
        return stored_meta["src_vocab"], stored_meta["tgt_vocab"]
    return None

# ------------------------------------------------------------------------------------------------ generated tasks
def _length_range(cfg: Any, split: str) -> tuple[int, int]:
    lo, hi = int(cfg.min_len), int(cfg.max_len)
    if split == "test":
        lo = int(cfg.test_min_len) if cfg.get("test_min_len") is not None else lo
        hi = int(cfg.test_max_len) if cfg.get("test_max_len") is not None else hi
    if not 1 <= lo <= hi:
        key = "test_min_len/test_max_len" if split == "test" else "min_len/max_len"
        raise UserError(f"dataset.{key}={lo}/{hi}: need 1 <= min <= max")
    return lo, hi


def _generate(cfg: Any, make: Any) -> dict[str, list[tuple[str, str]]]:
    """n_train/n_val/n_test examples from make(rng, split); val and test drop sources seen in train."""
    rng = random.Random(int(cfg.seed))
    out: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    for split in ("train", "val", "test"):
        n = int(cfg[f"n_{split}"])
        if n < 1:
            raise UserError(f"dataset.n_{split}={n}: must be at least 1")
        items, tries = [], 0
        while len(items) < n and tries < 20 * n:
            tries += 1
            src, tgt = make(rng, split)
            if split != "train" and src in seen:
                continue
            items.append((src, tgt))
        if split == "train":
            seen = {s for s, _ in items}
        out[split] = items
    return out


def _char_task(cfg: Any, loss_cfg: Any, make: Any, stored_meta: dict | None) -> Seq2SeqTask:
    pairs = {k: [(list(s), list(t)) for s, t in v] for k, v in _generate(cfg, make).items()}
    return make_seq2seq_task(pairs, ("char", "char"), loss_cfg, vocabs=stored_vocabs(stored_meta))


def _alphabet(cfg: Any) -> str:
    k = int(cfg.symbols)
    if not 2 <= k <= 26:
        raise UserError(f"dataset.symbols={k}: use 2 to 26 letters")
    return "abcdefghijklmnopqrstuvwxyz"[:k]


def reverse(cfg: Any, loss_cfg: Any, stored_meta: dict | None = None) -> Seq2SeqTask:
    letters = _alphabet(cfg)

    def make(rng: random.Random, split: str) -> tuple[str, str]:
        s = "".join(rng.choice(letters) for _ in range(rng.randint(*_length_range(cfg, split))))
        return s, s[::-1]

    return _char_task(cfg, loss_cfg, make, stored_meta)


def sort(cfg: Any, loss_cfg: Any, stored_meta: dict | None = None) -> Seq2SeqTask:
    letters = _alphabet(cfg)

    def make(rng: random.Random, split: str) -> tuple[str, str]:
        s = "".join(rng.choice(letters) for _ in range(rng.randint(*_length_range(cfg, split))))
        return s, "".join(sorted(s))

    return _char_task(cfg, loss_cfg, make, stored_meta)


def addition(cfg: Any, loss_cfg: Any, stored_meta: dict | None = None) -> Seq2SeqTask:
    """"123+45" -> "168"; min_len/max_len count the digits of each operand."""

    def make(rng: random.Random, split: str) -> tuple[str, str]:
        lo, hi = _length_range(cfg, split)
        a, b = (rng.randint(10 ** (d - 1) if d > 1 else 0, 10 ** d - 1)
                for d in (rng.randint(lo, hi), rng.randint(lo, hi)))
        return f"{a}+{b}", str(a + b)

    return _char_task(cfg, loss_cfg, make, stored_meta)

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"

DATE_FORMATS = [
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",                       # March 5, 2021
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",                        # 5 March 2021
    lambda d: f"{MONTHS[d.month - 1][:3]} {d.day} {d.year}",                    # Mar 5 2021
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",                            # 05.03.2021
    lambda d: f"{d.month}/{d.day}/{d.year}",                                    # 3/5/2021 (US order)
    lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",                            # 2021/03/05
    lambda d: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]}, {d.year}",      # the 5th of March, 2021
    lambda d: f"{DAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",  # Friday, March 5, 2021
    lambda d: f"{DAYS[d.weekday()][:3]} {d.day} {MONTHS[d.month - 1][:3]} {d.year}",  # Fri 5 Mar 2021
    lambda d: f"{d.day}-{MONTHS[d.month - 1][:3].upper()}-{d.year}",            # 5-MAR-2021
    lambda d: f"{MONTHS[d.month - 1].lower()} {_ordinal(d.day)} {d.year}",      # march 5th 2021
    lambda d: f"{d.year}{d.month:02d}{d.day:02d}",                              # 20210305
]


def dates(cfg: Any, loss_cfg: Any, stored_meta: dict | None = None) -> Seq2SeqTask:
    """Many human date formats -> ISO 8601 (YYYY-MM-DD), dates between dataset.first_year and last_year."""
    first, last = datetime.date(int(cfg.first_year), 1, 1), datetime.date(int(cfg.last_year), 12, 31)
    if first > last:
        raise UserError(f"dataset.first_year={cfg.first_year} is after dataset.last_year={cfg.last_year}")
    span = (last - first).days

    def make(rng: random.Random, split: str) -> tuple[str, str]:
        d = first + datetime.timedelta(days=rng.randint(0, span))
        return rng.choice(DATE_FORMATS)(d), d.isoformat()

    return _char_task(cfg, loss_cfg, make, stored_meta)


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"reverse": reverse, "sort": sort, "dates": dates, "addition": addition}
