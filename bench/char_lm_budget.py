"""A tuned, hand-written char-LM script given a wall-clock budget, on the very split `dl train model=lstm
dataset=text dataset.path=PATH` makes (the task is built by dlcli from the same overrides): what `dl`'s defaults
under `trainer.max_time` are measured against (issue 20: within 0.05 nats/char of it).

The script is what a practitioner tunes by hand for a small text: embedding 64 -> 2 x 256 nn.LSTM -> linear, AdamW
lr 3e-3 (no weight decay), gradient clipping at 1.0, batches of 64 random 128-character windows, constant lr, no
dropout; val loss (nats/char, every val window) every `--eval-every` seconds; the best is reported. Evaluation time
is not counted in the budget (in `dl`'s it is).

    python -m bench.char_lm_budget PATH --seconds 240
    dl train model=lstm dataset=text dataset.path=PATH trainer.max_time=240          # dl, defaults only
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from bench import common
from bench.recurrent import BareLM


@torch.no_grad()
def val_loss(model: nn.Module, task, batch_size: int = 256) -> float:
    model.eval()
    total, count = 0.0, 0
    for x, y in task.batches("val", batch_size):
        logits = model(x)
        total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    model.train()
    return total / count


def run(path: str, seconds: float, eval_every: float, seed: int = 0, max_steps: int | None = None) -> dict:
    """Train for `seconds` of training time (or until max_steps: the tests' fixed amount of work)."""
    from dlcli.data import build_task

    cfg = common.compose(["model=lstm", "dataset=text", f"dataset.path={path}"])
    task = build_task(cfg.dataset, cfg.loss, torch.device("cpu"))
    torch.manual_seed(seed)
    model = BareLM("lstm", task.meta["vocab_size"], emb=64, hidden=256, layers=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    stream, block, batch = task.stream, task.block_size, 64
    offsets = torch.arange(block + 1)
    trained, next_eval, steps, curve = 0.0, eval_every, 0, []
    while trained < seconds and (max_steps is None or steps < max_steps):
        start = time.perf_counter()
        chunk = stream[torch.randint(0, len(stream) - block, (batch,))[:, None] + offsets]
        loss = F.cross_entropy(model(chunk[:, :-1]).flatten(0, 1), chunk[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps += 1
        trained += time.perf_counter() - start
        if trained >= next_eval or trained >= seconds or steps == max_steps:
            curve.append((round(trained, 1), steps, round(val_loss(model, task), 4)))
            print(f"{trained:7.1f}s  step {steps:6d}  val {curve[-1][2]:.4f} nats/char", flush=True)
            next_eval += eval_every
    return {"path": path, "seconds": seconds, "steps": steps, "best_val": min(v for _, _, v in curve),
            "final_val": curve[-1][2], "curve": curve, "machine": common.machine()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path")
    p.add_argument("--seconds", type=float, default=240.0)
    p.add_argument("--eval-every", type=float, default=30.0)
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    result = run(args.path, args.seconds, args.eval_every)
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
