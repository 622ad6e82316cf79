"""Recurrent LM throughput: dlcli's training loop vs a bare hand-written nn.LSTM/GRU loop, same data, same shape.

Both train a char-level LM on tiny-shakespeare (or generated text when it is absent) for the same number of steps,
in one process, alternating so neither gets a warmer machine. Reports tokens/s and the ratio (goal: dl >= 0.95x).

Usage: python bench/recurrent.py [--cell lstm] [--layers 2] [--hidden 256] [--block 128] [--batch 64]
                                 [--steps 100] [--device cpu|cuda] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from dlcli.data.language import LMTask, grammar, lm_task
from dlcli.loop import LoopState, fit
from dlcli.metrics import MetricsLogger, Reporter, make_console
from dlcli.models.recurrent import RecurrentNet
from dlcli.runtime import Runtime, resolve_precision


def load_text() -> str:
    path = Path(os.environ.get("DL_DATA_DIR", "data")) / "tinyshakespeare" / "input.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    cfg = OmegaConf.create({"seed": 0, "n_sentences": 40000, "relative_p": 0.3, "level": "char", "block_size": 128,
                            "val_fraction": 0.05, "test_fraction": 0.05})
    task = grammar(cfg, OmegaConf.create({"name": "auto"}))
    return "".join(task.meta["vocab"][i] for i in task.stream.tolist())


class BareLM(nn.Module):
    """What a person writes by hand: embedding -> nn.LSTM -> linear."""

    def __init__(self, cell: str, vocab: int, emb: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](emb, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(x))[0])


def bare_run(task: LMTask, args: argparse.Namespace, device: torch.device, precision: str) -> float:
    torch.manual_seed(0)
    model = BareLM(args.cell, task.meta["vocab_size"], args.emb, args.hidden, args.layers).to(device)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, **fused)
    stream, block = task.stream, args.block
    offsets = torch.arange(block + 1, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(
        device.type, enabled=False)
    start = None
    for step in range(args.steps + 5):
        if step == 5:  # warm-up steps excluded
            _sync(device)
            start = time.perf_counter()
        idx = torch.randint(0, len(stream) - block - 1, (args.batch,), device=device)
        chunk = stream[idx[:, None] + offsets]
        with autocast:
            logits = model(chunk[:, :-1])
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    _sync(device)
    return args.steps * args.batch * block / (time.perf_counter() - start)


def dl_run(task: LMTask, args: argparse.Namespace, device: torch.device, precision: str, tmp: Path) -> float:
    torch.manual_seed(0)
    cfg = OmegaConf.create({"name": args.cell, "embedding_size": args.emb, "hidden_size": args.hidden,
                            "num_layers": args.layers, "bidirectional": False, "dropout": 0.0, "pool": "last",
                            "tie_weights": False, "forget_bias": 1.0})
    model = RecurrentNet(cfg, task.meta).to(device)
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, **fused)
    trainer = OmegaConf.create({"epochs": 1, "batch_size": args.batch, "eval_batch_size": 1024, "max_time": None,
                                "clip_grad_norm": 1.0, "clip_grad_value": None, "seed": 0, "eval_every": 10 ** 9,
                                "log_every_n_steps": 10 ** 9, "checkpoint_every": 10 ** 9, "monitor": "train/loss",
                                "mode": "min", "early_stopping_patience": None, "min_delta": 0.0})
    # One epoch of the real loop = args.steps + 5 steps: trim the train split to that many windows. The 5 warm-up
    # steps are timed too (the bare loop excludes them), so the ratio errs against dl.
    keep = (args.steps + 5) * args.batch
    task.splits["train"] = tuple(t[:keep] for t in task.splits["train"])
    logger = MetricsLogger(tmp)
    _sync(device)
    t0 = time.perf_counter()
    fit(model, task, opt, None, "step", Runtime(device, precision), trainer, logger,
        Reporter(make_console(), enabled=False), lambda which, state: None, LoopState())
    _sync(device)
    seconds = time.perf_counter() - t0
    logger.close()
    return keep * args.block / seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--emb", type=int, default=64)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json")
    args = p.parse_args()
    device = torch.device(args.device)
    precision = resolve_precision("auto", device)
    text = load_text()
    cfg = OmegaConf.create({"level": "char", "block_size": args.block, "val_fraction": 0.05, "test_fraction": 0.05})
    task = lm_task(text, cfg, OmegaConf.create({"name": "auto"}))
    task.meta["kind"] = "lm"
    task.to(device)
    results = {"bare": [], "dl": []}
    for _ in range(2):  # alternate: bare, dl, bare, dl
        results["bare"].append(bare_run(task, args, device, precision))
        with tempfile.TemporaryDirectory() as tmp:
            results["dl"].append(dl_run(_fresh(task), args, device, precision, Path(tmp)))
    bare, dl = max(results["bare"]), max(results["dl"])
    print(f"{args.cell} {args.layers}x{args.hidden}, block {args.block}, batch {args.batch}, {args.steps} steps on "
          f"{device} ({precision}):")
    print(f"  bare nn.{args.cell.upper()} loop  {bare:10.0f} tokens/s")
    print(f"  dl training loop        {dl:10.0f} tokens/s   ratio {dl / bare:.3f}  (goal >= 0.95)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "bare_tokens_per_s": bare,
                                               "dl_tokens_per_s": dl, "ratio": dl / bare}, indent=2))


def _fresh(task: LMTask) -> LMTask:
    """A shallow copy whose train split the dl run may trim."""
    copy = LMTask.__new__(LMTask)
    copy.__dict__.update(task.__dict__)
    copy.splits = dict(task.splits)
    return copy


if __name__ == "__main__":
    main()
