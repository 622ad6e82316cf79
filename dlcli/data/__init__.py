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
from dlcli.base.task import Task


@functools.cache
def builders() -> dict[str, Callable[..., Task]]:
    """Every built-in dataset's builder, from the DATASETS each data file declares (its kind and input are in its
    conf/dataset/NAME.yaml)."""
    found: dict[str, Callable[..., Task]] = {}
    for info in pkgutil.iter_modules(__path__):
        found.update(getattr(importlib.import_module(f"{__name__}.{info.name}"), "DATASETS", {}))
    return found


def check_dataset_config(cfg: Any) -> None:
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
        task = builders()[cfg.name](cfg, loss_cfg, **kwargs)
    except (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue) as e:  # a user's YAML without a key
        raise missing_key(e, "dataset", cfg.name) from None
    task.meta["kind"] = task.kind  # models pick their head (many-to-one / many-to-many) from it
    for split in ("train", "val", "test"):
        if task.size(split) == 0:
            raise UserError(f"dataset={cfg.name}: the {split} split is empty; give it more examples")
    return task.to(device)
