"""Metric sinks (metrics.jsonl, metrics.csv, TensorBoard, the experiment trackers of trackers.py) and the console
reporter (rich bar on a TTY, one plain line per epoch elsewhere)."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from dlcli.base.console import fmt
from dlcli.base.errors import UserError
from dlcli.engine.trackers import Trackers

log = logging.getLogger("dlcli")


class MetricsLogger:
    """Every record is {step, epoch, split, name: value...}: split is step (train loss every N steps), train, val
    or test. Appended to metrics.jsonl as it happens; metrics.csv is the same as a table."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, resume_step: int | None = None,
                 trackers: Trackers | None = None):
        """resume_step: continuing a run from a checkpoint taken at this step: keep the history up to it and
        drop what was logged after it (that part of training is done again). trackers: MLflow / W&B, fed every
        record as it is logged (a tracker keeps what a resume does again twice: it cannot drop history)."""
        self.run_dir = run_dir
        self.trackers = trackers
        self.rows: list[dict[str, Any]] = []
        path = run_dir / "metrics.jsonl"
        if resume_step is not None and path.exists():
            old = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            self.rows = [r for r in old if r["step"] <= resume_step and r["split"] != "test"]
            path.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")
        self._jsonl = open(path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: logger=tensorboard
            except ImportError:
                raise UserError("logger=tensorboard needs the tensorboard package: "
                                "pip install 'dlcli[tensorboard]' (or use logger=default)") from None
            # flushed every 10 s so a live TensorBoard follows the run; a resumed run hides the events it
            # logged after its checkpoint (they are done again), as metrics.jsonl drops them
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), flush_secs=10,
                                     purge_step=None if resume_step is None else resume_step + 1)

    def log(self, step: int, epoch: int, split: str, values: dict[str, float]) -> None:
        row = {"step": step, "epoch": epoch, "split": split, **{k: _plain(v) for k, v in values.items()}}
        self.rows.append(row)
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", v, step)
        if self.trackers is not None:
            self.trackers.log_metrics({f"{split}/{k}": row[k] for k in values if _number(row[k])}, step)

    def epochs(self, split: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["split"] == split]

    def write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with open(self.run_dir / "metrics.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        """The files; the trackers stay open for the run's end (end_trackers)."""
        self.write_csv()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def end_trackers(self, status: str) -> None:
        """The run's plots, summary.json and config to the trackers, and how it ended: completed, failed or
        interrupted."""
        if self.trackers is not None:
            self.trackers.end(self.run_dir, status)


class SilentLogger(MetricsLogger):
    """What ranks other than 0 log to under DDP: nothing (rank 0 logs the metrics, already reduced over ranks)."""

    def __init__(self) -> None:  # no files
        self.run_dir = None
        self.rows = []
        self._jsonl = self._tb = self.trackers = None

    def log(self, step: int, epoch: int, split: str, values: dict[str, float]) -> None:
        pass

    def write_csv(self) -> None:
        pass

    def close(self) -> None:
        pass


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plain(v: Any) -> Any:
    v = float(v) if hasattr(v, "item") else v
    return None if isinstance(v, float) and not math.isfinite(v) else v  # keep the JSON valid


class Reporter:
    """What a person sees while training."""

    def __init__(self, console: Console, enabled: bool = True):
        self.console = console
        self.enabled = enabled
        self.live = console.is_terminal
        self.warnings: list[str] = []  # what warn() said, for summary.json
        self._warned: set[str] = set()
        self.pace = Pace()  # the live bar's loss and ETAs, across epochs

    def say(self, message: str) -> None:
        log.info(message)
        if self.enabled:
            self.console.print(message, highlight=False)

    def warn(self, message: str, key: str | None = None) -> None:
        """A hint that may save the run: one line, said once per key (default: the message)."""
        if (key or message) in self._warned:
            return
        self._warned.add(key or message)
        self.warnings.append(message)
        log.warning(message)
        if self.enabled:
            self.console.print(f"[yellow]warning:[/] {message}", highlight=False)

    @contextlib.contextmanager
    def epoch_progress(self, epoch: int, epochs: int, batches: int, done: int = 0,
                       time_left: float | None = None) -> Iterator[Callable[[float | None], None]]:
        """A rich bar over the epoch's batches on a terminal; nothing on a pipe or in a log file (epoch_line's one
        line per epoch). It shows the train loss, smoothed over the values advance(loss) gets (the loop passes the
        loss it logs every trainer.log_every_n_steps: the bar adds no host sync), steps/s, the epoch's ETA and the
        run's: the epochs left at the time epochs took so far, within time_left (what trainer.max_time leaves).
        done: batches of this epoch already done (a resume mid-epoch)."""
        if not (self.enabled and self.live):
            yield _ignore
            return
        pace = self.pace
        pace.begin(epoch, epochs, batches, done, time_left)
        with Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      _PaceColumn(pace), console=self.console, transient=True) as bar:
            task = bar.add_task("train", total=batches, completed=done)

            def advance(loss: float | None = None) -> None:
                if loss is not None:
                    pace.smooth(loss)
                bar.advance(task)

            yield advance

    def epoch_line(self, epoch: int, epochs: int, parts: dict[str, dict[str, float]], seconds: float,
                   note: str = "") -> None:
        self.pace.epoch_end(parts.get("train", {}).get("loss"))
        cells = [f"epoch {epoch}/{epochs}"]
        for split, values in parts.items():
            cells += [f"{split}/{k} {fmt(v)}" for k, v in values.items() if k not in ("time",)]
        cells.append(f"{seconds:.1f}s")
        self.say("  ".join(cells) + (f"  {note}" if note else ""))

    def table(self, table: Table, text: str) -> None:
        log.info("\n" + text)
        if self.enabled:
            self.console.print(table)


