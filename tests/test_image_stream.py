"""dataset=image_folder larger than memory: batches streamed from the memory-mapped uint8 cache (dataset.in_memory)
are the batches a run in memory trains on, in the same order; such a run resumes exactly, and dl eval / dl sample
read it back. Folders generated with Pillow as in test_image_folder.py."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import CLI, DATA_DIR, FAST, summary
from test_errors import assert_one_line_error
from test_image_folder import build, make_folder, picture
from test_resume import assert_same_run, read_jsonl_safe, rows

from dlcli.data import image_cache as imc, image_folder as imf, image_stream as ims

# 26 train images at batch size 4: 7 steps an epoch; augmentation on, so its draws must line up too
ARGS = ["model=cnn", "dataset=image_folder", "dataset.image_size=8", "dataset.augment.crop_padding=2",
        "dataset.augment.hflip=true", "model.channels=[8]", "model.hidden_sizes=[16]", "trainer.batch_size=4",
        "trainer.log_every_n_steps=1", *FAST]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_streamed_runs_train_on_the_in_memory_batches_and_resume_exactly(dl, tmp_path):
    make_folder(tmp_path / "pics", 12)
    args = [*ARGS, "trainer.epochs=2", f"dataset.path={tmp_path / 'pics'}"]
    env = {"DL_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "memory").mkdir()
    memory = CLI(tmp_path / "memory")
    res = memory.ok("train", *args, "dataset.in_memory=true", env=env)
    assert "36 images of 3 classes" in res.stdout and "; batches from memory" in res.stdout
    reference = memory.last_run()
    # streamed by 2 worker processes, stopped mid-epoch 2 (the workers are left mid-epoch) and resumed
    res = dl("train", *args, "dataset.in_memory=false", "dataset.num_workers=2",
             env={**env, "DL_TEST_SIGNAL_AT_STEP": "10"})
    assert res.returncode == 130, res.stdout + res.stderr
    assert "batches read from the memory-mapped cache (2 worker processes)" in res.stdout
    run = dl.last_run()
    dl.ok("train", f"trainer.resume={run}", env=env)
    assert_same_run(reference, run)
    # read in the main process, uninterrupted
    (tmp_path / "main").mkdir()
    main = CLI(tmp_path / "main")
    res = main.ok("train", *args, "dataset.in_memory=false", "dataset.num_workers=0", env=env)
    assert "batches read from the memory-mapped cache (in the main process)" in res.stdout
    assert rows(main.last_run()) == rows(reference)
    # dl eval and dl sample of the streamed run
    out = json.loads(dl.ok("eval", str(run), "--json", env=env).stdout)
    assert out["test/acc"] == pytest.approx(summary(reference)["test"]["test/acc"], abs=1e-9)
    res = dl.ok("sample", str(run), "-n", "4", "--out", "grid.png", env=env)
    assert "test #" in res.stdout and (dl.cwd / "grid.png").is_file()


def test_ctrl_c_to_the_process_group_stops_a_streamed_run_once(tmp_path):
    """A terminal's Ctrl-C reaches the DataLoader's workers too: they ignore it, the main process saves and exits."""
    make_folder(tmp_path / "pics", 12)
    env = {**os.environ, "DL_DATA_DIR": str(DATA_DIR), "DL_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("DL_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "dlcli", "train", *ARGS, f"dataset.path={tmp_path / 'pics'}",
                             "dataset.in_memory=false", "dataset.num_workers=2", "trainer.epochs=500"],
                            cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not [r for run in (tmp_path / "outputs" / "runs").glob("*") for r in read_jsonl_safe(run / "metrics.jsonl")
                if r.get("epoch", 0) >= 2]:  # workers start at every epoch and evaluation: a signal may meet them
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(random.uniform(0, 0.5))
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert err.count("SIGINT: finishing this step") == 1 and "Traceback" not in err, err


def test_auto_streams_from_the_map_when_the_images_would_not_fit(tmp_path, monkeypatch, capsys):
    make_folder(tmp_path / "pics", 10)
    (tmp_path / "pics" / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    keys = {"image_size": 8, "skip_bad_files": True, "num_workers": 0}
    memory = build(tmp_path / "pics", tmp_path / "cache", **keys)
    assert type(memory) is ims.ImageFolderTask and memory.loading.endswith("; batches from memory")
    monkeypatch.setattr(imf, "memory_budget", lambda: 30 * 3 * 8 * 8 * 4 - 1)  # one byte short of the 30 images
    monkeypatch.setattr(imf, "to_tensor", None)  # nothing converts a whole split
    monkeypatch.setattr(imc, "CHUNK", 4)  # the pixel statistics summed over several chunks of the map
    streamed = build(tmp_path / "pics", tmp_path / "cache", **keys)
    assert isinstance(streamed, ims.StreamedImageTask)
    assert streamed.chosen["dataset.in_memory"].startswith("false (the images take 0 MiB as float32; in memory up to")
    assert memory.chosen["dataset.in_memory"].startswith("true")
    assert streamed.loading.endswith("; batches read from the memory-mapped cache (in the main process)")
    assert "skipped 1 unreadable file(s)" in capsys.readouterr().err
    mapped = streamed.data["train"].images
    assert isinstance(mapped, np.memmap) and mapped.shape == (31, 8, 8, 3)
    assert streamed.meta == memory.meta
    train = mapped[streamed.data["train"].rows].astype(np.float64) / 255
    assert np.allclose(streamed.meta["pixel_mean"], train.mean((0, 1, 2)), atol=1e-12)
    assert np.allclose(streamed.meta["pixel_std"], train.std((0, 1, 2)), atol=1e-12)
    state = torch.get_rng_state()
    for split in ("train", "val", "test"):
        assert streamed.size(split) == memory.size(split)
        a, b = list(memory.batches(split, 4, shuffle=True, seed=5)), list(streamed.batches(split, 4, shuffle=True,
                                                                                            seed=5))
        assert all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))
    assert torch.equal(state, torch.get_rng_state()), "streaming drew from the global generator (dropout's)"
    # a worker started by spawn (macOS) maps the file again instead of receiving a copy of it
    rows = streamed.data["test"]
    copy = pickle.loads(pickle.dumps(rows))
    assert len(pickle.dumps(rows)) < mapped.nbytes and copy.images is None
    assert all(torch.equal(x, y) for x, y in zip(copy.__getitems__([2, 0]), rows.__getitems__([2, 0])))


def test_a_changed_folder_is_read_again_and_a_stopped_decode_leaves_no_entry(tmp_path, monkeypatch):
    make_folder(tmp_path / "pics", 6)
    cache = tmp_path / "cache"
    real, calls = imc.decode_image, []

    def stopped(*a):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(a[0])
        return real(*a)

    monkeypatch.setattr(imc, "decode_image", stopped)
    monkeypatch.setattr(imc, "CHUNK", 4)  # stopped after the first chunk was written
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "pics", cache, image_size=8, in_memory=False)
    assert not [p for p in cache.rglob("*") if p.is_file()], "a stopped decode left files behind"
    monkeypatch.setattr(imc, "decode_image", lambda *a: calls.append(a[0]) or real(*a))
    calls.clear()
    first = build(tmp_path / "pics", cache, image_size=8, in_memory=False)
    assert len(calls) == 18
    changed = tmp_path / "pics" / "disc" / "000.png"
    picture("vstripes", np.random.default_rng(5), gray=False).save(changed)
    os.utime(changed, ns=(1, 1))  # an older mtime: the key is not "newer than the cache"
    calls.clear()
    second = build(tmp_path / "pics", cache, image_size=8, in_memory=False)
    assert calls and len(calls) == 18, "the changed folder was decoded again"
    row = list(imf.scan(str(tmp_path / "pics")).files).index(changed)
    assert not np.array_equal(first.data["train"].images[row], second.data["train"].images[row])
    assert sorted(p.suffix for p in (cache / "images").iterdir()) == [".bad", ".images", ".json"], \
        "the old entry of the folder was removed"


@pytest.mark.parametrize("key,value,expected", [
    ("in_memory", "maybe", "dataset.in_memory=maybe: choose auto, true or false"),
    ("num_workers", "-1", "dataset.num_workers=-1: auto or a whole number of worker processes, 0-256"),
])
def test_bad_streaming_settings_end_in_one_line(dl_inproc, key, value, expected):
    make_folder(dl_inproc.cwd / "pics", 2)
    res = dl_inproc("train", "model=cnn", "dataset=image_folder", "dataset.path=pics", f"dataset.{key}={value}",
                    *FAST, env={"DL_CACHE_DIR": str(dl_inproc.cwd / "cache")})
    assert_one_line_error(res, expected)
    assert not (dl_inproc.cwd / "cache").exists(), "checked before any file was decoded"
