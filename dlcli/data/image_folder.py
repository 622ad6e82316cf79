"""`dataset=image_folder`: a user's own pictures, one subfolder per class (DIR/cat/*.png, DIR/dog/*.jpg), or
DIR/train/, DIR/val/, DIR/test/ each holding such class folders.

Every file is decoded once into the uint8 image cache (data/image_cache.py): a second run maps it and starts at once,
and a changed folder is read again. The per-channel mean/std of the train split go into meta (so into the
checkpoint): eval and sample normalise as training did. The images are then held in memory as float tensors, or, when
they would not fit (dataset.in_memory), streamed from the memory-mapped cache (data/image_stream.py): the same batches
either way. Training batches can be augmented on the device (random crops of the padded images, left-right flips),
drawn from a generator seeded per epoch so a resume replays them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import ListConfig, OmegaConf

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.data.image_cache import Decoded, channel_stats, load_images
from dlcli.data.image_stream import (ImageFolderTask, ImageRows, StreamedImageTask, augment_batch, augment_settings,
                                     image_task, to_tensor, worker_count)

# data/cifar.py and the tests take these from here
__all__ = ["ImageFolderTask", "augment_batch", "channel_stats", "image_task", "to_tensor"]

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLITS = ("train", "val", "test")
DEFAULT_SIZE = 32  # dataset.image_size=null: CIFAR's size, small enough for 2 CPU cores
# dataset.in_memory=auto: float tensors in memory up to a quarter of the machine's RAM and at most 8 GiB (on a GPU
# they live in its memory, beside the model and its activations); past that, batches stream from the cache
MEMORY_SHARE, MEMORY_CAP = 4, 8 << 30


@dataclass
class Listing:
    """What the folder holds, in a fixed order (split, class, file name)."""

    root: Path
    files: list[Path]
    labels: list[int]           # index into classes
    split: list[int]            # 0 train (or everything, when split by fraction), 1 val, 2 test
    classes: list[str]
    subfolders: tuple[str, ...]  # the split folders present (train/val/test layout), else ()


# ------------------------------------------------------------------------------------------------- the folder
def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """Image files under folder (subfolders too), by path; other files (.txt, .DS_Store) are not images: skipped."""
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(parent, n) for n in sorted(names)
                  if not n.startswith(".") and n.lower().endswith(EXTENSIONS)]
    return found


def _class_folders(folder: Path, shown: str) -> dict[str, list[Path]]:
    """{class name: its image files}; a class folder without images is an error. shown: how to name folder."""
    classes = {d.name: image_files(d) for d in _visible_dirs(folder)}
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise UserError(f"the class folder {shown}/{empty[0]} holds no image files "
                        f"({', '.join(e[1:] for e in EXTENSIONS)}); add some or remove it")
    return classes


def scan(path: str, known: list[str] | None = None) -> Listing:
    """The folder's classes and files. known: the classes a checkpoint was trained on (eval on another folder)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"dataset.path={path}: no such folder")
    if not root.is_dir():
        raise UserError(f"dataset.path={path}: that is a file; name the folder that holds one subfolder per class")
    names = [d.name for d in _visible_dirs(root)]
    layout = tuple(s for s in SPLITS if s in names) if "train" in names else ()
    if layout and set(names) - set(SPLITS):
        raise UserError(f"dataset.path={path} has train/ (a train/val/test layout) and also "
                        f"{', '.join(sorted(set(names) - set(SPLITS)))}/; move those into train/ (one folder per "
                        "class) or out of the way")
    shown = path.rstrip("/")
    parts = ({s: _class_folders(root / s, f"{shown}/{s}") for s in layout} if layout
             else {"train": _class_folders(root, shown)})
    _check_classes(path, root, sorted(parts["train"]), known)
    classes = known or sorted(parts["train"])
    for s, found in parts.items():
        extra = sorted(set(found) - set(classes))
        if extra:
            folder = f"{s}/{extra[0]}" if layout else extra[0]
            what = "one the model was trained on (its" if known else "in train/ (train/'s"
            raise UserError(f"dataset.path={path}: the class folder {folder} is not {what} classes: "
                            f"{', '.join(classes)})")
    listing = Listing(root, [], [], [], classes, layout)
    for code, s in enumerate(SPLITS):
        for name, files in sorted(parts.get(s, {}).items()):
            listing.files += files
            listing.labels += [classes.index(name)] * len(files)
            listing.split += [code] * len(files)
    return listing


