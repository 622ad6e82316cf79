"""`dl sample CKPT`: what a trained model predicts, for test examples or the user's own inputs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.commands import predictions
from dlcli.commands.restore import restore, test_examples
from dlcli.commands.sample_embeddings import sample_embeddings
from dlcli.commands.sample_options import check_ranges, options_for
from dlcli.commands.sample_seq2seq import sample_seq2seq
from dlcli.commands.sample_text import Sampling, sample_text, write_text_rows
from dlcli.commands.sample_text_classes import is_text_classifier, sample_text_classes
from dlcli.data.image_folder import image_files
from dlcli.data.images import load_image_files, pixel_stats
from dlcli.data.tabular import encode_features, read_csv
from dlcli.reports.plots import image_grid


def sample_cli(path: str, overrides: list[str], given: dict[str, Any]) -> None:
    """`dl sample CKPT [options]`: `given` holds the options typed (by their flags), checked against the kind."""
    check_ranges(given)
    r = restore(path, overrides)
    meta = r.ckpt["meta"]
    kind = meta.get("kind") or ("classify" if "num_classes" in meta else "regress")
    o = options_for(kind, given)
    out, as_json = o.get("--out"), bool(o.get("--json"))
    images = len(meta.get("input_shape") or []) == 3
    if predictions.is_predictions_file(out, images):
        predictions.check_out(out, bool(o.get("--force")))  # before any work: nothing is overwritten unasked
    rows = predictions.wanted(out, as_json, images)
    if kind == "classify" and rows and "--top-k" in given:
        raise UserError("--top-k sets how many classes the table shows; the rows of --out/--json hold every class's "
                        "probability (prob_<class>): leave --top-k out")
    if kind == "embedding":
        sample_embeddings(r, o.get("--word"), o.get("--analogy"), o["--topn"], o.get("--input"), out, as_json)
        return
    if kind == "seq2seq":
        sample_seq2seq(r, o.get("--input"), o["--num-samples"], o["--seed"], o["--beam"], o.get("--attention-plot"),
                       o["--length-penalty"], o.get("--max-new-tokens"), out, as_json)
        return
    if kind == "lm":
        how = Sampling(o["--max-new-tokens"], o["--temperature"], o.get("--top-k"), o.get("--top-p"), o["--seed"])
        if rows:
            write_text_rows(r, o.get("--prompt"), o.get("--prompt-file"), how, o["--num-samples"], out, as_json)
        else:
            sample_text(r, o.get("--prompt"), o.get("--prompt-file"), how.max_new_tokens, how.temperature, how.top_k,
                        how.top_p, o["--num-samples"], how.seed)
        return
    num, seed, input_path = o["--num-samples"], o["--seed"], o.get("--input")
    if kind == "tag":
        _show_tagging(r, num, seed)
    elif is_text_classifier(meta):
        sample_text_classes(r, input_path, num, seed, o["--top-k"], out, as_json)
    elif rows:
        _write_predictions(r, kind, input_path, num, seed, out, as_json)
    else:
        _show_predictions(r, kind, input_path, num, seed, out, o.get("--top-k", 0))


def _inputs(r: Any, input_path: str | None, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None, list]:
    """The user's inputs (no true values) or `num` test examples: inputs, true values, ids."""
    if input_path:
        x, labels = _user_inputs(input_path, r.ckpt["meta"])
        return x, None, labels
    return test_examples(r, num, seed)


def _show_predictions(r: Any, kind: str, input_path: str | None, num: int, seed: int, out: str | None,
                      top_k: int) -> None:
    """A table (true vs predicted for test examples) and, for image models, a picture grid."""
    meta = r.ckpt["meta"]
    x, true, labels = _inputs(r, input_path, num, seed)
    x = x.to(r.runtime.device)
    out_t = predictions.predict(r.model, x, int(r.cfg.trainer.eval_batch_size))
    columns = {"input": [_shown(label) for label in labels]}
    if "input_shape" not in meta:  # a sequence model (parity, adding): its test sequences, compactly
        columns["sequence"] = [sequence_shown(row, meta) for row in x.cpu()]
    if kind == "classify":
        probs = out_t.softmax(-1)
        names = meta["class_names"]
        predictions.show_classes(f"{r.title}: predictions", probs, names, top_k, columns,
                                 None if true is None else true.tolist())
        if len(meta.get("input_shape") or []) == 3:
            _save_grid(r, x, probs, true, names, out)
    else:
        pred = out_t * torch.tensor(meta.get("target_std", [1.0])) .to(out_t) + torch.tensor(
            meta.get("target_mean", [0.0])).to(out_t)
        table = Table(title=f"{r.title}: predictions", title_justify="left")
        for col in (*columns, *(["true"] if true is not None else []), "predicted"):
            table.add_column(col)
        for i in range(len(pred)):
            cells = [values[i] for values in columns.values()]
            if true is not None:
                cells.append(", ".join(f"{v:.4g}" for v in true[i].tolist()))
            cells.append(", ".join(f"{v:.4g}" for v in pred[i].tolist()))
            table.add_row(*cells)
        make_console().print(table)


def sequence_shown(x: torch.Tensor, meta: dict) -> str:
    """One input sequence in a table cell: its tokens (parity's bits), or the values its marker steps pick (adding)."""
    if x.dtype == torch.long and meta.get("vocab"):
        tokens = [meta["vocab"][int(t)] for t in x]
        text = ("" if all(len(t) == 1 for t in tokens) else " ").join(tokens)
        return text if len(text) <= 60 else text[:59] + "…"
    features = meta.get("features") or []
    if x.dim() == 2 and "marker" in features and "value" in features:
        picked = x[x[:, features.index("marker")] > 0.5, features.index("value")]
        return f"marked {', '.join(f'{float(v):.3f}' for v in picked)} of {len(x)} steps"
    return f"{len(x)} steps × {x.shape[-1] if x.dim() > 1 else 1} features"


