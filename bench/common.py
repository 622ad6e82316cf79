"""What every benchmark shares: composing a `dl train` config, building its parts exactly as dlcli/commands/train.py does,
driving dlcli.engine.loop.fit, the hand-written baseline pieces, fair timing (interleaved repetitions, medians), results.

Nothing in the dlcli package imports this; it needs `pip install -e ".[bench]"` only for the gensim case.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Context:
    """What `python -m bench` was asked for."""

    device: torch.device
    quick: bool = False
    repeat: int = 7
    compile: bool = False  # torch.compile the transformer (both sides)

    def reps(self, cap: int | None = None) -> int:
        """Timed repetitions per side: --repeat (at most 3 with --quick), at most `cap`."""
        n = min(self.repeat, 3) if self.quick else self.repeat
        return min(n, cap) if cap else n


@dataclass
class Result:
    """One row of the table: dl (or our fast path) against a baseline on the same work."""

    case: str
    metric: str                      # e.g. steps/s, tokens/s
    dl: float | None
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None       # as named by ratio_name
    ratio_name: str = ""
    goal: str = ""
    met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)


def data_dir() -> Path:
    """$DL_DATA_DIR, else the shared data folder beside the repository (where the tests read it)."""
    return Path(os.environ.get("DL_DATA_DIR") or REPO.parent / "shared" / "data")


def compose(overrides: list[str]) -> Any:
    """The config `dl train OVERRIDES` would run with (Hydra's compose API on the shipped conf)."""
    from hydra import compose as hydra_compose, initialize_config_module

    os.environ.setdefault("DL_DATA_DIR", str(data_dir()))
    with initialize_config_module("dlcli.conf", version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


@dataclass
class DlParts:
    cfg: Any
    runtime: Any
    task: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    interval: str


def build_parts(cfg: Any, task: Any = None) -> DlParts:
    """runtime, task, model, optimizer, scheduler: the same calls in the same order as dlcli.commands.train.run."""
    from dlcli.data import build_task
    from dlcli.engine.batches import resolve_batch_size
    from dlcli.engine.optim import build_optimizer, build_scheduler
    from dlcli.engine.runtime import setup
    from dlcli.models import build_model

    t = cfg.trainer
    runtime = setup(cfg)
    task = task if task is not None else build_task(cfg.dataset, cfg.loss, runtime.device)
    model = build_model(cfg.model, task.meta).to(runtime.device)
    optimizer = build_optimizer(cfg.optimizer, model, runtime.device)
    total = task.num_batches("train", resolve_batch_size(t.batch_size, task.size("train"))) * int(t.epochs)
    scheduler, interval = build_scheduler(cfg.scheduler, optimizer, total, t.mode)
    return DlParts(cfg, runtime, task, model, optimizer, scheduler, interval)


def run_fit(parts: DlParts, logger_cls: Any = None) -> tuple[float, Any]:
    """dlcli.engine.loop.fit over cfg.trainer.epochs, as `dl train` runs it, minus the checkpoint writes (the bare loops
    save nothing either). Returns (seconds, the metrics logger)."""
    from dlcli.base.console import make_console
    from dlcli.engine.logger import MetricsLogger, Reporter
    from dlcli.engine.loop import Training, fit
    from dlcli.engine.stopping import LoopState

    with tempfile.TemporaryDirectory() as tmp:
        logger = (logger_cls or MetricsLogger)(Path(tmp))
        sync(parts.runtime.device)
        start = time.perf_counter()
        fit(Training(parts.model, parts.task, parts.optimizer, parts.scheduler, parts.interval, parts.runtime,
                     parts.cfg.trainer, logger, Reporter(make_console(), enabled=False), lambda which, state: None),
            LoopState())
        sync(parts.runtime.device)
        seconds = time.perf_counter() - start
        logger.close()
    return seconds, logger


# --------------------------------------------------------------------------------------------- hand-written pieces
def bare_adamw(model: torch.nn.Module, ocfg: Any, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as dl builds it (decay on weight matrices only, fused kernels on CUDA and CPU), written out by hand: the
    loop comparison isolates the loop, not the optimizer (torch's default AdamW on a CPU, a for-loop over the
    parameters, is ~3x slower than the fused one)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": float(ocfg.weight_decay)},
                          {"params": rest, "weight_decay": 0.0}) if g["params"]]
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=float(ocfg.lr), betas=tuple(ocfg.betas), eps=float(ocfg.eps), **fast)


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    warm = int(warmup * total) if warmup < 1 else int(warmup)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.5 * (1 + math.cos(math.pi * min((step - warm) / max(total - warm, 1), 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: torch.device, precision: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------- timing
def interleave(runs: dict[str, Callable[[], float]], repeat: int, warmup: bool = True) -> dict[str, list[float]]:
    """Call each run `repeat` times, alternating who goes first each round (A B, B A, ...), so load from other
    processes, thermal state and allocator warm-up hit both sides alike. Each run returns its own measurement.
    One untimed call each first (oneDNN/cuDNN primitive creation, allocator, lazy imports)."""
    names = list(runs)
    if warmup:
        for name in names:
            runs[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(runs[name]())
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios num[i] / den[i]: the two runs of a round ran back to back, so a slow
    stretch on a shared machine slows both and mostly cancels (medians of each side apart do not pair them)."""
    return statistics.median(a / b for a, b in zip(num, den))


def spread(values: list[float]) -> str:
    """min-max of the repetitions, for the details column."""
    return f"{min(values):.4g}-{max(values):.4g}"


@dataclass
class CliRun:
    seconds: float       # wall time of the whole command, interpreter start to exit
    cpu_seconds: float   # user + system time of the process (steadier than wall on a shared machine)
    peak_rss_mb: float
    returncode: int
    stdout: str


def dl_command(args: list[str]) -> list[str]:
    """`dl ARGS` as a command line: the console script beside this interpreter (what `dl` is in an activated venv;
    a pyenv/asdf shim found on PATH would add its own start-up, ~0.2 s, to every figure), else python -m dlcli."""
    import shutil
    import sys

    exe = Path(sys.executable).parent / "dl"
    found = str(exe) if exe.is_file() else shutil.which("dl")
    return [found, *args] if found else [sys.executable, "-m", "dlcli", *args]


def run_cli(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> CliRun:
    """`dl ARGS` (the installed script, else python -m dlcli) in a subprocess: wall time, CPU time and peak RSS
    from the process's own rusage (os.wait4, not the sum over every child this bench ever started)."""
    import subprocess

    cmd = dl_command(args)
    full_env = {**os.environ, "DL_DATA_DIR": str(data_dir()), **(env or {})}
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return CliRun(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode, text)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                            "cpu": _cpu_name(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