def _check_classes(path: str, root: Path, classes: list[str], known: list[str] | None) -> None:
    where = "train/ " if (root / "train").is_dir() else ""
    if not classes:
        loose = len(image_files(root))
        found = f"{loose} image files but no class subfolders" if loose else "no subfolders"
        raise UserError(f"dataset.path={path} {where}has {found}: put each class's images in a subfolder named "
                        f"after the class ({path}/cat/1.png, {path}/dog/2.png)")
    if len(classes) < 2 and not known:
        raise UserError(f"dataset.path={path} {where}has one class folder ({classes[0]}); a classifier needs two or "
                        "more, one subfolder per class")


# ------------------------------------------------------------------------------------------------- splits and task
def split_by_fraction(labels: np.ndarray, split: np.ndarray, fractions: dict[int, float], seed: int) -> np.ndarray:
    """Move a seeded share of each class's train files to val (1) and/or test (2): stratified, so every class
    keeps its share in every split."""
    out = split.copy()
    gen = torch.Generator().manual_seed(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero((labels == c) & (split == 0))
        idx = idx[torch.randperm(len(idx), generator=gen).numpy()]
        start = 0
        for code, fraction in sorted(fractions.items()):
            n = int(round(len(idx) * fraction))
            out[idx[start:start + n]] = code
            start += n
    return out


def _settings(cfg: Any) -> tuple[tuple[int, int], int]:
    """(height, width) and channels, checked."""
    raw = cfg.get("image_size")
    raw = DEFAULT_SIZE if raw is None else raw  # null in the YAML: an override may then be an int or a list
    size = [raw, raw] if isinstance(raw, int) else list(raw) if isinstance(raw, (list, ListConfig)) else []
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 4096 for s in size):
        shown = OmegaConf.to_container(raw) if isinstance(raw, ListConfig) else raw
        raise UserError(f"dataset.image_size={shown}: one size in pixels (e.g. 32) or [height, width], each 1-4096")
    channels = cfg.get("channels", 3)
    if isinstance(channels, bool) or channels not in (1, 3):
        raise UserError(f"dataset.channels={channels}: 1 (grayscale) or 3 (RGB)")
    return (size[0], size[1]), int(channels)


def _readable(cfg: Any, listing: Listing, decoded: Decoded, training: bool) -> np.ndarray:
    """Indices of the readable files; an unreadable one is an error unless dataset.skip_bad_files."""
    bad = decoded.bad
    keep = np.ones(len(listing.files), dtype=bool)
    keep[bad] = False
    if not len(bad):
        return np.flatnonzero(keep)
    first = listing.files[int(bad[0])]
    if not cfg.get("skip_bad_files", False):
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(f"dataset.path={cfg.path}: {first} is not a readable image ({decoded.why[0]}){more}; "
                        "remove it or set dataset.skip_bad_files=true")
    left = set(np.array(listing.labels)[keep].tolist())
    empty = [c for i, c in enumerate(listing.classes) if i not in left]
    if training and empty:
        raise UserError(f"dataset.path={cfg.path}: every image of the class {empty[0]} was skipped as unreadable; "
                        "a class needs at least one")
    make_console(stderr=True).print(f"dataset=image_folder: skipped {len(bad)} unreadable file(s), e.g. {first}")
    return np.flatnonzero(keep)


