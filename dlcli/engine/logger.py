"""Metric sinks (metrics.jsonl, metrics.csv, TensorBoard) and the console reporter (rich bar on a TTY, one plain
line per epoch elsewhere)."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dlcli.base.console import fmt
from dlcli.base.errors import UserError

log = logging.getLogger("dlcli")


class MetricsLogger:
    """Every record is {step, epoch, split, name: value...}: split is step (train loss every N steps), train, val
    or test. Appended to metrics.jsonl as it happens; metrics.csv is the same as a table."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, resume_step: int | None = None):
        """resume_step: continuing a run from a checkpoint taken at this step: keep the history up to it and
        drop what was logged after it (that part of training is done again)."""
        self.run_dir = run_dir
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
        self.write_csv()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class SilentLogger(MetricsLogger):
    """What ranks other than 0 log to under DDP: nothing (rank 0 logs the metrics, already reduced over ranks)."""

    def __init__(self) -> None:  # no files
        self.run_dir = None
        self.rows = []
        self._jsonl = self._tb = None

    def log(self, step: int, epoch: int, split: str, values: dict[str, float]) -> None:
        pass

    def write_csv(self) -> None:
        pass

    def close(self) -> None:
        pass


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
    def epoch_progress(self, epoch: int, epochs: int, batches: int) -> Iterator[Callable[[], None]]:
        """A rich bar over the epoch's batches on a terminal; nothing on a pipe or in a log file."""
        if not (self.enabled and self.live):
            yield lambda: None
            return

        with Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=True) as bar:
            task = bar.add_task("train", total=batches)
            yield lambda: bar.advance(task)

    def epoch_line(self, epoch: int, epochs: int, parts: dict[str, dict[str, float]], seconds: float,
                   note: str = "") -> None:
        cells = [f"epoch {epoch}/{epochs}"]
        for split, values in parts.items():
            cells += [f"{split}/{k} {fmt(v)}" for k, v in values.items() if k not in ("time",)]
        cells.append(f"{seconds:.1f}s")
        self.say("  ".join(cells) + (f"  {note}" if note else ""))

    def table(self, table: Table, text: str) -> None:
        log.info("\n" + text)
        if self.enabled:
            self.console.print(table)
