"""THE training loop: epochs of device-side batches, eval on val, clipping, AMP, metrics, checkpoints, early stop.

It knows nothing about task kinds: a Task turns a batch into (loss, stats) and stats into metrics.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from dlcli import distributed
from dlcli.data.task import Task, add_stats
from dlcli.errors import UserError
from dlcli.grad_norms import GradNorms
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
    batch: int = 0                  # batches of epoch `epoch + 1` already done (a checkpoint saved mid-epoch)
    partial: dict | None = None     # that epoch's summed stats so far (CPU tensors: dtypes kept, resume exact)
    grad_scaler: dict | None = None  # fp16: the GradScaler's scale and growth tracker, so a resume scales as before

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LoopState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Interrupted(BaseException):
    """Ctrl-C (SIGINT, exit 130) or SIGTERM (exit 143); raised once last.pt holds the finished step."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """The SIGINT/SIGTERM handler. Inside the loop (armed) it only takes note: the loop finishes the current
    step, saves last.pt and raises Interrupted. A second signal, or one outside the loop, raises at once; checkpoint
    writes are atomic, so that never leaves a broken file."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is not None or not self.armed:
            raise Interrupted(signum)
        self.signum = signum
        if distributed.is_main():  # every rank gets the signal; one says so
            sys.stderr.write(f"\n{signal.Signals(signum).name}: finishing this step and saving checkpoints/last.pt "
                             "(press Ctrl-C again to stop at once)\n")


class Diverged(UserError):
    """A non-finite training loss; the run dir and its last good checkpoint are kept."""


def _test_signals() -> dict[int, list[int]]:
    """Test-only: DL_TEST_SIGNAL_AT_STEP=N[:TERM][,M...] makes the loop signal itself after step N (deterministic
    interrupts in tests/test_resume.py)."""
    out: dict[int, list[int]] = {}
    for item in filter(None, os.environ.get("DL_TEST_SIGNAL_AT_STEP", "").split(",")):
        step, _, name = item.partition(":")
        out.setdefault(int(step), []).append(int(getattr(signal, f"SIG{name or 'INT'}")))
    return out


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
    step = distributed.eval_step(model, task)  # task.step; under DDP on this rank's slice of each batch
    for batch in task.batches(split, batch_size):
        with runtime.autocast():
            _, stats = step(batch)
        total = add_stats(total, stats)
    metrics = task.summarize(distributed.sum_stats(total))
    metrics.update(distributed.on_main(lambda: task.eval_metrics(model, split)))
    model.train(was_training)
    return metrics


def fit(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer, scheduler: Any, interval: str,
        runtime: Runtime, tcfg: Any, logger: MetricsLogger, reporter: Reporter,
        save: Callable[[str, LoopState], None], state: LoopState, stop: StopRequest | None = None,
        in_place: Any = None) -> str:
    """Train until trainer.epochs, early stopping or trainer.max_time. Returns why it stopped.

    A stop request (SIGINT/SIGTERM) ends the current step, saves last.pt mid-epoch and raises Interrupted.
    in_place (Task.in_place_training: word2vec on the CPU) trains the model itself: its step() replaces backward and
    optimizer.step(), its batches() and batch_size the trainer's.
    """
    stop = stop or StopRequest()
    stop.armed = True
    try:
        return _fit(model, task, optimizer, scheduler, interval, runtime, tcfg, logger, reporter, save, state, stop,
                    in_place)
    finally:
        stop.armed = False


