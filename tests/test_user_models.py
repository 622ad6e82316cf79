"""A model and data of the user's own, named by `_target_` in YAMLs of their config dir, trained, evaluated from
another directory, sampled and resumed through the CLI; and every way such code can be wrong, in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import CLI, FAST

MYNETS = '''
import torch
from torch import nn


class PoolNet(nn.Module):
    """A small MLP whose hidden layer is the max over `heads` parallel projections."""

    def __init__(self, input_size: int, num_classes: int, width: int = 16, heads: int = 4):
        super().__init__()
        self.proj = nn.Linear(input_size, width * heads)
        self.heads = heads
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.proj(x).view(len(x), self.heads, -1).amax(1)
        return self.head(torch.relu(h))


def make_list(input_size):
    return [input_size]


class WrongOut(nn.Module):
    def __init__(self, input_size):
        super().__init__()
        self.lin = nn.Linear(input_size, 1)

    def forward(self, x):
        return self.lin(x).squeeze(-1)


class Needs(nn.Module):
    def __init__(self, depth):
        super().__init__()
'''
SPIRALS = ["dataset=spirals", "dataset.n_samples=300"]
MYDATA = '''
import numpy as np
import torch


def load(n: int = 600, seed: int = 0):
    """Three Gaussian blobs in 2-D; only a train split: dl cuts val and test from it."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0], [3, 0], [0, 3]], dtype=np.float32)
    y = rng.integers(0, 3, n)
    x = centers[y] + rng.normal(0, 0.8, (n, 2)).astype(np.float32)
    return {"train": (x, y)}


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n):
        self.x = torch.linspace(-1, 1, n)[:, None]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 2 * self.x[i, 0] + 0.5


