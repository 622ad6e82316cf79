"""THE training loop: epochs of device-side batches, eval on val, clipping, AMP, metrics, checkpoints, early stop.

It knows nothing about task kinds: a Task turns a batch into (loss, stats) and stats into metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dlcli.data.task import Task, add_stats
from dlcli.errors import UserError
from dlcli.metrics import MetricsLogger, Reporter
from dlcli.runtime import Runtime


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0                  # epochs completed
    step: int = 0                   # optimizer steps taken
    best_value: float | None = None
    best_epoch: int | None = None
    evals_since_best: int = 0       # for early stopping
    elapsed: float = 0.0            # seconds of training so far (trainer.max_time counts these)

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_batch_size(value: Any, n_train: int) -> int:
    """An integer, or `full` for full-batch gradient descent."""
    if value == "full":
        return n_train
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"trainer.batch_size={value}: use a positive integer (1 = plain SGD) or full (BGD)")
    return min(value, n_train)


def is_better(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return math.isfinite(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


def epoch_seed(seed: int, epoch: int) -> int:
    """The data order of an epoch depends on (seed, epoch) only, so a resumed run replays it."""
    return seed * 1_000_003 + epoch


@torch.no_grad()
def evaluate_split(model: nn.Module, task: Task, split: str, batch_size: int, runtime: Runtime) -> dict[str, float]:
    was_training = model.training
    model.eval()
    total = None
    for batch in task.batches(split, batch_size):
        with runtime.autocast():
            _, stats = task.step(model, batch)
        total = add_stats(total, stats)
    metrics = task.summarize(total)
    metrics.update(task.eval_metrics(model, split))
    model.train(was_training)
    return metrics


def fit(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer, scheduler: Any, interval: str,
        runtime: Runtime, tcfg: Any, logger: MetricsLogger, reporter: Reporter,
        save: Callable[[str, LoopState], None], state: LoopState) -> str:
    """Train until trainer.epochs, early stopping or trainer.max_time. Returns why it stopped."""
    epochs = int(tcfg.epochs)
    batch_size = resolve_batch_size(tcfg.batch_size, task.size("train"))
    monitor_split, monitor_name = str(tcfg.monitor).split("/", 1)
    scaler = runtime.grad_scaler()
    max_time = float(tcfg.max_time) if tcfg.max_time else None
    patience = tcfg.early_stopping_patience
    start = time.perf_counter() - state.elapsed
    stop = ""
    model.train()
    for epoch in range(state.epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        if hasattr(model, "set_epoch"):  # per-epoch schedules inside a model (teacher forcing)
            model.set_epoch(epoch, epochs)
        total = None
        loss = torch.zeros(())
        with reporter.epoch_progress(epoch, epochs, task.num_batches("train", batch_size)) as advance:
            for batch in task.batches("train", batch_size, shuffle=True, seed=epoch_seed(int(tcfg.seed), epoch)):
                with runtime.autocast():
                    loss, stats = task.step(model, batch)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if tcfg.clip_grad_value:
                    nn.utils.clip_grad_value_(model.parameters(), float(tcfg.clip_grad_value))
                if tcfg.clip_grad_norm:
                    nn.utils.clip_grad_norm_(model.parameters(), float(tcfg.clip_grad_norm))
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if scheduler is not None and interval == "step":
                    scheduler.step()
                total = add_stats(total, stats)
                state.step += 1
                advance()
                if state.step % int(tcfg.log_every_n_steps) == 0:  # the only per-step host sync
                    logger.log(state.step, epoch, "step", {"loss": loss.item(), "lr": current_lr(optimizer)})
                if max_time and time.perf_counter() - start > max_time:
                    stop = "max_time"
                    break
        state.epoch = epoch
        train = task.summarize(total)
        if not math.isfinite(train["loss"]):
            raise UserError(f"the training loss became {train['loss']} in epoch {epoch} (step {state.step}); "
                            "try a lower optimizer.lr, trainer.clip_grad_norm=1.0 or trainer.precision=fp32")
        parts = {"train": train}
        logger.log(state.step, epoch, "train", {**train, "lr": current_lr(optimizer)})
        last = epoch == epochs or stop
        if epoch % int(tcfg.eval_every) == 0 or last:
            parts["val"] = evaluate_split(model, task, "val", int(tcfg.eval_batch_size), runtime)
            logger.log(state.step, epoch, "val", parts["val"])
        note = ""
        if monitor_split in parts:
            value = parts[monitor_split][monitor_name]
            if scheduler is not None and interval == "eval":
                scheduler.step(value)
            if is_better(value, state.best_value, tcfg.mode, float(tcfg.min_delta)):
                state.best_value, state.best_epoch, state.evals_since_best = value, epoch, 0
                note = f"* best {tcfg.monitor}"
            else:
                state.evals_since_best += 1
        if scheduler is not None and interval == "epoch":
            scheduler.step()
        if patience and state.evals_since_best >= int(patience):
            stop = stop or "early_stopping"
        state.elapsed = time.perf_counter() - start
        if note:
            save("best", state)
        if epoch % int(tcfg.checkpoint_every) == 0 or last or stop:
            save("last", state)
        reporter.epoch_line(epoch, epochs, parts, time.perf_counter() - t0, note)
        if stop:
            reporter.say({"max_time": f"stopping: trainer.max_time={tcfg.max_time}s reached",
                          "early_stopping": f"stopping early: {tcfg.monitor} has not improved for "
                                            f"{patience} evaluations"}[stop])
            return stop
    return "epochs"


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
