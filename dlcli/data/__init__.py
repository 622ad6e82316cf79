"""build_task(cfg.dataset) -> Task. One entry per dataset `name`; a task kind per file."""

from __future__ import annotations

import importlib
from typing import Any

import torch

from dlcli.data.task import Task
from dlcli.errors import UserError, choices

# name -> (module, builder function)
BUILDERS = {
    "spirals": ("dlcli.data.classification", "spirals"),
    "sine": ("dlcli.data.classification", "sine"),
    "shapes": ("dlcli.data.classification", "shapes"),
    "mnist": ("dlcli.data.images", "idx_dataset"),
    "fashion_mnist": ("dlcli.data.images", "idx_dataset"),
    "csv": ("dlcli.data.tabular", "csv_dataset"),
    "adding": ("dlcli.data.sequence", "adding"),
    "copy": ("dlcli.data.sequence", "copy"),
    "parity": ("dlcli.data.sequence", "parity"),
    "grammar": ("dlcli.data.language", "grammar"),
    "shakespeare": ("dlcli.data.language", "shakespeare"),
    "text": ("dlcli.data.language", "text_file"),
    "reverse": ("dlcli.data.pairs", "reverse"),
    "sort": ("dlcli.data.pairs", "sort"),
    "dates": ("dlcli.data.pairs", "dates"),
    "addition": ("dlcli.data.pairs", "addition"),
    "eng_fra": ("dlcli.data.translation", "eng_fra"),
    "pairs": ("dlcli.data.translation", "pairs_file"),
    "relations": ("dlcli.data.corpus", "relations"),
    "text8": ("dlcli.data.corpus", "text8"),
    "gutenberg": ("dlcli.data.corpus", "gutenberg"),
    "corpus": ("dlcli.data.corpus", "corpus_file"),
}


def check_dataset_config(cfg: Any) -> None:
    if cfg.name not in BUILDERS:
        raise UserError(f"dataset.name={cfg.name}: no such dataset{choices(cfg.name, BUILDERS)}")


def build_task(cfg: Any, loss_cfg: Any, device: torch.device, stored_meta: dict | None = None) -> Task:
    """stored_meta: a checkpoint's meta; data fitted at training time (CSV preprocessing) is reused, not refitted."""
    check_dataset_config(cfg)
    module, fn = BUILDERS[cfg.name]
    kwargs = {}
    if stored_meta and "preprocessing" in stored_meta:
        kwargs["preprocessing"] = stored_meta["preprocessing"]
    if stored_meta and stored_meta.get("kind") == "lm":
        kwargs["vocab"] = stored_meta["vocab"]  # token ids must mean what they meant in training
    if stored_meta and stored_meta.get("kind") == "seq2seq":
        kwargs["stored_meta"] = stored_meta  # the same for both vocabularies
    task = getattr(importlib.import_module(module), fn)(cfg, loss_cfg, **kwargs)
    task.meta["kind"] = task.kind  # models pick their head (many-to-one / many-to-many) from it
    for split in ("train", "val", "test"):
        if task.size(split) == 0:
            raise UserError(f"dataset={cfg.name}: the {split} split is empty; give it more examples")
    return task.to(device)
