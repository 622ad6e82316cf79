"""`dl eval CKPT... [key=value...]`: rebuild task and model from each checkpoint alone, evaluate one split."""

from __future__ import annotations

import json
from typing import Any

from dlcli.base.console import make_console, metrics_table
from dlcli.base.errors import UserError
from dlcli.base.targets import dataset_name, model_name
from dlcli.commands.restore import restore, restore_task
from dlcli.engine.evaluation import evaluate_split

SPLITS = ("train", "val", "test")


def evaluate_cli(paths: list[str], overrides: list[str], split: str = "test", as_json: bool = False) -> None:
    if split not in SPLITS:
        raise UserError(f"--split {split}: choose one of: {', '.join(SPLITS)}")
    if not paths:
        raise UserError("dl eval needs at least one checkpoint, e.g. outputs/runs/<run>/checkpoints/best.pt")
    results: list[dict[str, Any]] = []
    for path in paths:
        r = restore(path, overrides)
        task = restore_task(r)
        if as_json and hasattr(task, "show"):  # word vectors' example analogies: stdout holds the JSON only
            task.show = False
        metrics = evaluate_split(r.model, task, split, int(r.cfg.trainer.eval_batch_size), r.runtime)
        if split == "test":  # as at the end of training (e.g. the grammatical share of sampled sentences)
            metrics.update(task.final_metrics(r.model))
        results.append({"checkpoint": str(r.path) if as_json else f"{r.path.parent.parent.name}/{r.path.name}",
                        "model": model_name(r.cfg.model), "dataset": dataset_name(r.cfg.dataset),
                        "split": split, "epoch": r.ckpt.get("epoch"), "examples": task.size(split),
                        **{f"{split}/{k}": v for k, v in metrics.items()}})
    if as_json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
        return
    columns = []
    for row in results:
        columns += [k for k in row if k not in columns]
    make_console().print(metrics_table(f"dl eval --split {split}", results, columns))