def regression(n: int = 200):
    """All three splits given, as map-style Datasets; float targets: a regression."""
    return {"train": Pairs(n), "val": Pairs(n // 4), "test": Pairs(n // 4)}


def bad_lengths(n: int = 10):
    return {"train": (np.zeros((n, 2)), np.zeros(n - 1, dtype=int))}


def with_nan(n: int = 50):
    x = np.zeros((n, 2))
    x[7, 1] = np.nan
    return {"train": (x, np.arange(n) % 2)}


def not_a_dict():
    return [1, 2]


def empty_val():
    return {"train": (np.zeros((20, 2)), np.arange(20) % 2), "val": (np.zeros((0, 2)), np.zeros(0, dtype=int))}


def fails(n: int = 3):
    raise ValueError("no such file: blobs.csv")


def strings():
    return {"train": (np.array([["a", "b"]] * 20), np.arange(20) % 2)}
'''


@pytest.fixture
def project(tmp_path: Path) -> CLI:
    (tmp_path / "mynets.py").write_text(MYNETS)
    models = tmp_path / "conf" / "model"
    models.mkdir(parents=True)
    (models / "poolnet.yaml").write_text("_target_: mynets.PoolNet\nwidth: 8\n")
    for name, target in {"nomodule": "nomod.Net", "notcallable": "mynets.torch", "raises": "mynets.PoolNet",
                         "notamodule": "mynets.make_list", "wrongshape": "mynets.WrongOut",
                         "unfilled": "mynets.Needs"}.items():
        (models / f"{name}.yaml").write_text(f"_target_: {target}\n" + ("width: -3\n" if name == "raises" else ""))
    (tmp_path / "mydata.py").write_text(MYDATA)
    data = tmp_path / "conf" / "dataset"
    data.mkdir()
    (data / "blobs.yaml").write_text("_target_: mydata.load\nkind: classify\nn: 600\n")
    (data / "ramp.yaml").write_text("_target_: mydata.regression\nname: ramp\nepochs: 3\n")
    for name in ("bad_lengths", "with_nan", "not_a_dict", "empty_val", "fails", "strings"):
        (data / f"{name}.yaml").write_text(f"_target_: mydata.{name}\n")
    return CLI(tmp_path)


def test_a_user_model_trains_evaluates_elsewhere_samples_and_resumes(project, tmp_path_factory):
    project.ok("train", "--config-dir", "conf", "model=poolnet", *SPIRALS, "trainer.epochs=2", *FAST)
    run = project.last_run()
    assert run.name.endswith("_poolnet_spirals")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "poolnet" and summary["params"] == 2 * 32 + 32 + 8 * 3 + 3  # width 8 x 4 heads
    elsewhere = CLI(tmp_path_factory.mktemp("elsewhere"))
    env = {"PYTHONPATH": os.pathsep.join([str(project.cwd), os.environ.get("PYTHONPATH", "")])}
    got = json.loads(elsewhere.ok("eval", str(run), "--json", env=env).stdout)
    assert got["test/acc"] == pytest.approx(summary["test"]["test/acc"])  # the number training reported
    res = elsewhere("eval", str(run))  # without the module on the path: said, not a traceback
    assert res.returncode == 2 and "cannot import mynets" in res.stderr
    assert "/3 correct" in project.ok("sample", str(run), "-n", "3").stdout
    project.ok("train", f"trainer.resume={run}", "trainer.epochs=3")  # finds conf/ again from the run's record
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


@pytest.mark.parametrize("model,expected", [  # each line starts with the user's YAML that holds the problem
    ("nomodule", "conf/model/nomodule.yaml: model._target_=nomod.Net: cannot import nomod"),
    ("notcallable", "conf/model/notcallable.yaml: model._target_=mynets.torch: that is a module, not a class or "
                    "function"),
    ("raises", "conf/model/raises.yaml: model._target_=mynets.PoolNet: calling it failed: RuntimeError"),
    ("notamodule", "conf/model/notamodule.yaml: model._target_=mynets.make_list: it returned a list, not a "
                   "torch.nn.Module"),
    ("wrongshape", "conf/model/wrongshape.yaml: model._target_=mynets.WrongOut: for input (2, 2) it returned (2,), "
                   "this classify task needs (2, 3)"),
    ("unfilled", "conf/model/unfilled.yaml: model._target_=mynets.Needs: nothing gives its parameter(s) depth"),
])
def test_a_user_model_that_cannot_work_is_one_line(project, model, expected):
    res = project("train", "--config-dir", "conf", f"model={model}", *SPIRALS, "trainer.plots=false")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and expected in lines[0], res.stderr
    assert not (project.cwd / "outputs").exists() or not list((project.cwd / "outputs").glob("*/*"))


def readme_section(title: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_the_readme_example_runs_exactly_as_written(tmp_path):
    """README, "Your own model": its files written as shown, its commands run in order (<run>: the run made)."""
    import re
    import shlex

    section = readme_section("Your own model and data")
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    files = [(body.splitlines()[0][2:].strip(), body) for lang, body in blocks if lang in ("python", "yaml")]
    assert [f for f, _ in files] == ["mynets.py", "conf/model/poolnet.yaml", "mydata.py", "conf/dataset/blobs.yaml"]
    for name, body in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    dl = CLI(tmp_path)
    commands = [ln.split("#")[0].strip() for lang, body in blocks if lang == "bash" for ln in body.splitlines()]
    assert len(commands) == 6
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "dl"
        runs = dl.runs()  # <run>: the first run made
        args = [a.replace("outputs/runs/<run>", str(runs[0]) if runs else "") for a in args[1:]]
        dl.ok(*args, *FAST if args[0] == "train" and "trainer.resume" not in " ".join(args) else ())
    run = dl.runs()[0]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 10  # the resume trained it on
    assert [json.loads((r / "summary.json").read_text())["dataset"] for r in dl.runs()[1:]] == ["load", "load"]
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    assert len([d for d in sweep.iterdir() if (d / "summary.json").exists()]) == 2  # model.width=4,16


def test_user_data_with_built_in_and_user_models_evaluated_from_elsewhere(project, tmp_path_factory):
    project.ok("train", "--config-dir", "conf", "model=mlp", "dataset=blobs", "trainer.epochs=3", *FAST)
    run = project.last_run()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == "load" and summary["test"]["test/acc"] > 0.8  # blobs are easy
    elsewhere = CLI(tmp_path_factory.mktemp("elsewhere"))
    env = {"PYTHONPATH": os.pathsep.join([str(project.cwd), os.environ.get("PYTHONPATH", "")])}
    got = json.loads(elsewhere.ok("eval", str(run), "--json", env=env).stdout)
    assert got["test/acc"] == pytest.approx(summary["test"]["test/acc"])  # the same cut of the same data
    (project.cwd / "new.csv").write_text("a,b\n0,0\n3,0\n0,3\n")  # the blobs' centres, columns in order
    assert "row 3" in project.ok("sample", str(run), "--input", "new.csv").stdout
    project.ok("train", "--config-dir", "conf", "model=poolnet", "dataset=blobs", "trainer.epochs=2", *FAST)
    project.ok("train", "--config-dir", "conf", "model=mlp", "dataset=ramp", *FAST)  # regression, Datasets
    ramp = json.loads((project.last_run() / "summary.json").read_text())
    assert ramp["kind"] == "regress" and ramp["epochs"] == 3 and "test/r2" in ramp["test"]
    res = project("train", "--config-dir", "conf", "model=cnn", "dataset=blobs", *FAST)
    assert res.returncode == 2 and "model=cnn does not fit dataset._target_=mydata.load" in res.stderr
    assert len(project.runs()) == 3


@pytest.mark.parametrize("dataset,expected", [
    ("bad_lengths", "conf/dataset/bad_lengths.yaml: dataset._target_=mydata.bad_lengths: its train split has 10 "
                    "inputs but 9 targets"),
    ("with_nan", "its train inputs hold NaN or inf (row 7)"),
    ("not_a_dict", "it returned list; return a dict"),
    ("empty_val", "conf/dataset/empty_val.yaml: dataset._target_=mydata.empty_val: its val split is empty"),
    ("fails", "calling it failed: ValueError: no such file: blobs.csv"),
    ("strings", "its train split holds ndarray values that are not numbers"),
])
def test_user_data_that_cannot_work_is_one_line(project, dataset, expected):
    res = project("train", "--config-dir", "conf", "model=mlp", f"dataset={dataset}", *FAST)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and expected in lines[0], res.stderr
    assert not (project.cwd / "outputs").exists() or not list((project.cwd / "outputs").glob("*/*"))


def test_a_user_model_on_user_data_interrupted_then_resumed_ends_as_if_never_stopped(project, tmp_path_factory):
    """Ctrl-C mid-epoch (the tests' DL_TEST_SIGNAL_AT_STEP hook), then trainer.resume: the same final weights and test
    metrics as an uninterrupted run, bit for bit on the CPU."""
    import shutil

    import torch

    args = ["--config-dir", "conf", "model=poolnet", "dataset=blobs", "trainer.epochs=3", *FAST]
    twin = CLI(tmp_path_factory.mktemp("twin"))
    for f in ("mynets.py", "mydata.py"):
        shutil.copy(project.cwd / f, twin.cwd / f)
    shutil.copytree(project.cwd / "conf", twin.cwd / "conf")
    twin.ok("train", *args, env={"OMP_NUM_THREADS": "1"})
    res = project("train", *args, env={"OMP_NUM_THREADS": "1", "DL_TEST_SIGNAL_AT_STEP": "11"})
    assert res.returncode == 130, res.stderr
    run = project.last_run()
    project.ok("train", f"trainer.resume={run}", env={"OMP_NUM_THREADS": "1"})
    a, b = (json.loads((r / "summary.json").read_text())["test"] for r in (twin.last_run(), run))
    assert a == b
    wa, wb = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in (twin.last_run(), run))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # optuna 2.10 on SQLAlchemy 2 (in-memory storage: unused)
def test_optuna_searches_a_user_models_own_key(project):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from omegaconf import OmegaConf

    search = ["-m", "--config-dir", "conf", "model=poolnet", *SPIRALS, "trainer.epochs=1", "hydra/sweeper=optuna",
              "hydra.sweeper.n_trials=2", *FAST]
    res = project("train", *search, "model.widht=choice(4,32)")
    assert res.returncode == 2 and "model.widht" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    project.ok("train", *search, "model.width=choice(4,32)")
    sweep = next((project.cwd / "outputs" / "sweeps").iterdir())
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(result.best_params) == {"model.width"} and result.best_params["model.width"] in (4, 32)
    widths = [OmegaConf.load(p).model.width for p in sorted(sweep.glob("*/.hydra/config.yaml"))]
    assert len(widths) == 2 and set(widths) <= {4, 32}
