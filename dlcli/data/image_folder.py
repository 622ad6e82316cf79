"""`dataset=image_folder`: a user's own pictures, one subfolder per class (DIR/cat/*.png, DIR/dog/*.jpg), or
DIR/train/, DIR/val/, DIR/test/ each holding such class folders.

Every file is decoded once (images.decode_image, the same call `dl sample --input` makes) and cached as uint8 under
the cache directory, keyed by each file's path, size and mtime and by the resize/channel settings: a second run
starts at once and a changed folder is read again. The per-channel mean/std of the train split go into meta (so into
the checkpoint): eval and sample normalise as training did. Training batches can be augmented on the device
(random crops of the padded images, left-right flips), drawn from a generator seeded per epoch so a resume replays
them."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import ListConfig, OmegaConf
from torch import Tensor

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.data.cache import cache_dir
from dlcli.data.classification import ClassifyTask
from dlcli.data.images import decode_image

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1  # bump when the cached arrays change meaning: old entries are then never read
DEFAULT_SIZE = 32  # dataset.image_size=null: CIFAR's size, small enough for 2 CPU cores
AUGMENT_SEED = 0x5EED  # the augmentation draws its own stream: the batch order stays the one without augmentation


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


# ------------------------------------------------------------------------------------------------- the cache
def cache_file(cfg: Any, listing: Listing, size: tuple[int, int], channels: int) -> Path:
    """<settings>-<content>.npz: settings = folder + size + channels; content = each file's path, size and mtime."""
    root = listing.root.resolve()
    settings = json.dumps([CACHE_FORMAT, str(root), list(size), channels])
    stats = [(str(f.relative_to(listing.root)), st.st_size, st.st_mtime_ns) for f, st in
             ((f, f.stat()) for f in listing.files)]
    content = json.dumps(stats)  # the order of the files is the order of the images
    digest = (hashlib.sha256(settings.encode()).hexdigest()[:16], hashlib.sha256(content.encode()).hexdigest()[:16])
    return cache_dir(cfg, "images") / f"{digest[0]}-{digest[1]}.npz"


def _write_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Temp file beside it, fsync, os.replace: a reader sees the old entry or the whole new one. Older entries of
    the same folder and settings (the folder has changed since) are removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    for old in path.parent.glob(path.name.split("-")[0] + "-*.npz"):
        if old != path:
            old.unlink(missing_ok=True)


def _decode_all(listing: Listing, size: tuple[int, int], channels: int) -> dict[str, np.ndarray]:
    """Decode every file (threads: Pillow lets go of the GIL while it decodes and resizes); unreadable ones are
    listed with the reason, not raised, so the cache can remember them too."""
    from PIL import UnidentifiedImageError  # start-up speed: every data module is imported to find its DATASETS

    def one(path: Path) -> np.ndarray | str:
        try:
            return decode_image(path, channels, size)
        except UnidentifiedImageError:
            return "not an image Pillow can read"
        except Exception as e:  # Pillow's decoders raise many kinds of errors on a damaged file
            return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"

    images = np.empty((len(listing.files), size[0], size[1], channels), dtype=np.uint8)
    bad, why = [], []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, _progress(listing) as advance:
        for i, out in enumerate(pool.map(one, listing.files)):
            if isinstance(out, str):
                bad.append(i)
                why.append(out)
            else:
                images[i] = out
            advance()
    return {"images": images, "bad": np.array(bad, dtype=np.int64), "why": np.array(why, dtype=str)}


@contextmanager
def _progress(listing: Listing) -> Iterator[Callable[[], None]]:
    """A bar on a terminal that is gone once the images are decoded; nothing in a log or a pipe (stderr then
    holds one line only if something is wrong)."""
    console = make_console(stderr=True)
    if not console.is_terminal:
        yield lambda: None
        return
    from rich.progress import Progress  # start-up speed: only while decoding on a terminal

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"decoding {len(listing.files)} images from {listing.root} (once)",
                            total=len(listing.files))
        yield lambda: bar.advance(task)


def load_images(cfg: Any, listing: Listing, size: tuple[int, int],
                channels: int) -> tuple[dict[str, np.ndarray], str]:
    """The decoded images (uint8, N x H x W x C) and the unreadable files: from the cache, else decoded and cached;
    and how they came in, in words."""
    path = cache_file(cfg, listing, size, channels) if cfg.get("cache", True) else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in ("images", "bad", "why")}, f"read from the cache {path}"
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: decode again
            pass
    start = time.perf_counter()
    arrays = _decode_all(listing, size, channels)
    how = f"decoded in {time.perf_counter() - start:.1f} s"
    if path is not None:
        try:
            _write_atomically(path, arrays)
            how += f", cached in {path} for the next run"
        except OSError as e:  # a read-only home: the run goes on, the next one decodes again
            make_console(stderr=True).print(f"dataset=image_folder: cannot cache in {path.parent} ({e.strerror}); "
                                            "set DL_CACHE_DIR or dataset.cache_dir to a writable folder")
    return arrays, how


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


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 N x H x W x C images on the 0-1 scale, exact, from each channel's
    histogram (a float copy of the images would take longer)."""
    value = np.arange(256) / 255.0
    mean, std = [], []
    for c in range(images.shape[-1]):
        counts = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        m = float(counts @ value / counts.sum())
        s = float(np.sqrt(max(counts @ value ** 2 / counts.sum() - m * m, 0.0)))
        mean.append(m)
        std.append(s if s > 1e-6 else 1.0)  # one flat colour: nothing to scale
    return mean, std


def to_tensor(images: np.ndarray, mean: list[float], std: list[float]) -> Tensor:
    """uint8 N x H x W x C -> normalised float N x C x H x W, as images.load_image_files does for one picture."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float()
    return x.div_(255.0).sub_(torch.tensor(mean).reshape(1, -1, 1, 1)).div_(torch.tensor(std).reshape(1, -1, 1, 1))


