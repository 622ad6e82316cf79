"""trainer.lr_find: the learning-rate range test (Smith 2017; fastai's lr_find, Lightning's Tuner.lr_find).

From the run's start state, trainer.lr_find_steps training steps, one batch each, with the lr rising exponentially
from trainer.lr_find_min to trainer.lr_find_max. The batches come in the order training will use, each step is the
loop's own (every task kind, trainer.precision, gradient clipping); no scheduler. The sweep stops early once a
running average of the loss exceeds DIVERGED times its best (diverged). Then the model, the optimizer and every RNG
are put back as they were: training starts as if the sweep had not happened.

The suggestion (method "minimum/10", fastai's lr_min rule): a tenth of the lr at which the smoothed loss is lowest.
Lightning's default, the steepest fall of the loss, was tried and left out: on a character LSTM it picked the
early drop to letter frequencies (5.5e-4; trained 150 steps: test loss 2.99, against 2.32 at the default 3e-3 and
2.06 at minimum/10's 1.1e-2). The smoothing is a centred moving average (see smooth): a one-way average, as
Lightning's and fastai's, trails the curve and moves its lowest point toward larger lrs.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from dlcli.base.errors import UserError
from dlcli.base.task import InPlaceTrainer, Task
from dlcli.engine import distributed
from dlcli.engine.batches import epoch_cap, train_batch_size, train_batches
from dlcli.engine.logger import Reporter, SilentLogger
from dlcli.engine.loop import Training, epoch_batches, step_function
from dlcli.engine.runtime import Runtime, rng_state, set_rng_state

METHOD = "minimum/10"
BETA = 0.9       # the stop's running average of the loss (~10 steps; it can only look back)
DIVERGED = 4.0   # stop once that average exceeds this many times its best (Lightning's early_stop_threshold)


@dataclass
class LRFind:
    """What a sweep found: each step's lr and training loss, the smoothed curve, the suggestion (None: the loss
    never fell)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float | None
    min_lr: float
    max_lr: float
    planned: int                 # trainer.lr_find_steps
    stopped_by: str              # steps | diverged | not finite (a loss of inf or NaN ended it; not recorded)
    seconds: float = 0.0         # the sweep's time (trainer.max_time does not count it: the budget is training's)
    method: str = field(default=METHOD)

    @property
    def lowest(self) -> int | None:
        """The step where the smoothed loss is lowest."""
        return min(range(len(self.smoothed)), key=self.smoothed.__getitem__) if self.smoothed else None

    def summary(self) -> dict[str, Any]:
        """summary.json's lr_find entry."""
        lowest = None if self.lowest is None else self.lrs[self.lowest]
        return {"suggested_lr": self.suggested_lr, "method": self.method, "lowest_loss_lr": lowest,
                "min_lr": self.min_lr, "max_lr": self.max_lr, "steps": len(self.lrs), "planned_steps": self.planned,
                "stopped_by": self.stopped_by, "seconds": round(self.seconds, 3)}

    def describe(self) -> str:
        """How the sweep went, in words: 'lowest smoothed loss at lr 3.2e-02; 181 steps from 1e-07 to 10, ... 2.1 s'."""
        end = {"diverged": ", stopped once the loss diverged", "not finite": ", stopped at a loss of inf/NaN"}
        lowest = "" if self.lowest is None else f"lowest smoothed loss at lr {self.lrs[self.lowest]:.1e}; "
        return (f"{lowest}{len(self.lrs)} steps from {self.min_lr:g} to {self.max_lr:g}"
                f"{end.get(self.stopped_by, '')}, {self.seconds:.1f} s")

    def write(self, run_dir: Path) -> Path:
        path = run_dir / "lr_find.json"
        curve = {"lrs": self.lrs, "losses": self.losses, "smoothed": self.smoothed}
        path.write_text(json.dumps({**self.summary(), **curve}, indent=2))
        return path


