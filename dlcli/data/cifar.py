"""CIFAR-10 from its official binary version (cifar-10-binary.tar.gz): 50,000 training and 10,000 test images,
32x32 RGB, ten classes.

Looked for, in this order, under dataset.root: the extracted batches (cifar10/cifar-10-batches-bin/, cifar10/,
cifar-10-batches-bin/), then the archive (cifar10/cifar-10-binary.tar.gz, cifar-10-binary.tar.gz), else the archive
is downloaded into cifar10/. An archive is sha256-checked, then only the seven files used are extracted, each to a
name chosen here (never a path taken from the archive). Each batch file is a run of 3073-byte records: the label
byte, then the 1024 red, 1024 green and 1024 blue pixels of a 32x32 image, row by row.

Inputs are normalised per channel with the mean/std of the train split (val held out; on the real data close to the
usual 0.4914, 0.4822, 0.4465 / 0.2470, 0.2435, 0.2616); they go into meta, so eval and `dl sample --input a.png`
normalise as training did. Training batches are augmented on the device as dataset=image_folder's are (random crops
of the padded images, left-right flips: dataset.augment)."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from dlcli.base.errors import UserError
from dlcli.data.download import download, sha256_of
from dlcli.data.image_folder import ImageFolderTask, channel_stats, image_task, to_tensor

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"  # 170,052,171 bytes (md5 c32a1d4a...)
ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"  # what the archive unpacks to
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
SIDE, CHANNELS = 32, 3
RECORD = 1 + CHANNELS * SIDE * SIDE  # label byte + R, G, B planes


# ------------------------------------------------------------------------------------------------- finding the files
def _places(root: Path) -> tuple[list[Path], list[Path]]:
    """Where the extracted batches may be, and where the archive may be (each in the order searched)."""
    return [root / "cifar10" / FOLDER, root / "cifar10", root / FOLDER], [root / "cifar10" / ARCHIVE, root / ARCHIVE]


def find_or_fetch(cfg: Any) -> tuple[Path, str]:
    """The folder that holds the seven files, and how it came to be there (in words)."""
    root = Path(str(cfg.root)).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"dataset.root={root} is a file, not a directory (DL_DATA_DIR sets it); point it at the "
                        "folder that holds cifar10/ (or where it may be downloaded)")
    folders, archives = _places(root)
    for folder in folders:
        if all((folder / f).is_file() for f in FILES):
            return folder, ""
    digest = str(cfg.get("sha256") or SHA256).lower()
    for archive in archives:
        if archive.is_file():
            if sha256_of(archive) != digest:
                raise UserError(f"{archive} has the wrong sha256 (corrupt, or not the official {ARCHIVE}); delete "
                                "it to download it again, or set dataset.sha256 to the digest of a copy you trust")
            return extract(archive, archive.parent / FOLDER), f", extracted from {archive}"
    looked = ", ".join(str(p) for p in [*folders, *archives])
    if not cfg.download:
        raise UserError(f"cifar10 not found under {root} (looked for {FOLDER}/ and {ARCHIVE} in: {looked}) and "
                        "dataset.download=false; put them there or set DL_DATA_DIR / dataset.root")
    url = str(cfg.get("url") or URL)
    try:
        archive = download(url, archives[0], digest)
    except UserError as e:
        raise UserError(f"cifar10 not found under {root} and {e}; put {ARCHIVE} (or the extracted {FOLDER}/) in "
                        f"{root / 'cifar10'} or set DL_DATA_DIR / dataset.root to a directory that has it") from None
    return extract(archive, archives[0].parent / FOLDER), f", downloaded from {url} and extracted"


def extract(archive: Path, dest: Path) -> Path:
    """The seven files of the archive into dest, whatever folder they sit in inside it. Each is written to dest/<its
    base name> (an absolute or ../ member name is refused, links and devices are never extracted), into a temp
    folder of this process first: dest appears whole or not at all."""
    try:
        part = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"))
    except OSError as e:
        raise UserError(f"cannot extract {archive} into {dest.parent} ({e.strerror}); extract it yourself "
                        f"(tar xzf {archive.name}) or set dataset.root to a folder you can write to") from None
    found: set[str] = set()
    try:
        with tarfile.open(archive, "r|gz") as tar:  # one pass over the stream
            for member in tar:
                path = PurePosixPath(member.name)
                if path.name not in FILES:
                    continue
                if path.is_absolute() or ".." in path.parts:
                    raise UserError(f"{archive} holds the unsafe path {member.name}; refusing to extract it")
                if not member.isfile() or path.name in found:
                    what = "a second" if path.name in found else "a link or special file as"
                    raise UserError(f"{archive} holds {what} {path.name} ({member.name}); not the CIFAR-10 archive")
                with tar.extractfile(member) as src, open(part / path.name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                found.add(path.name)
        missing = [f for f in FILES if f not in found]
        if missing:
            raise UserError(f"{archive} has no {', '.join(missing)}; not the CIFAR-10 binary archive ({ARCHIVE})")
        if not all((dest / f).is_file() for f in FILES):  # else another process (a torchrun rank) was first
            shutil.rmtree(dest, ignore_errors=True)  # a folder left incomplete: replaced
            os.replace(part, dest)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:  # gzip's BadGzipFile is an OSError
        raise UserError(f"cannot extract {archive} ({type(e).__name__}: {e}); if the archive is damaged, delete it "
                        "to download it again") from None
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return dest


# ------------------------------------------------------------------------------------------------- reading them
def read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> uint8 images N x 3 x 32 x 32 and int64 labels, checked for a whole number of records and
    labels that name a class."""
    raw = np.fromfile(path, dtype=np.uint8)
    again = f"delete {path.parent} to extract or download it again"
    if raw.size == 0 or raw.size % RECORD:
        raise UserError(f"{path}: {raw.size:,} bytes is not a whole number of {RECORD}-byte records (a label byte and "
                        f"a {SIDE}x{SIDE} RGB image); the file is truncated or not CIFAR-10 binary: {again}")
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= num_classes:
        at = int(np.argmax(labels >= num_classes))
        raise UserError(f"{path}: record {at} has the label {labels[at]}, but {META_FILE} names {num_classes} "
                        f"classes; the file is corrupt: {again}")
    return np.ascontiguousarray(records[:, 1:]).reshape(-1, CHANNELS, SIDE, SIDE), labels


