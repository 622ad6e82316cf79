"""MNIST and Fashion-MNIST from their IDX gz files; loading a user's own image files for `dl sample`."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dlcli.base.errors import UserError
from dlcli.data.classification import ClassifyTask
from dlcli.data.download import find_or_download

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
SOURCES = {
    "mnist": {
        "subdirs": ("mnist", "MNIST"),
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist",
        "sha256": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                   "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                   "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                   "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        "classes": [str(i) for i in range(10)],
    },
    "fashion_mnist": {
        "subdirs": ("fashion_mnist", "fashion-mnist", "FashionMNIST"),
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        "sha256": ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                   "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                   "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                   "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot"],
    },
}
# Pixel statistics of the MNIST training set; inputs are (pixel/255 - mean) / std.
PIXEL_STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def idx_dataset(cfg: Any, loss_cfg: Any) -> ClassifyTask:
    src = SOURCES[cfg.name]
    url = cfg.get("url") or src["url"]
    files = find_or_download(cfg.name, cfg.root, src["subdirs"], dict(zip(IDX_FILES, src["sha256"])), url,
                             bool(cfg.download))
    train_x, train_y, test_x, test_y = (read_idx(files[f]) for f in IDX_FILES)
    mean, std = PIXEL_STATS[cfg.name]
    val_size = int(cfg.val_size)
    if cfg.get("subset"):
        n = int(cfg.subset)
        train_x, train_y = train_x[:n], train_y[:n]
        test_x, test_y = test_x[:max(n // 6, 1)], test_y[:max(n // 6, 1)]
        val_size = min(val_size, n // 6)
    if not 0 < val_size < len(train_x):
        raise UserError(f"dataset.val_size={val_size}: must be between 1 and {len(train_x) - 1}")

    def images(a: np.ndarray) -> Tensor:
        return ((torch.from_numpy(a.copy()).float() / 255.0 - mean) / std)[:, None]

    x, y = images(train_x), torch.from_numpy(train_y.astype(np.int64))
    splits = {"train": (x[:-val_size], y[:-val_size]), "val": (x[-val_size:], y[-val_size:]),
              "test": (images(test_x), torch.from_numpy(test_y.astype(np.int64)))}
    meta = {"input_shape": [1, 28, 28], "num_classes": 10, "class_names": src["classes"],
            "pixel_mean": mean, "pixel_std": std}
    return ClassifyTask(splits, meta, loss_cfg)


def decode_image(path: str | Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One image file -> uint8 (height, width, channels): converted to grayscale or RGB, resized (bicubic, as
    Pillow's default). Training (data/image_folder.py) and `dl sample --input` both call it, so a picture is
    preprocessed the same way in both. Raises what Pillow raises on a file it cannot read."""
    from PIL import Image  # start-up speed: every data module is imported to find its DATASETS

    height, width = size
    mode = "L" if channels == 1 else "RGB"
    with Image.open(path) as img:
        img.draft(mode, (width, height))  # JPEG: decode at a reduced scale when the target is much smaller
        if img.mode.startswith("I"):  # 16-bit grayscale (PNG): convert() would clip it to white; keep the top byte
            img = Image.fromarray((np.asarray(img, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8))
        a = np.asarray(img.convert(mode).resize((width, height)), dtype=np.uint8)
    return a[:, :, None] if channels == 1 else a


def pixel_stats(meta: dict) -> tuple[Tensor, Tensor]:
    """meta's pixel_mean/pixel_std (one number, or one per channel) shaped (C or 1, 1, 1) to broadcast over images."""
    def column(v: float | list) -> Tensor:
        return torch.tensor(v, dtype=torch.float32).reshape(-1, 1, 1)

    return column(meta.get("pixel_mean", 0.0)), column(meta.get("pixel_std", 1.0))


def load_image_files(paths: list[str], meta: dict) -> Tensor:
    """User images -> a batch shaped like the training inputs (grayscale or RGB, resized, normalised)."""
    from PIL import UnidentifiedImageError  # start-up speed, as in decode_image

    channels, height, width = meta["input_shape"]
    mean, std = pixel_stats(meta)
    out = []
    for p in paths:
        if not Path(p).is_file():
            raise UserError(f"--input: no such image file: {p}")
        try:
            a = decode_image(p, channels, (height, width))
        except (UnidentifiedImageError, OSError, ValueError):
            raise UserError(f"--input: {p} is not an image file PIL can read (png, jpg, ...)") from None
        x = torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255.0
        out.append((x - mean) / std)
    return torch.stack(out)


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"mnist": idx_dataset, "fashion_mnist": idx_dataset}
