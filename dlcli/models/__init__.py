"""build_model(cfg.model, task.meta) -> nn.Module. A model family per file, declared once there (FAMILIES: how to
build it, the data it fits, one line about it); its settings in conf/model/NAME.yaml, its default dataset in
conf/dataset/auto/NAME.yaml. The fit check, dl train --help and the tests derive from these."""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from typing import Any

import torch
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue
from rich.table import Table
from torch import nn

from dlcli.base.errors import UserError, choices, missing_key
from dlcli.base.targets import is_user_model
from dlcli.models.family import Family
from dlcli.models.user import build_user_model


@functools.cache
def families() -> dict[str, Family]:
    """Every built-in family, from the FAMILIES each model file declares (adding one: its file and its YAML)."""
    found: dict[str, Family] = {}
    for info in pkgutil.iter_modules(__path__):
        found.update(getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILIES", {}))
    return found


def family(name: str) -> Family:
    found = families()
    if name not in found:
        raise UserError(f"model.name={name}: no such model{choices(name, found)}")
    return found[name]


def build_model(cfg: Any, meta: dict) -> nn.Module:
    build = build_user_model if is_user_model(cfg) else family(cfg.name).build
    try:
        return build(cfg, meta)
    except (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue) as e:  # a user's YAML without a key
        raise missing_key(e, "model", cfg.name) from None
    except (MemoryError, RuntimeError) as e:  # sizes far too large: the allocation fails (torch raises RuntimeError)
        if not isinstance(e, MemoryError) and "alloc" not in str(e).lower():
            raise
        asked = re.search(r"allocate (\d+) bytes", str(e))
        need = f"one of its tensors alone needs {int(asked[1]) / 1e9:,.1f} GB" if asked else "out of memory"
        raise UserError(f"model={cfg.name}: its weights do not fit in memory with these sizes ({need}); choose "
                        "smaller ones (dl train --cfg job shows them)") from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary_table(model: nn.Module, example: Any, title: str) -> tuple[Any, str]:
    """Keras-style summary: each leaf layer's output shape and parameter count (from one forward pass)."""
    rows: list[tuple[str, str, str, int]] = []
    hooks = []
    for name, module in model.named_modules():
        if list(module.children()) or not name:
            continue

        def hook(mod: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
            shape = "(" + ", ".join(["N", *map(str, out.shape[1:])]) + ")" if hasattr(out, "shape") else "-"
            rows.append((name, type(mod).__name__, shape, sum(p.numel() for p in mod.parameters(recurse=False))))

        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example) if isinstance(example, tuple) else model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    total = count_params(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    table = Table(title=title, title_justify="left", caption=f"params: {total:,} ({trainable:,} trainable)",
                  caption_justify="left")
    for col, justify in (("layer", "left"), ("type", "left"), ("output shape", "left"), ("params", "right")):
        table.add_column(col, justify=justify)
    for name, kind, shape, n in rows:
        table.add_row(name, kind, shape, f"{n:,}")
    text = "\n".join(f"{n:<24} {k:<14} {s:<20} {p:>10,}" for n, k, s, p in rows) + f"\nparams: {total:,}"
    return table, text
