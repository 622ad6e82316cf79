"""Resume: a run stopped by Ctrl-C and continued with trainer.resume ends bit for bit like one never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from conftest import DATA_DIR, FAST, read_jsonl

# Dropout on, so the RNG state must be restored too; small batches so an epoch lasts long enough to interrupt.
ARGS = ["model.dropout=0.2", "dataset.n_samples=2000", "trainer.batch_size=2", "trainer.epochs=5", *FAST]


def _epoch_rows(run):
    return [(r["split"], r["epoch"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl")
            if r["split"] in ("train", "val")]


def test_interrupted_run_resumes_bit_for_bit(dl):
    dl.ok("train", *ARGS)
    straight = dl.last_run()

    env = {**os.environ, "DL_DATA_DIR": str(DATA_DIR)}
    proc = subprocess.Popen([sys.executable, "-m", "dlcli", "train", *ARGS], cwd=dl.cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the first epoch's checkpoint, then press Ctrl-C mid-epoch
        runs = [r for r in dl.runs() if r != straight]
        if runs and (runs[0] / "checkpoints" / "last.pt").exists():
            break
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    stopped = [r for r in dl.runs() if r != straight][0]
    assert json.loads((stopped / "run.json").read_text())["status"] == "interrupted"
    assert f"trainer.resume={stopped}" in out
    done = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done < 5

    res = dl.ok("train", f"trainer.resume={stopped}")
    assert "resuming from" in res.stdout
    assert len(dl.runs()) == 2, "resume continues in the same run dir"
    info = json.loads((stopped / "run.json").read_text())
    assert info["status"] == "completed" and len(info["resumed"]) == 1

    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 5 and a["step"] == b["step"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert _epoch_rows(straight) == _epoch_rows(stopped)  # every epoch once, identical losses
    assert json.loads((straight / "summary.json").read_text())["test"] == json.loads(
        (stopped / "summary.json").read_text())["test"]


def test_resume_refusals(dl):
    dl.ok("train", "trainer.epochs=1", *FAST)
    run = dl.last_run()
    before = (run / "run.json").read_text()
    res = dl("train", f"trainer.resume={run}")
    assert res.returncode == 2 and "already finished 1 of trainer.epochs=1" in res.stderr
    assert (run / "run.json").read_text() == before, "a refused resume must not touch the run"
    res = dl("train", "trainer.resume=nowhere")
    assert res.returncode == 2 and "trainer.resume=nowhere: no checkpoint there" in res.stderr
    res = dl("train", "-m", f"trainer.resume={run}", "trainer.epochs=2,3")
    assert res.returncode == 2 and "cannot go with -m" in res.stderr
    res = dl("train", "trainer.resume=auto")
    assert res.returncode == 2 and "no interrupted or failed run" in res.stderr
    # Training longer: the finished run continues to the new epoch count in place.
    dl.ok("train", f"trainer.resume={run}", "trainer.epochs=2")
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2 and len(dl.runs()) == 1


def test_sigterm_marks_the_run_interrupted_and_it_resumes(dl):
    env = {**os.environ, "DL_DATA_DIR": str(DATA_DIR)}
    proc = subprocess.Popen([sys.executable, "-m", "dlcli", "train", *ARGS], cwd=dl.cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (dl.runs() and (dl.runs()[0] / "checkpoints" / "last.pt").exists()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    run = dl.last_run()
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    dl.ok("train", "trainer.resume=auto")  # the newest unfinished run
    assert json.loads((run / "run.json").read_text())["status"] == "completed" and len(dl.runs()) == 1
