"""Data path: dl's device-resident index batching vs the usual per-sample torch DataLoader, on MNIST.

- batching: one shuffled epoch of (images, labels) batches delivered on the device, nothing else.
  dl: Task.batches (a seeded permutation on the device, index_select per batch).
  DataLoader: the way most tutorials write it: a Dataset whose __getitem__ turns one uint8 28x28 image into a
  normalised float tensor (torchvision's ToTensor + Normalize), DataLoader(shuffle=True, batch_size=128), each
  batch then moved to the device.
- training: one epoch of the MLP (dlcli.models, 784-512-256-10) with a hand-written AdamW step, fed by each path:
  what the data path costs a small model end to end.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from bench.common import Context, Result, bare_adamw, build_parts, compose, interleave, paired_ratio, sync

BATCH = 128


class PerSampleMNIST(Dataset):
    """uint8 images in memory; each item is converted and normalised on its own, as torchvision does."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float().div(255.0).unsqueeze(0)  # ToTensor: HW uint8 -> 1HW float in [0, 1]
        return (x - self.mean) / self.std, int(self.labels[i])  # Normalize


def loaders(task: Any, n: int, device: torch.device) -> tuple[Any, Any]:
    """Epoch iterators over the same n training images, dl's and a DataLoader's (any number of worker processes),
    both ending on `device`."""
    x, y = (t[:n] for t in task.splits["train"])
    mean, std = task.meta["pixel_mean"], task.meta["pixel_std"]
    raw = ((x.cpu() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)[:, 0]  # back to the IDX bytes
    task.splits["train"] = (x, y)
    dataset = PerSampleMNIST(raw, y.cpu(), mean, std)
    made: dict[int, DataLoader] = {}

    def dl_epoch(seed: int):
        return task.batches("train", BATCH, shuffle=True, seed=seed)

    def loader_epoch(seed: int, workers: int):
        if workers not in made:  # workers start once and stay (persistent_workers): their start-up is not timed
            made[workers] = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                                       pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        torch.manual_seed(seed)
        for xb, yb in made[workers]:
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

    return dl_epoch, loader_epoch


def measure(ctx: Context) -> list[Result]:
    from dlcli.models import build_model

    device = ctx.device
    cfg = compose(["model=mlp", "dataset=mnist", f"device={'cuda' if device.type == 'cuda' else 'cpu'}"])
    parts = build_parts(cfg)
    task = parts.task
    n = 20_000 if ctx.quick else task.size("train")
    dl_epoch, loader_epoch = loaders(task, n, device)

    def consume(epoch) -> float:
        sync(device)
        start = time.perf_counter()
        total = torch.zeros((), device=device)
        for xb, yb in epoch:
            total += xb[:, 0, 0, 0].sum() + yb[0]  # touch every batch on the device
        total.item()
        return n / (time.perf_counter() - start)

    def train(epoch) -> float:
        torch.manual_seed(0)
        model = build_model(cfg.model, task.meta).to(device)
        opt = bare_adamw(model, cfg.optimizer, device)
        sync(device)
        start = time.perf_counter()
        for xb, yb in epoch:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        return n / (time.perf_counter() - start)

    results = []
    # workers=0 is the DataLoader default; 2 worker processes (one per core here) in the full run, batching only:
    # while training they would compete with the compute threads for the same 2 cores.
    cases = [("batching", consume, 0, ctx.reps()), ("training/mlp", train, 0, ctx.reps(3))]
    if not ctx.quick:
        cases.insert(1, ("batching", consume, 2, ctx.reps()))
    for what, fn, workers, reps in cases:
        seed = iter(range(10 ** 6))
        runs = interleave({"dataloader": lambda: fn(loader_epoch(next(seed), workers)),
                           "dl": lambda: fn(dl_epoch(next(seed)))}, reps)
        ratio = max(runs["dl"]) / max(runs["dataloader"])  # the fastest round of each
        results.append(Result(
            case=f"data/{what}" + (f" vs workers={workers}" if workers else ""), metric="images/s",
            dl=max(runs["dl"]), baseline=max(runs["dataloader"]),
            baseline_name=f"per-sample DataLoader (workers={workers})", ratio=ratio,
            ratio_name="dl / DataLoader images/s", goal="> 1 (faster)", met=ratio > 1,
            details={"images": n, "batch": BATCH, "reps": reps,
                     "ratio_paired_median": paired_ratio(runs["dl"], runs["dataloader"]), "dl_images_per_s": runs["dl"],
                     "dataloader_images_per_s": runs["dataloader"]}))
    return results


def run(ctx: Context, names: list[str] | None = None) -> list[Result]:
    return measure(ctx)
