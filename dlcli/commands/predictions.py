"""`dl sample CKPT --input rows.csv --out preds.csv`: a classifier's or regressor's predictions for every input, as
a file (CSV or JSON Lines by its extension; `--out -` or `--json`: standard output) instead of a table.

Each row starts with `id` (the input's data row, 1-based, or its image file), so predictions join back to the input.
Classifiers: `predicted`, its `probability`, then `prob_<class>` for every class. Regressors: `predicted`, or
`predicted_<i>` for several outputs. With test examples (no --input), `true` follows `id`.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dlcli.base.errors import UserError

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


PICTURES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # an image model's --out may instead be its picture grid


def is_predictions_file(out: str | None, images: bool) -> bool:
    """--out names a predictions file (or - for standard output), not an image model's picture."""
    return out is not None and not (images and Path(out).suffix.lower() in PICTURES)


def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's outputs for all inputs, batch by batch (memory bounded by the batch, not the file)."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)])


def rows(kind: str, outputs: torch.Tensor, ids: list, meta: dict, true: torch.Tensor | None) -> Iterator[dict]:
    """One dict per input: id, [true,] the prediction and (classifiers) every class's probability."""
    if kind == "classify":
        names = meta["class_names"]
        probs = outputs.softmax(-1)
        for i, p in enumerate(probs.tolist()):
            best = max(range(len(p)), key=p.__getitem__)
            row: dict[str, Any] = {"id": ids[i]}
            if true is not None:
                row["true"] = names[int(true[i])]
            row.update({"predicted": names[best], "probability": round(p[best], 6)})
            row.update({f"prob_{name}": round(q, 6) for name, q in zip(names, p)})
            yield row
        return
    values = outputs * torch.tensor(meta.get("target_std", [1.0])) + torch.tensor(meta.get("target_mean", [0.0]))
    for i, v in enumerate(values.tolist()):
        row = {"id": ids[i]}
        if true is not None:
            t = true[i].tolist()
            row.update({"true": t[0]} if len(t) == 1 else {f"true_{j}": a for j, a in enumerate(t)})
        row.update({"predicted": v[0]} if len(v) == 1 else {f"predicted_{j}": a for j, a in enumerate(v)})
        yield row


def write(out: str | None, as_json: bool, records: Iterator[dict]) -> Path | None:
    """Write the rows to `out` (format by extension) or standard output; returns the file written, if any."""
    if out in (None, "-"):
        _write(sys.stdout, "jsonl" if as_json else "csv", records)
        return None
    path = Path(out).expanduser()
    if path.is_dir():
        raise UserError(f"--out {out}: that is a directory; name a file, e.g. {out.rstrip('/')}/predictions.csv")
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"--out {out}: name a .csv or .jsonl file for the predictions (or - for standard output)")
    fmt = "jsonl" if as_json else FORMATS[path.suffix.lower()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            _write(f, fmt, records)
        tmp.replace(path)  # a run stopped halfway leaves the old file, not half a new one
    except OSError as e:
        raise UserError(f"--out {out}: cannot write it ({e.strerror})") from None
    return path


def _write(f: io.TextIOBase | Any, fmt: str, records: Iterator[dict]) -> None:
    writer = None
    for row in records:
        if fmt == "jsonl":
            f.write(json.dumps(row) + "\n")
            continue
        if writer is None:
            writer = csv.DictWriter(f, fieldnames=list(row))
            writer.writeheader()
        writer.writerow(row)
