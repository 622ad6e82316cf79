"""The Task: the one seam between data, model and loop.

A Task holds its splits as tensors (on the run's device), `meta` (plain lists/dicts that describe the data to the model
and are stored in checkpoints), and knows how to turn a batch into (loss, stats). Stats are summed on the device and
read once per epoch (`summarize`), so the loop never syncs per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from dlcli.base.errors import UserError


class InPlaceTrainer(Protocol):
    """What the loop needs of a trainer that updates the model itself instead of backward + optimizer.step()."""

    batch_size: int  # rows (word2vec: corpus words) per step

    def batches(self, seed: int) -> Iterator[tuple]:
        """One epoch of training batches in the order `seed` gives (a resume replays it)."""
        ...

    def step(self, batch: tuple) -> tuple[Tensor, dict[str, Tensor]]:
        """Train on one batch; (loss, stats) as Task.step returns them."""
        ...


AUTO_EPOCHS_MAX = 200  # trainer.epochs=auto on a tiny file: the most epochs it gets (the best checkpoint is kept)


class Task:
    kind: str = ""
    monitor_metrics: tuple[str, ...] = ("loss",)
    eval_metric_names: tuple[str, ...] = ()  # what eval_metrics returns (trainer.monitor may name them)
    eval_only_stats: tuple[str, ...] = ()  # what summarize gives for evaluations only (no train/ value)
    loading: str = ""  # how the data came in, when worth a line to the user (a cache, a memory-mapped file)

    def __init__(self, splits: dict[str, tuple[Tensor, ...]], meta: dict[str, Any]):
        self.splits = splits
        self.meta = meta
        self.warnings: list[str] = []  # what the data suggests to change (said once by dl train)
        self.chosen: dict[str, str] = {}  # settings left to `auto` and what the data made of them, with why

    def to(self, device: torch.device) -> Task:
        self.splits = {k: tuple(t.to(device) for t in v) for k, v in self.splits.items()}
        return self

    @property
    def device(self) -> torch.device:
        return next(iter(self.splits.values()))[0].device

    def size(self, split: str) -> int:
        return len(self.splits[split][0])

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[tuple]:
        """Index batching on the device: a permutation per epoch (seeded, so resume replays it), no DataLoader."""
        tensors = self.splits[split]
        n = len(tensors[0])
        if not shuffle:
            for i in range(0, n, batch_size):
                yield tuple(t[i:i + batch_size] for t in tensors)
            return
        perm = epoch_permutation(n, seed, self.device)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            yield tuple(t.index_select(0, idx) for t in tensors)

    def rows(self, split: str, idx: Tensor) -> tuple:
        """Some rows of a split (idx on the task's device) as a batch, e.g. dl sample's test examples."""
        return tuple(t.index_select(0, idx) for t in self.splits[split])

    def num_batches(self, split: str, batch_size: int) -> int:
        return -(-self.size(split) // batch_size)

    def example_input(self, n: int = 2) -> Tensor:
        return self.splits["train"][0][:n]

    # trainer.epochs=auto with no time budget: epochs enough to see about this many training examples (LMs: tokens)
    auto_target: int = 200_000

    def train_units(self) -> tuple[int, str]:
        """What one epoch trains on, for trainer.epochs=auto: (how many, of what)."""
        return self.size("train"), "examples"

    def auto_epochs(self) -> tuple[int, str]:
        """trainer.epochs=auto without trainer.max_time: epochs scaled to the data (a small file gets many, a big one
        few), and why, for the line dl train prints and summary.json's `chosen`."""
        n, unit = self.train_units()
        epochs = min(max(round(self.auto_target / max(n, 1)), 1), AUTO_EPOCHS_MAX)
        return epochs, f"about {self.auto_target:,} training {unit} in all, {n:,} an epoch"

    def in_place_training(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                          deterministic: bool) -> InPlaceTrainer | None:
        """A trainer that steps the model itself (word2vec on the CPU), asked only for runs that qualify
        (engine/in_place.py: CPU, fp32, plain SGD, unclipped, one process); None: the loop's backward and step."""
        return None

    # per kind -------------------------------------------------------------------------------------------------------
    def step(self, model: nn.Module, batch: tuple) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def summarize(self, stats: dict[str, Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def eval_metrics(self, model: nn.Module, split: str) -> dict[str, float]:
        """Metrics beyond the summed batch stats, measured after each evaluation of `split` (val every epoch, and
        `dl eval`): e.g. exact match after free decoding, analogy accuracy of embeddings. Keep them cheap."""
        return {}

    def breakdown(self, model: nn.Module, split: str = "test") -> dict[str, Any]:
        """Structured results for summary.json beyond flat metrics (e.g. exact match per input length)."""
        return {}

    def write_outputs(self, model: nn.Module, run_dir: Path) -> list[Path]:
        """Files a finished `dl train` run leaves beside its checkpoints (e.g. word vectors for other tools)."""
        return []

    def final_metrics(self, model: nn.Module) -> dict[str, float]:
        """Metrics measured once on the final model beyond the loss (e.g. validity of generated samples)."""
        return {}


def epoch_permutation(n: int, seed: int, device: torch.device) -> Tensor:
    """The order of an epoch's examples, drawn on the device (a CUDA generator draws another order than the CPU's):
    Task.batches, and tasks that stream their data, take the same order from the same seed."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.randperm(n, generator=gen, device=device)


def add_stats(total: dict[str, Tensor] | None, stats: dict[str, Tensor]) -> dict[str, Tensor]:
    """Sum per-batch stats on the device (no .item(): no host sync)."""
    if total is None:
        return {k: v.detach().clone() for k, v in stats.items()}
    for k, v in stats.items():
        total[k] += v.detach()
    return total


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A seeded shuffle cut into train/val/test index sets."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return perm[n_val + n_test:], perm[:n_val], perm[n_val:n_val + n_test]


def stratified_indices(labels: Tensor, val_fraction: float, test_fraction: float, seed: int, class_names: list[str],
                       source: str) -> tuple[Tensor, Tensor, Tensor]:
    """A seeded shuffle within each class, cut into train/val/test: each split holds every class in its share (at
    least one example of each in val and test when their fraction is above 0). Each split keeps the data's order."""
    gen = torch.Generator().manual_seed(seed)
    parts: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
    for c, name in enumerate(class_names):
        members = (labels == c).nonzero().flatten()
        if not len(members):  # a class this data lacks (dl eval on a file of some classes only)
            continue
        members = members[torch.randperm(len(members), generator=gen)]
        n_val = max(1, round(len(members) * val_fraction)) if val_fraction > 0 else 0
        n_test = max(1, round(len(members) * test_fraction)) if test_fraction > 0 else 0
        if n_val + n_test >= len(members):
            raise UserError(f"{source}: class {name!r} has {len(members)} example(s); splitting every class into "
                            f"train/val/test needs at least {n_val + n_test + 1}: add examples of it, lower "
                            "dataset.val_fraction / dataset.test_fraction, or give dataset.val_path and "
                            "dataset.test_path")
        for part, cut in zip(parts, (members[n_val + n_test:], members[:n_val], members[n_val:n_val + n_test])):
            part.append(cut)
    return tuple(torch.cat(p).sort().values for p in parts)  # type: ignore[return-value]
