"""`dl eval CKPT... [key=value...]`: rebuild task and model from each checkpoint alone, evaluate one split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dlcli.checkpoint import load_checkpoint, resolve_path
from dlcli.data import build_task
from dlcli.data.task import Task
from dlcli.errors import UserError
from dlcli.loop import evaluate_split
from dlcli.metrics import make_console, metrics_table
from dlcli.models import build_model
from dlcli.runtime import Runtime, resolve_device, resolve_precision

SPLITS = ("train", "val", "test")


@dataclass
class Restored:
    path: Path
    ckpt: dict
    cfg: DictConfig
    model: torch.nn.Module
    runtime: Runtime


def stored_config(ckpt: dict, overrides: list[str]) -> DictConfig:
    """The checkpoint's config with key=value overrides applied; `device=cpu` picks a device by name."""
    cfg = OmegaConf.create(ckpt["config"])
    for item in overrides:
        key, _, value = item.partition("=")
        if not key or not _:
            raise UserError(f"{item}: overrides are key=value, e.g. device=cpu or dataset.path=new.csv")
        if key == "device":
            cfg.device = {"name": value}
            continue
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            raise UserError(f"{item}: the checkpoint's config has no key '{key}' (keys: "
                            f"{', '.join(sorted(k for k in cfg.keys()))}, e.g. dataset.path, trainer.eval_batch_size)")
        OmegaConf.update(cfg, key, OmegaConf.select(OmegaConf.from_dotlist([item]), key), merge=False)
    return cfg


def restore(path: str | Path, overrides: list[str]) -> Restored:
    """Checkpoint -> config + model with its weights, on the requested device, in eval mode."""
    p = resolve_path(path)
    ckpt = load_checkpoint(p)
    cfg = stored_config(ckpt, overrides)
    device = resolve_device(cfg.device)
    runtime = Runtime(device, resolve_precision(cfg.trainer.precision, device))
    model = build_model(cfg.model, ckpt["meta"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{p}: the weights do not fit a {cfg.model.name} built from its own config "
                        f"({str(e).splitlines()[0][:100]})") from None
    return Restored(p, ckpt, cfg, model.to(device).eval(), runtime)


def restore_task(r: Restored) -> Task:
    task = build_task(r.cfg.dataset, r.cfg.loss, r.runtime.device, stored_meta=r.ckpt["meta"])
    want, got = r.ckpt["meta"].get("input_shape"), task.meta.get("input_shape")
    if want != got or task.meta.get("num_classes") != r.ckpt["meta"].get("num_classes"):
        raise UserError(f"{r.path}: the data ({got}, {task.meta.get('num_classes')} classes) does not match what "
                        f"the model was trained on ({want}, {r.ckpt['meta'].get('num_classes')} classes)")
    return task


def evaluate_cli(paths: list[str], overrides: list[str], split: str = "test", as_json: bool = False) -> None:
    if split not in SPLITS:
        raise UserError(f"--split {split}: choose one of: {', '.join(SPLITS)}")
    if not paths:
        raise UserError("dl eval needs at least one checkpoint, e.g. outputs/runs/<run>/checkpoints/best.pt")
    results: list[dict[str, Any]] = []
    for path in paths:
        r = restore(path, overrides)
        task = restore_task(r)
        metrics = evaluate_split(r.model, task, split, int(r.cfg.trainer.eval_batch_size), r.runtime)
        if split == "test":  # as at the end of training (e.g. the grammatical share of sampled sentences)
            metrics.update(task.final_metrics(r.model))
        results.append({"checkpoint": str(r.path) if as_json else f"{r.path.parent.parent.name}/{r.path.name}", "model": r.cfg.model.name, "dataset": r.cfg.dataset.name,
                        "split": split, "epoch": r.ckpt.get("epoch"), "examples": task.size(split),
                        **{f"{split}/{k}": v for k, v in metrics.items()}})
    if as_json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
        return
    columns = []
    for row in results:
        columns += [k for k in row if k not in columns]
    make_console().print(metrics_table(f"dl eval --split {split}", results, columns))