def _readable(cfg: Any, listing: Listing, arrays: dict[str, np.ndarray], training: bool) -> np.ndarray:
    """Indices of the readable files; an unreadable one is an error unless dataset.skip_bad_files."""
    bad = arrays["bad"]
    keep = np.ones(len(listing.files), dtype=bool)
    keep[bad] = False
    if not len(bad):
        return np.flatnonzero(keep)
    first = listing.files[int(bad[0])]
    if not cfg.get("skip_bad_files", False):
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(f"dataset.path={cfg.path}: {first} is not a readable image ({arrays['why'][0]}){more}; "
                        "remove it or set dataset.skip_bad_files=true")
    left = set(np.array(listing.labels)[keep].tolist())
    empty = [c for i, c in enumerate(listing.classes) if i not in left]
    if training and empty:
        raise UserError(f"dataset.path={cfg.path}: every image of the class {empty[0]} was skipped as unreadable; "
                        "a class needs at least one")
    make_console(stderr=True).print(f"dataset=image_folder: skipped {len(bad)} unreadable file(s), e.g. {first}")
    return np.flatnonzero(keep)


def image_folder(cfg: Any, loss_cfg: Any, preprocessing: dict | None = None) -> ImageFolderTask:
    """preprocessing: the checkpoint's classes and pixel statistics (dl eval / dl sample), reused, not refitted."""
    if cfg.get("path") in (None, "???") or not str(cfg.get("path", "")).strip():
        raise UserError("dataset=image_folder needs dataset.path=DIR, a folder with one subfolder of images per "
                        "class; e.g. dl train model=cnn dataset=image_folder dataset.path=photos")
    size, channels = _settings(cfg)
    listing = scan(str(cfg.path), preprocessing["class_names"] if preprocessing else None)
    arrays, how = load_images(cfg, listing, size, channels)
    keep = _readable(cfg, listing, arrays, training=preprocessing is None)
    labels = np.array(listing.labels, dtype=np.int64)[keep]
    split = np.array(listing.split, dtype=np.int64)[keep]
    missing = {code: float(cfg[f"{s}_fraction"]) for code, s in ((1, "val"), (2, "test"))
               if s not in listing.subfolders}
    split = split_by_fraction(labels, split, missing, int(cfg.seed))
    images = arrays["images"][keep]
    if preprocessing:
        mean, std = preprocessing["pixel_mean"], preprocessing["pixel_std"]
    else:  # over the train split only (val/test stay unseen)
        mean, std = channel_stats(images[split == 0])
    splits = {s: (to_tensor(images[split == code], mean, std), torch.from_numpy(labels[split == code]))
              for code, s in enumerate(SPLITS)}
    meta = {"input_shape": [channels, *size], "num_classes": len(listing.classes), "class_names": listing.classes,
            "pixel_mean": mean, "pixel_std": std,
            # data/__init__.py hands a checkpoint's `preprocessing` back to this builder (eval, sample)
            "preprocessing": {"class_names": listing.classes, "pixel_mean": mean, "pixel_std": std}}
    task = image_task(splits, meta, cfg, loss_cfg)
    task.loading = f"{len(images):,} images of {len(listing.classes)} classes from {listing.root}, {how}"
    return task


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


def image_task(splits: dict, meta: dict, cfg: Any, loss_cfg: Any) -> ImageFolderTask:
    """A classification task of images, its training batches augmented as dataset.augment says."""
    augment = cfg.get("augment") or {}
    return ImageFolderTask(splits, meta, loss_cfg, int(augment.get("crop_padding", 0) or 0),
                           bool(augment.get("hflip", False)))


class ImageFolderTask(ClassifyTask):
    """Classification of the folder's images; training batches optionally augmented (dataset.augment)."""

    def __init__(self, splits: dict, meta: dict, loss_cfg: Any, crop_padding: int = 0, hflip: bool = False):
        super().__init__(splits, meta, loss_cfg)
        self.crop_padding, self.hflip = crop_padding, hflip

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[tuple]:
        plain = super().batches(split, batch_size, shuffle=shuffle, seed=seed)
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


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"image_folder": image_folder}
