"""Scale-out (dlcli/engine/distributed.py): DDP with 2 gloo processes on the CPU; sweeps through Hydra's submitit launcher."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR, FAST, read_jsonl

from dlcli.base.errors import UserError
from dlcli.engine import distributed
from dlcli.models import families

# 420 training rows, a global batch of 32: 14 steps an epoch (the last one 4 rows, 2 per process)
TINY = [*FAST, "dataset.n_samples=600", "trainer.batch_size=32", "trainer.epochs=3", "trainer.log_every_n_steps=5"]
MID_EPOCH_2 = {"DL_TEST_SIGNAL_AT_STEP": "20"}  # SIGINT after step 20 of 42, 6 batches into epoch 2


def torchrun(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 ARGS` (torch.distributed.run is what the torchrun script runs)."""
    full_env = {k: v for k, v in os.environ.items() if k != "DL_DEBUG"}
    full_env.update({"DL_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args],
                          cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def numbers(run_dir: Path) -> list[tuple]:
    """Every logged number of a run, keyed by (step, split, name)."""
    return [((r["step"], r["split"], k), v) for r in read_jsonl(run_dir / "metrics.jsonl")
            for k, v in r.items() if k not in ("step", "epoch", "split") and isinstance(v, float)]


def test_two_processes_equal_one_and_checkpoints_cross_over(dl, tmp_path):
    """A: 1 process, Ctrl-C mid-epoch 2, resumed on 2 processes (trainer.devices=2, through torch.distributed.run).
    B: 2 processes (torchrun -m dlcli train), Ctrl-C at the same step, resumed on 1 process.
    Same global batch: every logged number of A equals B's (epoch 1 is 1 vs 2 processes, epoch 3 the other way)."""
    res = dl("train", *TINY, env=MID_EPOCH_2)
    assert res.returncode == 130, res.stderr
    a = dl.last_run()
    res = torchrun(tmp_path, "-m", "dlcli", "train", *TINY, env=MID_EPOCH_2)
    assert res.returncode != 0 and "exitcode  : 130" in res.stderr, res.stderr  # rank 0 ended the group: 130
    (b,) = [r for r in dl.runs() if r != a]  # one run dir for the two processes
    assert res.stderr.count("SIGINT: finishing this step") == 1  # one rank speaks
    for run in (a, b):
        assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
        assert (run / "checkpoints" / "last.pt").is_file()
    # rank 0 alone wrote Hydra's files and the log
    assert (b / ".hydra" / "config.yaml").is_file()
    assert (b / "train.log").read_text().count("epoch 1/3") == 1
    dl.ok("train", f"trainer.resume={a}", "trainer.devices=2")  # saved by 1 process, resumed on 2
    dl.ok("train", f"trainer.resume={b}")                       # saved by 2 processes, resumed on 1
    assert len(dl.runs()) == 2
    got_a, got_b = numbers(a), numbers(b)
    assert [k for k, _ in got_a] == [k for k, _ in got_b]
    splits = {k[1] for k, _ in got_a}
    assert {"step", "train", "val", "test"} <= splits
    for (key, x), (_, y) in zip(got_a, got_b):
        assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6), (key, x, y)
    for run in (a, b):
        assert json.loads((run / "run.json").read_text())["status"] == "completed"
        assert (run / "summary.json").is_file()


def test_every_model_family_steps_under_ddp_as_one_process(tmp_path):
    """One DDP step (2 gloo processes) per family, from the same weights and global batch as one process: the same
    weights after it (word2vec: its sparse gradients are made dense under DDP, and match the sparse update)."""
    out = tmp_path / "families.json"
    res = torchrun(tmp_path, str(Path(__file__).with_name("ddp_families.py")), str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == {*families(), "cnn_bn", "lstm_text"}  # every family (a new one: add it to ddp_families.py)
    for family, r in results.items():
        assert r["spread"] == 0.0, (family, r)  # both ranks hold the same weights
        assert r["moved"] > 1e-3, (family, r)   # the step did something
        if family != "cnn_bn":  # BatchNorm on a CPU: each process normalizes with its own rows' statistics
            assert r["diff"] < 1e-6, (family, r)


def test_submitit_local_launcher_runs_a_sweep(dl):
    """dl train -m hydra/launcher=submitit_local: each job a submitit job (a SLURM job with submitit_slurm)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    dl.ok("train", "-m", "hydra/launcher=submitit_local", *FAST, "dataset.n_samples=300", "trainer.epochs=1",
          "trainer.seed=0,1")
    (sweep,) = (dl.cwd / "outputs" / "sweeps").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if (p / "run.json").exists())
    assert len(jobs) == 2
    assert all(json.loads((j / "run.json").read_text())["status"] == "completed" for j in jobs)
    assert len((sweep / "summary.csv").read_text().strip().splitlines()) == 3  # header + 2 jobs
    assert list((sweep / ".submitit").glob("*/*_0_log.out"))  # submitit's own job logs


# ------------------------------------------------------------------------------------------------------ in-process
def test_launcher_configs_compose():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from dlcli.config.compose import compose_jobs

    (cfg,) = compose_jobs(["hydra/launcher=slurm", "trainer.devices=2"], multirun=True)
    assert cfg.trainer.devices == 2
    with pytest.raises(UserError, match="hydra/launcher/nope"):
        compose_jobs(["hydra/launcher=nope"], multirun=True)


def test_refusals(monkeypatch):
    from dlcli.commands.hydra_app import train_cli

    with pytest.raises(UserError, match="trainer.devices=0"):
        distributed.check_devices(0, torch.device("cpu"))
    with pytest.raises(UserError, match="MPS"):
        distributed.check_devices(2, torch.device("mps"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="-m cannot run under torchrun"):
        train_cli(["-m", "trainer.seed=0,1"])
    monkeypatch.setattr(distributed, "_world", 2)
    with pytest.raises(UserError, match="global batch"):
        distributed.check_batch_size(1)


@pytest.mark.parametrize("rank, rows, want_rows, want_weight", [(0, 5, 3, 2 * 3 / 5), (1, 5, 2, 2 * 2 / 5),
                                                                  (1, 1, 1, 0.0)])
def test_a_rank_steps_on_its_slice_with_its_share_of_the_gradient(monkeypatch, rank, rows, want_rows, want_weight):
    """Rows split in contiguous near-equal parts; a part's gradient weighted by its share (so DDP's average is the
    whole batch's mean gradient); fewer rows than ranks: a 1-row stand-in weighted 0, its stats zero."""
    monkeypatch.setattr(distributed, "_world", 2)
    monkeypatch.setattr(distributed, "_rank", rank)
    w = torch.ones((), requires_grad=True)
    x, shared = torch.arange(float(rows)), torch.zeros(7)

    def step(part):
        assert part[1] is shared  # not a per-row tensor: every rank gets it whole
        return (w * part[0]).mean(), {"n": torch.tensor(float(len(part[0])))}

    loss, stats = distributed._sharded(step, (x, shared), sums=False)
    mine = x.tensor_split(2)[rank]
    assert len(mine) == (want_rows if want_weight else 0)
    loss.backward()
    if want_weight:
        assert float(loss) == pytest.approx(float(mine.mean()))  # the value is this slice's own mean
        assert float(stats["n"]) == want_rows
    else:
        assert float(stats["n"]) == 0.0
    assert float(w.grad) == pytest.approx(want_weight * float(mine.mean()) if want_weight else 0.0)
