"""How image batches reach the model: from float tensors in memory (ImageFolderTask), or streamed from the
memory-mapped uint8 cache (StreamedImageTask) when the folder's images would not fit (dataset.in_memory).

Both paths take the same batches in the same order for a seed (Task.batches' permutation), convert uint8 to
normalised float with the same function (to_float: in memory once when the task is built, streamed per batch on the
device after the transfer) and augment on the device with the same draws: a streamed run trains on what a run in
memory trains on, and a resume replays it. Streamed batches are read by a torch DataLoader over the map, each
batch's rows in one read (a batch sampler of the epoch's index batches), by worker processes (dataset.num_workers)
that only read uint8 rows: conversion, normalisation and augmentation stay on the device.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dlcli.base.errors import UserError
from dlcli.base.task import epoch_permutation
from dlcli.data.classification import ClassifyTask

AUGMENT_SEED = 0x5EED  # the augmentation draws its own stream: the batch order stays the one without augmentation
ROWS_AT_ONCE = 4096  # images converted to float at a time when a split is loaded into memory


# ------------------------------------------------------------------------------------------ pixels, on any device
def pixel_tensors(mean: list[float], std: list[float], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std shaped (1, C, 1, 1), to broadcast over a batch."""
    return (torch.tensor(mean, device=device).reshape(1, -1, 1, 1),
            torch.tensor(std, device=device).reshape(1, -1, 1, 1))


def to_float(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 N x H x W x C -> normalised float N x C x H x W, as images.load_image_files does for one picture."""
    return x.permute(0, 3, 1, 2).contiguous().float().div_(255.0).sub_(mean).div_(std)


def to_tensor(images: np.ndarray, mean: list[float], std: list[float], rows: np.ndarray | None = None) -> Tensor:
    """The uint8 N x H x W x C images (those of `rows`, else all; a memory map too) as one normalised float
    N x C x H x W tensor, converted ROWS_AT_ONCE at a time: no uint8 copy of them all is made on the way."""
    rows = np.arange(len(images)) if rows is None else rows
    out = torch.empty((len(rows), images.shape[3], images.shape[1], images.shape[2]))
    m, s = pixel_tensors(mean, std, torch.device("cpu"))
    for at in range(0, len(rows), ROWS_AT_ONCE):
        part = images[rows[at:at + ROWS_AT_ONCE]]  # fancy indexing: a fresh, writable copy of these rows only
        out[at:at + len(part)] = to_float(torch.from_numpy(part), m, s)
    return out


def augment_batch(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, pad: int) -> Tensor:
    """Crop each image of the zero-padded batch at (dy, dx) in [0, 2 pad] and mirror those with `flip`, all in one
    gather on the batch's device. Zero is the mean colour here: the images are normalised already."""
    n, _, h, w = x.shape
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    across = torch.arange(w, device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)                     # N x H
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - across, across)  # N x W
    picked = x[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # N H W C
    return picked.permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------------- in memory
def augment_settings(cfg: Any) -> tuple[int, bool]:
    """(crop padding, hflip) from dataset.augment."""
    augment = cfg.get("augment") or {}
    return int(augment.get("crop_padding", 0) or 0), bool(augment.get("hflip", False))


def image_task(splits: dict, meta: dict, cfg: Any, loss_cfg: Any) -> ImageFolderTask:
    """A classification task of images in memory, its training batches augmented as dataset.augment says."""
    return ImageFolderTask(splits, meta, loss_cfg, *augment_settings(cfg))


class ImageFolderTask(ClassifyTask):
    """Classification of images held as float tensors; training batches optionally augmented (dataset.augment)."""

    def __init__(self, splits: dict, meta: dict, loss_cfg: Any, crop_padding: int = 0, hflip: bool = False):
        super().__init__(splits, meta, loss_cfg)
        self.crop_padding, self.hflip = crop_padding, hflip

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[tuple]:
        plain = super().batches(split, batch_size, shuffle=shuffle, seed=seed)
        yield from self.augmented(plain, split, batch_size, shuffle, seed)

    def augmented(self, plain: Iterator[tuple], split: str, batch_size: int, shuffle: bool,
                  seed: int) -> Iterator[tuple]:
        """An epoch's batches, augmented when they are shuffled training batches and dataset.augment asks."""
        if split != "train" or not shuffle or not (self.crop_padding or self.hflip):  # eval batches: as they are
            yield from plain
            return
        # One epoch's draws at once, from a generator seeded by the epoch's seed: a resumed run draws them again
        n, device, pad = self.size("train"), self.device, self.crop_padding
        gen = torch.Generator(device=device)
        gen.manual_seed(seed + AUGMENT_SEED)
        dy, dx = (torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=device) for _ in range(2))
        flip = torch.rand(n, generator=gen, device=device) < (0.5 if self.hflip else 0.0)
        for i, (x, y) in enumerate(plain):
            at = slice(i * batch_size, i * batch_size + len(y))
            yield augment_batch(x, dy[at], dx[at], flip[at], pad), y