def _ignore(loss: float | None = None) -> None:
    pass


class Pace:
    """What the live bar estimates: the smoothed train loss and the time epochs take (evaluation included)."""

    def __init__(self) -> None:
        self.loss: float | None = None
        self.epoch_seconds: list[float] = []  # whole epochs, start to next start
        self.started: tuple[float, int] | None = None  # (when, done) the current epoch's bar began
        self.epoch = self.epochs = self.batches = 0
        self.time_left: float | None = None
        self.logged = False  # a loss came during this epoch

    def begin(self, epoch: int, epochs: int, batches: int, done: int, time_left: float | None) -> None:
        now = time.perf_counter()
        if self.started is not None and self.started[1] == 0 and epoch == self.epoch + 1:
            self.epoch_seconds.append(now - self.started[0])
        self.started, self.epoch, self.epochs, self.batches, self.time_left = (now, done), epoch, epochs, batches, \
            time_left
        self.logged = False

    def smooth(self, loss: float) -> None:
        """An exponential moving average of the logged losses (each one step's loss: noisy)."""
        self.loss = loss if self.loss is None or not math.isfinite(self.loss) else 0.6 * self.loss + 0.4 * loss
        self.logged = True

    def epoch_end(self, train_loss: float | None) -> None:
        """An epoch shorter than trainer.log_every_n_steps logs no step loss: its mean train loss (synced for the
        epoch's line anyway) stands in."""
        if not self.logged and train_loss is not None:
            self.smooth(train_loss)

    def run_left(self, remaining: float, speed: float) -> float:
        """Seconds until the run ends: this epoch's batches at the bar's speed, then the epochs left at the mean
        time of whole epochs so far (at the bar's speed before one has passed); at most the time budget's rest."""
        later = max(self.epochs - self.epoch, 0)
        if self.epoch_seconds:
            per_epoch = sum(self.epoch_seconds[-5:]) / len(self.epoch_seconds[-5:])
            estimate = (later + remaining / max(self.batches, 1)) * per_epoch
        else:
            estimate = (remaining + later * self.batches) / speed
        if self.time_left is not None and self.started is not None:
            estimate = min(estimate, max(self.time_left - (time.perf_counter() - self.started[0]), 0.0))
        return estimate


class _PaceColumn(ProgressColumn):
    """loss 0.4321  123 it/s  eta 0:00:07  run eta 0:03:10 (rendered at the bar's refresh rate, not per batch)."""

    def __init__(self, pace: Pace):
        super().__init__()
        self.pace = pace

    def render(self, task: Task) -> Text:
        cells = [f"loss {fmt(self.pace.loss)}" if self.pace.loss is not None else "loss -"]
        speed = task.speed
        if speed:
            cells += [f"{speed:.3g} it/s", f"eta {_clock(task.remaining / speed)}"]
            cells.append(f"run eta {_clock(self.pace.run_left(task.remaining, speed))}")
        return Text("  ".join(cells), style="progress.remaining")


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
