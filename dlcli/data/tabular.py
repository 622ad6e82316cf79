"""`dataset=csv`: a user's own table. Preprocessing is fitted on the train split and stored in meta (and so in the
checkpoint), so `dl eval` and `dl sample --input` transform new rows exactly as in training."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dlcli.base.errors import UserError
from dlcli.base.task import split_indices
from dlcli.data.classification import make_task
from dlcli.data.download import read_user_text

MISSING = {"", "na", "nan", "null", "none", "?"}
MAX_CLASSES_FOR_AUTO = 20


def read_csv(path: str | Path, delimiter: str = ",", what: str = "dataset.path") -> tuple[list[str], list[list[str]]]:
    """Header and data rows (blank lines skipped); every problem is one line naming the file and where."""
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise UserError(f"dataset.delimiter={delimiter!r}: one character, e.g. ',' or ';' or '\\t' (quote it: "
                        "dataset.delimiter=';')")
    text = read_user_text(path, what, encoding="utf-8-sig")  # -sig: Excel's byte-order mark
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    rows = []
    try:
        for r in reader:
            if any(c.strip() for c in r):
                rows.append(r)
    except csv.Error as e:  # a field over csv's limit (131072 characters: a quote never closed?), a stray NUL...
        raise UserError(f"{what}={path}: line {reader.line_num} does not read as CSV ({e}); a quote opened and "
                        "never closed?") from None
    if len(rows) < 2:
        raise UserError(f"{what}={path}: needs a header row and at least one data row (found {len(rows)} rows)")
    header = [h.strip() for h in rows[0]]
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise UserError(f"{what}={path}: the header names {', '.join(repr(h) for h in twice)} more than once; "
                        "give each column its own name")
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise UserError(f"{what}={path}: line {i} has {len(r)} fields, the header has {len(header)}")
    return header, [[c.strip() for c in r] for r in rows[1:]]


def check_cells(header: list[str], rows: list[list[str]], target: str, source: Any, training: bool = True) -> None:
    """Before any split: no inf/-inf in a column (nothing to standardise), a value in every target cell, more than
    one target value. Rows are counted after the header, blank lines skipped."""
    if target not in header:
        return  # fit_preprocessing names the columns there are
    j = header.index(target)
    for i, r in enumerate(rows, start=1):
        if r[j].lower() in MISSING:
            raise UserError(f"{source}: data row {i} has no value in the target column {target} ({r[j]!r}); "
                            "fill it in or drop the row")
        for name, v in zip(header, r):
            x = _number(v)
            if x is not None and not math.isfinite(x):
                raise UserError(f"{source}: data row {i}, column {name} holds {v!r}; use a finite number or leave "
                                "it empty (missing)")
    if training and len({r[j] for r in rows}) < 2:  # evaluating on rows of one class is fine
        raise UserError(f"{source}: the target column {target} holds one value ({rows[0][j]!r}) in all {len(rows)} "
                        "rows: there is nothing to learn")


def _number(v: str) -> float | None:
    if v.lower() in MISSING:
        return None
    try:
        return float(v)
    except ValueError:
        return None


def _is_numeric(values: list[str]) -> bool:
    present = [v for v in values if v.lower() not in MISSING]
    return bool(present) and all(_number(v) is not None for v in present)


def fit_preprocessing(header: list[str], rows: list[list[str]], cfg: Any) -> dict:
    """Decide the columns, their encodings and the target's; all plain data (it goes into the checkpoint)."""
    target = str(cfg.target)
    if target not in header:
        raise UserError(f"dataset.target={target}: no such column in {cfg.path}; columns: {', '.join(header)}")
    features = list(cfg.features) if cfg.get("features") else [h for h in header if h != target]
    if target in features:
        raise UserError(f"dataset.features lists the target column {target}: the model would be given the answer; "
                        "drop it from dataset.features")
    missing = [f for f in features if f not in header]
    if missing:
        raise UserError(f"dataset.features: no column(s) {', '.join(missing)} in {cfg.path}; "
                        f"columns: {', '.join(header)}")
    if not features:
        raise UserError(f"{cfg.path}: no feature columns besides the target {target}")
    columns = []
    for name in features:
        values = [r[header.index(name)] for r in rows]
        if _is_numeric(values):
            nums = [x for x in map(_number, values) if x is not None]
            mean = sum(nums) / len(nums)
            std = math.sqrt(sum((x - mean) ** 2 for x in nums) / len(nums)) or 1.0
            columns.append({"name": name, "type": "numeric", "mean": mean, "std": std})
        else:
            columns.append({"name": name, "type": "category",
                            "values": sorted({v for v in values if v.lower() not in MISSING})})
    y_values = [r[header.index(target)] for r in rows]
    kind = str(cfg.kind)
    if kind not in ("auto", "classify", "regress"):
        raise UserError(f"dataset.kind={kind}: choose one of: auto, classify, regress")
    numeric_target = _is_numeric(y_values)
    if kind == "auto":
        few_ints = numeric_target and len(set(y_values)) <= MAX_CLASSES_FOR_AUTO and all(
            _number(v) is not None and float(_number(v)).is_integer() for v in y_values)
        kind = "classify" if (not numeric_target or few_ints) else "regress"
    if kind == "regress" and not numeric_target:
        raise UserError(f"dataset.kind=regress but column {target} holds text values; use dataset.kind=classify")
    prep: dict[str, Any] = {"columns": columns, "target": target, "kind": kind}
    if kind == "classify":
        labels = set(y_values)
        prep["classes"] = sorted(labels, key=lambda v: (_number(v) is None, _number(v) or 0.0, v))
    else:
        ys = [float(v) for v in y_values]
        mean = sum(ys) / len(ys)
        prep["target_mean"] = [mean]
        prep["target_std"] = [math.sqrt(sum((v - mean) ** 2 for v in ys) / len(ys)) or 1.0]
    return prep