def class_names(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, OSError) as e:
        raise UserError(f"{path}: cannot read the class names ({e})") from None
    if not 2 <= len(names) <= 256:
        raise UserError(f"{path}: {len(names)} class name(s), one a line expected (CIFAR-10 has 10)")
    return names


def cifar10(cfg: Any, loss_cfg: Any, preprocessing: dict | None = None) -> ImageFolderTask:
    """preprocessing: a checkpoint's pixel statistics (dl eval / dl sample), reused, not refitted."""
    folder, how = find_or_fetch(cfg)
    names = class_names(folder / META_FILE)
    parts = [read_batch(folder / f, len(names)) for f in TRAIN_FILES]
    train_x, train_y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    test_x, test_y = read_batch(folder / TEST_FILE, len(names))
    val_size = int(cfg.val_size)
    if cfg.get("subset"):
        n = int(cfg.subset)
        if n < 10:
            raise UserError(f"dataset.subset={n}: use at least 10 images (a tenth of them is held out as val)")
        train_x, train_y = train_x[:n], train_y[:n]
        test_x, test_y = test_x[:max(n // 5, 1)], test_y[:max(n // 5, 1)]
        val_size = min(val_size, n // 10)
    if not 0 < val_size < len(train_x):
        raise UserError(f"dataset.val_size={val_size}: must be between 1 and {len(train_x) - 1} (the training "
                        f"images{' of the subset' if cfg.get('subset') else ''})")
    if preprocessing:
        mean, std = preprocessing["pixel_mean"], preprocessing["pixel_std"]
    else:  # the train split's own (val and test stay unseen)
        mean, std = channel_stats(train_x[:-val_size].transpose(0, 2, 3, 1))
    x, y = to_tensor(train_x.transpose(0, 2, 3, 1), mean, std), torch.from_numpy(train_y)  # NCHW as NHWC views
    splits = {"train": (x[:-val_size], y[:-val_size]), "val": (x[-val_size:], y[-val_size:]),
              "test": (to_tensor(test_x.transpose(0, 2, 3, 1), mean, std), torch.from_numpy(test_y))}
    meta = {"input_shape": [CHANNELS, SIDE, SIDE], "num_classes": len(names), "class_names": names,
            "pixel_mean": mean, "pixel_std": std,
            # data/__init__.py hands a checkpoint's `preprocessing` back to this builder (eval, sample)
            "preprocessing": {"pixel_mean": mean, "pixel_std": std}}
    task = image_task(splits, meta, cfg, loss_cfg)
    task.loading = (f"{len(train_x) - val_size:,} train + {val_size:,} val + {len(test_x):,} test images of "
                    f"{len(names)} classes from {folder}{how}")
    return task


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"cifar10": cifar10}
