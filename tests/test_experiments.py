"""Experiments (+experiment=NAME: a comparison sweep that ends with the lesson's table + PNG), Optuna searches
(+hparams_search=NAME), the joblib launcher, and the checks that make a bad sweep fail before any job runs.

One experiment runs end to end through the CLI (a subprocess); the others run in this process at tiny sizes."""

from __future__ import annotations

import csv
import json
import re
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))

# name -> (tiny overrides, the labels of its runs in order)
TINY = {
    "lstm_vs_rnn": (["dataset.n_samples=300", "dataset.seq_len=12", "model.hidden_size=8", "trainer.epochs=1"],
                    ["rnn", "lstm", "gru"]),
    "context_vs_attention": (["dataset.n_train=200", "dataset.n_val=40", "dataset.n_test=60", "dataset.max_len=6",
                              "trainer.epochs=1", "trainer.plots=false"], ["seq2seq", "attention", "transformer"]),
    "optimizers": (["dataset.n_samples=200", "model.hidden_sizes=[8]", "trainer.epochs=2", "trainer.plots=false"],
                   ["sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"]),
    "activations": (["dataset.n_samples=200", "model.hidden_sizes=[8,8]", "trainer.epochs=2", "trainer.plots=false"],
                    ["sigmoid", "tanh", "relu"]),
    "batch_size": (["dataset.n_samples=200", "model.hidden_sizes=[8]", "trainer.epochs=2", "trainer.plots=false"],
                   ["full", "1", "32"]),
    "transformer_ablations": (["dataset.n_train=200", "dataset.n_val=40", "dataset.n_test=60", "dataset.max_len=6",
                               "model.d_model=16", "model.ff_size=32", "trainer.epochs=1", "trainer.plots=false"],
                              ["full", "no_positional", "no_label_smoothing", "one_head"]),
    "cbow_vs_skipgram": (["dataset.sentences=1500", "model.vector_size=16", "trainer.epochs=1",
                          "trainer.plots=false"], ["cbow", "skipgram"]),
}
QUIET = ["trainer.summary=false", "logger.console=false"]


@pytest.fixture
def here(tmp_path, monkeypatch):
    """Run `dl train` in this process, in tmp_path, on one thread (restored after: torch's setting is global)."""
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DL_DATA_DIR", str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def train(*args: str) -> None:
    from dlcli.commands.hydra_app import train_cli

    train_cli(list(args))


