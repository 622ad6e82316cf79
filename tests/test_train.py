"""End-to-end training through the CLI: the default run, artefacts, checkpoints, sweeps, stopping rules."""

from __future__ import annotations

import csv
import json

import torch
from conftest import FAST, read_jsonl, summary


def test_default_run_learns_spirals_and_writes_every_artefact(dl):
    dl.ok("train")  # the README's main command, exactly
    run = dl.last_run()
    assert run.name.endswith("_mlp_spirals")
    s = summary(run)
    assert s["final"]["val/acc"] >= 0.95 and s["test"]["test/acc"] >= 0.95
    assert s["wall_time_s"] > 0  # (speed is measured in bench/, not asserted: a busy CI machine is slower)
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "run.json", "metrics.jsonl",
                 "metrics.csv", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt", "plots/curves.png",
                 "plots/confusion.png", "train.log"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["command"] == "dl train" and info["versions"]["torch"]
    rows = read_jsonl(run / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] / 3
    assert {r["split"] for r in rows} == {"step", "grad_norm", "train", "val", "test"}
    with open(run / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["format"] == "dlcli.checkpoint" and ckpt["epoch"] == s["best"]["epoch"]
    assert "name: mlp" in ckpt["config"] and ckpt["meta"]["num_classes"] == 3
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert (run / "plots" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_cnn_on_shapes_lowers_loss(dl):
    dl.ok("train", "model=cnn", "dataset.n_samples=1000", "trainer.epochs=3", "trainer.batch_size=32", *FAST)
    rows = [r for r in read_jsonl(dl.last_run() / "metrics.jsonl") if r["split"] == "train"]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert summary(dl.last_run())["test"]["test/acc"] > 0.5  # 4 classes: chance is 0.25


def test_regression_on_sine_reports_mse_mae_r2(dl):
    dl.ok("train", "dataset=sine", "trainer.epochs=15", *FAST)
    s = summary(dl.last_run())
    assert s["kind"] == "regress" and s["test"]["test/r2"] > 0.8
    assert set(s["test"]) == {"test/loss", "test/mse", "test/mae", "test/r2"}


def test_multirun_2x2_makes_four_jobs_and_summary(dl):
    res = dl.ok("train", "-m", "optimizer=sgd,adam", "model.hidden_sizes=[16],[32]", "trainer.epochs=2",
                "logger=quiet", *FAST)
    sweeps = list((dl.cwd / "outputs" / "sweeps").glob("*"))
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert len(jobs) == 4 and all((j / "checkpoints" / "best.pt").is_file() for j in jobs)
    with open(sweeps[0] / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {(r["optimizer"], r["model.hidden_sizes"]) for r in rows} == {
        ("sgd", "[16]"), ("sgd", "[32]"), ("adam", "[16]"), ("adam", "[32]")}
    assert all(r["status"] == "completed" and float(r["test/acc"]) > 0 for r in rows)
    assert "4 jobs" in res.stdout


def test_max_time_ends_cleanly_with_checkpoints_and_test(dl):
    dl.ok("train", "trainer.epochs=100000", "trainer.max_time=1.5", "trainer.batch_size=8", *FAST)
    run = dl.last_run()
    s = summary(run)
    assert s["stopped_by"] == "max_time" and s["epochs"] < 100000
    assert (run / "checkpoints" / "last.pt").is_file() and "test/acc" in s["test"]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


def test_early_stopping_with_patience(dl):
    # min_delta larger than any possible improvement: the first eval is best, then `patience` misses stop it.
    dl.ok("train", "trainer.epochs=50", "trainer.early_stopping_patience=2", "trainer.min_delta=100", *FAST)
    s = summary(dl.last_run())
    assert s["stopped_by"] == "early_stopping" and s["epochs"] == 3 and s["best"]["epoch"] == 1


def test_full_batch_and_sgd_batch_size_one(dl):
    dl.ok("train", "trainer.batch_size=full", "trainer.epochs=3", *FAST)
    assert summary(dl.last_run())["steps"] == 3  # one step per epoch: batch gradient descent
    dl.ok("train", "trainer.batch_size=1", "trainer.epochs=1", "dataset.n_samples=100", *FAST)
    assert summary(dl.last_run())["steps"] == 70  # 70 train examples, one step each


def test_run_dirs_are_never_reused(dl):
    dl.ok("train", "trainer.epochs=1", *FAST)
    dl.ok("train", "trainer.epochs=1", *FAST)
    runs = dl.runs()
    assert len(runs) == 2 and len({r.name for r in runs}) == 2


def test_runs_lists_runs_newest_first(dl):
    assert "no runs" in dl.ok("runs").stdout
    dl.ok("train", "trainer.epochs=1", *FAST)
    dl.ok("train", "trainer.epochs=2", *FAST)
    rows = json.loads(dl.ok("runs", "--json").stdout)
    assert [r["overrides"].split()[0] for r in rows] == ["trainer.epochs=2", "trainer.epochs=1"]
    assert all(r["status"] == "completed" and r["model"] == "mlp" for r in rows)
    assert "spirals" in dl.ok("runs", "--last", "1").stdout
