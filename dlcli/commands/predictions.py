"""`dl sample CKPT ... --out FILE`: every prediction or generation as a file (CSV or JSON Lines by its extension;
`--out -` or `--json`: standard output) instead of a table, written row by row as it is made.

Each row starts with `id`, so rows join back to the input: a CSV's data row or an input file's line (1-based), an
image file, or a test example ("test #i"). Classifiers: `predicted`, its `probability`, then `prob_<class>` for every
class. Regressors: `predicted`, or `predicted_<i>` for several outputs. With test examples (no --input), `true` follows
`id`. The generating kinds' rows are made by sample_text.py (LMs), sample_seq2seq.py and sample_embeddings.py.

Input files are read as a stream (`lines`), `chunked` into batches: memory stays the same for any length of input.
Without --out/--json, classifiers' predictions are a table instead (`show_classes`: the --top-k likeliest classes).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.table import Table

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.data.download import user_path

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
PICTURES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # an image model's --out may instead be its picture grid
TEXT_FILES = (".txt", ".tsv", ".csv", ".text")  # an --input ending so that is not there: a missing file, not a text
T = TypeVar("T")


def is_predictions_file(out: str | None, images: bool) -> bool:
    """--out names a predictions file (or - for standard output), not an image model's picture."""
    return out is not None and not (images and Path(out).suffix.lower() in PICTURES)


def wanted(out: str | None, as_json: bool, images: bool = False) -> bool:
    """Rows (to a file or standard output) rather than tables on the terminal."""
    return as_json or is_predictions_file(out, images)


def format_of(out: str | None, as_json: bool) -> str:
    """'csv' or 'jsonl': --json wins, then --out's extension; standard output is CSV unless --json."""
    if as_json or out in (None, "-"):
        return "jsonl" if as_json else "csv"
    return FORMATS[Path(out).suffix.lower()]


def check_out(out: str | None, force: bool) -> None:
    """Before any work: --out names a .csv or .jsonl file that may be written (one that exists: only with --force)."""
    if out in (None, "-"):
        return
    path = Path(out).expanduser()
    if path.is_dir():
        raise UserError(f"--out {out}: that is a directory; name a file, e.g. {out.rstrip('/')}/predictions.csv")
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"--out {out}: name a .csv or .jsonl file for the predictions (or - for standard output)")
    if path.exists() and not force:
        raise UserError(f"--out {out}: the file exists; add --force to replace it, or name another file "
                        "(nothing was written)")


