"""How many batches and epochs a run takes, and in what order: trainer.batch_size (`full`), trainer.epochs
(`auto`), trainer.limit_*_batches / overfit_batches as Lightning reads them, and each epoch's seed."""

from __future__ import annotations

from typing import Any

from dlcli.base.errors import UserError
from dlcli.base.task import Task


def resolve_batch_size(value: Any, n_train: int) -> int:
    """An integer, or `full` for full-batch gradient descent."""
    if value == "full":
        return n_train
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"trainer.batch_size={value}: use a positive integer (1 = plain SGD) or full (BGD)")
    return min(value, n_train)


def train_batch_size(tcfg: Any, task: Task, in_place: Any = None) -> int:
    """Rows per training step: the in-place trainer's own size (word2vec on the CPU: corpus words), else
    trainer.batch_size."""
    return in_place.batch_size if in_place is not None else resolve_batch_size(tcfg.batch_size, task.size("train"))


AUTO_EPOCHS = 100_000  # trainer.epochs=auto: as many as trainer.max_time allows (the budget stops the run)


def epoch_cap(tcfg: Any) -> int:
    return AUTO_EPOCHS if str(tcfg.epochs) == "auto" else int(tcfg.epochs)


def batch_limit(limit: Any, n: int, key: str) -> int:
    """How many of a split's n batches a pass runs: trainer.limit_*_batches as Lightning reads it, null: all; an
    integer: that many (at most n); a fraction in (0, 1]: that share (at least one)."""
    if limit is None:
        return n
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0 or \
            (isinstance(limit, float) and limit > 1):
        raise UserError(f"trainer.{key}={limit}: a number of batches (an integer >= 1) or a fraction in (0, 1] "
                        "(1.0 = all), or null")
    return min(n, limit) if isinstance(limit, int) else max(1, int(n * limit))


def eval_batches(tcfg: Any, task: Task, split: str, batch_size: int) -> int:
    """Batches an evaluation of the val or test split runs: trainer.limit_val_batches / limit_test_batches."""
    key = f"limit_{split}_batches"
    return batch_limit(tcfg.get(key), task.num_batches(split, batch_size), key)


def train_batches(tcfg: Any, task: Task, batch_size: int) -> int:
    """Training batches per epoch: trainer.overfit_batches (the same first N every epoch), else the split's batches
    cut to trainer.limit_train_batches."""
    n = task.num_batches("train", batch_size)
    if tcfg.get("overfit_batches"):
        return batch_limit(tcfg.overfit_batches, n, "overfit_batches")
    return batch_limit(tcfg.get("limit_train_batches"), n, "limit_train_batches")


def epoch_seed(seed: int, epoch: int) -> int:
    """The data order of an epoch depends on (seed, epoch) only, so a resumed run replays it."""
    return seed * 1_000_003 + epoch
