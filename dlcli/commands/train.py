"""`dl train`, one job: config -> task -> model -> optimizer -> loop -> test -> outputs. Read this file top to bottom."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dlcli import __version__
from dlcli.base.console import make_console
from dlcli.base.errors import UserError, exit_with, report
from dlcli.base.targets import dataset_name, model_name
from dlcli.config.check import check_config, check_data_fit, check_monitor
from dlcli.config.search_path import naming_user_file
from dlcli.data import build_task
from dlcli.engine import distributed
from dlcli.engine.checkpoint import atomic_save, load_checkpoint, make_checkpoint
from dlcli.engine.in_place import choose_in_place
from dlcli.engine.logger import MetricsLogger, Reporter, SilentLogger
from dlcli.engine.loop import (Diverged, Interrupted, LoopState, StopRequest, Training, epoch_cap, eval_batches,
                               evaluate_split, fit, train_batch_size, train_batches)
from dlcli.engine.optim import Plan, build_optimizer, build_scheduler
from dlcli.engine.resume import recorded_sources
from dlcli.engine.run_dir import HELD_BY_PARENT, acquire, promote_staged
from dlcli.engine.runtime import resolve_device, rng_state, set_rng_state, setup
from dlcli.models import build_model, count_params, summary_table
from dlcli.reports.plots import plot_run


def run(cfg: DictConfig, run_dir: Path, reporter: Reporter, stop: StopRequest | None = None,
        started: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train one model; write checkpoints, metrics, plots and summary.json under run_dir. `started` is called once
    everything is built and loaded, right before the first step (a resume records itself only then)."""
    check_config(cfg)
    t = dry_run(cfg.trainer) if cfg.trainer.get("fast_dev_run") else cfg.trainer
    runtime = setup(cfg)
    task = build_task(cfg.dataset, cfg.loss, runtime.device)
    check_data_fit(cfg, task)
    model = build_model(cfg.model, task.meta).to(runtime.device)
    check_monitor(cfg, task, model)  # first forward (a user model's output shape): before the summary's own
    params = count_params(model)
    reporter.say(f"run dir: {run_dir}")
    reporter.say(f"data: {dataset_name(cfg.dataset)} ({task.kind}) train {task.size('train')} / "
                 f"val {task.size('val')} / test {task.size('test')} examples on {runtime.device}, "
                 f"precision {runtime.precision}")
    if task.loading:
        reporter.say(f"data: {task.loading}")
    for warning in task.warnings:
        reporter.warn(warning)
    if t.summary:
        reporter.table(*summary_table(model, task.example_input(), f"model: {model_name(cfg.model)}"))
    train_model = torch.compile(model) if t.compile else model
    optimizer = build_optimizer(cfg.optimizer, model, runtime.device)
    # word2vec on the CPU trains itself, pair by pair, in steps of its own size (dlcli/models/word2vec.py)
    in_place = choose_in_place(task, model, optimizer, t, runtime)
    batch_size = train_batch_size(t, task, in_place)
    if in_place:
        reporter.say(f"training: word2vec's own SGD, pair by pair, in C++ on {torch.get_num_threads()} thread(s); "
                     f"steps of dataset.cpu_batch_size={batch_size} words")
    distributed.check_batch_size(batch_size)  # the global batch: each of N processes needs a row
    plan = Plan(train_batches(t, task, batch_size) * epoch_cap(t))  # trainer.max_time replans it (loop.py)
    scheduler, interval = build_scheduler(cfg.scheduler, optimizer, plan.total, t.mode, plan)

    config_yaml = OmegaConf.to_yaml(cfg)
    ckpt_dir = run_dir / "checkpoints"

    def save(which: str, state: LoopState) -> None:
        if distributed.is_main():  # the plain module's state_dict, whatever the number of processes
            atomic_save(make_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, rng=rng_state(),
                                        epoch=state.epoch, step=state.step, best=state.as_dict(),
                                        config_yaml=config_yaml, meta=task.meta), ckpt_dir / f"{which}.pt")
        distributed.barrier()  # no rank leaves (an interrupt) while rank 0 is still writing

    state = resume_state(t.resume, model, optimizer, scheduler, runtime, reporter) if t.resume else LoopState()
    distributed.seed_rank(int(t.seed), state.step)
    logger = MetricsLogger(run_dir, tensorboard=bool(cfg.logger.tensorboard),
                           resume_step=state.step if t.resume else None) if distributed.is_main() else SilentLogger()
    if started is not None:
        started()
    clock = time.perf_counter()
    try:
        stopped_by = fit(Training(train_model, task, optimizer, scheduler, interval, runtime, t, logger, reporter, save,
                                  in_place, plan), state, stop)
        # Test with the best weights (what best.pt holds, so `dl eval best.pt` reproduces it).
        best_path = ckpt_dir / "best.pt"
        if distributed.is_main() and best_path.exists():
            model.load_state_dict(torch.load(best_path, map_location=runtime.device, weights_only=True)["model"])
        distributed.broadcast_module(model)  # every rank tests rank 0's weights
        size = int(t.eval_batch_size)
        test = evaluate_split(model, task, "test", size, runtime, limit=eval_batches(t, task, "test", size))
        if not distributed.is_main():  # the rest writes the run's files: rank 0's job
            return {"device": str(runtime.device), "wall_time_s": 0.0, "best": {"value": state.best_value}}
        test.update(task.final_metrics(model))
        logger.log(state.step, state.epoch, "test", test)
        breakdown = task.breakdown(model)
        for path in task.write_outputs(model, run_dir):
            reporter.say(f"wrote: {path}")
    finally:
        logger.close()
    wall = time.perf_counter() - clock
    reporter.say("test (best checkpoint): " + "  ".join(f"test/{k} {v:.4g}" for k, v in test.items()))
    final = {f"{r['split']}/{k}": v for split in ("train", "val") for r in logger.epochs(split)[-1:]
             for k, v in r.items() if k not in ("step", "epoch", "split")}
    summary = {
        "model": model_name(cfg.model), "dataset": dataset_name(cfg.dataset), "kind": task.kind,
        "epochs": state.epoch, "steps": state.step, "stopped_by": stopped_by,
        "best": {"metric": str(t.monitor), "mode": str(t.mode), "value": state.best_value,
                 "epoch": state.best_epoch},
        "final": final, "test": {f"test/{k}": v for k, v in test.items()},
        "params": params, "wall_time_s": round(wall, 3), "device": str(runtime.device), **breakdown,
        "warnings": reporter.warnings,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if t.plots:
        for path in plot_run(run_dir, logger.rows, task, model, runtime, int(t.eval_batch_size)):
            reporter.say(f"plot: {path}")
    return summary


def dry_run(tcfg: DictConfig) -> DictConfig:
    """trainer.fast_dev_run: one epoch of one batch, one of val, one of test; no plots (run_job then removes the run
    dir: a dry run leaves nothing)."""
    return OmegaConf.merge(tcfg, {"epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1,
                                  "limit_test_batches": 1, "overfit_batches": 0, "plots": False})


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


def resume_state(where: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 runtime: Any, reporter: Reporter) -> LoopState:
    """A resume: the checkpoint's model, optimizer, scheduler, RNG and loop state, loaded in that order."""
    ckpt = load_checkpoint(where, map_location=runtime.device)
    load_states(ckpt, model, optimizer, scheduler, where)
    state = LoopState.from_dict(ckpt["best"])
    set_rng_state(ckpt["rng"])  # last: building the model drew from the RNG
    done = f", {state.batch} batches into epoch {state.epoch + 1}" if state.batch else ""
    reporter.say(f"resuming from {where} (epoch {state.epoch}, step {state.step}{done})")
    if not distributed.is_main():  # the epoch's stats so far (summed over ranks) are carried by rank 0
        state.partial = None
    return state


def load_states(ckpt: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                where: Any) -> None:
    """A resume's model, optimizer and scheduler state; a checkpoint that does not fit them is a UserError."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt["scheduler"] is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().endswith(":")]
        raise UserError(f"trainer.resume={where}: the checkpoint does not fit this run's model or optimizer "
                        f"({(lines or [type(e).__name__])[0][:160]}); resume with the run's own model and optimizer "
                        "settings, or start a new run (nothing was changed)") from None
