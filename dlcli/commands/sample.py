"""`dl sample CKPT`: what a trained model predicts, for test examples or the user's own inputs."""

from __future__ import annotations

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
from dlcli.commands.sample_text import sample_text
from dlcli.data.image_folder import image_files
from dlcli.data.images import load_image_files, pixel_stats
from dlcli.data.tabular import encode_features, read_csv
from dlcli.reports.plots import image_grid


def sample_cli(path: str, overrides: list[str], given: dict[str, Any]) -> None:
    """`dl sample CKPT [options]`: `given` holds the options typed (by their flags), checked against the kind."""
    check_ranges(given)
    r = restore(path, overrides)
    kind = r.ckpt["meta"].get("kind") or ("classify" if "num_classes" in r.ckpt["meta"] else "regress")
    o = options_for(kind, given)
    if kind == "embedding":
        sample_embeddings(r, o.get("--word"), o.get("--analogy"), o["--topn"])
        return
    if kind == "seq2seq":
        sample_seq2seq(r, o.get("--input"), o["--num-samples"], o["--seed"], o["--beam"], o.get("--attention-plot"),
                       o["--length-penalty"], o.get("--max-new-tokens"))
        return
    if kind == "lm":
        sample_text(r, o.get("--prompt"), o.get("--prompt-file"), o["--max-new-tokens"], o["--temperature"],
                    o.get("--top-k"), o.get("--top-p"), o["--num-samples"], o["--seed"])
        return
    num, seed, input_path, out = o["--num-samples"], o["--seed"], o.get("--input"), o.get("--out")
    if kind == "tag":
        _show_tagging(r, num, seed)
        return
    if input_path:
        x, labels = _user_inputs(input_path, r.ckpt["meta"])
        true = None
    else:
        x, true, labels = test_examples(r, num, seed)
    x = x.to(r.runtime.device)
    out_t = predictions.predict(r.model, x, int(r.cfg.trainer.eval_batch_size))
    meta = r.ckpt["meta"]
    if predictions.is_predictions_file(out, images=len(meta.get("input_shape", [])) == 3) or o.get("--json"):
        written = predictions.write(out, bool(o.get("--json")), predictions.rows(kind, out_t, labels, meta, true))
        if written is not None:
            make_console(stderr=True).print(f"predictions: {written} ({len(labels)} rows)")
        return
    console = make_console()
    if kind == "classify":
        probs = out_t.softmax(-1)
        names = meta["class_names"]
        table = Table(title=f"{r.title}: predictions", title_justify="left")
        for col in ("input", *(["true"] if true is not None else []), "predicted", "probability", "runner-up"):
            table.add_column(col)
        for i, p in enumerate(probs):
            top = p.topk(min(2, len(p)))
            cells = [_shown(labels[i])]
            if true is not None:
                cells.append(names[int(true[i])])
            mark = "" if true is None else (" ✓" if int(top.indices[0]) == int(true[i]) else " ✗")
            cells += [names[int(top.indices[0])] + mark, f"{float(top.values[0]):.3f}",
                      f"{names[int(top.indices[1])]} {float(top.values[1]):.3f}" if len(p) > 1 else ""]
            table.add_row(*cells)
        console.print(table)
        if true is not None:
            right = int((probs.argmax(-1) == true.cpu()).sum())
            console.print(f"{right}/{len(probs)} correct")
        if len(meta["input_shape"]) == 3:
            _save_grid(r, x, probs, true, names, out)
    else:
        pred = out_t * torch.tensor(meta.get("target_std", [1.0])) .to(out_t) + torch.tensor(
            meta.get("target_mean", [0.0])).to(out_t)
        table = Table(title=f"{r.title}: predictions", title_justify="left")
        for col in ("input", *(["true"] if true is not None else []), "predicted"):
            table.add_column(col)
        for i in range(len(pred)):
            cells = [_shown(labels[i])]
            if true is not None:
                cells.append(", ".join(f"{v:.4g}" for v in true[i].tolist()))
            cells.append(", ".join(f"{v:.4g}" for v in pred[i].tolist()))
            table.add_row(*cells)
        console.print(table)


def _shown(label: int | str) -> str:
    """An input as the table names it: a CSV's data row (1-based) or an image file / test example."""
    return f"row {label}" if isinstance(label, int) else label


def _user_inputs(input_path: str, meta: dict) -> tuple[torch.Tensor, list[int] | list[str]]:
    if len(meta["input_shape"]) == 3:  # image files, comma-separated, or a folder of them (all, sorted)
        folder = Path(input_path)
        files = [str(p) for p in image_files(folder)] if folder.is_dir() else [p for p in input_path.split(",") if p]
        if not files:
            raise UserError(f"--input {input_path}: no image files in that folder (png, jpg, bmp, gif, webp)")
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
