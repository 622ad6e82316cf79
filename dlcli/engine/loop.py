"""THE training loop: epochs of device-side batches, eval on val, clipping, AMP, metrics, checkpoints, early stop.

It knows nothing about task kinds: a Task turns a batch into (loss, stats) and stats into metrics.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlcli.base.task import InPlaceTrainer, Task, add_stats
from dlcli.engine import distributed
from dlcli.engine.batches import (epoch_cap, epoch_seed, eval_batches, evaluation_reserve, say_eval_share,
                                  train_batch_size, train_batches)
from dlcli.engine.evaluation import evaluate_split, is_better
from dlcli.engine.grad_norms import GradNorms
from dlcli.engine.logger import MetricsLogger, Reporter
from dlcli.engine.optim import Plan, follow_plan
from dlcli.engine.runtime import Runtime
from dlcli.engine.stopping import Diverged, Interrupted, LoopState, StopRequest, diverged_at, remedies

# Called after every optimizer step with the loop's state: an extension point (the tests' fault injection,
# tests/hooks/, uses it). Empty in a plain run.
STEP_END_HOOKS: list[Callable[[LoopState], None]] = []


@dataclass
class Training:
    """What one run's loop works with, built once by `dl train` (commands/train.py)."""

    model: nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    scheduler: Any
    interval: str                              # when the scheduler steps: step, epoch or eval
    runtime: Runtime
    tcfg: Any                                  # cfg.trainer
    logger: MetricsLogger
    reporter: Reporter
    save: Callable[[str, LoopState], None]     # save("best" | "last", state)
    in_place: InPlaceTrainer | None = None     # engine/in_place.py: a trainer that steps the model itself
    plan: Plan | None = None                   # the steps the schedule spans; trainer.max_time replans it once


def fit(training: Training, state: LoopState, stop: StopRequest | None = None) -> str:
    """Train until trainer.epochs, early stopping or trainer.max_time. Returns why it stopped.

    A stop request (SIGINT/SIGTERM) ends the current step, saves last.pt mid-epoch and raises Interrupted.
    """
    stop = stop or StopRequest()
    stop.armed = True
    try:
        return _Loop(training, state, stop).run()
    finally:
        stop.armed = False


def epoch_batches(training: Training, epoch: int, batch_size: int) -> Iterator[tuple]:
    """An epoch's training batches. The order depends on (seed, epoch) only, so a resume replays it (overfit_batches:
    epoch 1's batches, every epoch)."""
    t = training
    overfit = bool(t.tcfg.get("overfit_batches"))
    seed = epoch_seed(int(t.tcfg.seed), 1 if overfit else epoch)
    if t.in_place is not None:
        return t.in_place.batches(seed)
    return t.task.batches("train", batch_size, shuffle=not overfit, seed=seed)


def step_function(training: Training) -> Callable[[tuple], tuple[torch.Tensor, dict[str, torch.Tensor], Any]]:
    """The loop's own training step outside fit(): forward, backward, precision, clipping, optimizer step. For the lr
    finder (engine/lr_find.py), whose sweep must step exactly as training will."""
    return _Loop(training, LoopState(), StopRequest()).train_step


