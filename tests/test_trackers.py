"""logger=mlflow and logger=wandb: tiny real runs through `dl train`, read back through each tracker's own tools
(MLflow's client API; W&B's `wandb leet inspect` on the offline transaction log)."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import read_jsonl

TINY = ["trainer.epochs=2", "dataset.n_samples=200", "trainer.log_every_n_steps=2", "trainer.summary=false"]


@pytest.fixture
def mlflow_client(tmp_path, monkeypatch):
    """A client on the test's own local store (MLflow 3 opens a folder store only when asked: dl asks, so do we)."""
    MlflowClient = pytest.importorskip("mlflow").MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    return uri, MlflowClient(tracking_uri=uri)


def mlflow_runs(client) -> list:
    experiment = client.get_experiment_by_name("dl")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]) if experiment else []


def logged(run_dir: Path) -> Counter:
    """How often metrics.jsonl holds each `split/name` (MLflow's name: its characters kept to [\\w.-/ :])."""
    import re

    return Counter(re.sub(r"[^\w\-. :/]", "_", f"{r['split']}/{k}") for r in read_jsonl(run_dir / "metrics.jsonl")
                   for k, v in r.items() if k not in ("step", "epoch", "split") and v is not None)


def test_mlflow_run_holds_config_every_metric_and_the_artifacts(dl, mlflow_client):
    uri, client = mlflow_client
    res = dl.ok("train", "logger=mlflow", f"logger.tracking_uri={uri}", *TINY)
    run_dir = dl.last_run()
    [run] = mlflow_runs(client)
    assert f"mlflow: run {run.info.run_id} in experiment dl" in res.stdout
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.tags["status"] == "completed" and run.data.tags["model"] == "mlp"
    params = run.data.params
    assert params["trainer.epochs"] == "2" and params["model.name"] == "mlp" and params["logger.tracker"] == "mlflow"
    assert params["model.hidden_sizes"] == "[512, 256]" and len(params) > 40  # the whole composed config, flat
    counts = logged(run_dir)
    assert {"step/loss", "train/loss", "val/loss", "test/acc"} <= set(counts)
    for key, n in counts.items():
        history = client.get_metric_history(run.info.run_id, key)
        assert len(history) == n, key
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "step"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "step/loss")] == steps
    artifacts = {a.path for folder in (None, "plots", ".hydra") for a in client.list_artifacts(run.info.run_id, folder)}
    pngs = {f"plots/{p.name}" for p in (run_dir / "plots").glob("*.png")}
    assert pngs and pngs | {"summary.json", ".hydra/config.yaml", ".hydra/overrides.yaml"} <= artifacts
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run.info.run_id


def test_mlflow_sweep_logs_one_run_per_job(dl, mlflow_client):
    uri, client = mlflow_client
    dl.ok("train", "-m", "optimizer=sgd,adam", "logger=mlflow", f"logger.tracking_uri={uri}", "trainer.plots=false",
          *TINY[1:], "trainer.epochs=1")
    runs = mlflow_runs(client)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.params["optimizer.name"] for r in runs) == ["adam", "sgd"]
    jobs = sorted(p.name for p in (dl.cwd / "outputs" / "sweeps").glob("*/*") if (p / "run.json").exists())
    assert sorted(r.info.run_name for r in runs) == jobs


@pytest.mark.slow
def test_mlflow_interrupted_then_resumed_continues_the_same_run(dl, mlflow_client):
    uri, client = mlflow_client
    res = dl("train", "logger=mlflow", f"logger.tracking_uri={uri}", "trainer.plots=false", *TINY,
             "trainer.batch_size=16", env={"DL_TEST_SIGNAL_AT_STEP": "5"})
    assert res.returncode == 130, res.stderr
    [run] = mlflow_runs(client)
    assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted"
    run_dir = dl.last_run()
    res = dl.ok("train", f"trainer.resume={run_dir}")  # logger=mlflow and its URI: the run's own overrides
    assert f"mlflow: continuing run {run.info.run_id}" in res.stdout
    [again] = mlflow_runs(client)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["status"] == "completed" and "trainer.resume=" in again.data.tags["resumed_with"]
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "step"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "step/loss")] == steps  # nothing twice