def only_sweep(root: Path) -> Path:
    sweeps = list((root / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def lesson_rows(sweep: Path, name: str) -> list[dict]:
    with open(sweep / f"{name}.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600, image.shape


def test_every_experiment_is_tested_and_says_what_to_expect():
    # (pretrained_embeddings runs in tests/test_pretrained_embeddings.py, on a tiny corpus of its own)
    assert set(EXPERIMENTS) == set(TINY) | {"gradient_clipping", "pretrained_embeddings"}
    from omegaconf import OmegaConf

    for name in EXPERIMENTS:
        cfg = OmegaConf.load(REPO / "conf" / "experiment" / f"{name}.yaml")
        block = cfg.experiment
        assert block.name == name and block.panels and block.columns
        assert len(str(block.expect)) > 40 and "placeholder" not in str(block.expect)
        assert cfg.hydra.sweeper.params, name
        assert f"dl train -m +experiment={name}" in (REPO / "README.md").read_text(), f"README misses {name}"


def test_conf_groups_ship_in_the_wheel():
    """Every conf folder with YAML is a package listed in pyproject (else the built wheel lacks it)."""
    packages = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for folder in {p.parent for p in (REPO / "conf").rglob("*.yaml")}:
        name = ".".join(["dlcli", "conf", *folder.relative_to(REPO / "conf").parts])
        assert name in packages and (folder / "__init__.py").exists(), name


@pytest.mark.parametrize("name", sorted(TINY))
def test_experiment_composes_its_runs_before_any_job(name):
    from dlcli.config.compose import compose_jobs

    configs = compose_jobs([f"+experiment={name}"], multirun=True)
    assert len(configs) == len(TINY[name][1])
    assert {c.experiment.name for c in configs} == {name}


def test_an_experiment_without_m_says_to_add_it_and_one_of_its_runs_is_fine():
    from dlcli.base.errors import UserError
    from dlcli.config.compose import compose_jobs

    with pytest.raises(UserError, match=r"add -m, as in dl train -m \+experiment=lstm_vs_rnn"):
        compose_jobs(["+experiment=lstm_vs_rnn"], multirun=False)
    (cfg,) = compose_jobs(["+experiment=lstm_vs_rnn", "model=gru"], multirun=False)
    assert cfg.model.name == "gru" and cfg.dataset.name == "adding" and cfg.dataset.seq_len == 100
    # the command line wins over the experiment's own list, as in Hydra's sweepers
    assert [c.model.name for c in compose_jobs(["+experiment=lstm_vs_rnn", "model=rnn,gru"], True)] == ["rnn", "gru"]


@pytest.mark.parametrize("name", sorted(TINY))
def test_experiment_ends_with_its_table_and_picture(name, here, capsys):
    overrides, labels = TINY[name]
    train("-m", f"+experiment={name}", *overrides, *QUIET)
    sweep = only_sweep(here)
    rows = lesson_rows(sweep, name)
    assert [r["run"] for r in rows] == labels
    assert all(r["status"] == "completed" for r in rows), rows
    out = capsys.readouterr().out
    assert f"experiment {name}:" in out and "expected:" in out and f"{name}.png" in out
    assert_png(sweep / f"{name}.png")
    if name == "lstm_vs_rnn":  # the gradient-through-time numbers every recurrent run leaves for the overlay
        assert all(float(r["grad_time/first"]) >= 0 and float(r["grad_time/last"]) > 0 for r in rows)
    if name in ("context_vs_attention", "transformer_ablations"):
        assert all(0 <= float(r["test/exact"]) <= 1 for r in rows)


def test_gradient_clipping_end_to_end_a_diverged_run_does_not_stop_the_sweep(dl):
    """Through the CLI: the unclipped RNN's loss becomes inf (SGD + momentum, T=50), the clipped one trains."""
    res = dl.ok("train", "-m", "+experiment=gradient_clipping", "model=rnn", "dataset.n_samples=7000",
                "trainer.epochs=1", "trainer.summary=false")
    sweep = only_sweep(dl.cwd)
    rows = lesson_rows(sweep, "gradient_clipping")
    assert [(r["run"], r["status"]) for r in rows] == [("model=rnn, clip_grad_norm=null", "failed"),
                                                      ("model=rnn, clip_grad_norm=1.0", "completed")]
    assert float(rows[0]["grad_norm/max"]) > 1e6 > 10 > float(rows[1]["grad_norm/max"])
    assert "training loss became inf" in res.stderr and "1 of 2 jobs failed" in res.stdout
    failed = json.loads(next(sweep.glob("0_*/run.json")).read_text())
    assert failed["status"] == "failed" and "inf" in failed["error"]
    assert_png(sweep / "gradient_clipping.png")
    assert (next(sweep.glob("1_*")) / "plots" / "grad_time.json").exists()


# --------------------------------------------------------------------------------------- bad sweeps fail at once
def test_a_monitor_no_job_logs_fails_before_any_job(dl):
    res = dl("train", "-m", "trainer.monitor=val/accuracy", "optimizer=sgd,adam", "trainer.epochs=1")
    assert res.returncode == 2
    assert "trainer.monitor=val/accuracy: this classify task logs val/loss, val/acc" in res.stderr
    assert "epoch" not in res.stdout and not (dl.cwd / "outputs").exists()


@pytest.mark.parametrize("args, message", [
    (["-m", "model.hidden_sizez=[8],[16]"], "there is no key 'model.hidden_sizez' (did you mean model.hidden_sizes?)"),
    (["-m", "+experiment=optimizers", "model.activaton=tanh"], "there is no key 'model.activaton'"),
    (["-m", "+experiment=lstm_vs_rnn", "model=rnn,lstmm"], "model=lstmm: no such model"),
    (["-m", "optimizer.lr=interval(0.001,0.1)"], "interval(...) is a search space, not a list of runs"),
    (["-m", "+experiment=lstm_vs_rnn", "trainer.monitor=val/acc"], "this regress task logs"),
    # every job has the key, but Hydra first sets it on the sweep's base config, whose model is the default mlp
    (["-m", "model=cbow,skipgram", "model.vector_size=16"], "one-value sweep so each job gets it: "
                                                           "'model.vector_size=choice(16)'"),
])
def test_bad_sweeps_fail_before_any_job(args, message):
    from dlcli.base.errors import UserError
    from dlcli.commands.hydra_app import split_args
    from dlcli.config.compose import compose_jobs

    flags, overrides = split_args(args)
    with pytest.raises(UserError) as err:
        compose_jobs(overrides, multirun="-m" in flags)
    assert message in str(err.value)


# ------------------------------------------------------------------------------------------- Optuna and joblib
def test_optuna_search_space_is_checked_before_any_trial():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from dlcli.base.errors import UserError
    from dlcli.config.compose import compose_jobs

    def fails(*overrides: str) -> str:
        with pytest.raises(UserError) as err:
            compose_jobs(list(overrides), multirun=True)
        return str(err.value)

    ok = compose_jobs(["hydra/sweeper=optuna", "optimizer.lr=tag(log, interval(0.0001, 0.1))",
                       "model.hidden_sizes=choice([8],[16,16])"], multirun=True)
    assert sorted({c.optimizer.lr for c in ok}) == [0.0001, 0.1] and len(ok) == 4
    assert "no key 'optimizer.lrr'" in fails("hydra/sweeper=optuna", "optimizer.lrr=interval(0.001,0.1)")
    assert "trainer.epochs must be an integer" in fails("hydra/sweeper=optuna", "trainer.epochs=interval(0.5,3.5)")
    assert "optimizer=adamx: no such optimizer" in fails("hydra/sweeper=optuna", "optimizer=choice(sgd,adamx)")
    assert "there is no key 'optimizer.momentum'" in fails(  # adam has no momentum: that trial could not run
        "hydra/sweeper=optuna", "optimizer=choice(sgd,adam)", "optimizer.momentum=interval(0.1,0.9)")
    assert re.search(r"direction=maximize but trainer.mode=min .* set hydra.sweeper.direction=minimize",
                     fails("+hparams_search=mlp_spirals", "hydra.sweeper.direction=maximize"))
    from importlib.metadata import version

    if version("optuna") < "3" and version("sqlalchemy") >= "2":
        assert "leave storage null" in fails("+hparams_search=mlp_spirals", "hydra.sweeper.storage=sqlite:///s.db")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # optuna 2.10 on SQLAlchemy 2 (in-memory storage: unused)
def test_hparams_search_runs_optuna_and_reports_the_best_trial(here, capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from omegaconf import OmegaConf

    train("-m", "+hparams_search=mlp_spirals", "hydra.sweeper.n_trials=3", "dataset.n_samples=200",
          "trainer.epochs=2", "trainer.plots=false", *QUIET)
    sweep = only_sweep(here)
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(result.best_params) == {"optimizer.lr", "model.hidden_sizes", "model.activation"}
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    assert min(float(r["best"]) for r in rows) == pytest.approx(result.best_value)
    assert "optuna best trial: job" in capsys.readouterr().out


def test_joblib_launcher_runs_jobs_in_parallel_processes(here):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    # trainer.monitor=val/acc: its "/" stays out of the job dirs' names (it would nest them out of the summary's sight)
    train("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer=sgd,adam", "dataset.n_samples=200",
          "trainer.epochs=1", "trainer.plots=false", "trainer.monitor=val/acc", "trainer.mode=max", *QUIET)
    sweep = only_sweep(here)
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/run.json"))]
    assert [r["status"] for r in runs] == ["completed", "completed"]
    assert len({r["pid"] for r in runs}) == 2  # two worker processes, not this one
    with open(sweep / "summary.csv", newline="") as f:
        assert [r["best_metric"] for r in csv.DictReader(f)] == ["val/acc", "val/acc"]


def test_missing_plugins_are_named_with_the_extra_to_install():
    from dlcli.config.sweeps import composition_hint

    hint = composition_hint("In 'hparams_search/mlp_spirals': Could not load 'hydra/sweeper/optuna'.")
    assert hint and "pip install 'dlcli[optuna]'" in hint
    assert "pip install 'dlcli[joblib]'" in composition_hint("Could not find 'hydra/launcher/joblib'")


def test_experiment_without_plus_says_to_add_it():
    from dlcli.base.errors import UserError
    from dlcli.config.compose import compose_jobs

    with pytest.raises(UserError, match=r"added with a \+: dl train -m \+experiment=lstm_vs_rnn$"):
        compose_jobs(["experiment=lstm_vs_rnn"], multirun=True)
