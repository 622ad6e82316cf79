"""Browsing and comparing runs: `dl runs`, `dl runs show`, `dl runs compare`, the sweep's curves.png, per-layer
gradient norms and TensorBoard event files.

One real sweep (2 tiny jobs, in a subprocess, shared by the module) plus run dirs written by hand for every status:
completed, failed, interrupted, running (alive), running but dead (pid gone, or pid reused by a younger process),
running on another host. The CLI is called in process (CliRunner) except for one `dl runs` subprocess.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLI, read_jsonl
from typer.testing import CliRunner

from dlcli.commands.cli import app

SWEEP_ARGS = ["-m", "optimizer.lr=0.01,0.003", "trainer.epochs=2", "dataset.n_samples=300",
              "trainer.log_every_n_steps=2", "trainer.summary=false", "logger=tensorboard"]


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def fake_run(out: Path, name: str, status: str, started: float, model: str = "mlp", val: tuple = (),
             summary: bool = False, **info) -> Path:
    """A run dir as dl leaves it: run.json, .hydra/{overrides,config}.yaml, metrics.jsonl (+ summary.json)."""
    run = out / "runs" / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n- trainer.summary=false\n- optimizer.lr=0.{len(val) + 1}\n")
    (run / ".hydra" / "config.yaml").write_text("trainer:\n  monitor: val/loss\n  mode: min\n")
    record = {"status": status, "started": stamp(started), "ended": None if status == "running" else stamp(started + 7),
              "model": model, "dataset": "spirals", "host": platform.node(), "pid": os.getpid(), **info}
    (run / "run.json").write_text(json.dumps(record))
    rows = [r for e, v in enumerate(val, 1) for r in ({"step": 10 * e, "epoch": e, "split": "train", "loss": v + 0.1},
                                                     {"step": 10 * e, "epoch": e, "split": "val", "loss": v})]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 99, "ep')  # killed
    if summary:
        best = min(range(len(val)), key=lambda i: val[i])
        (run / "summary.json").write_text(json.dumps({
            "epochs": len(val), "steps": 10 * len(val), "stopped_by": "epochs", "wall_time_s": 6.5, "params": 99,
            "best": {"metric": "val/loss", "mode": "min", "value": val[best], "epoch": best + 1},
            "final": {"val/loss": val[-1]}, "test": {"test/loss": 0.42}}))
    return run


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("runs")
    CLI(cwd).ok("train", *SWEEP_ARGS)
    out = cwd / "outputs"
    now = time.time()
    fake_run(out, "a_completed", "completed", now - 600, val=(0.9, 0.5, 0.6), summary=True)
    fake_run(out, "b_failed", "failed", now - 500, model="cnn", val=(0.8,), error="the training loss became nan")
    fake_run(out, "c_interrupted", "interrupted", now - 400, model="lstm", val=(0.9, 0.3, 0.4))
    fake_run(out, "d_running", "running", now, val=(0.7,))  # this test process: alive
    fake_run(out, "e_killed", "running", now - 300, val=(0.8, 0.6), pid=dead_pid())
    # the pid lives, but its process started after the run did: the pid was reused (after a reboot, say)
    fake_run(out, "f_reused_pid", "running", now - 10 ** 8, val=(0.8,))
    fake_run(out, "g_elsewhere", "running", now - 200, val=(0.5,), host="another-machine", pid=1)
    return out


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def listing(out: Path, *args: str) -> list[dict]:
    res = invoke("runs", "--dir", str(out), "--json", *args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_runs_lists_every_status_newest_first(outputs):
    rows = listing(outputs)
    by_name = {Path(r["run"]).name: r for r in rows}
    assert {n: r["status"] for n, r in by_name.items() if "sweep" not in r} == {
        "a_completed": "completed", "b_failed": "failed", "c_interrupted": "interrupted", "d_running": "running",
        "e_killed": "died", "f_reused_pid": "died", "g_elsewhere": "running"}
    assert by_name["e_killed"]["recorded_status"] == "running"
    # no summary.json: the best so far comes from metrics.jsonl (a half-written last line is skipped)
    assert (by_name["c_interrupted"]["best"], by_name["c_interrupted"]["best_epoch"]) == (0.3, 2)
    assert (by_name["a_completed"]["best"], by_name["a_completed"]["best_epoch"]) == (0.5, 2)
    assert by_name["b_failed"]["error"].startswith("the training loss became nan")
    jobs = [r for r in rows if "sweep" in r]
    assert len(jobs) == 2 and all(r["status"] == "completed" and r["best"] is not None for r in jobs)
    assert [Path(r["run"]).name[0] for r in rows] == ["d", "0", "1", "g", "e", "c", "b", "a", "f"]


def test_runs_table_filters_and_sweep_row(outputs):
    res = invoke("runs", "--dir", str(outputs))
    assert res.exit_code == 0, res.output
    for word in ("completed", "failed", "interrupted", "running", "died", "2 completed", "val/loss 0.3",
                 "optimizer.lr=0.01,0.003", "(job "):
        assert word in res.stdout, word
    assert "trainer.summary" not in res.stdout  # display-only overrides are left out of the listing
    assert "job 1" in invoke("runs", "--dir", str(outputs), "--jobs").stdout
    assert {Path(r["run"]).name for r in listing(outputs, "--status", "died")} == {"e_killed", "f_reused_pid"}
    assert [Path(r["run"]).name for r in listing(outputs, "--model", "lstm")] == ["c_interrupted"]
    assert len(listing(outputs, "--last", "2")) == 3  # the newest run, then the sweep (its 2 jobs)
    res = invoke("runs", "--dir", str(outputs), "--status", "dead")
    assert res.exit_code == 2 and "--status dead: no such status (did you mean died?)" in res.stderr


def test_runs_show(outputs):
    sweep = next((outputs / "sweeps").iterdir())
    res = invoke("runs", "show", str(sweep / "1"), "--dir", str(outputs))  # <sweep>/<job number>
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert "completed" in text and "config vs the defaults" in text and "summary: best val/loss" in text
    diff = json.loads(invoke("runs", "show", str(sweep / "0"), "--json").stdout)["config_diff"]
    assert diff["groups"] == {"logger": ["default", "tensorboard"]}  # a group option, then keys
    assert diff["keys"]["optimizer.lr"][1] == 0.01 and diff["keys"]["trainer.epochs"][1] == 2
    assert diff["keys"]["optimizer.lr"][0] != 0.01 and "model.hidden_sizes" not in diff["keys"]
    job = next(sweep.glob("1_*"))
    assert json.loads(invoke("runs", "show", str(job / "checkpoints" / "best.pt"), "--json").stdout)["run"] == str(job)
    died = invoke("runs", "show", "e_killed", "--dir", str(outputs))  # a name under outputs/runs/
    assert died.exit_code == 0 and "died" in died.stdout and "trainer.resume=" in died.stdout
    assert "no summary.json" in died.stdout and "best val/loss 0.6 at epoch 2" in died.stdout


@pytest.mark.parametrize("args, message", [
    (["show", "nope"], "nope: no such run; expected a run directory holding run.json"),
    (["show", "{out}/runs"], "runs is not a run directory (no run.json in it)"),
    (["show", "{sweep}"], "is a sweep (2 jobs), not one run; compare its jobs with: dl runs compare"),
    (["show", "{out}/runs/a_completed/run.json/x"], "no such run"),
    (["compare", "{out}/runs/a_completed", "missing"], "missing: no such run"),
    (["compare", "{out}/runs/a_completed", "--metric", "val/acc"], "--metric val/acc: these runs do not log it; "
                                                                  "they log: train/loss, val/loss"),
    (["--last", "0"], "--last 0: must be a positive number"),
])
def test_runs_bad_arguments_are_one_line_errors(outputs, args, message):
    sweep = next((outputs / "sweeps").iterdir())
    args = [a.format(out=outputs, sweep=sweep) for a in args]
    res = invoke("runs", *args, "--dir", str(outputs))
    assert res.exit_code == 2, res.output
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_runs_compare(outputs, tmp_path):
    from matplotlib.image import imread

    sweep = next((outputs / "sweeps").iterdir())
    res = invoke("runs", "compare", str(sweep), "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["metric"] == "val/loss" and report["plot"] == str(sweep / "curves.png")
    assert [r["optimizer.lr"] for r in report["runs"]] == ["0.01", "0.003"]
    assert all(isinstance(r["val/loss"], float) and "test/acc" in r for r in report["runs"])
    out = tmp_path / "cmp.png"
    res = invoke("runs", "compare", "c_interrupted", "e_killed", "a_completed", "--dir", str(outputs),
                 "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "model" in res.stdout and "lstm" in res.stdout and "died" in res.stdout and f"curves: {out}" in res.stdout
    assert imread(out).shape[0] > 300  # a real picture, not an empty file


def test_sweep_end_curves_grad_norms_and_tensorboard(outputs):
    from matplotlib.image import imread
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    sweep = next((outputs / "sweeps").iterdir())
    assert (sweep / "summary.csv").exists() and imread(sweep / "curves.png").shape[1] > 600
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    for job in jobs:
        rows = read_jsonl(job / "metrics.jsonl")
        grads = [r for r in rows if r["split"] == "grad_norm"]
        # logged with the loss (every 2 steps), one value per layer, all positive
        assert [r["step"] for r in grads] == [r["step"] for r in rows if r["split"] == "step"] and grads
        assert all(set(r) == {"step", "epoch", "split", "body.0", "body.2", "head"} for r in grads)
        assert all(r[k] > 0 for r in grads for k in ("body.0", "body.2", "head"))
        assert (job / "plots" / "grad_norms.png").exists()
    # `tensorboard --logdir <sweep>` sees one run per job, and each holds exactly what metrics.jsonl holds
    events = EventMultiplexer().AddRunsFromDirectory(str(sweep))
    events.Reload()
    assert sorted(events.Runs()) == sorted(f"{job.name}/tensorboard" for job in jobs)
    for job in jobs:
        acc = events.GetAccumulator(f"{job.name}/tensorboard")
        expected = {}
        for r in read_jsonl(job / "metrics.jsonl"):
            for k, v in r.items():
                if k not in ("step", "epoch", "split") and v is not None:
                    expected.setdefault(f"{r['split']}/{k}", []).append((r["step"], v))
        assert set(acc.Tags()["scalars"]) == set(expected) and "grad_norm/head" in expected
        for tag, points in expected.items():
            got = [(e.step, e.value) for e in acc.Scalars(tag)]
            assert [s for s, _ in got] == [s for s, _ in points]
            assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-12)


def test_dl_runs_subprocess(outputs):
    res = CLI(outputs.parent).ok("runs")
    assert "runs under outputs/ (newest first)" in res.stdout and "died" in res.stdout and "2 completed" in res.stdout


def test_layer_groups_stay_readable():
    from torch import nn

    from dlcli.engine.grad_norms import layer_groups

    mlp = nn.Sequential(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8)), nn.Linear(8, 2))
    assert [n for n, _ in layer_groups(mlp)] == ["0.0", "0.2", "1"]
    deep = nn.Sequential(*[nn.Linear(4, 4) for _ in range(30)])
    groups = layer_groups(deep)
    assert len(groups) <= 12 and groups[0][0] == "0..2" and sum(len(p) for _, p in groups) == 60
    lstm = nn.Sequential(nn.Embedding(10, 4), nn.LSTM(4, 8, num_layers=3), nn.Linear(8, 2))
    assert [n for n, _ in layer_groups(lstm)] == ["0", "1.l0", "1.l1", "1.l2", "2"]
