"""`dl train`, one job: config -> task -> model -> optimizer -> loop -> test -> outputs. Read this file top to bottom."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dlcli.base.errors import UserError
from dlcli.base.targets import dataset_name, model_name
from dlcli.base.task import Task
from dlcli.config.check import check_config, check_data_fit, check_monitor
from dlcli.data import build_task
from dlcli.engine import distributed
from dlcli.engine.batches import epoch_cap, eval_batches, train_batch_size, train_batches
from dlcli.engine.checkpoint import atomic_save, load_checkpoint, make_checkpoint
from dlcli.engine.evaluation import evaluate_split
from dlcli.engine.in_place import choose_in_place
from dlcli.engine.logger import MetricsLogger, Reporter, SilentLogger
from dlcli.engine.loop import Training, fit
from dlcli.engine.lr_find import LRFind, find_lr, lr_keys, record_lr
from dlcli.engine.optim import Plan, build_optimizer, build_scheduler
from dlcli.engine.runtime import rng_state, set_rng_state, setup
from dlcli.engine.stopping import Interrupted, LoopState, StopRequest
from dlcli.engine.trackers import open_trackers
from dlcli.models import build_model, count_params, summary_table
from dlcli.models.pretrained import describe as describe_vectors
from dlcli.reports.plots import lr_find_plot, plot_run


def run(cfg: DictConfig, run_dir: Path, reporter: Reporter, stop: StopRequest | None = None,
        started: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train one model; write checkpoints, metrics, plots and summary.json under run_dir. `started` is called once
    everything is built and loaded, right before the first step (a resume records itself only then)."""
    check_config(cfg)
    t = dry_run(cfg.trainer) if cfg.trainer.get("fast_dev_run") else cfg.trainer
    runtime = setup(cfg)
    task = build_task(cfg.dataset, cfg.loss, runtime.device)
    check_data_fit(cfg, task)
    t = data_epochs(t, task)
    if t.resume and cfg.model.get("pretrained_embeddings"):  # the checkpoint holds the vectors: no file is read
        task.meta.update({k: v for k, v in load_checkpoint(t.resume)["meta"].items() if k == "pretrained"})
    model = build_model(cfg.model, task.meta).to(runtime.device)
    check_monitor(cfg, task, model)  # first forward (a user model's output shape): before the summary's own
    params = count_params(model)
    reporter.say(f"run dir: {run_dir}")
    reporter.say(f"data: {dataset_name(cfg.dataset)} ({task.kind}) train {task.size('train')} / "
                 f"val {task.size('val')} / test {task.size('test')} examples on {runtime.device}, "
                 f"precision {runtime.precision}")
    if task.loading:
        reporter.say(f"data: {task.loading}")
    for key, value in task.chosen.items():
        reporter.say(f"auto: {key}={value}")
    for line in describe_vectors(model, task):  # model.pretrained_embeddings: the size rule, the coverage
        reporter.say(line)
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
    found = None
    if t.get("lr_find") and t.resume:
        reporter.warn(f"trainer.lr_find={str(t.lr_find).lower()} is not run on a resume: the run goes on with the lr "
                      "it has")
    elif t.get("lr_find"):  # the lr range test from this start state, restored after it
        found = find_lr(train_model, task, optimizer, runtime, t, reporter, in_place)
        tell_lr_find(found, cfg, run_dir, reporter, bool(t.plots))
        if t.lr_find is True:  # the test alone: no training
            return lr_find_only(found, cfg, task, params, runtime, run_dir)
        optimizer = build_optimizer(cfg.optimizer, model, runtime.device)  # fresh: as if the lr were set by hand
        in_place = choose_in_place(task, model, optimizer, t, runtime)
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
                           resume_step=state.step if t.resume else None,
                           trackers=open_trackers(cfg, run_dir, bool(t.resume), reporter.say, reporter.warn)
                           ) if distributed.is_main() else SilentLogger()
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
        test = evaluate_split(model, task, "test", size, runtime,
                              limit=eval_batches(t, task, "test", size, state.eval_share))
        if not distributed.is_main():  # the rest writes the run's files: rank 0's job
            return {"device": str(runtime.device), "wall_time_s": 0.0, "best": {"value": state.best_value}}
        test.update(task.final_metrics(model))
        logger.log(state.step, state.epoch, "test", test)
        breakdown = task.breakdown(model)
        for path in task.write_outputs(model, run_dir):
            reporter.say(f"wrote: {path}")
    except BaseException as e:  # MLflow / W&B: how the run ended (run_job writes run.json)
        logger.end_trackers("interrupted" if isinstance(e, (Interrupted, KeyboardInterrupt)) else "failed")
        raise
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
        "warnings": reporter.warnings, **({"lr_find": found.summary()} if found else {}), "chosen": task.chosen,
        **({"pretrained": task.meta["pretrained"]} if "pretrained" in task.meta else {}),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if t.plots:
        for path in plot_run(run_dir, logger.rows, task, model, runtime, int(t.eval_batch_size)):
            reporter.say(f"plot: {path}")
    logger.end_trackers("completed")  # with the plots and summary.json just written
    return summary