def sweep_lrs(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """steps lrs from min_lr to max_lr (both included), each the previous times the same factor."""
    return [min_lr * (max_lr / min_lr) ** (i / (steps - 1)) for i in range(steps)]


def smooth(values: list[float]) -> list[float]:
    """Each step's loss averaged with the `k` steps either side of it (k = 1/40 of the steps: 0.2 decade each way in
    the default sweep; fewer at the ends). Centred, so the curve does not lag behind the lr; of finite width, so
    a spike (the diverging last steps) moves only its neighbours."""
    k = max(1, len(values) // 40)
    sums = list(itertools.accumulate(values, initial=0.0))
    return [(sums[min(i + k + 1, len(values))] - sums[max(i - k, 0)]) / (min(i + k + 1, len(values)) - max(i - k, 0))
            for i in range(len(values))]


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """A tenth of the lr at the lowest point of the smoothed loss: past that point the lr is too large to learn
    with, and a tenth of it still learns fast, away from the edge. Rounded to 2 significant digits: the value
    printed is the value used. None when the loss did not fall (by 1% of where it began) or fell only within the
    first decade of the sweep (a tenth of that lr would lie below the sweep: start it lower)."""
    if len(smoothed) < 3:
        return None
    low = min(range(len(smoothed)), key=smoothed.__getitem__)
    if not smoothed[low] < smoothed[0] - 0.01 * abs(smoothed[0]) or lrs[low] / 10 < lrs[0]:
        return None
    return float(f"{lrs[low] / 10:.1e}")


def find_lr(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer, runtime: Runtime, tcfg: Any,
            reporter: Reporter, in_place: InPlaceTrainer | None = None) -> LRFind:
    """The sweep from the current state of model, optimizer and RNGs, which it restores afterwards."""
    if distributed.world_size() > 1:
        raise UserError("trainer.lr_find runs on one process: find the lr with trainer.devices=1 "
                        "trainer.lr_find=true, then train on several with optimizer.lr=<the suggestion>")
    low, high, steps = float(tcfg.lr_find_min), float(tcfg.lr_find_max), int(tcfg.lr_find_steps)
    training = Training(model, task, optimizer, None, "step", runtime, tcfg, SilentLogger(), reporter,
                        lambda which, state: None, in_place)
    step = step_function(training)
    start = ({k: v.detach().clone() for k, v in model.state_dict().items()}, copy.deepcopy(optimizer.state_dict()),
             rng_state())
    lrs: list[float] = []
    losses: list[float] = []
    stopped_by, avg, best, began = "steps", 0.0, math.inf, time.perf_counter()
    try:
        model.train()
        if hasattr(model, "set_epoch"):  # as the loop does for epoch 1 (a model's per-epoch schedule)
            model.set_epoch(1, epoch_cap(tcfg))
        for i, (lr, batch) in enumerate(zip(sweep_lrs(low, high, steps), _batches(training))):
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = float(step(batch)[0].detach())  # a host sync per step: the curve needs every value
            if not math.isfinite(loss):
                stopped_by = "not finite"
                break
            lrs.append(lr)
            losses.append(loss)
            avg = BETA * avg + (1 - BETA) * loss
            now = avg / (1 - BETA ** (i + 1))  # bias-corrected: the first steps are not pulled toward 0
            best = min(best, now)
            if i > 0 and best > 0 and now > DIVERGED * best:
                stopped_by = "diverged"
                break
    finally:  # also after an error or Ctrl-C: never leave the sweep's weights in the model
        model.load_state_dict(start[0])
        optimizer.load_state_dict(start[1])
        set_rng_state(start[2])
    smoothed = smooth(losses)
    return LRFind(lrs, losses, smoothed, suggest(lrs, smoothed), low, high, steps, stopped_by,
                  time.perf_counter() - began)


def _batches(training: Training) -> Iterator[tuple]:
    """Training batches in the loop's order (engine/loop.py, train_epoch): epoch 1's, then epoch 2's..."""
    t, tcfg = training, training.tcfg
    size = train_batch_size(tcfg, t.task, t.in_place)
    for epoch in itertools.count(1):
        yield from itertools.islice(epoch_batches(t, epoch, size), train_batches(tcfg, t.task, size))


def lr_keys(cfg: Any) -> list[str]:
    """The keys that set a run's starting lr: optimizer.lr, and a schedule's own start (scheduler=linear's
    scheduler.start_lr, word2vec's model.alpha) where it has one."""
    return ["optimizer.lr"] + (["scheduler.start_lr"] if cfg.scheduler.get("start_lr") is not None else [])


def record_lr(cfg: Any, lr: float, hydra_dir: Path | None) -> None:
    """trainer.lr_find=apply: the run's config says the lr it trains with, and no sweep: the config the checkpoints
    store (cfg) and Hydra's record of the job (.hydra/config.yaml, and overrides.yaml, which a resume composes
    again), so dl eval, a resume and a rerun of the record train with this lr."""
    keys = lr_keys(cfg)
    for key in keys:
        OmegaConf.update(cfg, key, lr)
    cfg.trainer.lr_find = False
    if hydra_dir is None or not (hydra_dir / "config.yaml").is_file():
        return
    stored = OmegaConf.load(hydra_dir / "config.yaml")
    for key in keys:
        OmegaConf.update(stored, key, lr)
    OmegaConf.update(stored, "trainer.lr_find", False)
    _replace(hydra_dir / "config.yaml", OmegaConf.to_yaml(stored))
    overrides = hydra_dir / "overrides.yaml"
    if overrides.is_file():
        kept = [str(o) for o in OmegaConf.load(overrides)
                if str(o).split("=", 1)[0].lstrip("+~") not in (*keys, "trainer.lr_find")]
        _replace(overrides, OmegaConf.to_yaml(OmegaConf.create([*kept, *(f"{key}={lr}" for key in keys)])))


def _replace(path: Path, text: str) -> None:
    """Replaced whole (a kill never leaves half a record)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
