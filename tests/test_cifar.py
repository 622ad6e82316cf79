"""dataset=cifar10: the official binary layout, generated here (the real archive is 170 MB and not fetched in tests).
Ten classes of shapes (disc, square, diamond, ring, ...) on 32x32 RGB images, written as CIFAR-10's binary batches
(label byte + R, G, B planes) with batches.meta.txt; read from a folder, from the .tar.gz, and through a loopback
download."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import test_download
import torch
from conftest import FAST, summary
from omegaconf import OmegaConf
from test_errors import assert_one_line_error

from dlcli.base.errors import UserError
from dlcli.data import build_task, cifar
from dlcli.models.cnn import CNN

CLASSES = ("disc", "square", "diamond", "ring", "plus", "triangle", "hstripes", "vstripes", "checker", "xcross")
PALETTE = np.array([[230, 40, 40], [40, 200, 40], [50, 80, 240], [240, 220, 30], [220, 40, 220], [30, 220, 220],
                    [250, 140, 20], [140, 70, 20], [250, 250, 250], [120, 120, 120]])
server = test_download.server  # the fixture: a loopback HTTP server for tmp_path/www


def shape_images(labels: np.ndarray, rng: np.random.Generator, colour_by_class: bool) -> np.ndarray:
    """uint8 N x 32 x 32 x 3: each image one shape of its class at a random place and size on a random background,
    plus noise. colour_by_class: the shape's colour names the class too (an easy set, for tests); else colours are
    random (only the shape tells the class), shapes smaller, three blobs of other colours (over the shape at times),
    a colour gradient and more noise are added (a harder, CIFAR-shaped stand-in: docs/performance.md)."""
    n = len(labels)
    yy, xx = np.mgrid[:32, :32].astype(np.float32)
    cy, cx = (rng.uniform(10, 22, (n, 1, 1)).astype(np.float32) for _ in range(2))
    r = rng.uniform(6 if colour_by_class else 4, 11, (n, 1, 1)).astype(np.float32)
    dy, dx = yy - cy, xx - cx
    d2, box = dx ** 2 + dy ** 2, np.maximum(abs(dx), abs(dy))
    inside = box < r * 0.85
    masks = [d2 < r ** 2, inside, abs(dx) + abs(dy) < r, (d2 < r ** 2) & (d2 > (0.55 * r) ** 2),
             ((abs(dx) < r / 3) | (abs(dy) < r / 3)) & (box < r),
             (dy > -r) & (dy < r * 0.8) & (abs(dx) < (dy + r) / 2),
             inside & ((yy // 2) % 2 == 0), inside & ((xx // 2) % 2 == 0), inside & ((yy // 3 + xx // 3) % 2 == 0),
             ((abs(dx - dy) < r / 3) | (abs(dx + dy) < r / 3)) & (box < r)]
    mask = np.stack(masks)[labels, np.arange(n)][..., None]  # N x 32 x 32 x 1
    bg = rng.integers(0, 256, (n, 1, 1, 3))
    fg = PALETTE[labels][:, None, None] if colour_by_class else (bg + rng.integers(50, 207, (n, 1, 1, 3))) % 256
    img = np.where(mask, fg, bg).astype(np.float32)
    if not colour_by_class:
        for _ in range(3):  # blobs of other colours, over the shape or beside it
            by, bx = rng.uniform(0, 32, (2, n, 1, 1))
            blob = ((yy - by) ** 2 + (xx - bx) ** 2 < rng.uniform(3, 16, (n, 1, 1)))[..., None]
            img = np.where(blob, rng.integers(0, 256, (n, 1, 1, 3)), img)
        img += rng.uniform(-60, 60, (n, 1, 1, 3)) * (xx[..., None] / 31 - 0.5)  # a colour gradient across
    img += rng.normal(0, 20 if colour_by_class else 32, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def records(labels: np.ndarray, images: np.ndarray) -> bytes:
    """CIFAR-10 binary records: the label byte, then the R, G and B planes (32x32 each, row by row)."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)
    return np.concatenate([labels[:, None].astype(np.uint8), planes], axis=1).tobytes()