def memory_budget() -> int:
    """Bytes of float images dataset.in_memory=auto holds in memory (MEMORY_SHARE, MEMORY_CAP)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): the cap alone
        return MEMORY_CAP
    return min(ram // MEMORY_SHARE, MEMORY_CAP)


def _in_memory_choice(cfg: Any) -> bool | None:
    """dataset.in_memory: True / False, or None for auto (decided once the images' number is known)."""
    choice = cfg.get("in_memory", "auto")
    if choice == "auto" or isinstance(choice, bool):
        return None if choice == "auto" else choice
    raise UserError(f"dataset.in_memory={choice}: choose auto, true or false")


def image_folder(cfg: Any, loss_cfg: Any, preprocessing: dict | None = None) -> ImageFolderTask:
    """preprocessing: the checkpoint's classes and pixel statistics (dl eval / dl sample), reused, not refitted."""
    if cfg.get("path") in (None, "???") or not str(cfg.get("path", "")).strip():
        raise UserError("dataset=image_folder needs dataset.path=DIR, a folder with one subfolder of images per "
                        "class; e.g. dl train model=cnn dataset=image_folder dataset.path=photos")
    size, channels = _settings(cfg)
    in_memory, workers = _in_memory_choice(cfg), worker_count(cfg.get("num_workers", "auto"))
    listing = scan(str(cfg.path), preprocessing["class_names"] if preprocessing else None)
    decoded = load_images(cfg, listing.root, listing.files, size, channels)
    keep = _readable(cfg, listing, decoded, training=preprocessing is None)
    labels = np.array(listing.labels, dtype=np.int64)[keep]
    split = np.array(listing.split, dtype=np.int64)[keep]
    missing = {code: float(cfg[f"{s}_fraction"]) for code, s in ((1, "val"), (2, "test"))
               if s not in listing.subfolders}
    split = split_by_fraction(labels, split, missing, int(cfg.seed))
    if preprocessing:
        mean, std = preprocessing["pixel_mean"], preprocessing["pixel_std"]
    else:  # over the train split only (val/test stay unseen)
        mean, std = channel_stats(decoded.images, keep[split == 0])
    meta = {"input_shape": [channels, *size], "num_classes": len(listing.classes), "class_names": listing.classes,
            "pixel_mean": mean, "pixel_std": std,
            # data/__init__.py hands a checkpoint's `preprocessing` back to this builder (eval, sample)
            "preprocessing": {"class_names": listing.classes, "pixel_mean": mean, "pixel_std": std}}
    parts = {s: (keep[split == code], labels[split == code]) for code, s in enumerate(SPLITS)}
    task = _task(cfg, loss_cfg, decoded, parts, meta, in_memory, workers)
    task.loading = (f"{len(keep):,} images of {len(listing.classes)} classes from {listing.root}, {decoded.how}; "
                    f"{task.loading}")
    return task


def _task(cfg: Any, loss_cfg: Any, decoded: Decoded, parts: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict,
          in_memory: bool | None, workers: int) -> ImageFolderTask:
    """The task, its images in memory or streamed (parts: each split's rows of decoded.images and their labels);
    its `loading` says which, its `chosen` what auto became."""
    chosen = {}
    if in_memory is None:
        n = sum(len(rows) for rows, _ in parts.values())
        need, budget = n * int(np.prod(meta["input_shape"])) * 4, memory_budget()
        in_memory = need <= budget
        chosen["dataset.in_memory"] = (f"{str(in_memory).lower()} (the images take {need / 2 ** 20:,.0f} MiB as "
                                       f"float32; in memory up to {budget / 2 ** 20:,.0f} MiB: a quarter of the "
                                       f"RAM, at most {MEMORY_CAP >> 30} GiB)")
    if in_memory:
        task = image_task({s: (to_tensor(decoded.images, meta["pixel_mean"], meta["pixel_std"], rows),
                               torch.from_numpy(y)) for s, (rows, y) in parts.items()}, meta, cfg, loss_cfg)
        task.loading = "batches from memory"
    else:
        task = StreamedImageTask({s: ImageRows(decoded.images, rows, y, decoded.source)
                                  for s, (rows, y) in parts.items()}, meta, loss_cfg, *augment_settings(cfg), workers)
        source = "memory-mapped cache" if decoded.source else "decoded images in memory"
        readers = f"{workers} worker process{'es' if workers > 1 else ''}" if workers else "in the main process"
        task.loading = f"batches read from the {source} ({readers})"
        if cfg.get("num_workers", "auto") == "auto":
            chosen["dataset.num_workers"] = f"{workers} (one per core but one, at most 4)"
    task.chosen.update(chosen)
    return task


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"image_folder": image_folder}
