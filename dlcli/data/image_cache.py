"""The decoded images of a `dataset=image_folder` folder, as an entry of the cache (data/cache.py).

Every file is decoded once (images.decode_image, the same call `dl sample --input` makes) into one uint8 array,
N x H x W x C in the files' order, written chunk by chunk as the files are decoded (memory holds one chunk, never the
folder), plus the indices of the files that are not readable images; the entry's meta (with why each was not
readable) is written last. A second run memory-maps the array and starts at once. The entry is keyed by each file's
path, size and mtime and by the resize/channel settings: a changed folder is read again, and its old entry removed.
Labels and splits are not stored: they come from the folder's listing every run (in `dl eval` the class indices are
the checkpoint's, which another run of the same folder may not share).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlcli.base.console import make_console
from dlcli.data.cache import array_file, cache_dir, map_entry, new_entry, write_meta
from dlcli.data.images import decode_image

CACHE_FORMAT = 2  # bump when the cached arrays change meaning: old entries are then never read (1: one .npz file)
CHUNK = 512  # files decoded (and images summed for the pixel statistics) at a time


@dataclass
class Decoded:
    images: np.ndarray  # uint8 N x H x W x C: the memory-mapped entry, or in memory (dataset.cache=false)
    bad: np.ndarray     # the indices of the files that are not readable images
    why: list[str]      # for each of them, why
    how: str            # how the images came in, in words
    source: Path | None = None  # the cache entry's image file, when images is its memory map


def _settings_digest(fmt: int, root: Path, size: tuple[int, int], channels: int) -> str:
    return hashlib.sha256(json.dumps([fmt, str(root), list(size), channels]).encode()).hexdigest()[:16]


def entry_of(cfg: Any, root: Path, files: list[Path], size: tuple[int, int], channels: int) -> Path:
    """<settings>-<content>: settings = folder + size + channels; content = each file's path, size and mtime."""
    stats = [(str(f.relative_to(root)), st.st_size, st.st_mtime_ns) for f, st in ((f, f.stat()) for f in files)]
    content = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]  # the files' order is the images' order
    return cache_dir(cfg, "images") / f"{_settings_digest(CACHE_FORMAT, root.resolve(), size, channels)}-{content}"


def load_images(cfg: Any, root: Path, files: list[Path], size: tuple[int, int], channels: int) -> Decoded:
    """The folder's decoded images: mapped from the cache, else decoded into it (or into memory when
    dataset.cache=false or the cache folder is not writable)."""
    entry = entry_of(cfg, root, files, size, channels) if cfg.get("cache", True) else None
    if entry is not None and (found := _mapped(entry, len(files))) is not None:
        return found
    start = time.perf_counter()
    if entry is not None:
        try:
            _decode_to_entry(entry, root, files, size, channels)
            found = _mapped(entry, len(files))
            if found is not None:
                found.how = (f"decoded in {time.perf_counter() - start:.1f} s, cached in "
                             f"{array_file(entry, 'images')} for the next run")
                return found
        except OSError as e:  # a read-only home, a full disk: the run goes on, the next one decodes again
            make_console(stderr=True).print(f"dataset=image_folder: cannot cache in {entry.parent} ({e.strerror}); "
                                            "set DL_CACHE_DIR or dataset.cache_dir to a writable folder")
    images = np.zeros((len(files), *size, channels), dtype=np.uint8)

    def into_memory(at: int, chunk: np.ndarray) -> None:
        images[at:at + len(chunk)] = chunk

    bad, why = _decode(root, files, size, channels, into_memory)
    return Decoded(images, np.array(bad, dtype=np.int64), why, f"decoded in {time.perf_counter() - start:.1f} s")


def _mapped(entry: Path, n: int) -> Decoded | None:
    """The entry's images, memory-mapped; None when it is absent, half-written or of another shape."""
    found = map_entry(entry)
    if found is None:
        return None
    meta, arrays = found
    shape = tuple(meta.get("shape") or ())
    if meta.get("format") != CACHE_FORMAT or len(shape) != 4 or shape[0] != n or "images" not in arrays:
        return None
    images = arrays["images"].reshape(shape)
    return Decoded(images, np.array(arrays["bad"]), list(meta["why"]),
                   f"read from the cache {array_file(entry, 'images')}",
                   array_file(entry, "images") if isinstance(images, np.memmap) else None)


