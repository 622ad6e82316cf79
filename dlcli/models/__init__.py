"""build_model(cfg.model, task.meta) -> nn.Module. A model family per file; each declares the data it fits."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from dlcli.errors import UserError, choices

# name -> module with build(cfg, meta)
MODULES = {"mlp": "dlcli.models.mlp", "cnn": "dlcli.models.cnn", "rnn": "dlcli.models.recurrent",
           "lstm": "dlcli.models.recurrent", "gru": "dlcli.models.recurrent",
           "seq2seq": "dlcli.models.seq2seq", "attention": "dlcli.models.seq2seq",
           "transformer": "dlcli.models.transformer",
           "cbow": "dlcli.models.word2vec", "skipgram": "dlcli.models.word2vec"}
SEQUENCE_FITS = {("regress", "sequence"), ("classify", "sequence"), ("tag", "sequence"), ("lm", "text")}
# name -> the (task kind, input) pairs it can learn
FITS = {
    "mlp": {("classify", "vector"), ("regress", "vector"), ("classify", "image"), ("regress", "image"),
            ("auto", "vector")},
    "cnn": {("classify", "image")},
    "rnn": SEQUENCE_FITS,
    "lstm": SEQUENCE_FITS,
    "gru": SEQUENCE_FITS,
    "seq2seq": {("seq2seq", "pairs")},
    "attention": {("seq2seq", "pairs")},
    "transformer": {("seq2seq", "pairs"), ("lm", "text")},
    "cbow": {("embedding", "corpus")},
    "skipgram": {("embedding", "corpus")},
}
# dataset name -> (kind, input) of the built-in dataset configs, for listing what a model fits
DATASET_SHAPES = {"spirals": ("classify", "vector"), "sine": ("regress", "vector"), "shapes": ("classify", "image"),
                  "mnist": ("classify", "image"), "fashion_mnist": ("classify", "image"), "csv": ("auto", "vector"),
                  "adding": ("regress", "sequence"), "parity": ("classify", "sequence"), "copy": ("tag", "sequence"),
                  "grammar": ("lm", "text"), "shakespeare": ("lm", "text"), "text": ("lm", "text"),
                  "reverse": ("seq2seq", "pairs"), "sort": ("seq2seq", "pairs"), "dates": ("seq2seq", "pairs"),
                  "addition": ("seq2seq", "pairs"), "eng_fra": ("seq2seq", "pairs"), "pairs": ("seq2seq", "pairs"),
                  "relations": ("embedding", "corpus"), "text8": ("embedding", "corpus"),
                  "gutenberg": ("embedding", "corpus"), "corpus": ("embedding", "corpus")}


def check_fit(model_name: str, dataset_cfg: Any) -> None:
    if model_name not in MODULES:
        raise UserError(f"model.name={model_name}: no such model{choices(model_name, MODULES)}")
    pair = (dataset_cfg.get("kind"), dataset_cfg.get("input"))
    if pair not in FITS[model_name]:
        fits = sorted(d for d, p in DATASET_SHAPES.items() if p in FITS[model_name])
        raise UserError(f"model={model_name} does not fit dataset={dataset_cfg.name} (a {pair[0]} task on "
                        f"{pair[1]} inputs); datasets for {model_name}: {', '.join(fits)}")


def build_model(cfg: Any, meta: dict) -> nn.Module:
    if cfg.name not in MODULES:
        raise UserError(f"model.name={cfg.name}: no such model{choices(cfg.name, MODULES)}")
    return importlib.import_module(MODULES[cfg.name]).build(cfg, meta)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary_table(model: nn.Module, example: Any, title: str) -> tuple[Any, str]:
    """Keras-style summary: each leaf layer's output shape and parameter count (from one forward pass)."""
    import torch
    from rich.table import Table

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