def encode_features(header: list[str], rows: list[list[str]], prep: dict, source: str = "") -> Tensor:
    """Rows -> float tensor: numeric columns standardised (missing -> mean), text columns one-hot."""
    cols = []
    for c in prep["columns"]:
        if c["name"] not in header:
            raise UserError(f"{source}: no column {c['name']} (the model was trained on: "
                            f"{', '.join(col['name'] for col in prep['columns'])})")
        j = header.index(c["name"])
        if c["type"] == "numeric":
            vals = []
            for r in rows:
                v = _number(r[j])
                if v is None and r[j].lower() not in MISSING:
                    raise UserError(f"{source}: column {c['name']} should be numeric, found {r[j]!r}")
                vals.append(0.0 if v is None else (v - c["mean"]) / c["std"])
            cols.append(torch.tensor(vals, dtype=torch.float32)[:, None])
        else:
            index = {v: i for i, v in enumerate(c["values"])}
            onehot = torch.zeros(len(rows), len(c["values"]))
            for i, r in enumerate(rows):
                if r[j] in index:
                    onehot[i, index[r[j]]] = 1.0
            cols.append(onehot)
    return torch.cat(cols, 1)


def encode_target(header: list[str], rows: list[list[str]], prep: dict, source: str) -> Tensor:
    j = header.index(prep["target"]) if prep["target"] in header else None
    if j is None:
        raise UserError(f"{source}: no target column {prep['target']}")
    values = [r[j] for r in rows]
    if prep["kind"] == "classify":
        index = {v: i for i, v in enumerate(prep["classes"])}
        unknown = sorted({v for v in values if v not in index})
        if unknown:
            raise UserError(f"{source}: label(s) {', '.join(unknown[:5])} of {prep['target']} were not in the "
                            f"training split (known: {', '.join(prep['classes'][:10])})")
        return torch.tensor([index[v] for v in values])
    try:
        return torch.tensor([float(v) for v in values], dtype=torch.float32)[:, None]
    except ValueError:
        raise UserError(f"{source}: target column {prep['target']} has a non-numeric or empty value") from None


def feature_size(prep: dict) -> int:
    return sum(1 if c["type"] == "numeric" else len(c["values"]) for c in prep["columns"])


def csv_dataset(cfg: Any, loss_cfg: Any, preprocessing: dict | None = None):
    for key in ("path", "target"):
        if cfg.get(key) in (None, "???") or str(cfg.get(key, "")).strip() == "":
            raise UserError(f"dataset=csv needs dataset.{key}=...; e.g. dl train dataset=csv "
                            "dataset.path=data.csv dataset.target=label")
    header, rows = read_csv(cfg.path, cfg.delimiter)
    check_cells(header, rows, str(cfg.target), cfg.path, training=preprocessing is None)
    if cfg.get("val_path") or cfg.get("test_path"):
        if not (cfg.get("val_path") and cfg.get("test_path")):
            raise UserError("give both dataset.val_path and dataset.test_path (or neither, to split by fraction)")
        parts = {"train": (header, rows)}
        for split, key in (("val", "val_path"), ("test", "test_path")):
            parts[split] = read_csv(cfg[key], cfg.delimiter, f"dataset.{key}")
    else:
        train_i, val_i, test_i = split_indices(len(rows), float(cfg.val_fraction), float(cfg.test_fraction),
                                               int(cfg.seed))
        if min(len(train_i), len(val_i), len(test_i)) == 0:
            raise UserError(f"dataset.path={cfg.path}: {len(rows)} rows is too few to split into train/val/test "
                            "with these fractions")
        parts = {s: (header, [rows[i] for i in idx.tolist()])
                 for s, idx in (("train", train_i), ("val", val_i), ("test", test_i))}
    prep = preprocessing or fit_preprocessing(header, parts["train"][1], cfg)
    xs, ys = [], []
    for split in ("train", "val", "test"):
        h, r = parts[split]
        source = f"{cfg.path if split == 'train' or not cfg.get('val_path') else cfg[split + '_path']}"
        xs.append(encode_features(h, r, prep, source))
        ys.append(encode_target(h, r, prep, source))
    x, y = torch.cat(xs), torch.cat(ys)
    sizes = [len(t) for t in xs]
    bounds = torch.tensor([0, *sizes]).cumsum(0)
    idx = tuple(torch.arange(int(bounds[i]), int(bounds[i + 1])) for i in range(3))
    meta = {"input_shape": [feature_size(prep)], "features": [c["name"] for c in prep["columns"]],
            "preprocessing": prep}
    if prep["kind"] == "classify":
        meta.update(num_classes=len(prep["classes"]), class_names=prep["classes"])
    else:
        meta.update(output_size=1, targets=[prep["target"]], target_mean=prep["target_mean"],
                    target_std=prep["target_std"])
    return make_task(prep["kind"], x, y, idx, meta, loss_cfg)


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"csv": csv_dataset}