def _decode_to_entry(entry: Path, root: Path, files: list[Path], size: tuple[int, int], channels: int) -> None:
    """Decode into the entry's files chunk by chunk; its meta last (a stopped run leaves no entry to read). Older
    entries of the same folder and settings (the folder has changed since, or an older format) are removed."""
    with new_entry(entry, ["images", "bad"]) as out:
        bad, why = _decode(root, files, size, channels, lambda at, chunk: out["images"].write(chunk.data))
        np.array(bad, dtype=np.int64).tofile(out["bad"])
    write_meta(entry, {"format": CACHE_FORMAT, "shape": [len(files), *size, channels], "why": why},
               {"images": (np.uint8, len(files) * size[0] * size[1] * channels), "bad": (np.int64, len(bad))})
    keep = {array_file(entry, name).name for name in ("images", "bad", "json")}
    for fmt in range(1, CACHE_FORMAT + 1):
        for old in entry.parent.glob(_settings_digest(fmt, root.resolve(), size, channels) + "-*"):
            if old.name not in keep:
                old.unlink(missing_ok=True)


def _decode(root: Path, files: list[Path], size: tuple[int, int], channels: int,
            write: Callable[[int, np.ndarray], None]) -> tuple[list[int], list[str]]:
    """Decode the files CHUNK at a time (threads: Pillow lets go of the GIL while it decodes and resizes) and hand
    each chunk to `write` (first index, uint8 images; an unreadable file's image is zeros). Returns the unreadable
    files' indices and why, not raised, so that the cache remembers them too."""
    from PIL import UnidentifiedImageError  # start-up speed: every data module is imported to find its DATASETS

    def one(path: Path) -> np.ndarray | str:
        try:
            return decode_image(path, channels, size)
        except UnidentifiedImageError:
            return "not an image Pillow can read"
        except Exception as e:  # Pillow's decoders raise many kinds of errors on a damaged file
            return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"

    bad: list[int] = []
    why: list[str] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, _progress(root, len(files)) as advance:
        for at in range(0, len(files), CHUNK):
            part = files[at:at + CHUNK]
            chunk = np.zeros((len(part), *size, channels), dtype=np.uint8)
            for i, out in enumerate(pool.map(one, part)):
                if isinstance(out, str):
                    bad.append(at + i)
                    why.append(out)
                else:
                    chunk[i] = out
            write(at, chunk)
            advance(len(part))
    return bad, why


@contextmanager
def _progress(root: Path, n: int) -> Iterator[Callable[[int], None]]:
    """A bar on a terminal that is gone once the images are decoded; nothing in a log or a pipe (stderr then
    holds one line only if something is wrong)."""
    console = make_console(stderr=True)
    if not console.is_terminal:
        yield lambda k: None
        return
    from rich.progress import Progress  # start-up speed: only while decoding on a terminal

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"decoding {n} images from {root} (once)", total=n)
        yield lambda k: bar.advance(task, k)


def channel_stats(images: np.ndarray, rows: np.ndarray | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 N x H x W x C images (those of `rows`, else all) on the 0-1 scale, exact,
    from each channel's histogram, summed CHUNK images at a time (a memory map is read, never copied whole)."""
    n = len(images) if rows is None else len(rows)
    counts = np.zeros((images.shape[-1], 256), dtype=np.float64)
    for at in range(0, n, CHUNK):
        part = images[at:at + CHUNK] if rows is None else images[rows[at:at + CHUNK]]
        for c in range(images.shape[-1]):
            counts[c] += np.bincount(part[..., c].ravel(), minlength=256)
    value = np.arange(256) / 255.0
    mean, std = [], []
    for row in counts:
        m = float(row @ value / row.sum())
        s = float(np.sqrt(max(row @ value ** 2 / row.sum() - m * m, 0.0)))
        mean.append(m)
        std.append(s if s > 1e-6 else 1.0)  # one flat colour: nothing to scale
    return mean, std
