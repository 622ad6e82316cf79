"""The bag-of-words baseline of a text classification task: logistic regression on which words a text holds, on the
very split, tokens and vocabulary `dl train` uses (the task is built by dlcli itself from the same overrides).

Features: each vocabulary word present in the text (the first dataset.max_len tokens, as the models see), 1/sqrt(#words)
each (an L2-normalised binary bag), <unk> included; logistic regression = an nn.EmbeddingBag(vocab, classes, sum) + a
bias, fitted full-batch with L-BFGS; the L2 strength is picked on val, the test accuracy reported. Plain torch.

    python -m bench.text_baseline                                      # dataset=gutenberg_authors, per_class 300
    python -m bench.text_baseline --per-class 100 300 1000             # one row each
    python -m bench.text_baseline dataset=reviews                      # any text dataset, dl's overrides
The lesson this belongs to (random vs pretrained embeddings for an LSTM on the author task), in one command:
    dl train -m +experiment=pretrained_embeddings
and the model families with their defaults on the same split:
    dl train model=mlp dataset=gutenberg_authors        (likewise model=lstm, gru, rnn, transformer)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench import common

L2 = (1e-5, 1e-4, 1e-3, 1e-2)


def bag(x: Tensor, pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rows of right-padded ids -> EmbeddingBag inputs: each row's distinct ids, offsets, weights 1/sqrt(#ids)."""
    s = x.sort(1).values
    first = torch.cat([torch.ones_like(s[:, :1], dtype=torch.bool), s[:, 1:] != s[:, :-1]], 1)
    keep = first & (s != pad)
    counts = keep.sum(1)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
    weights = counts.clamp(min=1).float().rsqrt().repeat_interleave(counts)
    return s[keep], offsets, weights


def fit(train: tuple[Tensor, Tensor], vocab: int, classes: int, pad: int, l2: float, steps: int = 100) -> nn.Module:
    torch.manual_seed(0)
    model = nn.EmbeddingBag(vocab, classes, mode="sum")
    nn.init.zeros_(model.weight)
    bias = nn.Parameter(torch.zeros(classes))
    model.bias = bias
    inputs, y = bag(train[0], pad), train[1]
    opt = torch.optim.LBFGS([model.weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(*inputs[:2], per_sample_weights=inputs[2]) + bias, y) \
            + l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def accuracy(model: nn.Module, split: tuple[Tensor, Tensor], pad: int) -> float:
    ids, offsets, weights = bag(split[0], pad)
    with torch.no_grad():
        pred = (model(ids, offsets, per_sample_weights=weights) + model.bias).argmax(1)
    return float((pred == split[1]).float().mean())


def run(overrides: list[str]) -> dict:
    from dlcli.data import build_task

    cfg = common.compose(["model=mlp", *overrides])
    task = build_task(cfg.dataset, cfg.loss, torch.device("cpu"))
    meta, splits = task.meta, task.splits
    if "pad_id" not in meta:
        raise SystemExit(f"error: {cfg.dataset.name} is not a text classification dataset")
    clock = time.perf_counter()
    scored = []
    for l2 in L2:
        model = fit(splits["train"], meta["vocab_size"], meta["num_classes"], meta["pad_id"], l2)
        scored.append((accuracy(model, splits["val"], meta["pad_id"]), -l2, model))
    val, neg_l2, best = max(scored, key=lambda s: s[:2])  # ties: the stronger L2
    return {"overrides": overrides, "train": task.size("train"), "val": task.size("val"), "test": task.size("test"),
            "vocab": meta["vocab_size"], "l2": -neg_l2, "val_acc": round(val, 4),
            "test_acc": round(accuracy(best, splits["test"], meta["pad_id"]), 4),
            "train_acc": round(accuracy(best, splits["train"], meta["pad_id"]), 4),
            "seconds": round(time.perf_counter() - clock, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, nargs="*", default=[], help="dataset.per_class values, a row each")
    parser.add_argument("overrides", nargs="*", help="dl train overrides (default: dataset=gutenberg_authors)")
    args = parser.parse_args(argv)
    base = args.overrides if any(o.startswith("dataset=") for o in args.overrides) else \
        ["dataset=gutenberg_authors", *args.overrides]
    for n in args.per_class or [None]:
        row = run(base + ([f"dataset.per_class={n}"] if n else []))
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