# --------------------------------------------------------------------------------------------------- streamed
def worker_count(value: Any) -> int:
    """dataset.num_workers: a number, or auto = one process per core but one (the main process feeds the model),
    at most 4 (reading uint8 rows from a map is light work), none on one core."""
    if value == "auto":
        return min(4, (os.cpu_count() or 1) - 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 256:
        raise UserError(f"dataset.num_workers={value}: auto or a whole number of worker processes, 0-256 (0: read "
                        "batches in the main process)")
    return value


class ImageRows(Dataset):
    """One split's images in the uint8 array (the memory-mapped cache, or memory): items are (uint8 H x W x C,
    label); a batch of positions is read at once (__getitems__, as DataLoader asks with a batch sampler)."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, source: Path | None = None):
        self.images, self.rows, self.labels = images, rows, labels
        self.source, self.shape = source, images.shape  # source: the map's file, reopened by a spawned worker

    def __getstate__(self) -> dict:
        # A worker started by spawn/forkserver (macOS, Windows) maps the file itself: a pickled memmap is a copy
        state = dict(self.__dict__)
        if self.source is not None:
            state["images"] = None
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, positions: Any) -> tuple[Tensor, Tensor]:
        if self.images is None:
            self.images = np.memmap(self.source, dtype=np.uint8, mode="r", shape=self.shape)
        positions = np.asarray(positions, dtype=np.int64)
        return torch.from_numpy(self.images[self.rows[positions]]), torch.from_numpy(self.labels[positions])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]


def whole_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The DataLoader's collate_fn: __getitems__ returns the batch already stacked."""
    return batch


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _worker_ignores_stop_signals(_: int) -> None:
    """Ctrl-C (or a scheduler's SIGTERM) reaches the whole process group: the main process finishes its step, saves
    and shuts its workers down, and a worker must neither die on the signal first (that step's next read would fail)
    nor run the main process's handler (it would say so again)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _started(loader: DataLoader) -> Iterator:
    """iter(loader), the stop signals held back while it starts the workers (a worker inherits the mask until
    _worker_ignores_stop_signals runs); the main process gets a signal sent meanwhile once they are started."""
    if not loader.num_workers or not hasattr(signal, "pthread_sigmask"):  # (Windows has no signal masks)
        return iter(loader)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class StreamedImageTask(ImageFolderTask):
    """Images left in the uint8 array (memory-mapped cache): each batch is read by a DataLoader, sent to the device
    (pinned when it is a GPU) and converted, normalised and augmented there, as ImageFolderTask's batches are.

    persistent_workers is off: the epoch's seed makes a new batch sampler, so each epoch (and each evaluation) has a
    DataLoader of its own, and its workers (which hold nothing but the map) end with it, also when an epoch is cut
    short (trainer.limit_train_batches, a stop)."""

    def __init__(self, data: dict[str, ImageRows], meta: dict, loss_cfg: Any, crop_padding: int, hflip: bool,
                 workers: int):
        super().__init__({}, meta, loss_cfg, crop_padding, hflip)
        self.data, self.workers = data, workers
        self.to(torch.device("cpu"))

    def to(self, device: torch.device) -> StreamedImageTask:
        self._device = device
        self.pixel_mean, self.pixel_std = pixel_tensors(self.meta["pixel_mean"], self.meta["pixel_std"], device)
        return self

    @property
    def device(self) -> torch.device:
        return self._device

    def size(self, split: str) -> int:
        return len(self.data[split])

    def rows(self, split: str, idx: Tensor) -> tuple:
        x, y = self.data[split].__getitems__(idx.cpu().numpy())
        return self._on_device(x, y)

    def example_input(self, n: int = 2) -> Tensor:
        return self.rows("train", torch.arange(min(n, self.size("train"))))[0]

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[tuple]:
        n = self.size(split)
        # the positions Task.batches would take: the same permutation, drawn on the same device
        order = epoch_permutation(n, seed, self._device).cpu().numpy() if shuffle else np.arange(n)
        loader = DataLoader(self.data[split], batch_sampler=[order[i:i + batch_size] for i in range(0, n, batch_size)],
                            collate_fn=whole_batch, num_workers=self.workers,
                            pin_memory=self._device.type == "cuda", persistent_workers=False,
                            worker_init_fn=_worker_ignores_stop_signals if self.workers else None,
                            # its own generator: a DataLoader draws its workers' seed from the global one otherwise,
                            # and the model's dropout would then differ from a run in memory
                            generator=torch.Generator().manual_seed(0))
        plain = (self._on_device(x, y) for x, y in _started(loader))
        yield from self.augmented(plain, split, batch_size, shuffle, seed)

    def _on_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(self._device, non_blocking=True)
        return to_float(x, self.pixel_mean, self.pixel_std), y.to(self._device, non_blocking=True)