def _fit(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer, scheduler: Any, interval: str,
         runtime: Runtime, tcfg: Any, logger: MetricsLogger, reporter: Reporter,
         save: Callable[[str, LoopState], None], state: LoopState, stop: StopRequest, in_place: Any) -> str:
    epochs = int(tcfg.epochs)
    batch_size = train_batch_size(tcfg, task, in_place)
    n_batches = task.num_batches("train", batch_size)
    monitor_split, monitor_name = str(tcfg.monitor).split("/", 1)
    scaler = runtime.grad_scaler()
    if scaler is not None and state.grad_scaler:
        scaler.load_state_dict(state.grad_scaler)

    def checkpoint(which: str) -> None:
        if scaler is not None:
            state.grad_scaler = scaler.state_dict()
        save(which, state)

    max_time = float(tcfg.max_time) if tcfg.max_time else None
    patience = tcfg.early_stopping_patience
    # Read per-step settings once: an OmegaConf lookup costs ~20 us and an interpolated one (clip_grad_norm is
    # ${oc.select:...}) re-parses its expression, ~1 ms: per step that was a third of a small MLP's step time.
    clip_value = float(tcfg.clip_grad_value) if tcfg.clip_grad_value else None
    clip_norm = float(tcfg.clip_grad_norm) if tcfg.clip_grad_norm else None
    log_every = int(tcfg.log_every_n_steps)
    signal_at = _test_signals()
    step = distributed.train_step(model, task)  # task.step; under DDP this rank's slice through DDP
    # trainer.log_grad_norms: per-layer gradient norms on the steps whose loss is logged (none in between)
    grad_norms = GradNorms(model) if tcfg.get("log_grad_norms", False) else None
    start = time.perf_counter() - state.elapsed
    stop_reason = ""
    model.train()
    for epoch in range(state.epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        if hasattr(model, "set_epoch"):  # per-epoch schedules inside a model (teacher forcing)
            model.set_epoch(epoch, epochs)
        # A mid-epoch checkpoint: replay the epoch's seeded order, skipping (not computing) the batches done.
        skip, state.batch = state.batch, 0
        total = {k: v.to(task.device) for k, v in state.partial.items()} if state.partial else None
        state.partial = None
        # Each step's loss stays on the device (no sync); read at log steps and once per epoch to name the first
        # non-finite step.
        losses: torch.Tensor | None = None
        done = skip
        seed = epoch_seed(int(tcfg.seed), epoch)
        batches = (in_place.batches(seed) if in_place is not None
                   else task.batches("train", batch_size, shuffle=True, seed=seed))
        with reporter.epoch_progress(epoch, epochs, n_batches) as advance:
            for i, batch in enumerate(itertools.islice(batches, skip, None), start=skip):
                norms = None
                if in_place is not None:
                    loss, stats = in_place.step(batch)
                else:
                    with runtime.autocast():
                        loss, stats = step(batch)
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                    else:
                        loss.backward()
                    # before clipping: the gradient as the loss made it (read below with the logged loss)
                    if grad_norms is not None and (state.step + 1) % log_every == 0:
                        norms = grad_norms.compute()
                    if clip_value:
                        nn.utils.clip_grad_value_(model.parameters(), clip_value)
                    if clip_norm:
                        nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                if scheduler is not None and interval == "step":
                    scheduler.step()
                if losses is None:  # the loss's own dtype and device: a float64 loss may exceed float32
                    losses = torch.zeros(n_batches, dtype=loss.dtype, device=loss.device)
                losses[i] = loss.detach()
                done = i + 1
                total = add_stats(total, stats)
                state.step += 1
                advance()
                if state.step % log_every == 0:  # the only per-step host sync
                    value = distributed.mean(loss.detach()).item()
                    logger.log(state.step, epoch, "step", {"loss": value, "lr": current_lr(optimizer)})
                    if norms is not None:
                        logger.log(state.step, epoch, "grad_norm", grad_norms.read(norms))
                    if not math.isfinite(value):
                        _diverged(losses[:i + 1], state.step, epoch, n_batches, optimizer, tcfg, runtime)
                for signum in signal_at.get(state.step, ()):
                    os.kill(os.getpid(), signum)
                # one answer on every rank (a no-op on one process): each rank stops at the same step
                signum, out_of_time = distributed.agree(stop.signum, bool(max_time)
                                                        and time.perf_counter() - start > max_time)
                if signum is not None:
                    if not distributed.all_true(bool(torch.isfinite(losses[:i + 1]).all())):  # never save diverged
                        _diverged(losses[:i + 1], state.step, epoch, n_batches, optimizer, tcfg, runtime)
                    state.batch = i + 1
                    state.partial = {k: v.detach().cpu() for k, v in distributed.sum_stats(total).items()}
                    state.elapsed = time.perf_counter() - start
                    checkpoint("last")
                    raise Interrupted(signum)
                if out_of_time:
                    stop_reason = "max_time"
                    break
        state.epoch = epoch
        if losses is not None and not distributed.all_true(bool(torch.isfinite(losses[:done]).all())):
            _diverged(losses[:done], state.step, epoch, n_batches, optimizer, tcfg, runtime)
        train = task.summarize(distributed.sum_stats(total))
        if not math.isfinite(train["loss"]):
            raise Diverged(f"the training loss became {train['loss']} in epoch {epoch} (step {state.step}); "
                           + _knobs(optimizer, tcfg, runtime))
        parts = {"train": train}
        logger.log(state.step, epoch, "train", {**train, "lr": current_lr(optimizer)})
        last = epoch == epochs or stop_reason
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
            stop_reason = stop_reason or "early_stopping"
        state.elapsed = time.perf_counter() - start
        if note:
            checkpoint("best")
        signum = distributed.agree(stop.signum)[0]
        saved_last = epoch % int(tcfg.checkpoint_every) == 0 or last or stop_reason or signum is not None
        if saved_last:
            checkpoint("last")
        reporter.epoch_line(epoch, epochs, parts, time.perf_counter() - t0, note)
        signum = distributed.agree(stop.signum)[0]
        if signum is not None:  # the signal came during the epoch's evaluation or saving
            raise Interrupted(signum)
        if stop_reason:
            reporter.say({"max_time": f"stopping: trainer.max_time={tcfg.max_time}s reached",
                          "early_stopping": f"stopping early: {tcfg.monitor} has not improved for "
                                            f"{patience} evaluations"}[stop_reason])
            return stop_reason
    return "epochs"


def _knobs(optimizer: torch.optim.Optimizer, tcfg: Any, runtime: Runtime) -> str:
    lr, now = optimizer.defaults.get("lr"), current_lr(optimizer)
    scheduled = f", {now:.3g} after the schedule" if now != lr else ""
    return (f"nothing was saved after it; try a lower optimizer.lr (now {lr}{scheduled}), "
            f"trainer.clip_grad_norm=1.0 (now {tcfg.clip_grad_norm}) or trainer.precision=fp32 "
            f"(now {runtime.precision})")


def _diverged(losses: torch.Tensor, step: int, epoch: int, n_batches: int, optimizer: torch.optim.Optimizer,
              tcfg: Any, runtime: Runtime) -> None:
    """Raise Diverged naming the first step of this epoch whose loss was not finite (`losses` ends at `step`)."""
    bad = (~torch.isfinite(losses)).nonzero()
    first = int(bad[0, 0]) if len(bad) else len(losses) - 1
    first_step = step - (len(losses) - 1 - first)
    raise Diverged(f"the training loss became {float(losses[first])} at step {first_step} (epoch {epoch}, batch "
                   f"{first + 1} of {n_batches}); " + _knobs(optimizer, tcfg, runtime))


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