class _Loop:
    """The loop in named steps: train_epoch (train_step per batch, after_step, stop_requested), end_of_epoch
    (evaluate, track the best, checkpoint)."""

    def __init__(self, training: Training, state: LoopState, stop: StopRequest):
        self.t, self.state, self.stop = training, state, stop
        tcfg = training.tcfg
        self.epochs = epoch_cap(tcfg)
        self.batch_size = train_batch_size(tcfg, training.task, training.in_place)
        self.n_batches = train_batches(tcfg, training.task, self.batch_size)
        self.overfit = bool(tcfg.get("overfit_batches"))  # the same first batches every epoch, validated on too
        self.history: list[tuple[float, float]] = []  # (train loss, val loss) per evaluation, for advise()
        self.judged_flat = False  # advise(): whether the loss was judged on an epoch past the warm-up
        self.epoch_start_lr = 0.0
        self.plan = training.plan or Plan(self.n_batches * self.epochs)
        if state.planned_steps is not None:  # a resume: the budget's plan as it was made
            self.plan.total = state.planned_steps
        self.followed = state.planned_steps is not None  # the schedule ends with the budget's plan
        self.calibrated_from: tuple[float, int] | None = None  # (time, step) after this run's first step
        self.monitor_split, self.monitor_name = str(tcfg.monitor).split("/", 1)
        self.scaler = training.runtime.grad_scaler()
        if self.scaler is not None and state.grad_scaler:
            self.scaler.load_state_dict(state.grad_scaler)
        self.max_time = float(tcfg.max_time) if tcfg.max_time else None
        self.patience = tcfg.early_stopping_patience
        # Read per-step settings once: an OmegaConf lookup costs ~20 us and an interpolated one (clip_grad_norm is
        # ${oc.select:...}) re-parses its expression, ~1 ms: per step that was a third of a small MLP's step time.
        self.clip_value = float(tcfg.clip_grad_value) if tcfg.clip_grad_value else None
        self.clip_norm = float(tcfg.clip_grad_norm) if tcfg.clip_grad_norm else None
        self.log_every = int(tcfg.log_every_n_steps)
        self.step_fn = distributed.train_step(training.model, training.task)  # under DDP: this rank's slice
        # trainer.log_grad_norms: per-layer gradient norms on the steps whose loss is logged (none in between)
        self.grad_norms = GradNorms(training.model) if tcfg.get("log_grad_norms", False) else None
        self.start = time.perf_counter() - state.elapsed
        self.began = (time.perf_counter(), state.step)  # this process's start: the speed when no plan was made
        self.total: dict[str, torch.Tensor] | None = None  # the epoch's summed stats (on the device)
        self.losses: torch.Tensor | None = None  # each step's loss, on the device: read at log steps and per epoch
        self.done = 0  # batches of this epoch done

    def run(self) -> str:
        self.t.model.train()
        if self.state.eval_share is not None:  # a resume: the budget's plan shares val/test as it did
            say_eval_share(self.t.tcfg, self.t.task, self.state.eval_share, self.t.reporter.say)
        for epoch in range(self.state.epoch + 1, self.epochs + 1):
            t0 = time.perf_counter()
            if hasattr(self.t.model, "set_epoch"):  # per-epoch schedules inside a model (teacher forcing)
                self.t.model.set_epoch(epoch, self.epochs)
            stop_reason = self.train_epoch(epoch)
            stop_reason = self.end_of_epoch(epoch, stop_reason, time.perf_counter() - t0)
            if stop_reason:
                return stop_reason
        return "epochs"

    def checkpoint(self, which: str) -> None:
        if self.scaler is not None:
            self.state.grad_scaler = self.scaler.state_dict()
        self.t.save(which, self.state)

    # ------------------------------------------------------------------------------------------- one epoch's steps
    def train_epoch(self, epoch: int) -> str:
        """The epoch's batches (a mid-epoch checkpoint's are skipped, not computed). Returns "max_time" when the
        time budget ran out, else ""."""
        t, state = self.t, self.state
        skip, state.batch = state.batch, 0
        self.total = {k: v.to(t.task.device) for k, v in state.partial.items()} if state.partial else None
        state.partial = None
        self.losses, self.done = None, skip
        self.epoch_start_lr = current_lr(t.optimizer)
        batches = epoch_batches(t, epoch, self.batch_size)
        budget_left = self.max_time - (time.perf_counter() - self.start) if self.max_time else None
        with t.reporter.epoch_progress(epoch, self.shown_epochs(), self.n_batches, skip, budget_left) as advance:
            for i, batch in enumerate(itertools.islice(batches, skip, self.n_batches), start=skip):
                loss, stats, norms = self.train_step(batch)
                if self.losses is None:  # the loss's own dtype and device: a float64 loss may exceed float32
                    self.losses = torch.zeros(self.n_batches, dtype=loss.dtype, device=loss.device)
                self.losses[i] = loss.detach()
                self.done = i + 1
                self.total = add_stats(self.total, stats)
                state.step += 1
                advance(self.after_step(epoch, i, loss, norms))  # the bar shows the loss as logged (no extra sync)
                if self.stop_requested(epoch, i):
                    return "max_time"
        return ""

    def train_step(self, batch: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """Forward, backward, clip, optimizer and scheduler step. Returns (loss, stats, gradient norms or None)."""
        t, norms = self.t, None
        if t.in_place is not None:
            loss, stats = t.in_place.step(batch)
        else:
            with t.runtime.autocast():
                loss, stats = self.step_fn(batch)
            t.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(t.optimizer)
            else:
                loss.backward()
            # before clipping: the gradient as the loss made it (read below with the logged loss)
            if self.grad_norms is not None and (self.state.step + 1) % self.log_every == 0:
                norms = self.grad_norms.compute()
            if self.clip_value:
                nn.utils.clip_grad_value_(t.model.parameters(), self.clip_value)
            if self.clip_norm:
                nn.utils.clip_grad_norm_(t.model.parameters(), self.clip_norm)
            if self.scaler is not None:
                self.scaler.step(t.optimizer)
                self.scaler.update()
            else:
                t.optimizer.step()
        if t.scheduler is not None and t.interval == "step":
            t.scheduler.step()
        return loss, stats, norms

    def after_step(self, epoch: int, i: int, loss: torch.Tensor, norms: Any) -> float | None:
        """Every log_every_n_steps: the loss (the only per-step host sync), lr, gradient norms; stop if diverged.
        Returns the loss logged at this step, if any."""
        state, value = self.state, None
        if state.step % self.log_every == 0:
            value = distributed.mean(loss.detach()).item()
            self.t.logger.log(state.step, epoch, "step", {"loss": value, "lr": current_lr(self.t.optimizer)})
            if norms is not None:
                self.t.logger.log(state.step, epoch, "grad_norm", self.grad_norms.read(norms))
            if not math.isfinite(value):
                self.diverged(epoch, i + 1)
        for hook in STEP_END_HOOKS:
            hook(state)
        return value

    def stop_requested(self, epoch: int, i: int) -> bool:
        """A signal: save last.pt mid-epoch and raise Interrupted. Returns whether trainer.max_time ran out. One
        answer on every rank (a no-op on one process): each rank stops at the same step."""
        state = self.state
        if self.max_time and state.planned_steps is None:
            self.plan_budget()
        # planned: the plan ends the run (a resume stops at the same step); the clock only past 25% over budget
        limit = self.max_time * (1.25 if state.planned_steps is not None else 1.0) if self.max_time else None
        signum, out_of_time = distributed.agree(self.stop.signum, bool(limit)
                                                and time.perf_counter() - self.start > limit)
        out_of_time = out_of_time or (state.planned_steps is not None and state.step >= state.planned_steps)
        if out_of_time and state.planned_steps is None and state.eval_share is None:
            self.share_evaluations()
        if signum is not None:
            if not distributed.all_true(bool(torch.isfinite(self.losses[:i + 1]).all())):  # never save diverged
                self.diverged(epoch, i + 1)
            state.batch = i + 1
            state.partial = {k: v.detach().cpu() for k, v in distributed.sum_stats(self.total).items()}
            state.elapsed = time.perf_counter() - self.start
            self.checkpoint("last")
            self.stop.stopping = True
            raise Interrupted(signum)
        return out_of_time

    def shown_epochs(self) -> int:
        """The epochs the run will take, as far as known (trainer.epochs=auto: from the budget's plan)."""
        planned = self.state.planned_steps
        return min(self.epochs, -(-planned // self.n_batches)) if planned else self.epochs

    def plan_budget(self) -> None:
        """trainer.max_time: once 5% of the budget (and 10 steps) have run, turn the time left into a number of steps
        at the speed measured, less an estimate of the evaluations still to come; the schedule then ends with them.
        Made once and saved, so a resume stops at the same step."""
        state, now = self.state, time.perf_counter()
        if self.calibrated_from is None:  # the first step of this run pays for warm-up: timed from its end
            self.calibrated_from = (now, state.step)
            return
        t0, s0 = self.calibrated_from
        elapsed = now - self.start
        if state.step - s0 < 10 or elapsed < 0.05 * self.max_time:
            return
        rate = (state.step - s0) / max(now - t0, 1e-9)  # steps per second
        left = self.max_time - elapsed
        every = int(self.t.tcfg.eval_every)
        evals = 1 + (state.step + int(left * rate)) // (self.n_batches * every) - state.epoch // every
        reserve, share = self.evaluation_reserve(evals, rate)
        planned = min(self.plan.total, state.step + max(1, int((left - reserve) * rate)))
        # rank 0's timing decides for every rank
        planned, share = json.loads(distributed.broadcast_text(json.dumps([planned, share])))
        state.planned_steps = self.plan.total = planned
        state.eval_share = share
        self.followed = follow_plan(self.t.scheduler, self.plan)
        schedule = "the learning-rate schedule ends with them" if self.followed else \
            "the learning-rate schedule keeps its own course (warmup_cosine, cosine, linear and noam follow a budget)"
        self.t.reporter.say(f"time budget: trainer.max_time={self.t.tcfg.max_time}s plans {planned:,} steps in all "
                            f"({planned / self.n_batches:.3g} epochs at {rate:.3g} steps/s), ~{reserve:.0f}s kept "
                            f"for evaluation; {schedule}")
        if share is not None:
            say_eval_share(self.t.tcfg, self.t.task, share, self.t.reporter.say)

    def evaluation_reserve(self, evals: int, rate: float) -> tuple[float, float | None]:
        """batches.evaluation_reserve at `rate` training steps/s: a forward pass costs about a third of a training
        step, per example (overfit_batches validates on its training batches: never shared)."""
        return evaluation_reserve(self.t.tcfg, self.t.task, evals, 1 / (rate * self.batch_size) / 3,
                                  None if self.overfit else self.max_time)

    def share_evaluations(self) -> None:
        """The clock ran out before the budget's plan was made: the evaluations left (this epoch's val, the test)
        still keep to a share of the budget, at the speed seen so far."""
        began, s0 = self.began
        _, share = self.evaluation_reserve(1, max(self.state.step - s0, 1) / max(time.perf_counter() - began, 1e-9))
        self.state.eval_share = json.loads(distributed.broadcast_text(json.dumps(share)))
        if self.state.eval_share is not None:
            say_eval_share(self.t.tcfg, self.t.task, self.state.eval_share, self.t.reporter.say)

    def diverged(self, epoch: int, done: int) -> None:
        diverged_at(self.losses[:done], self.state.step, epoch, self.n_batches, self.t.optimizer, self.t.tcfg,
                  self.t.runtime)

    # ------------------------------------------------------------------------------------------- end of an epoch
    def end_of_epoch(self, epoch: int, stop_reason: str, seconds: float) -> str:
        """Train metrics, evaluation, the best so far, schedulers, early stopping, checkpoints, the epoch's line.
        Returns why training stops now ("" to go on)."""
        t, state, tcfg = self.t, self.state, self.t.tcfg
        state.epoch = epoch
        if self.losses is not None and not distributed.all_true(bool(torch.isfinite(self.losses[:self.done]).all())):
            self.diverged(epoch, self.done)
        train = t.task.summarize(distributed.sum_stats(self.total))
        if not math.isfinite(train["loss"]):
            raise Diverged(f"the training loss became {train['loss']} in epoch {epoch} (step {state.step}); "
                           + remedies(t.optimizer, tcfg, t.runtime))
        parts = {"train": train}
        t.logger.log(state.step, epoch, "train", {**train, "lr": current_lr(t.optimizer)})
        last = epoch == self.epochs or bool(stop_reason)
        if epoch % int(tcfg.eval_every) == 0 or last:
            parts["val"] = self.validate()
            t.logger.log(state.step, epoch, "val", parts["val"])
        self.advise(epoch, parts, stop_reason)
        note = self.track_best(epoch, parts)
        if t.scheduler is not None and t.interval == "epoch":
            t.scheduler.step()
        if self.patience and state.evals_since_best >= int(self.patience):
            stop_reason = stop_reason or "early_stopping"
        state.elapsed = time.perf_counter() - self.start
        if note:
            self.checkpoint("best")
        signum = distributed.agree(self.stop.signum)[0]
        if epoch % int(tcfg.checkpoint_every) == 0 or last or stop_reason or signum is not None:
            self.checkpoint("last")
        t.reporter.epoch_line(epoch, self.shown_epochs(), parts, seconds, note)
        signum = distributed.agree(self.stop.signum)[0]
        if signum is not None:  # the signal came during the epoch's evaluation or saving
            self.stop.stopping = True
            raise Interrupted(signum)
        if stop_reason == "max_time" and state.planned_steps is not None and state.step >= state.planned_steps:
            t.reporter.say(f"stopping: the {state.planned_steps:,} steps trainer.max_time={tcfg.max_time}s planned "
                           "are done")
        elif stop_reason:
            t.reporter.say({"max_time": f"stopping: trainer.max_time={tcfg.max_time}s reached",
                            "early_stopping": f"stopping early: {tcfg.monitor} has not improved for "
                                              f"{self.patience} evaluations"}[stop_reason])
        return stop_reason

    def advise(self, epoch: int, parts: dict[str, dict[str, float]], stop_reason: str) -> None:
        """Warnings that save a run, each said once: a loss that did not fall in epoch 1, a time budget that ended
        epoch 1, val loss rising while train loss falls."""
        warn, lr = self.t.reporter.warn, current_lr(self.t.optimizer)
        peak = self.t.optimizer.param_groups[0].get("initial_lr", lr)
        # judged on the first full epoch of the first three that began past any warm-up (at >= 0.9 x the peak lr)
        if epoch <= 3 and self.epoch_start_lr >= 0.9 * peak and self.losses is not None and self.done >= 20 and \
                self.done == self.n_batches and not self.judged_flat:
            self.judged_flat = True
            tenth = max(self.done // 10, 2)
            first = float(self.losses[:tenth].float().mean())
            last = float(self.losses[self.done - tenth:self.done].float().mean())
            if math.isfinite(first) and not last < first * 0.98:
                warn(f"the training loss did not fall during epoch {epoch} ({first:.4g} -> {last:.4g}); try another "
                     f"optimizer.lr (now {lr:.3g}): ~10x lower if it rose, 3-10x higher if it stayed flat", "flat")
        if stop_reason == "max_time" and epoch == 1 and self.done < self.n_batches and not self.followed:
            if str(self.t.tcfg.epochs) == "auto":
                planned = "before the budget's plan was made (it times 10 steps first)"
            else:
                planned = f"of {self.epochs}: a learning-rate schedule planned for {self.epochs} epochs did not get far"
            warn(f"trainer.max_time={self.t.tcfg.max_time} ended the run {self.done} of {self.n_batches} batches into "
                 f"epoch 1 {planned}; give more time, fewer trainer.epochs or a trainer.limit_train_batches", "budget")
        if "val" in parts:
            self.history.append((parts["train"]["loss"], parts["val"]["loss"]))
        val, train = [v for _, v in self.history], [t for t, _ in self.history]
        means = [sum(val[i:i + 3]) / 3 for i in range(len(val) - 2)]  # of 3 evaluations: a trend, not noise
        best = min(range(len(means)), key=means.__getitem__) if means else 0
        # risen by a fifth, and by a twentieth of what training had gained on val (near zero loss: noise)
        if means and best <= len(means) - 4 and means[-1] > 1.2 * means[best] and \
                means[-1] - means[best] > 0.05 * (val[0] - means[best]):
            recent, at_best = sum(train[-3:]) / 3, min(train[best:best + 3])
            if recent < 0.8 * at_best and recent < 0.8 * means[-1]:  # train fell clearly, and lies clearly below val
                warn(f"val/loss has risen for {len(means) - 1 - best} evaluations ({means[best]:.4g} -> "
                     f"{means[-1]:.4g}, means of 3) while train/loss fell: the model is overfitting; try "
                     "model.dropout, trainer.early_stopping_patience=3 (best.pt keeps the best epoch) or a smaller "
                     "model", "overfitting")

    def validate(self) -> dict[str, float]:
        """val/ metrics: the val split (its first trainer.limit_val_batches), or with trainer.overfit_batches the
        very batches trained on."""
        t, tcfg = self.t, self.t.tcfg
        if self.overfit:
            return evaluate_split(t.model, t.task, "train", self.batch_size, t.runtime, limit=self.n_batches)
        size = int(tcfg.eval_batch_size)
        return evaluate_split(t.model, t.task, "val", size, t.runtime,
                              limit=eval_batches(tcfg, t.task, "val", size, self.state.eval_share))

    def track_best(self, epoch: int, parts: dict[str, dict[str, float]]) -> str:
        """The monitored metric against the best so far (and a plateau scheduler); a note when it improved."""
        state, tcfg, scheduler = self.state, self.t.tcfg, self.t.scheduler
        if self.monitor_split not in parts:
            return ""
        value = parts[self.monitor_split][self.monitor_name]
        if scheduler is not None and self.t.interval == "eval":
            scheduler.step(value)
        if is_better(value, state.best_value, tcfg.mode, float(tcfg.min_delta)):
            state.best_value, state.best_epoch, state.evals_since_best = value, epoch, 0
            return f"* best {tcfg.monitor}"
        state.evals_since_best += 1
        return ""


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
