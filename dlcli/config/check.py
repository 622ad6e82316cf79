"""Is this composed config valid? Everything that can be checked before any data is read (check_config), and the
one check that needs the task and model built (check_monitor). Used by train, sweeps and resume alike."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from omegaconf import DictConfig

from dlcli.base.errors import UserError
from dlcli.base.targets import is_user_data, is_user_model
from dlcli.config.listing import dataset_shapes
from dlcli.config.schema import check_schema
from dlcli.data import check_dataset_config
from dlcli.engine import distributed
from dlcli.engine.batches import batch_limit
from dlcli.engine.optim import check_optimizer, check_scheduler
from dlcli.engine.runtime import resolve_device
from dlcli.engine.trackers import check_trackers
from dlcli.models import families, family

MODES = ("min", "max")


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked before any data is read; raises UserError."""
    check_dataset_config(cfg.dataset)
    # a model or data of the user's own: checked once built (check_output, check_data_fit)
    if not is_user_model(cfg.model) and not is_user_data(cfg.dataset):
        check_fit(cfg.model.name, cfg.dataset)
    check_schema(cfg)  # types and ranges of the values users set (schema.py), every number finite
    check_optimizer(cfg.optimizer)
    check_scheduler(cfg.scheduler)
    t = cfg.trainer
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "overfit_batches"):
        batch_limit(t.get(key), 1, key)  # an integer count or a fraction in (0, 1]: before any data is read
    if "/" not in str(t.monitor) or str(t.monitor).split("/")[0] not in ("train", "val"):
        raise UserError(f"trainer.monitor={t.monitor}: name a logged metric as split/name, e.g. val/loss or val/acc")
    if t.mode not in MODES:
        raise UserError(f"trainer.mode={t.mode}: choose min or max")
    if cfg.logger.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("logger=tensorboard needs the tensorboard package: pip install 'dlcli[tensorboard]' "
                        "(or use logger=default)")
    check_trackers(cfg.logger)  # logger=mlflow / wandb: the package is there
    distributed.check_devices(t.get("devices", 1), resolve_device(cfg.device))


def check_monitor(cfg: DictConfig, task: Any, model: torch.nn.Module) -> None:
    """trainer.monitor must name a metric this task logs (checked on a tiny batch, before any training)."""
    split, name = str(cfg.trainer.monitor).split("/", 1)
    model.eval()
    with torch.no_grad():
        batch = next(task.batches("val", 2))
        if is_user_model(cfg.model):
            check_output(cfg.model, task, model, batch)
        names = list(task.summarize(task.step(model, batch)[1]))
    model.train()
    if split == "train":  # what a training step logs: not the metrics only evaluation measures (macro_f1, exact...)
        names = [n for n in names if n not in task.eval_only_stats]
    else:
        names += task.eval_metric_names
    if name not in names:
        raise UserError(f"trainer.monitor={cfg.trainer.monitor}: this {task.kind} task logs "
                        f"{', '.join(f'{split}/{n}' for n in names)}")


def datasets_for(model: str) -> list[str]:
    return [name for name, shape in dataset_shapes().items() if shape in family(model).fits]


def check_fit(model_name: str, dataset_cfg: Any) -> None:
    """The model family can learn the dataset's (kind, input), or one line listing the datasets it can."""
    fits = family(model_name).fits
    pair = (dataset_cfg.get("kind"), dataset_cfg.get("input"))
    if pair not in fits:
        raise UserError(f"model={model_name} does not fit dataset={dataset_cfg.name} (a {pair[0]} task on "
                        f"{pair[1]} inputs); datasets for {model_name}: {', '.join(datasets_for(model_name))}")


def expected_output(task: Any, x: torch.Tensor) -> tuple[tuple[int, ...], str]:
    """The output shape a model must give for inputs x on this task, and the contract in words."""
    meta, n = task.meta, len(x)
    if task.kind == "classify":
        return (n, int(meta["num_classes"])), "inputs -> logits (N, num_classes)"
    if task.kind == "regress":
        return (n, int(meta["output_size"])), "inputs -> predictions (N, output_size)"
    if task.kind == "tag":
        return (n, x.shape[1], int(meta["num_classes"])), "ids (N, T) -> logits (N, T, num_classes)"
    return (n, x.shape[1], int(meta["vocab_size"])), "ids (N, T) -> next-token logits (N, T, vocab_size)"


def check_output(model_cfg: Any, task: Any, model: torch.nn.Module, batch: tuple) -> None:
    """A model of the user's own meets the task kind's forward contract (one line if it does not)."""
    target = model_cfg._target_
    x = batch[0]
    want, contract = expected_output(task, x)
    try:
        out = model(x)
    except Exception as e:
        raise UserError(f"model._target_={target}: its forward failed on a batch of this {task.kind} task "
                        f"(input {tuple(x.shape)} {x.dtype}): {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]}; the contract: {contract}") from None
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != want:
        raise UserError(f"model._target_={target}: for input {tuple(x.shape)} it returned {got}, this {task.kind} "
                        f"task needs {want} ({contract})")


def check_data_fit(cfg: DictConfig, task: Any) -> None:
    """A built-in model on the user's own data: the (kind, input) the data turned out to be must be one it fits."""
    if is_user_model(cfg.model) or not is_user_data(cfg.dataset):
        return
    shape = task.meta.get("input_shape") or []
    pair = (task.kind, {1: "vector", 3: "image"}.get(len(shape), "?"))
    if pair not in family(cfg.model.name).fits:
        raise UserError(f"model={cfg.model.name} does not fit dataset._target_={cfg.dataset._target_}: its data is a "
                        f"{pair[0]} task on {pair[1]} inputs {tuple(shape)}; models for that: "
                        f"{', '.join(m for m, f in families().items() if pair in f.fits) or 'none built in'}")
