"""Resume and recovery: a run stopped by a signal, or killed outright (even in the middle of writing a checkpoint),
and continued with trainer.resume, ends bit for bit like one never stopped: every logged step's loss, every epoch's
summary, the final weights and the test metrics."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CLI, DATA_DIR, FAST, read_jsonl

# Dropout on, so the RNG state must be restored too; 53 steps an epoch, every step's loss logged.
ARGS = ["model.dropout=0.2", "dataset.n_samples=600", "trainer.batch_size=8", "trainer.epochs=3",
        "trainer.log_every_n_steps=1", *FAST]
STEPS_PER_EPOCH = 53


def rows(run: Path) -> list[tuple]:
    """Every logged row but the wall-clock ones: (split, step, epoch, metrics...)."""
    return [tuple(sorted(r.items())) for r in read_jsonl(run / "metrics.jsonl")]


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def assert_same_run(reference: Path, run: Path) -> None:
    assert rows(reference) == rows(run), "the losses differ from the uninterrupted run"
    a, b = weights(reference / "checkpoints" / "last.pt"), weights(run / "checkpoints" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "final weights differ"
    test = [json.loads((r / "summary.json").read_text())["test"] for r in (reference, run)]
    assert test[0] == test[1]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert not list((run / "checkpoints").glob(".*.tmp")), "a stale temp file was left behind"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny models on a busy 2-core machine: one intra-op thread is 2-3x faster than two fighting for the cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    cli = CLI(tmp_path_factory.mktemp("reference"))
    cli.ok("train", *ARGS, env={"OMP_NUM_THREADS": "1"})
    return cli.last_run()


def start(dl: CLI, env: dict | None = None) -> subprocess.Popen:
    full = {**os.environ, "DL_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1", **(env or {})}
    full.pop("DL_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "dlcli", "train", *ARGS], cwd=dl.cwd, env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode} before {path} appeared: {proc.communicate()}"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


# (id, test hook, exit code, how to resume): the loop signals itself after step N, so the stop lands mid-epoch
# deterministically; step 106 is the last step of epoch 2 (the edge where the saved epoch is complete).
SIGNALS = [("sigint-mid-epoch", "70", 130, "RUN"), ("sigterm-end-of-epoch", "106:TERM", 143, "auto")]


@pytest.mark.parametrize("hook,code,how", [c[1:] for c in SIGNALS], ids=[c[0] for c in SIGNALS])
def test_signal_finishes_the_step_saves_and_resumes_bit_for_bit(dl, reference, hook, code, how):
    res = dl("train", *ARGS, env={"DL_TEST_SIGNAL_AT_STEP": hook})
    assert res.returncode == code, res.stdout + res.stderr
    run = dl.last_run()
    step = int(hook.split(":")[0])
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == step and ckpt["epoch"] * STEPS_PER_EPOCH + ckpt["best"]["batch"] == step
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert f"holds step {step}; continue with: dl train trainer.resume={run}" in res.stdout
    assert "finishing this step and saving" in res.stderr and "Traceback" not in res.stderr
    assert max(r["step"] for r in read_jsonl(run / "metrics.jsonl")) == step
    if how == "RUN":  # a mid-epoch checkpoint is an ordinary one for dl eval (what it runs, in-process)
        from dlcli.commands.restore import restore, restore_task
        from dlcli.engine.evaluation import evaluate_split

        r = restore(run / "checkpoints" / "last.pt", [])
        metrics = evaluate_split(r.model, restore_task(r), "test", 256, r.runtime)
        assert r.ckpt["epoch"] == 1 and 0 <= metrics["acc"] <= 1
    res = dl.ok("train", f"trainer.resume={run if how == 'RUN' else 'auto'}")
    assert f"step {step}" in res.stdout
    assert dl.runs() == [run], "resume continues in the same run dir"
    assert_same_run(reference, run)


def test_word2vec_trained_in_place_resumes_bit_for_bit(dl, tmp_path):
    """word2vec on the CPU takes its SGD steps in C++ (no optimizer step): stopped mid-epoch and resumed, it ends
    as the uninterrupted run (trainer.deterministic: the chunk's pieces in one thread; its draws are seeded)."""
    args = ["model=skipgram", "dataset.sentences=3000", "dataset.cpu_batch_size=512", "trainer.epochs=2",
            "trainer.log_every_n_steps=1", "trainer.deterministic=true", *FAST]
    (tmp_path / "reference").mkdir()
    reference = CLI(tmp_path / "reference")
    reference.ok("train", *args)
    res = dl("train", *args, env={"DL_TEST_SIGNAL_AT_STEP": "30"})
    assert res.returncode == 130, res.stdout + res.stderr
    run = dl.last_run()
    dl.ok("train", f"trainer.resume={run}")
    assert_same_run(reference.last_run(), run)


def test_real_ctrl_c_at_a_random_moment_resumes_bit_for_bit(dl, reference):
    delay = random.uniform(0, 0.3)
    for _ in range(4):  # a fast machine may finish first: nothing to resume, so try again sooner
        shutil.rmtree(dl.cwd / "outputs", ignore_errors=True)
        proc = start(dl)
        wait_for(dl.cwd / "outputs" / "runs", proc)
        deadline = time.time() + 120
        while not (dl.runs() and read_jsonl_safe(dl.runs()[0] / "metrics.jsonl")):  # training has begun
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            break
        delay /= 4
    else:
        pytest.skip("the run finished before the signal, four times")
    run = dl.last_run()
    assert proc.returncode == 130, out + err
    dl.ok("train", f"trainer.resume={run}")
    assert_same_run(reference, run)


def read_jsonl_safe(path: Path) -> list:
    return read_jsonl(path) if path.exists() else []


def test_second_ctrl_c_during_the_save_stops_at_once(dl, reference, tmp_path):
    # Save 3 is the mid-epoch last.pt after the first Ctrl-C (1, 2: best and last of epoch 1): pause inside it,
    # press Ctrl-C again. The half-written temp file goes, last.pt stays epoch 1's, and resume still ends exact.
    marker = tmp_path / "in-save"
    proc = start(dl, {"DL_TEST_SIGNAL_AT_STEP": "70", "DL_TEST_PAUSE_IN_SAVE": f"{marker}@3"})
    wait_for(marker, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    run = dl.last_run()
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == STEPS_PER_EPOCH
    dl.ok("train", f"trainer.resume={run}")
    assert_same_run(reference, run)


def test_a_storm_of_ctrl_c_ends_in_one_clean_exit(dl):
    """Ctrl-C held down (a signal every 10 ms from the first until the process is gone): exit 130, dl's last line,
    never a traceback from the exit path (a late signal used to break into the except branch or Python's exit)."""
    env = {**os.environ, "DL_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1"}
    env.pop("DL_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "dlcli", "train", "dataset.n_samples=30000", "trainer.epochs=50",
                             *FAST], cwd=dl.cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    wait_for(dl.cwd / "outputs", proc)
    time.sleep(4.0)  # well into training (a run of minutes)
    for _ in range(300):
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "interrupted" in out


# SIGKILL (no handler runs): in the middle of writing epoch 2's last.pt (save 4: best, last, best, last), and
# mid-epoch between two saves. The newest complete checkpoint must load and resume must end exact.
KILLS = [("in-checkpoint-write", "pause@4"), ("mid-epoch", "80:KILL")]


@pytest.mark.parametrize("where", [c[1] for c in KILLS], ids=[c[0] for c in KILLS])
def test_sigkill_then_resume_ends_bit_for_bit(dl, reference, tmp_path, where):
    marker = tmp_path / "in-save"
    env = {"DL_TEST_PAUSE_IN_SAVE": f"{marker}@4"} if where.startswith("pause") else {"DL_TEST_SIGNAL_AT_STEP": where}
    proc = start(dl, env)
    if where.startswith("pause"):
        wait_for(marker, proc)
        proc.kill()
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    run = dl.last_run()
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # nobody could record the kill
    if where.startswith("pause"):
        assert list((run / "checkpoints").glob(".last.pt.*.tmp")), "the kill should leave a half-written temp file"
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # the newest complete one
    assert ckpt["epoch"] == 1 and ckpt["best"]["batch"] == 0
    dl.ok("train", "trainer.resume=auto")  # the stale temp file confuses nothing and is cleaned by the next save
    assert_same_run(reference, run)


def test_resume_refusals(dl):
    dl.ok("train", "trainer.epochs=1", "dataset.n_samples=300", *FAST)
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
    # Killed after the final last.pt but before the test split and summary.json: resume does just those.
    expected = json.loads((run / "summary.json").read_text())["test"]
    (run / "summary.json").unlink()
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running", "ended": None}))
    dl.ok("train", "trainer.resume=auto")
    assert json.loads((run / "summary.json").read_text())["test"] == expected
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    # Training longer: the finished run continues to the new epoch count in place.
    dl.ok("train", f"trainer.resume={run}", "trainer.epochs=2")
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2 and len(dl.runs()) == 1


def test_fp16_grad_scaler_state_goes_into_checkpoints_and_back(monkeypatch, tmp_path):
    """fp16 (CUDA only) scales the loss; its GradScaler's scale is loop state: saved with every checkpoint and
    loaded on resume, so a resumed run scales as the uninterrupted one did. Driven in-process on the CPU with a
    CPU GradScaler standing in for the CUDA one."""
    from bench.common import build_parts, compose
    from dlcli.base.console import make_console
    from dlcli.engine.logger import MetricsLogger, Reporter
    from dlcli.engine.loop import Training, fit
    from dlcli.engine.stopping import LoopState

    cfg = compose(["trainer.epochs=2", "dataset.n_samples=300", "device=cpu"])
    parts = build_parts(cfg)
    scalers = []

    def cpu_scaler():
        scalers.append(torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3))
        return scalers[-1]

    monkeypatch.setattr(type(parts.runtime), "grad_scaler", lambda self: cpu_scaler())
    saved = {}

    def save(which, state):
        saved[which] = LoopState.from_dict(json.loads(json.dumps(state.as_dict(), default=str)))

    training = Training(parts.model, parts.task, parts.optimizer, parts.scheduler, parts.interval, parts.runtime,
                        cfg.trainer, MetricsLogger(tmp_path), Reporter(make_console(), enabled=False), save)
    fit(training, LoopState())
    grown = scalers[0].state_dict()
    assert grown["scale"] > 1024.0  # finite steps grew it (every 3 steps): the state worth keeping
    assert saved["last"].grad_scaler == grown
    fit(training, LoopState.from_dict({**saved["last"].as_dict(), "epoch": 1}))
    assert scalers[1].get_scale() > grown["scale"]  # went on from the saved scale (from 1024 it would end at it)


def test_an_interrupt_inside_torch_save_comes_out_as_the_interrupt(tmp_path, monkeypatch):
    """A Ctrl-C that lands in torch.save's writing: the zip writer then fails on its way out ("unexpected pos"), which
    used to hide the interrupt (exit 1, a traceback); atomic_save re-raises the interrupt and leaves no temp file."""
    from dlcli.engine.checkpoint import atomic_save
    from dlcli.engine.stopping import Interrupted

    real_save = torch.save

    class BreaksOnThirdWrite:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise Interrupted(signal.SIGINT)
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real_save(obj, BreaksOnThirdWrite(f), *a, **k))
    (tmp_path / "last.pt").write_bytes(b"the previous checkpoint")
    with pytest.raises(Interrupted):
        atomic_save({"w": torch.zeros(100_000)}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert (tmp_path / "last.pt").read_bytes() == b"the previous checkpoint"
