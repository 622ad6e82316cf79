"""One schema for the values users set: each key's type and range, declared once here and read by the one config
check (check.py) for train, sweeps and resume, and by eval/sample for the overrides they apply to a checkpoint's
stored config. Beyond the table: every number anywhere in a config must be finite (no NaN, no inf).

A value of the right type can still be meaningless (a negative clip norm makes gradient ascent, label smoothing 1.5
is no distribution): the ranges say what makes sense, and the error names the key, the value and the range."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dlcli.base.errors import UserError


@dataclass(frozen=True)
class Number:
    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False    # low itself excluded
    high_open: bool = False   # high itself excluded
    null: bool = False        # null allowed (off / the default)
    words: tuple[str, ...] = ()  # other values allowed (trainer.batch_size=full)
    length: int | None = None  # a list of this many such numbers (optimizer.betas)

    def describe(self) -> str:
        rng = ""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            rng = f" in {left}{_num(self.low)}, {_num(self.high)}{right}"
        elif self.low is not None:
            rng = f" {'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            rng = f" {'<' if self.high_open else '<='} {_num(self.high)}"
        one = "an integer" if self.integer else "a number"
        what = f"a list of {self.length} numbers, each{rng}" if self.length is not None else one + rng
        extras = [*self.words, *(["null"] if self.null else [])]
        return what + (f", or {' / '.join(extras)}" if extras else "")

    def problem(self, value: Any) -> str | None:
        """None if the value is allowed, else what is wrong with it."""
        if value is None:
            return None if self.null else "it cannot be null"
        if isinstance(value, str) and value in self.words:
            return None
        if self.length is not None:
            if not isinstance(value, (list, tuple, ListConfig)) or len(value) != self.length:
                return "wrong shape"
            return next((p for p in (self._one(v) for v in value) if p), None)
        return self._one(value)

    def _one(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "wrong type"
        if not math.isfinite(value):
            return "not finite"
        if self.integer and not isinstance(value, int):
            return "not an integer"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return "out of range"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return "out of range"
        return None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


POSITIVE_INT = Number(integer=True, low=1)
FRACTION = Number(low=0, high=1, high_open=True)  # [0, 1)
PROBABILITY = Number(low=0, high=1)
POSITIVE = Number(low=0, low_open=True)
NON_NEGATIVE = Number(low=0)

SCHEMA: dict[str, Number] = {  # checked in this order: dataset.* first, as trainer.epochs/batch_size follow them
    "dataset.val_fraction": FRACTION,
    "dataset.test_fraction": FRACTION,
    "dataset.block_size": POSITIVE_INT,
    "dataset.batch_size": Number(integer=True, low=1, words=("full",)),
    "dataset.epochs": Number(integer=True, low=1, high=100_000, words=("auto",)),  # auto: scaled to the data
    "dataset.augment.crop_padding": Number(integer=True, low=0, high=1024),  # dataset=image_folder, cifar10
    "trainer.epochs": Number(integer=True, low=1, high=100_000, words=("auto",)),  # auto: the budget, else the data
    "trainer.batch_size": Number(integer=True, low=1, words=("full",)),
    "trainer.eval_batch_size": POSITIVE_INT,
    "trainer.limit_train_batches": Number(low=0, low_open=True, null=True),  # an integer count or a fraction: loop.py
    "trainer.limit_val_batches": Number(low=0, low_open=True, null=True),
    "trainer.limit_test_batches": Number(low=0, low_open=True, null=True),
    "trainer.overfit_batches": Number(low=0, null=True),
    "trainer.max_time": Number(low=0, low_open=True, null=True),
    "trainer.clip_grad_norm": Number(low=0, low_open=True, null=True),
    "trainer.clip_grad_value": Number(low=0, low_open=True, null=True),
    "trainer.seed": Number(integer=True, low=0, high=2**32 - 1),
    "trainer.eval_every": POSITIVE_INT,
    "trainer.log_every_n_steps": POSITIVE_INT,
    "trainer.checkpoint_every": POSITIVE_INT,
    "trainer.early_stopping_patience": Number(integer=True, low=1, null=True),
    "trainer.min_delta": NON_NEGATIVE,
    "trainer.devices": Number(integer=True, low=1, high=1024),
    "trainer.lr_find_steps": Number(integer=True, low=10, high=100_000),
    "trainer.lr_find_min": POSITIVE,
    "trainer.lr_find_max": POSITIVE,
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.momentum": FRACTION,
    "optimizer.eps": POSITIVE,
    "optimizer.betas": Number(low=0, high=1, high_open=True, length=2),
    "optimizer.alpha": PROBABILITY,
    "optimizer.lr_decay": NON_NEGATIVE,
    "scheduler.warmup": NON_NEGATIVE,
    "scheduler.min_lr": NON_NEGATIVE,
    "scheduler.start_lr": Number(low=0, low_open=True, null=True),
    "scheduler.gamma": POSITIVE,
    "scheduler.factor": Number(low=0, high=1, low_open=True, high_open=True),
    "scheduler.step_size": POSITIVE_INT,
    "scheduler.patience": Number(integer=True, low=0),
    "scheduler.pct_start": Number(low=0, high=1, low_open=True, high_open=True),
    "loss.label_smoothing": FRACTION,
    "model.dropout": FRACTION,
    "model.word_dropout": FRACTION,
    "model.convs_per_block": Number(integer=True, low=1, high=16),  # model=cnn
}


# Keys that take one of a few values (not numbers): key -> its values. Words among them pass the composition's type
# check (compose.py WORD_VALUES) beside the default's type.
CHOICES: dict[str, tuple[Any, ...]] = {
    "trainer.lr_find": (False, True, "apply"),
    "model.embedding_projection": ("auto", True, False),  # pretrained vectors of another width (models/pretrained.py)
}


def check_schema(cfg: DictConfig, keys: dict[str, Number] | None = None) -> None:
    """Every key of SCHEMA the config has, in its range; every number in it finite. Raises UserError naming the
    first key that is not."""
    for key, rule in (keys or SCHEMA).items():
        try:
            value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        except Exception:  # ??? (mandatory, unset) or an interpolation to nowhere: the composition check says so
            continue
        if value is _ABSENT:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        problem = rule.problem(value)
        if problem:
            raise UserError(f"{key}={_show(value)}{_source(cfg, key)}: must be {rule.describe()}")
    _check_finite(cfg)
    fractions = [OmegaConf.select(cfg, k, default=0) or 0 for k in ("dataset.val_fraction", "dataset.test_fraction")]
    if sum(fractions) >= 1:
        raise UserError(f"dataset.val_fraction={fractions[0]} + dataset.test_fraction={fractions[1]} leave no "
                        "training data: together they must be < 1")
    if keys is None:
        _check_choices(cfg)
        _check_lr_find(cfg)


def _check_choices(cfg: DictConfig) -> None:
    for key, values in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        # by type too: 1 == True, and a quoted "true" is not the boolean
        if value is not _ABSENT and not any(type(value) is type(v) and value == v for v in values):
            raise UserError(f"{key}={_show(value)}{_source(cfg, key)}: must be {_either(values)}")


def _check_lr_find(cfg: DictConfig) -> None:
    """trainer.lr_find's sweep rises from lr_find_min to lr_find_max, on one process (engine/lr_find.py)."""
    low, high = (OmegaConf.select(cfg, f"trainer.lr_find_{k}", default=None) for k in ("min", "max"))
    if low is not None and high is not None and not low < high:
        raise UserError(f"trainer.lr_find_min={low} must be below trainer.lr_find_max={high}: the sweep rises from "
                        "the one to the other (defaults 1e-07 and 10)")
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    if OmegaConf.select(cfg, "trainer.lr_find", default=False) and devices > 1:
        raise UserError(f"trainer.lr_find with trainer.devices={devices}: the sweep runs on one process; find the "
                        "lr with trainer.devices=1 trainer.lr_find=true, then train with optimizer.lr=<the "
                        f"suggestion> trainer.devices={devices}")