@pytest.mark.slow
def test_mlflow_under_ddp_logs_from_rank_0_alone(dl, mlflow_client):
    uri, client = mlflow_client
    dl.ok("train", "trainer.devices=2", "device=cpu", "logger=mlflow", f"logger.tracking_uri={uri}",
          "trainer.plots=false", *TINY)
    [run] = mlflow_runs(client)  # one MLflow run for the two processes
    counts = logged(dl.last_run())
    assert counts["train/loss"] == 2 and all(
        len(client.get_metric_history(run.info.run_id, key)) == n for key, n in counts.items())


def test_wandb_offline_run_in_the_run_dir_holds_the_metrics(dl):
    pytest.importorskip("wandb")
    res = dl.ok("train", "logger=wandb", *TINY)
    run_dir = dl.last_run()
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    assert f"wandb sync {offline}" in res.stdout
    inspect = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline)],
                             capture_output=True, text=True, timeout=120)
    if inspect.returncode:
        pytest.skip(f"this wandb cannot read its transaction log (`wandb leet inspect`): {inspect.stderr[-200:]}")
    records = [json.loads(line) for line in inspect.stdout.splitlines()]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    images = [h for h in history if any(k.startswith("plots/") for k in h)]
    metric_rows = [h for h in history if h not in images]
    assert len(images) == 1 and {k.split(".")[0] for k in images[0] if k.startswith("plots/")} == {
        f"plots/{p.stem}" for p in (run_dir / "plots").glob("*.png")}  # W&B's image records: plots/curves._type...
    assert len(metric_rows) == len(rows)  # one history row per metrics.jsonl record, dl's step as the x axis
    losses = [r["loss"] for r in rows if r["split"] == "step"]
    assert [h["step/loss"] for h in metric_rows if "step/loss" in h] == losses
    assert [h["trainer/step"] for h in metric_rows] == [r["step"] for r in rows]
    summary = json.loads(subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json",
                                         str(offline)], capture_output=True, text=True, timeout=120).stdout)
    test = json.loads((run_dir / "summary.json").read_text())["test"]
    assert summary["summary"]["status"] == "completed" and summary["state"] == "finished"
    assert summary["config"]["trainer.epochs"] == 2 and summary["config"]["model.hidden_sizes"] == [512, 256]
    assert summary["summary"]["test/acc"] == pytest.approx(test["test/acc"])
    files = offline / "files"
    assert (files / "summary.json").is_file() and (files / ".hydra" / "config.yaml").is_file()
    assert {p.name for p in (files / "plots").glob("*.png")} == {p.name for p in (run_dir / "plots").glob("*.png")}


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_missing_tracker_package_is_one_line_before_any_run(dl_inproc, monkeypatch, tracker):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a))
    res = dl_inproc("train", f"logger={tracker}")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: logger={tracker} needs the {tracker} package: pip install 'dlcli[{tracker}]' (or use logger=default)"]
    assert not (dl_inproc.cwd / "outputs").exists() and not (dl_inproc.cwd / "mlruns").exists()


def test_an_mlflow_server_that_does_not_answer_is_one_line_and_leaves_no_run(dl_inproc):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = dl_inproc("train", "logger=mlflow", f"logger.tracking_uri=http://127.0.0.1:{port}", *TINY)
    assert res.returncode == 2
    [line] = res.stderr.strip().splitlines()
    assert line.startswith(f"error: logger.tracking_uri=http://127.0.0.1:{port}: no MLflow server answers there")
    assert not list((dl_inproc.cwd / "outputs" / "runs").glob("*"))  # failed before training: no run dir kept


def test_a_tracker_that_fails_mid_run_is_dropped_with_one_warning(tmp_path):
    from dlcli.engine.logger import MetricsLogger
    from dlcli.engine.trackers import Trackers

    class Flaky:
        calls = 0

        def log_metrics(self, metrics, step):
            Flaky.calls += 1
            raise ConnectionError("tracking server gone\nmore detail")

    warnings: list[str] = []
    logger = MetricsLogger(tmp_path, trackers=Trackers([Flaky()], warnings.append))
    logger.log(1, 1, "step", {"loss": 0.5})
    logger.log(2, 1, "step", {"loss": 0.4})
    logger.close()
    logger.end_trackers("completed")
    assert Flaky.calls == 1 and len(read_jsonl(tmp_path / "metrics.jsonl")) == 2
    assert warnings == ["Flaky stopped logging (ConnectionError: tracking server gone); metrics.jsonl has every value"]
