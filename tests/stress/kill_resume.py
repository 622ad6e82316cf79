"""Stress: SIGKILL `dl train` at random points (inside a checkpoint write, mid-epoch at a random step, or at a random
moment), check the newest checkpoint loads, resume, and compare with an uninterrupted run bit for bit.

    python tests/stress/kill_resume.py [--points 20] [--seed 0]

Not collected by pytest (the name does not start with test_); tests/test_resume.py runs a few fixed points.
Prints "N/N resumed, final weights identical" when every point passed; exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ARGS = ["model.dropout=0.2", "dataset.n_samples=600", "trainer.batch_size=8", "trainer.epochs=3",
        "trainer.log_every_n_steps=1", "trainer.summary=false", "trainer.plots=false"]
STEPS = 3 * 53          # 53 steps an epoch
SAVES = 6               # best + last per epoch (val loss improves every epoch with these settings)
HOOKS = Path(__file__).resolve().parents[1] / "hooks"  # the DL_TEST_* fault injection (tests/hooks/)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join([str(HOOKS), *filter(None, [os.environ.get("PYTHONPATH")])])}
ENV.pop("DL_DEBUG", None)


def dl(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlcli", *args], cwd=cwd, env={**ENV, **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def the_run(cwd: Path) -> Path:
    runs = sorted((cwd / "outputs" / "runs").glob("*"))
    assert len(runs) == 1, runs
    return runs[0]


def rows(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def wait_for_first_last_pt(cwd: Path, proc: subprocess.Popen) -> None:
    while not list((cwd / "outputs" / "runs").glob("*/checkpoints/last.pt")):
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} early: {proc.stdout.read()}")
        time.sleep(0.01)


def one_point(cwd: Path, kind: str, rng: random.Random, window: float) -> str:
    """window: seconds from the first last.pt to summary.json in an uninterrupted run (measured on the reference)."""
    """Kill one run at a point of `kind`; return where it was killed."""
    if kind == "in-save":
        k = rng.randint(3, SAVES)  # from the 3rd save on, an epoch's last.pt exists to resume from
        marker = cwd / "marker"
        proc = dl(cwd, "train", *ARGS, env={"DL_TEST_PAUSE_IN_SAVE": f"{marker}@{k}"})
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode} before save {k}: {proc.stdout.read()}")
            time.sleep(0.01)
        proc.kill()
        where = f"inside checkpoint write {k} ({marker.read_text().rsplit('/', 1)[-1]})"
    elif kind == "at-step":
        step = rng.randint(54, STEPS)
        proc = dl(cwd, "train", *ARGS, env={"DL_TEST_SIGNAL_AT_STEP": f"{step}:KILL"})
        where = f"after step {step}"
    else:  # a random moment once the first epoch's last.pt exists
        delay = rng.uniform(0, 0.9 * window)  # calibrated: a fast machine trains this in well under a second
        for _ in range(4):  # timing jitter can let a run finish first: nothing was exercised, draw again sooner
            shutil.rmtree(cwd / "outputs", ignore_errors=True)
            proc = dl(cwd, "train", *ARGS)
            wait_for_first_last_pt(cwd, proc)
            time.sleep(delay)
            proc.kill()
            if proc.wait() == -signal.SIGKILL:
                break
            delay /= 2
        where = f"{delay:.2f}s after the first last.pt"
    out = proc.communicate(timeout=600)[0]
    if proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"{where}: exit {proc.returncode}, not killed:\n{out}")
    return where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    rng = random.Random(a.seed)
    from dlcli.engine.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory(prefix="dl-kill-") as tmp:
        ref_dir = Path(tmp) / "reference"
        ref_dir.mkdir()
        proc = dl(ref_dir, "train", *ARGS)
        wait_for_first_last_pt(ref_dir, proc)
        t_first = time.time()
        while not list((ref_dir / "outputs" / "runs").glob("*/summary.json")) and proc.poll() is None:
            time.sleep(0.01)
        window = time.time() - t_first  # training and testing, not the plots and the exit after them
        assert proc.wait(600) == 0, proc.stdout.read()
        ref = the_run(ref_dir)
        ref_weights = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)["model"]
        ok = 0
        for i in range(a.points):
            cwd = Path(tmp) / f"point{i}"
            cwd.mkdir()
            kind = rng.choice(["in-save", "at-step", "random-moment"])
            t0 = time.time()
            try:
                where = one_point(cwd, kind, rng, window)
                run = the_run(cwd)
                newest = load_checkpoint(run / "checkpoints" / "last.pt")  # must open (UserError if not)
                if json.loads((run / "run.json").read_text())["status"] == "completed":
                    where += " (after the run had completed: nothing to resume)"  # killed while exiting
                else:
                    res = dl(cwd, "train", f"trainer.resume={run}")
                    out = res.communicate(timeout=600)[0]
                    assert res.returncode == 0, f"resume failed ({res.returncode}):\n{out}"
                got = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
                same = all(torch.equal(ref_weights[k], got[k]) for k in ref_weights)
                assert same, "final weights differ"
                assert rows(ref) == rows(run), "logged losses differ"
                assert not list((run / "checkpoints").glob(".*.tmp")), "a temp file was left"
                ok += 1
                print(f"point {i + 1:2d}: killed {where}; newest checkpoint epoch {newest['epoch']} step "
                      f"{newest['step']} loaded; resumed, identical ({time.time() - t0:.0f}s)", flush=True)
            except AssertionError as e:
                print(f"point {i + 1:2d}: {kind}: FAILED: {e}", flush=True)
    print(f"{ok}/{a.points} resumed, final weights identical" if ok == a.points else
          f"{ok}/{a.points} resumed with identical final weights; {a.points - ok} FAILED")
    return 0 if ok == a.points else 1


if __name__ == "__main__":
    sys.exit(main())