# ------------------------------------------------------------------------------------------------------ input
def lines(path: str, what: str) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a UTF-8 text file (`-`: standard input) with their 1-based line numbers, read as a
    stream: one line in memory at a time. Missing, a directory, unreadable, not UTF-8: one line each."""
    if path == "-":
        yield from ((n, text.rstrip("\r\n")) for n, text in enumerate(sys.stdin, 1) if text.strip())
        return
    p = user_path(path, what)
    try:
        with open(p, "rb") as f:  # decoded line by line: an error names its line
            for n, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8-sig" if n == 1 else "utf-8")  # -sig: a Notepad byte-order mark
                except UnicodeDecodeError:
                    raise UserError(f"{what}={path}: line {n} is not UTF-8 text; save the file as UTF-8") from None
                if text.strip():
                    yield n, text.rstrip("\r\n")
    except OSError as e:
        raise UserError(f"{what}={path}: cannot read it ({e.strerror})") from None


def scan(path: str, what: str, check: Callable[[int, str], Any] | None = None) -> int:
    """Read a file once before any work: each line checked (check(line_number, text) raises on a bad one), the
    lines counted (the progress bar's total). An empty file is an error."""
    count = 0
    for n, text in lines(path, what):
        if check is not None:
            check(n, text)
        count += 1
    if count == 0:
        raise UserError(f"{what}={path}: the file has no lines to read (it is empty or blank)")
    return count


def names_a_file(text: str) -> bool:
    """--input FILE (or - for stdin) rather than a text: it exists, or ends like a text file's name."""
    if not text.strip():
        return False
    try:
        exists = Path(text).expanduser().exists()
    except (OSError, ValueError):  # a sentence longer than a file name may be
        exists = False
    return text == "-" or exists or text.lower().endswith(TEXT_FILES)


def text_inputs(input_text: str | None, check: Callable[[int, str], Any] | None = None,
                ) -> tuple[Iterable[tuple[int, str, str]], int | None] | None:
    """The texts a user gave, as (id, text, how an error names it): --input TEXT (id 1), the lines of --input FILE
    (a first pass runs check(line_number, text) on each and counts them) or of stdin (--input -, or lines piped in);
    and how many (None: not known before the end, as on stdin). None when no text was given: show test examples."""
    if input_text is not None and names_a_file(input_text):
        if input_text == "-":
            return ((n, text, f"stdin line {n}") for n, text in lines("-", "--input")), None
        where = f"--input={input_text}"
        total = scan(input_text, "--input", check)
        return ((n, text, f"{where} line {n}") for n, text in lines(input_text, "--input")), total
    if input_text is not None:
        return [(1, input_text, "--input")], 1
    if sys.stdin is not None and not sys.stdin.isatty():  # lines piped in; none (e.g. /dev/null): test examples
        piped = lines("-", "stdin")
        first = next(piped, None)
        if first is not None:
            return ((n, text, f"stdin line {n}") for n, text in itertools.chain([first], piped)), None
    return None


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to `size` items, read from `items` only as each list is needed."""
    it = iter(items)
    while chunk := list(itertools.islice(it, max(1, size))):
        yield chunk


# ----------------------------------------------------------------------------------------- classifiers, regressors
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


def show_classes(title: str, probs: torch.Tensor, names: list[str], top_k: int, columns: dict[str, list[str]],
                 true: list[int] | None = None) -> None:
    """Classifier predictions as a table on the terminal: the columns that name each input (its id, its text...),
    [its true class,] the predicted class (✓/✗ against the true one), its probability and the next likeliest
    classes, top_k classes in all (at most every class); then how many are right."""
    k = max(1, min(top_k, len(names)))
    table = Table(title=title, title_justify="left")
    for col in (*columns, *(["true"] if true is not None else []), "predicted", "probability",
                *([{2: "runner-up"}.get(k, "runners-up")] if k > 1 else [])):
        table.add_column(col)
    for i, p in enumerate(probs):
        top = p.topk(k)
        best = int(top.indices[0])
        cells = [values[i] for values in columns.values()]
        if true is not None:
            cells.append(names[true[i]])
        mark = "" if true is None else " ✓" if best == true[i] else " ✗"
        cells += [names[best] + mark, f"{float(top.values[0]):.3f}"]
        if k > 1:
            cells.append(", ".join(f"{names[int(j)]} {float(q):.3f}" for j, q in zip(top.indices[1:], top.values[1:])))
        table.add_row(*cells)
    console = make_console()
    console.print(table)
    if true is not None:
        console.print(f"{sum(int(p.argmax()) == t for p, t in zip(probs, true))}/{len(true)} correct")


# ------------------------------------------------------------------------------------------------------ output
def write_rows(out: str | None, as_json: bool, records: Iterable[dict], total: int | None = None,
               what: str = "predictions") -> int:
    """write(), and the one line that says where the rows went (on stderr: stdout holds only rows)."""
    written, count = write(out, as_json, records, total, what)
    if written is not None:
        make_console(stderr=True).print(f"{what}: {written} ({count} rows)", highlight=False)
    return count


def write(out: str | None, as_json: bool, records: Iterable[dict], total: int | None = None,
          what: str = "rows") -> tuple[Path | None, int]:
    """Write each row as it comes (format by --out's extension, or --json) to `out` or standard output; returns
    the file written, if any, and the number of rows. A file is written whole or not at all: rows go to a temporary
    file beside it that replaces it at the end, and is removed if anything stops the run halfway."""
    fmt = format_of(out, as_json)
    if out in (None, "-"):
        with _progress(total, what, to_stdout=True) as tick:
            return None, _write_stdout(fmt, records, tick)
    check_out(out, force=True)
    path = Path(out).expanduser()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(tmp, "w", newline="", encoding="utf-8")
    except OSError as e:
        raise UserError(f"--out {out}: cannot write it ({e.strerror})") from None
    try:
        with f, _progress(total, what, to_stdout=False) as tick:
            count = _write(f, fmt, records, tick)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"--out {out}: cannot write it ({e.strerror})") from None
    except BaseException:  # a bad input line, Ctrl-C: the old file (or none) stays, not half a new one
        tmp.unlink(missing_ok=True)
        raise
    return path, count


def _write_stdout(fmt: str, records: Iterable[dict], tick: Callable[[], None]) -> int:
    def row_out() -> None:  # each row leaves at once: a pipe's reader need not wait for a buffer to fill
        sys.stdout.flush()
        tick()

    try:
        return _write(sys.stdout, fmt, records, row_out)
    except BrokenPipeError:  # `dl sample ... --out - | head`: the reader has what it wanted
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        return 0


def _write(f: io.TextIOBase | Any, fmt: str, records: Iterable[dict], tick: Callable[[], None]) -> int:
    writer, count = None, 0
    for row in records:
        if fmt == "jsonl":
            f.write(json.dumps(row) + "\n")
        else:
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
        count += 1
        tick()
    f.flush()
    return count


@contextmanager
def _progress(total: int | None, what: str, to_stdout: bool) -> Iterator[Callable[[], None]]:
    """A bar of rows done on a terminal's stderr, gone when they are; nothing off a terminal, nor when the rows
    themselves go to the same terminal."""
    console = make_console(stderr=True)
    if not console.is_terminal or (to_stdout and make_console().is_terminal):
        yield lambda: None
        return
    # only on a terminal
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), TimeElapsedColumn(),
                  console=console, transient=True, redirect_stdout=False, redirect_stderr=False) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)
