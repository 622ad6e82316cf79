"""Sequence tasks for the classic memory experiments (generated, offline), and the per-step TagTask.

- adding (regress): T steps of (value, marker); the answer is the sum of the two marked values. Predicting the
  mean scores MSE 1/6 ≈ 0.167: a net that stays there has not bridged the gap between the markers.
- copy (tag): `length` symbols, `delay` blanks, a delimiter, then the net must replay the symbols.
- parity (classify): is the number of ones in a bit string odd?
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlcli.base.errors import UserError
from dlcli.base.task import Task, split_indices
from dlcli.data.classification import label_smoothing_for, make_task

IGNORE = -100  # target of the steps that are not scored


class TagTask(Task):
    """One class per step (many-to-many). Targets equal to -100 are not scored.
    Metrics: loss, acc (per scored step), seq_acc (every scored step of a sequence right)."""

    kind = "tag"

    def __init__(self, splits: dict, meta: dict, loss_cfg: Any):
        super().__init__(splits, meta)
        self.label_smoothing = label_smoothing_for(loss_cfg, self.kind)

    def step(self, model: nn.Module, batch: tuple) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        logits = model(x).float()
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                               label_smoothing=self.label_smoothing)
        with torch.no_grad():
            scored = y != IGNORE
            right = (logits.argmax(-1) == y) & scored
            n = scored.sum().float()
            stats = {"loss": loss.detach() * n, "correct": right.sum().float(), "n": n,
                     "seq_correct": (right | ~scored).all(1).sum().float(),
                     "seqs": torch.full((), float(len(y)), device=y.device)}
        return loss, stats

    def summarize(self, stats: dict[str, Tensor]) -> dict[str, float]:
        s = {k: v.item() for k, v in stats.items()}
        return {"loss": s["loss"] / s["n"], "acc": s["correct"] / s["n"], "seq_acc": s["seq_correct"] / s["seqs"]}


def _sizes(cfg: Any) -> tuple[int, int]:
    n, steps = int(cfg.n_samples), int(cfg.seq_len)
    if n < 10 or steps < 2:
        raise UserError(f"dataset={cfg.name}: needs n_samples >= 10 and seq_len >= 2 (got {n}, {steps})")
    return n, steps


def adding(cfg: Any, loss_cfg: Any) -> Task:
    n, steps = _sizes(cfg)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    values = torch.rand(n, steps, generator=gen)
    half = steps // 2
    first = torch.randint(0, half, (n,), generator=gen)
    second = torch.randint(half, steps, (n,), generator=gen)
    markers = torch.zeros(n, steps)
    markers[torch.arange(n), first] = 1.0
    markers[torch.arange(n), second] = 1.0
    x = torch.stack([values, markers], -1)
    y = (values * markers).sum(1, keepdim=True)
    meta = {"kind": "regress", "input_size": 2, "output_size": 1, "seq_len": steps,
            "features": ["value", "marker"], "targets": ["sum"]}
    idx = split_indices(n, float(cfg.val_fraction), float(cfg.test_fraction), int(cfg.seed))
    return make_task("regress", x, y, idx, meta, loss_cfg)


def parity(cfg: Any, loss_cfg: Any) -> Task:
    n, steps = _sizes(cfg)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    x = torch.randint(0, 2, (n, steps), generator=gen)
    y = x.sum(1) % 2
    meta = {"kind": "classify", "vocab_size": 2, "vocab": ["0", "1"], "num_classes": 2,
            "class_names": ["even", "odd"], "seq_len": steps}
    idx = split_indices(n, float(cfg.val_fraction), float(cfg.test_fraction), int(cfg.seed))
    return make_task("classify", x, y, idx, meta, loss_cfg)


def copy(cfg: Any, loss_cfg: Any) -> Task:
    n, length, delay, symbols = int(cfg.n_samples), int(cfg.length), int(cfg.delay), int(cfg.symbols)
    if length < 1 or delay < 0 or symbols < 2:
        raise UserError("dataset=copy needs length >= 1, delay >= 0 and symbols >= 2")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    blank, delim = 0, symbols + 1
    seq = torch.randint(1, symbols + 1, (n, length), generator=gen)
    steps = length + delay + 1 + length
    x = torch.full((n, steps), blank)
    x[:, :length] = seq
    x[:, length + delay] = delim
    y = torch.full((n, steps), IGNORE)
    y[:, -length:] = seq
    vocab = ["_", *[chr(ord("a") + i) if i < 26 else str(i) for i in range(symbols)], "|"]
    meta = {"kind": "tag", "vocab_size": symbols + 2, "vocab": vocab, "num_classes": symbols + 2,
            "class_names": vocab, "seq_len": steps}
    idx = split_indices(n, float(cfg.val_fraction), float(cfg.test_fraction), int(cfg.seed))
    splits = {name: (x[i], y[i]) for name, i in zip(("train", "val", "test"), idx)}
    return TagTask(splits, meta, loss_cfg)


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"adding": adding, "copy": copy, "parity": parity}
