"""Loop overhead: dlcli.engine.loop.fit vs a careful hand-written PyTorch loop, same model, data, batch and optimizer.

Both sides train the same model class (dlcli.models, same config, same seed: same initial weights) on the same
device-resident tensors with the same batch order, AdamW (decay on matrices, fused kernels) and warm-up + cosine
schedule, gradient clipping where the model asks for it, bf16 autocast on CUDA; both track train loss + accuracy
on the device, read them once per epoch, and evaluate the val split after each epoch. So both compute the same
numbers (the final train losses agree; the table shows it), and the time ratio is what the loop itself costs.
Checkpoint writes are left out on both sides.

Cases: mlp (spirals, the default run), cnn (MNIST), lstm (generated grammar LM), transformer (grammar LM).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import (Context, Result, autocast, bare_adamw, build_parts, compose, interleave, paired_ratio,
                          run_fit, sync, warmup_cosine)

# model -> (dl train overrides, quick (epochs, steps per epoch), full (epochs, steps per epoch)); steps None = all
CASES = {
    "mlp": (["model=mlp"], (4, None), (10, None)),
    "cnn": (["model=cnn", "dataset=mnist"], (1, 20), (1, 50)),
    "lstm": (["model=lstm"], (1, 10), (1, 20)),
    "transformer": (["model=transformer", "dataset=grammar"], (1, 15), (1, 30)),
}
VAL_EXAMPLES = 256  # evaluation is in both loops, but this measures training: a small val split


def trim(task: Any, steps: int | None, batch: int) -> None:
    if steps is not None:
        task.splits["train"] = tuple(t[:steps * batch] for t in task.splits["train"])
    task.splits["val"] = tuple(t[:VAL_EXAMPLES] for t in task.splits["val"])


def bare_loop(model: torch.nn.Module, task: Any, cfg: Any, device: torch.device,
              precision: str) -> tuple[float, dict[str, float]]:
    """The hand-written loop. Returns (seconds, the last epoch's train and val loss and accuracy)."""
    from dlcli.engine.batches import epoch_seed  # the same batch order as dl (a person would pick any seed)

    t = cfg.trainer
    batch, epochs, seed = int(t.batch_size), int(t.epochs), int(t.seed)
    clip = t.clip_grad_norm
    lm = task.kind == "lm"
    x, y = task.splits["train"]
    vx, vy = task.splits["val"]
    n = len(x)
    steps = -(-n // batch)
    opt = bare_adamw(model, cfg.optimizer, device)
    sched = warmup_cosine(opt, steps * epochs, float(cfg.scheduler.warmup))
    stream = task.stream if lm else None
    block = task.block_size if lm else 0
    offsets = torch.arange(block + 1, device=device)
    amp = autocast(device, precision)
    sync(device)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        gen = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch))
        if lm:  # random windows of the text (truncated BPTT), as dl's LM task draws them
            order = torch.randint(0, len(stream) - block, (n,), generator=gen, device=device)
        else:
            order = torch.randperm(n, generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        count = 0
        for i in range(0, n, batch):
            if lm:
                chunk = stream[order[i:i + batch, None] + offsets]
                xb, yb = chunk[:, :-1], chunk[:, 1:]
            else:
                idx = order[i:i + batch]
                xb, yb = x[idx], y[idx]
            with amp:
                logits = model(xb)
            logits = logits.float()
            loss = F.cross_entropy(logits.flatten(0, 1) if lm else logits, yb.flatten() if lm else yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
            opt.step()
            sched.step()
            with torch.no_grad():
                loss_sum += loss.detach() * yb.numel()
                correct += (logits.argmax(-1) == yb).sum()
            count += yb.numel()
        metrics = {"train_loss": loss_sum.item() / count, "train_acc": correct.item() / count}
        model.eval()
        with torch.no_grad():
            v_loss = torch.zeros((), device=device)
            v_correct = torch.zeros((), device=device)
            v_count = 0
            for i in range(0, len(vx), int(t.eval_batch_size)):
                xb, yb = vx[i:i + int(t.eval_batch_size)], vy[i:i + int(t.eval_batch_size)]
                with amp:
                    logits = model(xb).float()
                v_loss += F.cross_entropy(logits.flatten(0, 1) if lm else logits, yb.flatten() if lm else yb,
                                          reduction="sum")
                v_correct += (logits.argmax(-1) == yb).sum()
                v_count += yb.numel()
            metrics.update(val_loss=v_loss.item() / v_count, val_acc=v_correct.item() / v_count)
    sync(device)
    return time.perf_counter() - start, metrics


def race(cfg: Any, epochs: int, steps: int | None, ctx: Context,
         bare_model: Callable[[Any], torch.nn.Module] | None = None, prepare: Callable[[Any], None] | None = None,
         task: Any = None) -> dict[str, Any]:
    """dl's fit against bare_loop on the task `cfg` builds, trimmed to `steps` batches an epoch, `epochs` epochs,
    alternating repetitions. bare_model(task) builds the hand-written side's model (default: the same dlcli model).
    prepare(parts) may change the dl parts before each run (e.g. torch.compile the model); task: a prebuilt task
    (default: the one cfg.dataset names). Returns the measurements: steps/s of each side per repetition, the
    CPU seconds of each (process time: on a busy machine the steadier figure) and the final train losses."""
    from dlcli.models import build_model

    parts = build_parts(cfg, task)
    task = parts.task
    batch = int(cfg.trainer.batch_size)
    trim(task, steps, batch)
    n_steps = task.num_batches("train", batch) * epochs
    device, precision = parts.runtime.device, parts.runtime.precision
    losses: dict[str, float] = {}
    cpu: dict[str, list[float]] = {"dl": [], "bare": []}

    def dl() -> float:
        p = build_parts(cfg, task)  # a fresh run: same seed, same initial weights, fresh optimizer + schedule
        if prepare:
            prepare(p)
        c0 = time.process_time()
        seconds, logger = run_fit(p)
        cpu["dl"].append(time.process_time() - c0)
        losses["dl"] = logger.epochs("train")[-1]["loss"]
        return n_steps / seconds

    def bare() -> float:
        torch.manual_seed(int(cfg.trainer.seed))
        model = (bare_model(task) if bare_model else build_model(cfg.model, task.meta)).to(device)
        if prepare:
            model = prepare_model(model, prepare)
        c0 = time.process_time()
        seconds, metrics = bare_loop(model, task, cfg, device, precision)
        cpu["bare"].append(time.process_time() - c0)
        losses["bare"] = metrics["train_loss"]
        return n_steps / seconds

    runs = interleave({"bare": bare, "dl": dl}, ctx.reps())
    return {"dl": runs["dl"], "bare": runs["bare"], "steps": n_steps, "batch": batch, "task": task,
            "losses": losses, "precision": precision, "dataset": cfg.dataset.name,
            "cpu_ratio": min(cpu["dl"][1:]) / min(cpu["bare"][1:])}  # [1:]: not the warm-up


def prepare_model(model: torch.nn.Module, prepare: Callable[[Any], None]) -> torch.nn.Module:
    """Apply a parts-preparing function to a lone model (the bare side)."""
    holder = type("Parts", (), {"model": model})()
    prepare(holder)
    return holder.model


def measure(name: str, ctx: Context) -> Result:
    overrides, quick, full = CASES[name]
    epochs, steps = quick if ctx.quick else full
    device = "cuda" if ctx.device.type == "cuda" else "cpu"
    cfg = compose([*overrides, f"device={device}", f"trainer.epochs={epochs}"])
    r = race(cfg, epochs, steps, ctx)
    ratio = max(r["bare"]) / max(r["dl"])  # time per step, dl over bare: the fastest round of each
    return Result(
        case=f"loop/{name}", metric="steps/s", dl=max(r["dl"]), baseline=max(r["bare"]),
        baseline_name="bare PyTorch loop", ratio=ratio, ratio_name="dl time / bare time", goal="<= 1.05",
        met=ratio <= 1.05,
        details={"dataset": r["dataset"], "batch": r["batch"], "steps_per_rep": r["steps"], "reps": len(r["dl"]),
                 "ratio_cpu": r["cpu_ratio"], "ratio_paired_median": paired_ratio(r["bare"], r["dl"]),
                 "dl_steps_per_s": r["dl"], "bare_steps_per_s": r["bare"],
                 "train_loss_dl": r["losses"]["dl"],
                 "train_loss_bare": r["losses"]["bare"], "precision": r["precision"]})


def run(ctx: Context, names: list[str] | None = None) -> list[Result]:
    return [measure(name, ctx) for name in (names or list(CASES))]