def _either(values: tuple[Any, ...]) -> str:
    shown = [_show(v).lower() if isinstance(v, bool) else str(v) for v in values]
    return ", ".join(shown[:-1]) + " or " + shown[-1]


_ABSENT = object()


def _check_finite(node: Any, prefix: str = "", root: Any = None) -> None:
    """NaN or inf anywhere (optimizer.lr=inf, model.alpha=nan): no setting of dl means either."""
    if isinstance(node, DictConfig):
        for k in node.keys():
            try:
                child = node[k]
            except Exception:  # unresolved interpolation / mandatory value: not a number
                continue
            _check_finite(child, f"{prefix}{k}.", node if root is None else root)
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node):
            _check_finite(child, f"{prefix}{i}.", node if root is None else root)
    elif isinstance(node, float) and not math.isfinite(node):
        raise UserError(f"{prefix[:-1]}={node}{_source(root, prefix[:-1])}: must be a finite number")


def _source(cfg: Any, key: str) -> str:
    """' (from ${model.alpha})' when the key's value is an interpolation: the user set the key it points to."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if isinstance(parent, DictConfig) and OmegaConf.is_interpolation(parent, leaf):
        return f" (from {OmegaConf.to_container(parent, resolve=False)[leaf]})"
    return ""


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return "null" if value is None else str(value)


def ranges_help() -> str:
    """The schema as `dl train --help` shows it, one key a line."""
    width = max(map(len, [*SCHEMA, *CHOICES]))
    rules = {**{k: r.describe() for k, r in SCHEMA.items()}, **{k: _either(v) for k, v in CHOICES.items()}}
    lines = [f"  {key:<{width}}  {rule}" for key, rule in sorted(rules.items())]
    return ("\n== Value ranges (checked before anything runs; every number must also be finite) ==\n"
            + "\n".join(lines))
