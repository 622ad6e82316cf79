"""How many batches and epochs a run takes, and in what order: trainer.batch_size (`full`), trainer.epochs
(`auto`), trainer.limit_*_batches / overfit_batches as Lightning reads them, and each epoch's seed."""

from __future__ import annotations

from collections.abc import Callable
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


def eval_batches(tcfg: Any, task: Task, split: str, batch_size: int, budget_share: float | None = None) -> int:
    """Batches an evaluation of the val or test split runs: trainer.limit_val_batches / limit_test_batches; else,
    when a time budget's plan set one (LoopState.eval_share), that share of the split."""
    key = f"limit_{split}_batches"
    limit = tcfg.get(key)
    if limit is None and budget_share is not None:
        limit = min(1.0, float(budget_share))
    return batch_limit(limit, task.num_batches(split, batch_size), key)


# trainer.max_time: evaluations may take this much of the budget; past it, val and test run on their first batches
EVAL_BUDGET_SHARE = 0.25


def evaluation_reserve(tcfg: Any, task: Task, evals: int, per_example: float,
                       max_time: float | None) -> tuple[float, float | None]:
    """Seconds the evaluations still to come take (`evals` of val, one of test; per_example: seconds a forward pass
    takes per example) and the share of each split they run (None: as configured). Whole splits that would take over
    EVAL_BUDGET_SHARE of max_time run on their first batches instead; a split whose trainer.limit_*_batches is set
    keeps it. max_time None: never shared."""
    size = int(tcfg.eval_batch_size)

    def seconds(split: str, share: float | None) -> float:
        runs = evals if split == "val" else 1
        return runs * min(task.size(split), eval_batches(tcfg, task, split, size, share) * size) * per_example

    whole = seconds("val", None) + seconds("test", None)
    free = [s for s in ("val", "test") if tcfg.get(f"limit_{s}_batches") is None and task.size(s)]
    if max_time is None or whole <= EVAL_BUDGET_SHARE * max_time or not free:
        return whole, None
    fixed = sum(seconds(s, None) for s in ("val", "test") if s not in free)
    share = max(1e-9, EVAL_BUDGET_SHARE * max_time - fixed) / (whole - fixed)  # > 0: at least one batch each
    return sum(seconds(s, share) for s in ("val", "test")), share


def say_eval_share(tcfg: Any, task: Task, share: float, say: Callable[[str], None]) -> None:
    """Say, and record in summary.json's `chosen`, that evaluations run on a share of val/test to fit the budget."""
    size = int(tcfg.eval_batch_size)
    for split in ("val", "test"):
        if tcfg.get(f"limit_{split}_batches") is None and task.size(split):
            key, n = f"trainer.limit_{split}_batches", eval_batches(tcfg, task, split, size, share)
            task.chosen[key] = (f"{n:,} batches (of {task.num_batches(split, size):,}: evaluating whole splits "
                                f"would take over {EVAL_BUDGET_SHARE:.0%} of trainer.max_time={tcfg.max_time}s; "
                                f"{key}=1.0 evaluates it all)")
            say(f"auto: {key}={task.chosen[key]}")


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