def _write_predictions(r: Any, kind: str, input_path: str | None, num: int, seed: int, out: str | None,
                       as_json: bool) -> None:
    """Rows to --out or stdout. Image files are read, predicted and written trainer.eval_batch_size at a time (a
    folder of any size); a CSV's rows, or test examples, are predicted batch by batch."""
    meta, device = r.ckpt["meta"], r.runtime.device
    batch = max(1, int(r.cfg.trainer.eval_batch_size))
    if input_path and len(meta.get("input_shape") or []) == 3:
        files = _image_paths(input_path)
        parts: Iterable[tuple[torch.Tensor, list, torch.Tensor | None]] = (
            (load_image_files(chunk, meta).to(device), chunk, None) for chunk in predictions.chunked(files, batch))
        total = len(files)
    else:
        x, true, labels = _inputs(r, input_path, num, seed)
        parts, total = [(x.to(device), labels, true)], len(labels)
    records = (row for x, ids, true in parts
               for row in predictions.rows(kind, predictions.predict(r.model, x, batch), ids, meta, true))
    predictions.write_rows(out, as_json, records, total, "predictions")


def _shown(label: int | str) -> str:
    """An input as the table names it: a CSV's data row (1-based) or an image file / test example."""
    return f"row {label}" if isinstance(label, int) else label


def _image_paths(input_path: str) -> list[str]:
    """Image files, comma-separated, or a folder of them (all, sorted); each checked to exist before any is read."""
    folder = Path(input_path)
    files = [str(p) for p in image_files(folder)] if folder.is_dir() else [p for p in input_path.split(",") if p]
    if not files:
        raise UserError(f"--input {input_path}: no image files in that folder (png, jpg, bmp, gif, webp)")
    missing = [p for p in files if not Path(p).is_file()]
    if missing:
        raise UserError(f"--input: no such image file: {missing[0]}")
    return files


def _user_inputs(input_path: str, meta: dict) -> tuple[torch.Tensor, list[int] | list[str]]:
    if "input_shape" not in meta:
        raise UserError(f"--input {input_path}: this model reads generated sequences (parity, adding...), not files; "
                        "leave --input out to see its test examples")
    if len(meta["input_shape"]) == 3:
        files = _image_paths(input_path)
        return load_image_files(files, meta), files
    if "preprocessing" in meta:
        header, rows = read_csv(input_path, what="--input")
        return encode_features(header, rows, meta["preprocessing"], f"--input {input_path}"), [
            i + 1 for i in range(len(rows))]

    header, rows = read_csv(input_path, what="--input")
    want = meta.get("features") or header  # data from a function of the user's: the columns in order
    size = int(meta["input_shape"][0])
    if len(want) != size:
        raise UserError(f"--input {input_path}: {len(want)} column(s) ({', '.join(want)}); this model takes {size} "
                        "input features, in the order it was trained on")
    missing = [f for f in want if f not in header]
    if missing:
        raise UserError(f"--input {input_path}: needs the column(s) {', '.join(want)}; missing {', '.join(missing)}")
    try:
        x = torch.tensor([[float(r[header.index(f)]) for f in want] for r in rows])
    except ValueError:
        raise UserError(f"--input {input_path}: the columns {', '.join(want)} must be numbers") from None
    return x, [i + 1 for i in range(len(rows))]  # data rows, 1-based: predictions join back on them


def _save_grid(r: Any, x: torch.Tensor, probs: torch.Tensor, true: torch.Tensor | None, names: list[str],
               out: str | None) -> None:
    meta = r.ckpt["meta"]
    mean, std = pixel_stats(meta)  # one number, or one per channel (dataset=image_folder)
    images = (x.cpu() * std + mean).clamp(0, 1)
    pred = probs.argmax(-1)
    titles, colors = [], []
    for i in range(len(x)):
        if true is None:
            titles.append(f"{names[int(pred[i])]} ({float(probs[i].max()):.2f})")
            colors.append("black")
        else:
            titles.append(f"{names[int(true[i])]} → {names[int(pred[i])]}")
            colors.append("green" if int(pred[i]) == int(true[i]) else "red")
    path = Path(out) if out else r.path.parent.parent / "plots" / "samples.png"
    image_grid(images, titles, colors, path, "true → predicted" if true is not None else "predicted")
    make_console().print(f"picture: {path}")


def _show_tagging(r: Any, num: int, seed: int) -> None:
    """Sequence in, sequence out (copy memory): the input, the scored target steps and the model's answer."""
    x, y, _ = test_examples(r, num, seed)
    with torch.no_grad():
        pred = r.model(x).argmax(-1)
    vocab, names = r.ckpt["meta"]["vocab"], r.ckpt["meta"]["class_names"]
    table = Table(title=f"{r.title}: test sequences", title_justify="left")
    for col in ("input", "target", "predicted"):
        table.add_column(col)
    right = 0
    for xi, yi, pi in zip(x.tolist(), y.tolist(), pred.tolist()):
        scored = [j for j, t in enumerate(yi) if t >= 0]
        target = "".join(names[yi[j]] for j in scored)
        answer = "".join(names[pi[j]] for j in scored)
        right += target == answer
        table.add_row("".join(vocab[t] for t in xi), target, answer + (" ✓" if target == answer else " ✗"))
    console = make_console()
    console.print(table)
    console.print(f"{right}/{len(x)} sequences right")
