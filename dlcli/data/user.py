"""The user's own data, named by `_target_` in a dataset YAML:

    # myconf/dataset/blobs.yaml
    _target_: mydata.load         # returns {"train": (inputs, targets), "val": ..., "test": ...}
    kind: classify                # classify | regress (left out: integer targets classify, others regress)
    n: 3000                       # anything that is not one of dl's own keys goes to the function

A split is (inputs, targets) as tensors, NumPy arrays or lists, or a map-style torch Dataset of (input, target)
items. Missing val/test splits are cut from train (seeded). Inputs are (N, features) or images (N, C, H, W);
the number of classes and the input shape are read from the data.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

from dlcli.base.errors import UserError
from dlcli.base.targets import import_target
from dlcli.base.task import Task, split_indices
from dlcli.data.classification import make_task

# dl's own keys in a dataset YAML; everything else is the data function's. (epochs and batch_size default in
# conf/trainer/default.yaml, the split fractions here.)
OWN_KEYS = {"_target_", "name", "kind", "input", "epochs", "batch_size", "val_fraction", "test_fraction", "seed"}
FRACTION = 0.1  # of train, cut for val and for test when the function gives them not
KINDS = ("classify", "regress")
SPLITS = ("train", "val", "test")


def user_task(cfg: Any, loss_cfg: Any) -> Task:
    target = str(cfg._target_)
    where = f"dataset._target_={target}"
    fn = import_target(target, "dataset._target_")
    keys = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in OWN_KEYS}
    if "seed" in inspect.signature(fn).parameters and "seed" not in keys:
        keys["seed"] = int(cfg.get("seed", 0))
    try:
        got = fn(**keys)
    except Exception as e:
        raise UserError(f"{where}: calling it failed: {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]}") from None
    if not isinstance(got, dict) or "train" not in got or set(got) - set(SPLITS):
        raise UserError(f"{where}: it returned {type(got).__name__}"
                        f"{' with keys ' + ', '.join(map(str, got)) if isinstance(got, dict) else ''}; return a dict "
                        "{'train': (inputs, targets)} with 'val' and 'test' if you have them")
    splits = {s: _pair(got[s], s, where) for s in SPLITS if s in got}
    kind = _kind(cfg, splits["train"][1], where)
    x = torch.cat([splits[s][0] for s in splits])
    y = torch.cat([splits[s][1] for s in splits])
    sizes = {s: len(splits[s][0]) for s in splits}
    idx = _split_indices(cfg, sizes, where)
    if x.dim() not in (2, 4):
        raise UserError(f"{where}: inputs of shape {tuple(x.shape)}; dl takes (N, features) or images (N, C, H, W)")
    meta: dict[str, Any] = {"input_shape": list(x.shape[1:]), "source": target}
    if kind == "classify":
        y = _class_ids(y, where)
        classes = int(y.max()) + 1
        if classes < 2:
            raise UserError(f"{where}: every target is class 0: there is nothing to learn")
        meta.update(num_classes=classes, class_names=[str(i) for i in range(classes)])
    else:
        y = y.float().reshape(len(y), -1)
        train_y = y[idx[0]]
        meta.update(output_size=y.shape[1], target_mean=train_y.mean(0).tolist(),
                    target_std=[s or 1.0 for s in train_y.std(0, unbiased=False).tolist()])
    return make_task(kind, x.float(), y, idx, meta, loss_cfg)


def _pair(split: Any, name: str, where: str) -> tuple[Tensor, Tensor]:
    """(inputs, targets) as tensors, checked: as many of each, some, all finite."""
    if isinstance(split, torch.utils.data.Dataset) and hasattr(split, "__len__"):
        items = [split[i] for i in range(len(split))]
        if not items or not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
            raise UserError(f"{where}: its {name} Dataset must hold (input, target) items")
        x = torch.stack([_tensor(a, name, where) for a, _ in items])
        y = torch.stack([_tensor(b, name, where).reshape(-1) for _, b in items]).squeeze(-1)
    elif isinstance(split, (tuple, list)) and len(split) == 2:
        x, y = (_tensor(v, name, where) for v in split)
    else:
        raise UserError(f"{where}: its {name} split is a {type(split).__name__}; give (inputs, targets) or a "
                        "map-style torch Dataset")
    if len(x) != len(y):
        raise UserError(f"{where}: its {name} split has {len(x)} inputs but {len(y)} targets")
    if len(x) == 0:
        raise UserError(f"{where}: its {name} split is empty")
    for what, t in (("inputs", x), ("targets", y)):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).reshape(len(t), -1).any(1).nonzero()[0, 0])
            raise UserError(f"{where}: its {name} {what} hold NaN or inf (row {bad}); clean or drop those rows")
    return x, y


def _tensor(v: Any, name: str, where: str) -> Tensor:
    try:
        t = torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{where}: its {name} split holds {type(v).__name__} values that are not numbers "
                        f"({str(e).splitlines()[0][:100]})") from None
    if t.dtype == torch.bool:
        t = t.long()
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise UserError(f"{where}: its {name} split holds {t.dtype} values; give numbers")
    return t


def _kind(cfg: Any, y: Tensor, where: str) -> str:
    kind = cfg.get("kind")
    if kind is None:
        return "classify" if not y.is_floating_point() else "regress"
    if kind not in KINDS:
        raise UserError(f"dataset.kind={kind}: a data function's task is one of: {', '.join(KINDS)}")
    return str(kind)


def _class_ids(y: Tensor, where: str) -> Tensor:
    if y.dim() != 1:
        raise UserError(f"{where}: classify targets are one class id per example, shape (N,); got {tuple(y.shape)}")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise UserError(f"{where}: classify targets must be class ids 0..C-1; got fractions (dataset.kind=regress?)")
    y = y.long()
    if int(y.min()) < 0:
        raise UserError(f"{where}: classify targets must be class ids 0..C-1; got {int(y.min())}")
    return y


def _split_indices(cfg: Any, sizes: dict[str, int], where: str) -> tuple[Tensor, Tensor, Tensor]:
    """Index sets into the concatenated splits; val/test the function did not give are cut from train, seeded."""
    start = {s: sum(list(sizes.values())[:i]) for i, s in enumerate(sizes)}
    own = {s: torch.arange(start[s], start[s] + n) for s, n in sizes.items()}
    missing = [s for s in ("val", "test") if s not in sizes]
    if missing:
        fractions = {s: float(cfg.get(f"{s}_fraction", FRACTION)) if s in missing else 0.0 for s in ("val", "test")}
        train, val, test = split_indices(sizes["train"], fractions["val"], fractions["test"],
                                         int(cfg.get("seed", 0)))
        for s, part in (("val", val), ("test", test)):
            if s in missing:
                own[s] = part
        own["train"] = train
        if min(len(own[s]) for s in SPLITS) == 0:
            raise UserError(f"{where}: {sizes['train']} training examples are too few to cut "
                            f"{' and '.join(missing)} from (dataset.val_fraction/test_fraction); give more, or the "
                            "splits themselves")
    return own["train"], own["val"], own["test"]