def data_epochs(tcfg: DictConfig, task: Task) -> DictConfig:
    """trainer.epochs=auto with no time budget: the data decides how many (Task.auto_epochs), said in task.chosen."""
    if str(tcfg.epochs) != "auto" or tcfg.max_time:
        return tcfg
    epochs, why = task.auto_epochs()
    task.chosen["trainer.epochs"] = f"{epochs} ({why})"
    return OmegaConf.merge(tcfg, {"epochs": epochs})


def tell_lr_find(found: LRFind, cfg: DictConfig, run_dir: Path, reporter: Reporter, plots: bool) -> None:
    """trainer.lr_find's outputs: lr_find.json, plots/lr_find.png and one line; with apply, the run's config takes
    the suggestion (record_lr: checkpoints, Hydra's record, a resume)."""
    found.write(run_dir)
    keys = lr_keys(cfg)
    was = float(OmegaConf.select(cfg, keys[-1]))  # the lr the run starts from (word2vec: scheduler.start_lr)
    if plots:
        path = lr_find_plot(found, was, run_dir / "plots" / "lr_find.png", f"lr range test: {run_dir.name}")
        reporter.say(f"plot: {path}")
    apply = cfg.trainer.lr_find == "apply"
    if found.suggested_lr is None:
        reporter.warn(f"lr_find: no suggestion, the smoothed loss did not fall, or was lowest within the first decade "
                      f"({found.describe()}; see lr_find.json); "
                      + ("training with the configured lr" if apply else "widen trainer.lr_find_min/lr_find_max"))
        return
    setting = " ".join(f"{key}={found.suggested_lr:.1e}" for key in keys)
    said = f"lr_find: suggested {setting} ({found.method}: {found.describe()}; was {was:.3g})"
    if apply:
        hydra_dir = HydraConfig.get().output_subdir
        record_lr(cfg, found.suggested_lr, run_dir / hydra_dir if hydra_dir else None)
        reporter.say(f"{said}; training with it from the same start state")
        return
    rest = [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith("trainer.lr_find")
            and o.split("=", 1)[0].lstrip("+~") not in keys]
    reporter.say(f"{said}; no training was done. Train with it: {' '.join(['dl', 'train', *rest, setting])}")


def lr_find_only(found: LRFind, cfg: DictConfig, task: Task, params: int, runtime: Any,
                 run_dir: Path) -> dict[str, Any]:
    """trainer.lr_find=true: the run is the test alone; summary.json says so (no epochs, no metrics)."""
    t = cfg.trainer
    summary = {"model": model_name(cfg.model), "dataset": dataset_name(cfg.dataset), "kind": task.kind, "epochs": 0,
               "steps": 0, "stopped_by": "lr_find", "final": {}, "test": {}, "params": params,
               "best": {"metric": str(t.monitor), "mode": str(t.mode), "value": None, "epoch": None},
               "wall_time_s": round(found.seconds, 3), "device": str(runtime.device), "lr_find": found.summary()}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def dry_run(tcfg: DictConfig) -> DictConfig:
    """trainer.fast_dev_run: one epoch of one batch, one of val, one of test, an lr range test of 10 steps; no plots
    (run_job then removes the run dir: a dry run leaves nothing)."""
    return OmegaConf.merge(tcfg, {"epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1,
                                  "limit_test_batches": 1, "overfit_batches": 0, "plots": False,
                                  "lr_find_steps": 10})


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
