"""Transformer LM: training throughput + MFU through dl's loop vs a bare loop, and tiny-shakespeare val loss vs
wall time.

- throughput: GPT-2 small on CUDA (d_model 768, 12 heads, 12 layers, block 1024, vocab 50304, learned positions,
  tied embeddings, no dropout; bf16 autocast, fused AdamW; --compile adds torch.compile to both sides), a tiny
  model on CPU (d 64, 2 layers, block 64, vocab 256). Random tokens: speed does not depend on the text. FLOPs per
  token as nanoGPT's estimate_mfu counts them: 6 N (parameters, position table excluded) + 12 layers d_model block;
  MFU divides achieved FLOP/s by the GPU's dense bf16 peak (looked up by name; --peak-tflops overrides).
- shakespeare: char-level tiny-shakespeare with nanoGPT's shakespeare-char model on CUDA (6 layers, 6 heads, d 384,
  block 256, batch 64, dropout 0.2, lr 1e-3) within a 2-minute budget (goal: val loss <= 1.47 in <= 120 s,
  data load included); a small model on CPU. The number of epochs (the cosine schedule's length) is sized from a
  10-step speed probe to fill the budget; trainer.max_time stops it at the budget regardless. Val loss is
  recorded with its wall time after every epoch, train loss every N steps. (On CPU one epoch of the text fills most
  of the budget: one val point; a smoke figure.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import Context, Result, build_parts, compose, data_dir, paired_ratio, run_fit, sync
from bench.loop import race

GPT2 = {"d_model": 768, "heads": 12, "layers": 12, "ff_size": 3072, "block": 1024, "vocab": 50304, "batch": 16}
TINY = {"d_model": 64, "heads": 4, "layers": 2, "ff_size": 256, "block": 64, "vocab": 256, "batch": 8}
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0}
SHAKESPEARE = {  # (model/trainer overrides, budget seconds, quick budget)
    "cuda": (["model.d_model=384", "model.heads=6", "model.layers=6", "model.ff_size=1536", "model.dropout=0.2",
              "model.positional=learned", "model.max_len=256", "model.tie_embeddings=true", "dataset.block_size=256",
              "trainer.batch_size=64", "optimizer.lr=1e-3", "optimizer.weight_decay=0.1", "optimizer.betas=[0.9,0.99]",
              "scheduler.warmup=100", "scheduler.min_lr=1e-4"], 120.0, 120.0),
    "cpu": (["model.d_model=128", "model.heads=4", "model.layers=2", "model.ff_size=512", "dataset.block_size=64",
             "trainer.batch_size=32", "optimizer.lr=3e-3", "trainer.log_every_n_steps=10"], 60.0, 20.0),
}
VAL_GOAL, TIME_GOAL = 1.47, 120.0


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def random_lm_task(vocab: int, block: int, windows: int, cfg: Any, device: torch.device) -> Any:
    from dlcli.data.language import LMTask

    gen = torch.Generator().manual_seed(0)
    stream = torch.randint(0, vocab, ((windows + 2) * block + 1,), generator=gen)
    meta = {"kind": "lm", "vocab": [f"t{i}" for i in range(vocab)], "vocab_size": vocab, "level": "word",
            "unk": None, "block_size": block}
    streams = {"train": stream, "val": stream[:2 * block + 1], "test": stream[:2 * block + 1]}
    return LMTask(streams, block, meta, cfg.loss).to(device)


def throughput(ctx: Context) -> Result:
    from dlcli.models import build_model

    s = GPT2 if ctx.device.type == "cuda" else TINY
    steps = 10 if ctx.quick else (30 if ctx.device.type == "cuda" else 20)
    cfg = compose(["model=transformer", "dataset=grammar", f"device={ctx.device.type}", "trainer.epochs=1",
                   f"model.d_model={s['d_model']}", f"model.heads={s['heads']}", f"model.layers={s['layers']}",
                   f"model.ff_size={s['ff_size']}", "model.dropout=0.0", "model.positional=learned",
                   f"model.max_len={s['block']}", "model.tie_embeddings=true", f"dataset.block_size={s['block']}",
                   f"trainer.batch_size={s['batch']}"])
    task = random_lm_task(s["vocab"], s["block"], steps * s["batch"], cfg, ctx.device)
    compile_model = ctx.compile

    def prepare(parts: Any) -> None:
        if compile_model:
            parts.model = torch.compile(parts.model)

    r = race(cfg, 1, steps, ctx, prepare=prepare, task=task)
    tokens = s["batch"] * s["block"]
    dl, bare = [x * tokens for x in r["dl"]], [x * tokens for x in r["bare"]]
    model = build_model(cfg.model, task.meta)  # on the CPU: only counted
    n = sum(p.numel() for p in model.parameters()) - model.embed.positions.weight.numel()
    flops_per_token = 6 * n + 12 * s["layers"] * s["d_model"] * s["block"]
    peak = peak_tflops(ctx.device)
    mfu = {k: max(v) * flops_per_token / (peak * 1e12) for k, v in (("dl", dl), ("bare", bare))} if peak else {}
    ratio = max(dl) / max(bare)  # the fastest round of each
    return Result(
        case="transformer/throughput" + ("+compile" if compile_model else ""), metric="tokens/s", dl=max(dl),
        baseline=max(bare), baseline_name="bare loop, same model", ratio=ratio, ratio_name="dl / bare tokens/s",
        goal=">= 0.95", met=ratio >= 0.95,
        details={"shape": s, "params_M": round(n / 1e6, 2), "flops_per_token": flops_per_token,
                 "mfu_dl": mfu.get("dl"), "mfu_bare": mfu.get("bare"), "peak_tflops": peak,
                 "precision": r["precision"], "compile": compile_model, "steps_per_rep": r["steps"],
                 "ratio_cpu": 1 / r["cpu_ratio"], "ratio_paired_median": paired_ratio(dl, bare),
                 "dl_tokens_per_s": dl, "bare_tokens_per_s": bare})


def stamped_logger(t0: float) -> Callable[[Path], Any]:
    """The real MetricsLogger, plus the wall time (seconds since t0) of every record, for run_fit."""
    from dlcli.engine.logger import MetricsLogger

    class Stamped(MetricsLogger):
        def log(self, step: int, epoch: int, split: str, values: dict[str, float]) -> None:
            super().log(step, epoch, split, values)
            self.rows[-1]["time_s"] = time.perf_counter() - t0

    return Stamped


def compiled(parts: Any) -> Any:
    """What dlcli/commands/train.py does with trainer.compile=true."""
    if parts.cfg.trainer.compile:
        parts.model = torch.compile(parts.model)
    return parts


def shakespeare(ctx: Context) -> Result:
    key = "cuda" if ctx.device.type == "cuda" else "cpu"
    overrides, budget, quick_budget = SHAKESPEARE[key]
    budget = quick_budget if ctx.quick else budget
    if not (data_dir() / "tinyshakespeare" / "input.txt").is_file():
        return Result(case="transformer/shakespeare", metric="val loss", dl=None,
                      details={"skipped": f"no tinyshakespeare under {data_dir()}"})
    base = ["model=transformer", "dataset=shakespeare", f"device={key}", *overrides]
    if ctx.compile:
        base.append("trainer.compile=true")
    # Speed probe (not counted): 10 steps of the same model, to size the schedule to the budget.
    probe_cfg = compose([*base, "trainer.epochs=1"])
    probe = compiled(build_parts(probe_cfg))
    steps_per_epoch = probe.task.num_batches("train", int(probe_cfg.trainer.batch_size))
    probe.task.splits["train"] = tuple(t[:10 * int(probe_cfg.trainer.batch_size)] for t in probe.task.splits["train"])
    run_fit(probe)  # warm-up (and compilation)
    seconds, _ = run_fit(probe)
    epochs = max(1, int(0.85 * budget / (seconds / 10 * steps_per_epoch)))
    del probe
    final = [*base, f"trainer.epochs={epochs}", f"trainer.max_time={budget:g}"]
    cfg = compose(final)
    sync(ctx.device)
    t0 = time.perf_counter()  # the clock starts before the data is read
    parts = compiled(build_parts(cfg))
    _, logger = run_fit(parts, logger_cls=stamped_logger(t0))
    curve = [(round(r["time_s"], 2), r["epoch"], round(r["loss"], 4)) for r in logger.rows if r["split"] == "val"]
    train_curve = [(round(r["time_s"], 2), r["step"], round(r["loss"], 4)) for r in logger.rows if r["split"] == "step"]
    best = min(v for _, _, v in curve)
    reached = next((t for t, _, v in curve if v <= VAL_GOAL), None)
    wall = curve[-1][0]
    met = reached is not None and reached <= TIME_GOAL if key == "cuda" else None
    return Result(
        case="transformer/shakespeare", metric="val loss", dl=best, ratio=wall, ratio_name="seconds",
        goal=f"<= {VAL_GOAL} in <= {TIME_GOAL:g} s (GPU)", met=met,
        details={"command": "dl train " + " ".join(final), "budget_s": budget, "epochs": epochs,
                 "seconds_to_goal": reached, "curve_s_epoch_val_loss": curve, "curve_s_step_train_loss": train_curve,
                 "precision": parts.runtime.precision})


def run(ctx: Context, names: list[str] | None = None) -> list[Result]:
    names = names or ["throughput", "shakespeare"]
    return [{"throughput": throughput, "shakespeare": shakespeare}[n](ctx) for n in names]
