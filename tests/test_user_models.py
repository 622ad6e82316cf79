"""A model of the user's own, named by `_target_` in a model YAML of their config dir, trained, evaluated from
another directory, sampled and resumed through the CLI; and every way such a model can be wrong, in one line."""

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


@pytest.mark.parametrize("model,expected", [
    ("nomodule", "model._target_=nomod.Net: cannot import nomod"),
    ("notcallable", "model._target_=mynets.torch: that is a module, not a class or function"),
    ("raises", "model._target_=mynets.PoolNet: calling it failed: RuntimeError"),
    ("notamodule", "model._target_=mynets.make_list: it returned a list, not a torch.nn.Module"),
    ("wrongshape", "for input (2, 2) it returned (2,), this classify task needs (2, 3)"),
    ("unfilled", "nothing gives its parameter(s) depth"),
])
def test_a_user_model_that_cannot_work_is_one_line(project, model, expected):
    res = project("train", "--config-dir", "conf", f"model={model}", *SPIRALS, *FAST)
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

    section = readme_section("Your own model")
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    files = [(body.splitlines()[0][2:].strip(), body) for lang, body in blocks if lang in ("python", "yaml")]
    assert [f for f, _ in files] == ["mynets.py", "conf/model/poolnet.yaml"]
    for name, body in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    dl = CLI(tmp_path)
    commands = [ln.split("#")[0].strip() for lang, body in blocks if lang == "bash" for ln in body.splitlines()]
    assert len(commands) == 4
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "dl"
        runs = dl.runs()
        args = [a.replace("outputs/runs/<run>", str(runs[0]) if runs else "") for a in args[1:]]
        dl.ok(*args, *FAST if args[0] == "train" and "trainer.resume" not in " ".join(args) else ())
    run = dl.runs()[0]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 10  # the resume trained it on
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    assert len([d for d in sweep.iterdir() if (d / "summary.json").exists()]) == 2  # model.width=4,16
