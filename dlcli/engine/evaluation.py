"""Evaluating a split (val during training, test after it, `dl eval`) and comparing a monitored value with the best."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from dlcli.base.task import Task, add_stats
from dlcli.engine import distributed
from dlcli.engine.runtime import Runtime


def is_better(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return math.isfinite(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


@torch.no_grad()
def evaluate_split(model: nn.Module, task: Task, split: str, batch_size: int, runtime: Runtime,
                   limit: int | None = None) -> dict[str, float]:
    """The split's metrics; limit: only its first `limit` batches (trainer.limit_val_batches...)."""
    was_training = model.training
    model.eval()
    total = None
    step = distributed.eval_step(model, task)  # task.step; under DDP on this rank's slice of each batch
    for batch in itertools.islice(task.batches(split, batch_size), limit):
        with runtime.autocast():
            _, stats = step(batch)
        total = add_stats(total, stats)
    metrics = task.summarize(distributed.sum_stats(total))
    metrics.update(distributed.on_main(lambda: task.eval_metrics(model, split)))
    model.train(was_training)
    return metrics
