"""dataset=image_folder: a folder of the user's own pictures, one subfolder per class. Generated here with Pillow:
three classes (a disc, horizontal stripes, vertical stripes) on noise, in every supported format, half of them
grayscale, at sizes that need resizing."""

from __future__ import annotations

import json
import os
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLI, FAST, summary
from omegaconf import OmegaConf
from test_errors import assert_one_line_error
from test_resume import assert_same_run

from dlcli.data import build_task, image_cache as imc, image_folder as imf

CLASSES = ("disc", "hstripes", "vstripes")
FORMATS = ("png", "jpg", "bmp", "gif", "webp")


def picture(kind: str, rng: np.random.Generator, gray: bool):
    from PIL import Image

    h, w = rng.integers(18, 30, 2)
    a = rng.integers(0, 70, (h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    mask = {"disc": (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2,
            "hstripes": (yy * 4 // h) % 2 == 0, "vstripes": (xx * 4 // w) % 2 == 0}[kind]
    a[mask] += np.array(rng.integers(120, 180, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    return img.convert("L") if gray else img


def make_folder(root: Path, per_class: int, seed: int = 0, classes: tuple[str, ...] = CLASSES) -> Path:
    """per_class images of each class, formats in turn, every other one grayscale; plus files that are no images."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            picture(c, rng, gray=i % 2 == 1).save(root / c / f"{i:03d}.{FORMATS[i % len(FORMATS)]}")
    (root / "README.txt").write_text("not an image")
    (root / CLASSES[0]).mkdir(exist_ok=True)
    (root / CLASSES[0] / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / CLASSES[0] / "labels.csv").write_text("a,b\n")
    return root


def dataset_cfg(path: Path, cache: Path, **keys) -> OmegaConf:
    cfg = OmegaConf.create(files("dlcli.conf").joinpath("dataset", "image_folder.yaml").read_text())
    cfg.path, cfg.cache_dir = str(path), str(cache)
    for k, v in keys.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def build(path: Path, cache: Path, **keys):
    return build_task(dataset_cfg(path, cache, **keys), OmegaConf.create({}), torch.device("cpu"))


def sizes(task) -> dict[str, int]:
    return {s: task.size(s) for s in ("train", "val", "test")}


def test_cnn_learns_a_folder_and_eval_and_sample_agree_with_training(dl, tmp_path):
    make_folder(tmp_path / "pics", 40)
    env = {"DL_CACHE_DIR": str(tmp_path / "cache")}
    res = dl.ok("train", "model=cnn", "dataset=image_folder", "dataset.path=pics", "dataset.image_size=16",
                "trainer.epochs=4", *FAST, env=env)
    assert "data: 120 images of 3 classes from pics, decoded in" in res.stdout
    run = dl.last_run()
    reported = summary(run)["test"]["test/acc"]
    assert reported >= 0.9  # chance: 1/3
    meta = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["meta"]
    assert meta["class_names"] == list(CLASSES) and meta["input_shape"] == [3, 16, 16]
    assert len(meta["pixel_mean"]) == 3 and len(meta["pixel_std"]) == 3
    out = json.loads(dl.ok("eval", str(run / "checkpoints" / "best.pt"), "--json", env=env).stdout)
    assert out["test/acc"] == pytest.approx(reported, abs=1e-9) and out["examples"] == 18
    res = dl.ok("sample", str(run), "--input", "pics/disc/000.png,pics/vstripes/003.gif", "--out", "grid.png",
                env=env)
    rows = [ln for ln in res.stdout.splitlines() if "000.png" in ln or "003.gif" in ln]
    assert "disc" in rows[0] and "vstripes" in rows[1].split("│")[2], res.stdout
    assert (dl.cwd / "grid.png").is_file()
    assert not [p for p in (dl.cwd / "pics").rglob("*") if p.suffix in (".images", ".bad", ".json", ".tmp")]
    # another folder: the checkpoint's classes and pixel statistics, not the new folder's
    make_folder(dl.cwd / "more", 20, seed=3, classes=("disc", "vstripes"))
    out = json.loads(dl.ok("eval", str(run), "dataset.path=more", "--json", env=env).stdout)
    assert out["examples"] == 6 and out["test/acc"] >= 0.8
    make_folder(dl.cwd / "owls", 3, classes=("disc", "hstripes"))
    os.rename(dl.cwd / "owls" / "hstripes", dl.cwd / "owls" / "owl")
    res = dl("eval", str(run), "dataset.path=owls", env=env)
    assert res.returncode == 2 and "owls: the class folder owl is not one the model was trained on" in res.stderr
    # an MLP on grayscale versions of the same files
    dl.ok("train", "model=mlp", "dataset=image_folder", "dataset.path=pics", "dataset.image_size=[12,10]",
          "dataset.channels=1", "trainer.epochs=2", *FAST, env=env)
    meta = torch.load(dl.last_run() / "checkpoints" / "best.pt", weights_only=True)["meta"]
    assert meta["input_shape"] == [1, 12, 10] and len(meta["pixel_mean"]) == 1


def test_train_val_test_subfolders_are_the_splits(tmp_path):
    for split, n in (("train", 10), ("val", 4), ("test", 5)):
        make_folder(tmp_path / "pics" / split, n, seed=len(split))
    task = build(tmp_path / "pics", tmp_path / "cache", image_size=8)
    assert sizes(task) == {"train": 30, "val": 12, "test": 15}
    assert task.meta["class_names"] == list(CLASSES)
    # only train/ and test/: val is a stratified share of train/
    (tmp_path / "two").mkdir()
    for split in ("train", "test"):
        os.rename(tmp_path / "pics" / split, tmp_path / "two" / split)
    task = build(tmp_path / "two", tmp_path / "cache", image_size=8, val_fraction=0.2)
    assert sizes(task) == {"train": 24, "val": 6, "test": 15}
    assert torch.bincount(task.splits["val"][1]).tolist() == [2, 2, 2]


def test_split_by_fraction_is_stratified_and_seeded(tmp_path):
    make_folder(tmp_path / "pics", 20)
    task = build(tmp_path / "pics", tmp_path / "cache", image_size=8)
    assert sizes(task) == {"train": 42, "val": 9, "test": 9}
    for split in ("train", "val", "test"):  # every class keeps its share
        counts = torch.bincount(task.splits[split][1], minlength=3).tolist()
        assert len(set(counts)) == 1, (split, counts)
    again = build(tmp_path / "pics", tmp_path / "cache", image_size=8)
    other = build(tmp_path / "pics", tmp_path / "cache", image_size=8, seed=1)
    assert torch.equal(task.splits["test"][0], again.splits["test"][0])
    assert not torch.equal(task.splits["test"][0], other.splits["test"][0])


def test_the_cache_is_used_then_read_again_when_a_file_changes(tmp_path, monkeypatch):
    make_folder(tmp_path / "pics", 6)
    calls = []
    real = imc.decode_image
    monkeypatch.setattr(imc, "decode_image", lambda *a: calls.append(a[0]) or real(*a))
    cache = tmp_path / "cache"
    first = build(tmp_path / "pics", cache, image_size=8)
    assert len(calls) == 18 and len(list((cache / "images").glob("*.json"))) == 1
    calls.clear()
    second = build(tmp_path / "pics", cache, image_size=8)
    assert calls == [] and all(torch.equal(a, b) for s in ("train", "val", "test")
                               for a, b in zip(first.splits[s], second.splits[s]))
    build(tmp_path / "pics", cache, image_size=10)  # other settings: their own entry
    assert len(calls) == 18 and len(list((cache / "images").glob("*.json"))) == 2
    calls.clear()
    changed = tmp_path / "pics" / "disc" / "000.png"
    picture("vstripes", np.random.default_rng(5), gray=False).save(changed)
    os.utime(changed, ns=(1, 1))  # an older mtime: the key is not "newer than the cache"
    third = build(tmp_path / "pics", cache, image_size=8)
    assert len(calls) == 18 and not torch.equal(torch.cat(first.splits["train"][:1]),
                                                torch.cat(third.splits["train"][:1]))
    assert len(list((cache / "images").glob("*.json"))) == 2, "the stale entry of the folder was removed"
    assert not list((cache / "images").glob(".*.tmp"))


def test_grayscale_and_rgb_files_mix(tmp_path):
    make_folder(tmp_path / "pics", 6)
    rgb = build(tmp_path / "pics", tmp_path / "cache", image_size=[8, 6])
    gray = build(tmp_path / "pics", tmp_path / "cache", image_size=[8, 6], channels=1)
    assert rgb.meta["input_shape"] == [3, 8, 6] and gray.meta["input_shape"] == [1, 8, 6]
    assert tuple(rgb.splits["train"][0].shape[1:]) == (3, 8, 6)
    assert tuple(gray.splits["train"][0].shape[1:]) == (1, 8, 6)
    listing = imf.scan(str(tmp_path / "pics"))
    assert len(listing.files) == 18 and all(f.suffix[1:] in FORMATS for f in listing.files)
    a = imc.decode_image(tmp_path / "pics" / "disc" / "001.jpg", 3, (8, 6))  # a grayscale file read as RGB
    assert a.shape == (8, 6, 3) and (a[..., 0] == a[..., 1]).all()
    from PIL import Image

    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "16bit.png")  # mid-grey, 16 bits
    assert imc.decode_image(tmp_path / "16bit.png", 1, (4, 4)).tolist() == [[[128]] * 4] * 4


def test_skip_bad_files_leaves_them_out_and_says_how_many(tmp_path, capsys):
    make_folder(tmp_path / "pics", 6)
    (tmp_path / "pics" / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "pics" / "hstripes" / "empty.jpg").write_bytes(b"")
    task = build(tmp_path / "pics", tmp_path / "cache", image_size=8, skip_bad_files=True)
    assert sum(sizes(task).values()) == 18
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().err


def reference_augment(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int):
    out = torch.empty_like(x)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    h, w = x.shape[2:]
    for i in range(len(x)):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def test_augmentation_crops_and_flips_training_batches_only(tmp_path):
    x = torch.randn(16, 3, 5, 7)
    gen = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 5, (16,), generator=gen), torch.randint(0, 5, (16,), generator=gen)
    flip = torch.rand(16, generator=gen) < 0.5
    assert torch.equal(imf.augment_batch(x, dy, dx, flip, 2), reference_augment(x, dy, dx, flip, 2))
    assert torch.equal(imf.augment_batch(x, dy * 0, dx * 0, flip, 0), reference_augment(x, dy * 0, dx * 0, flip, 0))

    make_folder(tmp_path / "pics", 10)
    plain = build(tmp_path / "pics", tmp_path / "cache", image_size=8)
    aug = build(tmp_path / "pics", tmp_path / "cache", image_size=8, **{"augment.crop_padding": 2,
                                                                        "augment.hflip": True})

    def epoch(task, seed, split="train", shuffle=True):
        return list(task.batches(split, 4, shuffle=shuffle, seed=seed))

    a, b, c = epoch(aug, 7), epoch(aug, 7), epoch(aug, 8)
    p = epoch(plain, 7)
    assert all(torch.equal(u[0], v[0]) for u, v in zip(a, b)), "the same seed draws the same augmentation"
    assert not all(torch.equal(u[0], v[0]) for u, v in zip(a, c))
    assert all(torch.equal(u[1], v[1]) for u, v in zip(a, p)), "the batch order is the one without augmentation"
    assert not all(torch.equal(u[0], v[0]) for u, v in zip(a, p))
    for split in ("val", "test"):
        assert all(torch.equal(u[0], v[0]) for u, v in zip(epoch(aug, 7, split, False), epoch(plain, 7, split, False)))


def test_resume_with_augmentation_ends_bit_for_bit(dl, tmp_path):
    make_folder(tmp_path / "pics", 12)  # 26 train images: 7 steps an epoch at batch size 4
    args = ["model=cnn", "dataset=image_folder", f"dataset.path={tmp_path / 'pics'}", "dataset.image_size=8",
            "dataset.augment.crop_padding=2", "dataset.augment.hflip=true", "model.channels=[8]",
            "model.hidden_sizes=[16]", "trainer.batch_size=4", "trainer.epochs=2", "trainer.log_every_n_steps=1",
            *FAST]
    env = {"DL_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "reference").mkdir()
    reference = CLI(tmp_path / "reference")
    reference.ok("train", *args, env=env)
    res = dl("train", *args, env={**env, "DL_TEST_SIGNAL_AT_STEP": "10"})  # mid-epoch 2
    assert res.returncode == 130, res.stdout + res.stderr
    run = dl.last_run()
    dl.ok("train", f"trainer.resume={run}", env=env)
    assert_same_run(reference.last_run(), run)


def _write(root: Path, layout: dict[str, int]) -> None:
    """{relative file path: 1 for a picture (text in a .txt), 0 for a damaged file}."""
    rng = np.random.default_rng(0)
    for rel, good in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            (root / rel).write_text("notes")
        elif good:
            picture("disc", rng, gray=False).save(root / rel)
        else:
            (root / rel).write_bytes(b"GIF89a truncated")


# (id, files under imgs/, extra arguments, what the one error line says)
ERROR_CASES = [
    ("no-class-folders", {"a.png": 1, "b.png": 1}, [],
     "dataset.path=imgs has 2 image files but no class subfolders: put each class's images in a subfolder"),
    ("one-class", {"cat/a.png": 1, "cat/b.png": 1}, [], "dataset.path=imgs has one class folder (cat)"),
    ("empty-class", {"cat/a.png": 1, "dog/notes.txt": 1}, [], "the class folder imgs/dog holds no image files"),
    ("unreadable-file", {"cat/a.png": 1, "dog/b.png": 1, "dog/c.gif": 0}, [],
     "dataset.path=imgs: imgs/dog/c.gif is not a readable image"),
    ("all-of-a-class-unreadable", {"cat/a.png": 1, "dog/c.gif": 0}, ["dataset.skip_bad_files=true"],
     "every image of the class dog was skipped as unreadable"),
    ("layout-with-a-stray-folder", {"train/cat/a.png": 1, "train/dog/b.png": 1, "misc/c.png": 1}, [],
     "has train/ (a train/val/test layout) and also misc/"),
    ("val-class-not-in-train", {"train/cat/a.png": 1, "train/dog/b.png": 1, "val/owl/c.png": 1}, [],
     "the class folder val/owl is not in train/ (train/'s classes: cat, dog)"),
    ("empty-class-in-a-split", {"train/cat/a.png": 1, "train/dog/b.png": 1, "test/dog/x.txt": 1}, [],
     "the class folder imgs/test/dog holds no image files"),
    ("bad-image-size", {"cat/a.png": 1, "dog/b.png": 1}, ["dataset.image_size=[8,8,8]"],
     "dataset.image_size=[8, 8, 8]: one size in pixels (e.g. 32) or [height, width]"),
    ("bad-channels", {"cat/a.png": 1, "dog/b.png": 1}, ["dataset.channels=4"], "dataset.channels=4: 1 (grayscale)"),
    ("negative-crop-padding", {"cat/a.png": 1, "dog/b.png": 1}, ["dataset.augment.crop_padding=-1"],
     "dataset.augment.crop_padding=-1: must be an integer in [0, 1024]"),
]


@pytest.mark.parametrize("layout,args,expected", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_folders_end_in_one_line(dl_inproc, layout, args, expected):
    _write(dl_inproc.cwd / "imgs", layout)
    res = dl_inproc("train", "model=cnn", "dataset=image_folder", "dataset.path=imgs", *args, *FAST,
                    env={"DL_CACHE_DIR": str(dl_inproc.cwd / "cache")})
    assert_one_line_error(res, expected)