def make_cifar(folder: Path, n_train: int = 500, n_test: int = 100, seed: int = 0, colour_by_class: bool = True,
               chunk: int = 5000) -> Path:
    """data_batch_1..5.bin (n_train records between them), test_batch.bin, batches.meta.txt, in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in [*((f, len(part)) for f, part in zip(cifar.TRAIN_FILES, np.array_split(np.arange(n_train), 5))),
                    (cifar.TEST_FILE, n_test)]:
        with open(folder / name, "wb") as out:
            for start in range(0, n, chunk):  # in chunks: 60,000 images at once would take GBs of float32
                labels = rng.integers(0, 10, min(chunk, n - start))
                out.write(records(labels, shape_images(labels, rng, colour_by_class)))
    (folder / cifar.META_FILE).write_text("\n".join(CLASSES) + "\n\n")  # as the real one: a blank line at the end
    return folder


def make_archive(folder: Path, archive: Path, extra: dict[str, bytes] | None = None) -> str:
    """folder's files as cifar-10-batches-bin/<file> in a .tar.gz (+ a readme, as the real one); its sha256."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in {**{f: (folder / f).read_bytes() for f in cifar.FILES}, "readme.html": b"<html/>",
                           **(extra or {})}.items():
            info = tarfile.TarInfo(name if "/" in name else f"{cifar.FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def dataset_cfg(root: Path, **keys) -> OmegaConf:
    cfg = OmegaConf.create(files("dlcli.conf").joinpath("dataset", "cifar10.yaml").read_text())
    cfg.root = str(root)
    cfg.val_size = 50
    for k, v in keys.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def build(root: Path, **keys):
    return build_task(dataset_cfg(root, **keys), OmegaConf.create({}), torch.device("cpu"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """One generated set (500 train + 100 test records) in an extracted folder, shared by the tests."""
    return make_cifar(tmp_path_factory.mktemp("gen") / cifar.FOLDER)


def test_the_binary_layout_is_read_as_written(tmp_path, generated):
    labels = np.array([3, 7], dtype=np.int64)
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    (tmp_path / "b.bin").write_bytes(records(labels, images))
    x, y = cifar.read_batch(tmp_path / "b.bin", 10)
    assert y.tolist() == [3, 7] and x.shape == (2, 3, 32, 32)
    assert np.array_equal(x, images.transpose(0, 3, 1, 2))  # R plane first, rows in order
    assert cifar.class_names(generated / cifar.META_FILE) == list(CLASSES)


def test_an_extracted_folder_is_found_and_split(tmp_path, generated):
    root = tmp_path / "data"
    (root / "cifar10").mkdir(parents=True)
    (root / "cifar10" / cifar.FOLDER).symlink_to(generated)
    task = build(root)
    assert {s: task.size(s) for s in ("train", "val", "test")} == {"train": 450, "val": 50, "test": 100}
    meta = task.meta
    assert meta["input_shape"] == [3, 32, 32] and meta["class_names"] == list(CLASSES) and meta["num_classes"] == 10
    assert len(meta["pixel_mean"]) == 3 and meta["preprocessing"]["pixel_std"] == meta["pixel_std"]
    x = task.splits["train"][0]
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02  # normalised with the train split's stats
    assert (task.crop_padding, task.hflip) == (4, True)  # the YAML's defaults
    # val is the end of the training records, as for MNIST
    raw = np.concatenate([cifar.read_batch(generated / f, 10)[1] for f in cifar.TRAIN_FILES])
    assert task.splits["val"][1].tolist() == raw[-50:].tolist()
    small = build(root, subset=200, **{"augment.crop_padding": 0, "augment.hflip": False})
    assert {s: small.size(s) for s in ("train", "val", "test")} == {"train": 180, "val": 20, "test": 40}
    assert (small.crop_padding, small.hflip) == (0, False)
    # a checkpoint's statistics are reused, not refitted
    again = build_task(dataset_cfg(root, subset=200), OmegaConf.create({}), torch.device("cpu"), stored_meta=meta)
    assert again.meta["pixel_mean"] == meta["pixel_mean"]
    # also straight under <root>/cifar-10-batches-bin/
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / cifar.FOLDER).symlink_to(generated)
    assert torch.equal(build(tmp_path / "other").splits["test"][0], task.splits["test"][0])


def test_an_archive_is_checked_then_extracted_safely(tmp_path, generated):
    root = tmp_path / "data"
    digest = make_archive(generated, root / cifar.ARCHIVE)
    with pytest.raises(UserError, match="has the wrong sha256"):  # not the official archive's digest
        build(root)
    assert not (root / cifar.FOLDER).exists()
    task = build(root, sha256=digest)
    assert sorted(p.name for p in (root / cifar.FOLDER).iterdir()) == sorted(cifar.FILES)  # no readme.html
    assert sorted(p.name for p in root.iterdir()) == [cifar.FOLDER, cifar.ARCHIVE]  # no temp folder left
    assert task.size("test") == 100 and task.loading.endswith(f"extracted from {root / cifar.ARCHIVE}")
    assert build(root).size("test") == 100, "extracted once: the next run reads the folder"
    # a member that climbs out of the folder is refused, and nothing is written
    evil = tmp_path / "evil"
    digest = make_archive(generated, evil / "cifar10" / cifar.ARCHIVE, {"../../data_batch_1.bin": b"x" * 3073})
    with pytest.raises(UserError, match="unsafe path ../../data_batch_1.bin"):
        build(evil, sha256=digest)
    assert sorted(p.name for p in evil.rglob("*")) == ["cifar-10-binary.tar.gz", "cifar10"]


def test_the_archive_downloads_from_a_loopback_server(server, tmp_path, generated):
    www, url = server
    digest = make_archive(generated, www / cifar.ARCHIVE)
    task = build(tmp_path / "data", url=f"{url}/{cifar.ARCHIVE}", sha256=digest)
    assert (tmp_path / "data" / "cifar10" / cifar.ARCHIVE).is_file() and task.size("train") == 450
    assert "downloaded from" in task.loading
    with pytest.raises(UserError, match="sha256 .* expected 0000"):
        build(tmp_path / "fresh", url=f"{url}/{cifar.ARCHIVE}", sha256="0" * 64)
    assert not list((tmp_path / "fresh" / "cifar10").glob("*")), "no partial or bad file may stay behind"


@pytest.mark.parametrize("case,expected", [
    ("truncated", "data_batch_3.bin: 1,530,054 bytes is not a whole number of 3073-byte records"),
    ("bad-label", "test_batch.bin: record 5 has the label 10, but batches.meta.txt names 10 classes"),
    ("wrong-sha256", "cifar-10-binary.tar.gz has the wrong sha256"),
    ("not-gzip", "cannot extract"),
    ("absent", "cifar10 not found under nowhere"),
    ("no-network", "could not download http://127.0.0.1:9/c.tar.gz"),
    ("tiny-subset", "dataset.subset=5: use at least 10 images"),
])
def test_damaged_or_missing_data_is_one_line(dl_inproc, generated, case, expected):
    data = dl_inproc.cwd / "data" / "cifar10"
    keys = ["dataset.root=data"]
    if case in ("truncated", "bad-label"):
        make_cifar(data, n_train=2490, n_test=10)  # 498 records a train file
        if case == "truncated":
            with open(data / "data_batch_3.bin", "r+b") as f:
                f.truncate(498 * 3073 - 300)
        else:
            with open(data / "test_batch.bin", "r+b") as f:
                f.seek(5 * 3073)
                f.write(bytes([10]))
    elif case == "wrong-sha256":
        make_archive(generated, data / cifar.ARCHIVE)
    elif case == "not-gzip":
        data.mkdir(parents=True)
        (data / cifar.ARCHIVE).write_bytes(b"not a gzip file")
        keys.append(f"dataset.sha256={hashlib.sha256(b'not a gzip file').hexdigest()}")
    elif case == "tiny-subset":
        data.mkdir(parents=True)
        (data / cifar.FOLDER).symlink_to(generated)
        keys.append("dataset.subset=5")
    elif case == "absent":
        keys = ["dataset.root=nowhere", "dataset.download=false"]
    else:
        keys = ["dataset.root=nowhere", "dataset.url=http://127.0.0.1:9/c.tar.gz"]
    assert_one_line_error(dl_inproc("train", "model=cnn", "dataset=cifar10", *keys, *FAST), expected)


def test_cnn_options_for_cifar_and_the_default_cnn_unchanged():
    base = OmegaConf.create(files("dlcli.conf").joinpath("model", "cnn.yaml").read_text())
    plain = CNN([3, 32, 32], 10, base)
    old = OmegaConf.masked_copy(base, [k for k in base if k not in ("convs_per_block", "global_pool")])
    assert list(CNN([3, 32, 32], 10, old).state_dict()) == list(plain.state_dict())  # older configs: the same net
    assert plain.flat_size == 32 * 8 * 8 and not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in plain.modules())
    deep = CNN([3, 32, 32], 10, OmegaConf.merge(base, {"channels": [32, 64, 128], "convs_per_block": 2,
                                                        "global_pool": True, "hidden_sizes": []}))
    convs = [m for m in deep.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128),
                                                               (128, 128)]
    assert deep.flat_size == 128 and deep(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_convs_per_block_has_a_range(dl_inproc):
    assert_one_line_error(dl_inproc("train", "model=cnn", "model.convs_per_block=0", *FAST),
                          "model.convs_per_block=0: must be an integer in [1, 16]")


def test_train_eval_sample_from_the_cli(dl, generated):
    from PIL import Image

    make_cifar(dl.cwd / "data" / "cifar10", n_train=3000, n_test=300, seed=1)
    res = dl.ok("train", "model=cnn", "dataset=cifar10", "dataset.root=data", "dataset.val_size=300",
                "trainer.epochs=2", *FAST)
    assert "data: 2,700 train + 300 val + 300 test images of 10 classes from data/cifar10" in res.stdout
    run = dl.last_run()
    reported = summary(run)["test"]["test/acc"]
    assert reported >= 0.7, reported  # chance: 0.1; seeds 0-2 gave 0.92-0.96
    out = json.loads(dl.ok("eval", str(run / "checkpoints" / "best.pt"), "--json").stdout)
    assert out["test/acc"] == pytest.approx(reported, abs=1e-9) and out["examples"] == 300
    # a picture of the user's: a red disc (PALETTE[0]) on a dark background, as a PNG
    labels = np.zeros(1, dtype=np.int64)
    Image.fromarray(shape_images(labels, np.random.default_rng(5), True)[0]).resize((64, 64)).save(dl.cwd / "a.png")
    res = dl.ok("sample", str(run), "--input", "a.png", "--out", "grid.png")
    row = next(ln for ln in res.stdout.splitlines() if "a.png" in ln)
    assert row.split("│")[2].strip() == "disc", res.stdout
    assert (dl.cwd / "grid.png").is_file()
