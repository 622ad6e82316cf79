"""One writer per run dir, and a refused resume that leaves the run exactly as it was (byte for byte)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST

from dlcli.engine import run_dir as rd

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, b"pid %d on testhost since now" % os.getpid())
print("held", flush=True)
time.sleep(120)
"""


def fingerprint(run: Path) -> dict[str, str]:
    """Every file of the run but its lock, by content (what a refused resume must leave alone)."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != rd.LOCK}


def hold(lock: Path) -> subprocess.Popen:
    """Another process that holds the run's lock, as a live `dl train` does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def interrupted_run(dl) -> Path:
    """A run stopped mid-training (SIGINT after step 3): resumable."""
    res = dl("train", "trainer.epochs=2", "dataset.n_samples=300", *FAST, env={"DL_TEST_SIGNAL_AT_STEP": "3"})
    assert res.returncode == 130, res.stderr
    return dl.last_run()


def test_a_live_run_is_never_resumed_and_a_dead_ones_lock_is_taken_over(dl, interrupted_run):
    run = interrupted_run
    before = fingerprint(run)
    holder = hold(run / rd.LOCK)
    try:
        assert rd.holder(run) == f"pid {holder.pid} on testhost since now"
        res = dl("train", f"trainer.resume={run}")
        assert res.returncode == 2 and "is still being trained" in res.stderr and str(holder.pid) in res.stderr
        assert "Traceback" not in res.stderr
        res = dl("train", "trainer.resume=auto")  # auto passes over live runs
        assert res.returncode == 2 and "no interrupted or failed run" in res.stderr
        assert fingerprint(run) == before
    finally:
        holder.kill()
        holder.wait()
    assert rd.holder(run) is None  # the kernel dropped the dead process's lock: nothing to clean up
    dl.ok("train", "trainer.resume=auto")
    assert (run / "summary.json").exists() and not (run / rd.STAGE).exists()


def test_a_refused_resume_leaves_the_run_byte_for_byte(dl):
    dl.ok("train", "trainer.epochs=1", "dataset.n_samples=300", *FAST)
    run = dl.last_run()
    before = fingerprint(run)
    refusals = {
        ("model=cnn", "trainer.epochs=3"): "was trained with model=mlp; it cannot go on with model=cnn",
        ("optimizer=sgd", "trainer.epochs=3"): "was trained with optimizer=adamw",
        ("scheduler=cosine", "trainer.epochs=3"): "was trained with scheduler=warmup_cosine",
        ("dataset=sine", "trainer.epochs=3"): "was trained with dataset=spirals",
        # found only once the job runs (the model is built): still nothing written
        ("model.hidden_sizes=[7]", "trainer.epochs=3"): "the checkpoint does not fit this run's model",
        ("trainer.epochs=1",): "already finished 1 of trainer.epochs=1",
    }
    for overrides, message in refusals.items():
        res = dl("train", f"trainer.resume={run}", *overrides)
        assert res.returncode == 2 and message in res.stderr, (overrides, res.stderr)
        assert "Traceback" not in res.stderr and "nothing was changed" in res.stderr or "already" in message
        assert fingerprint(run) == before, overrides
        assert not (run / rd.STAGE).exists()
    # and the run still resumes as it should, recording the new job only now
    dl.ok("train", f"trainer.resume={run}", "trainer.epochs=2")
    assert "trainer.epochs=2" in (run / ".hydra" / "overrides.yaml").read_text()
    assert (run / "train.log").read_text().count("resuming from") == 1


def test_a_second_writer_into_a_live_runs_dir_is_refused(dl, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    holder = hold(target / rd.LOCK)
    try:
        res = dl("train", f"hydra.run.dir={target}", "trainer.epochs=1", "dataset.n_samples=300", *FAST)
        assert res.returncode == 2 and "is being written by another dl right now" in res.stderr
        assert sorted(p.name for p in target.iterdir()) == [rd.LOCK]
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_in_one_process_and_seen_from_another(tmp_path):
    rd.acquire(tmp_path)
    rd.acquire(tmp_path)  # the single run's dir: taken by dl train, again by its job
    try:
        probe = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                "from dlcli.engine.run_dir import holder; print(holder(Path(sys.argv[1])))",
                                str(tmp_path)], capture_output=True, text=True, check=True)
        assert probe.stdout.startswith("pid ") and " since " in probe.stdout
    finally:
        rd.release(tmp_path)
    start = time.time()
    rd.acquire(tmp_path)  # released: free again at once
    rd.release(tmp_path)
    assert time.time() - start < 1
