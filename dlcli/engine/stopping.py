"""Where a run stands (LoopState, saved in every checkpoint) and the ways it stops early: a signal (StopRequest ->
Interrupted) or a non-finite loss (Diverged, said with what to try)."""

from __future__ import annotations

import signal
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from dlcli.base.errors import UserError
from dlcli.engine import distributed


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
    planned_steps: int | None = None  # trainer.max_time: the steps the budget allows, planned once (a resume keeps it)
    eval_share: float | None = None  # trainer.max_time: the share of val/test an evaluation runs when whole ones would
                                     # not fit in the budget (planned with planned_steps)

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
    writes are atomic, so that never leaves a broken file. Once Interrupted is on its way, further signals are
    ignored: the way out (run.json, the last line, Python's exit) must not be broken into (a traceback)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self.stopping = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.stopping:
            return
        if self.signum is not None or not self.armed:
            self.stopping = True
            raise Interrupted(signum)
        self.signum = signum
        if distributed.is_main():  # every rank gets the signal; one says so
            sys.stderr.write(f"\n{signal.Signals(signum).name}: finishing this step and saving checkpoints/last.pt "
                             "(press Ctrl-C again to stop at once)\n")


class Diverged(UserError):
    """A non-finite training loss; the run dir and its last good checkpoint are kept."""


def remedies(optimizer: torch.optim.Optimizer, tcfg: Any, runtime: Any) -> str:
    """What to try after a diverged run: the lr it had, clipping, precision."""
    lr, now = optimizer.defaults.get("lr"), float(optimizer.param_groups[0]["lr"])
    scheduled = f", {now:.3g} after the schedule" if now != lr else ""
    return (f"nothing was saved after it; try a lower optimizer.lr (now {lr}{scheduled}), "
            f"trainer.clip_grad_norm=1.0 (now {tcfg.clip_grad_norm}) or trainer.precision=fp32 "
            f"(now {runtime.precision})")


def diverged_at(losses: torch.Tensor, step: int, epoch: int, n_batches: int, optimizer: torch.optim.Optimizer,
                tcfg: Any, runtime: Any) -> None:
    """Raise Diverged naming the first step of this epoch whose loss was not finite (`losses` ends at `step`)."""
    bad = (~torch.isfinite(losses)).nonzero()
    first = int(bad[0, 0]) if len(bad) else len(losses) - 1
    first_step = step - (len(losses) - 1 - first)
    raise Diverged(f"the training loss became {float(losses[first])} at step {first_step} (epoch {epoch}, batch "
                   f"{first + 1} of {n_batches}); " + remedies(optimizer, tcfg, runtime))
