"""The job around one `dl train` run (what Hydra calls per job): its record (run.json), signals, failure modes, and
the processes of trainer.devices=N. The run itself is commands/train.py's run()."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dlcli import __version__
from dlcli.base.console import make_console
from dlcli.base.errors import UserError, exit_with, report
from dlcli.base.targets import dataset_name, model_name
from dlcli.commands.train import run
from dlcli.config.search_path import naming_user_file
from dlcli.engine import distributed
from dlcli.engine.checkpoint import load_checkpoint
from dlcli.engine.logger import Reporter
from dlcli.engine.resume import recorded_sources
from dlcli.engine.run_dir import HELD_BY_PARENT, acquire, promote_staged
from dlcli.engine.runtime import resolve_device
from dlcli.engine.stopping import Diverged, Interrupted, StopRequest


class RunRecord:
    """run.json: status (running|completed|failed|interrupted), command, times, versions, device, seed."""

    def __init__(self, run_dir: Path, cfg: DictConfig):
        self.path = run_dir / "run.json"
        previous = None
        if cfg.trainer.resume and self.path.exists():
            try:
                previous = json.loads(self.path.read_text())
            except ValueError:  # unreadable: start a fresh record for this run
                previous = None
        elif not cfg.trainer.resume:
            try:  # claim the directory: two runs never share one, whatever the timing
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                raise UserError(f"hydra.run.dir={run_dir} already holds a run (run.json); pick a new directory "
                                "(nothing was changed)") from None
            except OSError as e:
                raise UserError(f"cannot write the run directory {run_dir}: {e.strerror}; run dl where you can "
                                "write, or choose a directory with hydra.run.dir=PATH") from None
        self.data = {
            "status": "running",
            "command": " ".join(["dl", "train", *_task_overrides()]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "ended": None,
            "model": model_name(cfg.model),
            "dataset": dataset_name(cfg.dataset),
            "seed": int(cfg.trainer.seed),
            "device": str(cfg.device.get("name", "auto")),
            "versions": {"dlcli": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "host": platform.node(),
            "pid": os.getpid(),  # with host: `dl runs` tells a live run from one killed without a word
        }
        if previous:  # resumed: same run, same start; note when it was resumed
            self.data["started"] = previous.get("started", self.data["started"])
            self.data["command"] = previous.get("command", self.data["command"])
            self.data["resumed"] = [*previous.get("resumed", []), time.strftime("%Y-%m-%dT%H:%M:%S%z")]
        self.run_dir = run_dir
        self.started = not cfg.trainer.resume  # a resume writes nothing until it trains (start)
        if self.started:
            self.write()

    def start(self) -> None:
        """Training (re)starts: a resume now says so in run.json, and Hydra's record of it replaces the run's."""
        if not self.started:
            self.started = True
            self.write()
            promote_staged(self.run_dir)

    def write(self) -> None:
        tmp = self.path.with_name(".run.json.tmp")  # replaced whole: a kill never leaves half a run.json
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)

    def finish(self, status: str, **extra: Any) -> None:
        if not self.started:  # a resume refused before it trained: the run's record stays as it was
            return
        self.data.update(status=status, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra)
        self.write()


def _task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task)


def run_job(cfg: DictConfig) -> float | None:
    """What Hydra calls per job: the run around run(), with its record and its failure modes."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    distributed.init(resolve_device(cfg.device))  # a submitit job with several tasks (torchrun's: joined already)
    if cfg.trainer.get("devices", 1) > 1 and not distributed.active():
        return _launch(cfg, run_dir)
    try:
        if distributed.is_main():
            acquire(run_dir)  # a sweep's job; a single run's dir dl train holds already
        record = RunRecord(run_dir, cfg) if distributed.is_main() else _NoRecord()
    except UserError as e:  # another run's directory: touch nothing
        exit_with(e)
    console = make_console()
    reporter = Reporter(console, enabled=bool(cfg.logger.console) and distributed.is_main())
    # SIGINT/SIGTERM: the loop finishes its step and saves last.pt; a second signal stops at once.
    stop = StopRequest()
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, stop)
        except ValueError:  # not the main thread (a threaded launcher): keep the default behaviour
            pass
    try:
        summary = run(cfg, run_dir, reporter, stop, started=record.start)
    except UserError as error:
        runtime = HydraConfig.get().runtime  # a problem in the user's own model/dataset YAML names that file
        e = naming_user_file(error, runtime.choices, recorded_sources(runtime.config_sources))
        record.finish("failed", error=str(e))
        if not distributed.is_main():  # rank 0 says it and cleans up
            _leave(e)
        if not (run_dir / "metrics.jsonl").exists() and not cfg.trainer.resume:  # failed before training: no run
            shutil.rmtree(run_dir, ignore_errors=True)

        if HydraConfig.get().mode == RunMode.MULTIRUN and (run_dir / "metrics.jsonl").exists():
            report(e)  # failed while training (diverged...): a result of the sweep, whose other jobs go on;
            return float("nan")  # run.json says failed; Optuna counts the trial as failed
        exit_with(e)
    except (KeyboardInterrupt, Interrupted) as e:
        stop.stopping = True  # more Ctrl-C from here on: ignored, the run is being closed
        if not distributed.is_main():  # every rank stops at the same step; rank 0 tells
            _leave(e)
        record.finish("interrupted")
        code = e.exit_code if isinstance(e, Interrupted) else 130
        last = run_dir / "checkpoints" / "last.pt"
        if last.exists():
            console.print(f"interrupted; checkpoints/last.pt holds step {_saved_step(last)}; continue with: "
                          f"dl train trainer.resume={run_dir}")
        else:
            console.print("interrupted before the first checkpoint; nothing to resume")
        sys.exit(code)
    except BaseException as e:
        record.finish("failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        for signum, handler in previous.items():  # (after an interrupt: ignore them, the process is ending)
            signal.signal(signum, signal.SIG_IGN if stop.stopping else handler)
    record.finish("completed", device=summary["device"], wall_time_s=summary["wall_time_s"])
    if cfg.trainer.get("fast_dev_run") and distributed.is_main():
        shutil.rmtree(run_dir, ignore_errors=True)
        reporter.say("fast_dev_run: data, model, a training step, validation, test and checkpoints all ran (one "
                     "batch each); nothing kept. Train for real without trainer.fast_dev_run")
    value = summary["best"]["value"]
    return float(value) if value is not None else None


def _leave(e: BaseException) -> None:
    """A rank other than 0 under DDP ends. What every rank hit (an agreed interrupt, a diverged loss) rank 0
    reports: this one exits 0, so torchrun does not tear rank 0 down before it has recorded the run. An error of
    this rank alone is said here and fails the group."""
    if isinstance(e, (Interrupted, KeyboardInterrupt, Diverged)):
        sys.exit(0)
    report(UserError(f"rank {distributed.rank()}: {e}"))
    sys.exit(getattr(e, "exit_code", 1))


class _NoRecord:
    """Ranks other than 0 under DDP: rank 0 keeps run.json."""

    def start(self) -> None:
        pass

    def finish(self, status: str, **extra: Any) -> None:
        pass


def _launch(cfg: DictConfig, run_dir: Path) -> float | None:
    """trainer.devices=N: run this job on N processes (torch.distributed.run), in this run dir; their rank 0
    writes everything. Returns the best monitored value (for sweepers), or exits with the processes' exit code."""
    argv = distributed.job_argv(_task_overrides(), cfg.trainer.resume, run_dir) + _config_args()
    os.environ[HELD_BY_PARENT] = str(run_dir.resolve())  # this process holds the dir's lock for the ones it starts
    try:
        code = distributed.launch(argv, int(cfg.trainer.devices))
    finally:
        del os.environ[HELD_BY_PARENT]
    if code:
        sys.exit(code)
    value = json.loads((run_dir / "summary.json").read_text())["best"]["value"]
    return float(value) if value is not None else None


def _config_args() -> list[str]:
    """The job's primary config and the user's config folders, for the processes that run it (not in its overrides)."""
    hydra_cfg = HydraConfig.get()
    folders = [f"'{url}'" for url in recorded_sources(hydra_cfg.runtime.config_sources)]
    name = hydra_cfg.job.config_name
    return ([f"--config-name={name}"] if name and name != "config" else []) + \
        ([f"hydra.searchpath=[{','.join(folders)}]"] if folders else [])


def _saved_step(path: Path) -> str:
    try:
        return str(load_checkpoint(path)["step"])
    except UserError:
        return "?"
