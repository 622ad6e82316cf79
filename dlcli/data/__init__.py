"""build_task(cfg.dataset) -> Task. A task kind per file; each file declares the datasets it builds (DATASETS)."""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import torch
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

from dlcli.base.errors import UserError, choices, missing_key
from dlcli.base.targets import dataset_name, is_user_data
from dlcli.base.task import Task
from dlcli.data.user import user_task


@functools.cache
def builders() -> dict[str, Callable[..., Task]]:
    """Every built-in dataset's builder, from the DATASETS each data file declares (its kind and input are in its
    conf/dataset/NAME.yaml)."""
    found: dict[str, Callable[..., Task]] = {}
    for info in pkgutil.iter_modules(__path__):
        found.update(getattr(importlib.import_module(f"{__name__}.{info.name}"), "DATASETS", {}))
    return found


def check_dataset_config(cfg: Any) -> None:
    if is_user_data(cfg):  # the user's own data function (data/user.py): checked when it runs
        return
    if cfg.name not in builders():
        raise UserError(f"dataset.name={cfg.name}: no such dataset{choices(cfg.name, builders())}")


def build_task(cfg: Any, loss_cfg: Any, device: torch.device, stored_meta: dict | None = None) -> Task:
    """stored_meta: a checkpoint's meta; data fitted at training time (CSV preprocessing) is reused, not refitted."""
    check_dataset_config(cfg)
    kwargs = {}
    if stored_meta and "preprocessing" in stored_meta:
        kwargs["preprocessing"] = stored_meta["preprocessing"]
    if stored_meta and stored_meta.get("kind") == "lm":
        kwargs["vocab"] = stored_meta["vocab"]  # token ids must mean what they meant in training
    if stored_meta and stored_meta.get("kind") == "seq2seq":
        kwargs["stored_meta"] = stored_meta  # the same for both vocabularies
    try:
        task = user_task(cfg, loss_cfg) if is_user_data(cfg) else builders()[cfg.name](cfg, loss_cfg, **kwargs)
    except (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue) as e:  # a user's YAML without a key
        raise missing_key(e, "dataset", dataset_name(cfg)) from None
    task.meta["kind"] = task.kind  # models pick their head (many-to-one / many-to-many) from it
    for split in ("train", "val", "test"):
        if task.size(split) == 0:
            raise UserError(f"dataset={dataset_name(cfg)}: the {split} split is empty; give it more examples")
    return task.to(device)
