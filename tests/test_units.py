"""Unit tests where the behaviour is subtle: batching order, schedules, optimizers, argument order, atomic writes."""

from __future__ import annotations

import math
import os

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from dlcli.base.task import Task, split_indices
from dlcli.commands.hydra_app import split_args
from dlcli.engine.batches import epoch_seed, resolve_batch_size
from dlcli.engine.checkpoint import atomic_save
from dlcli.engine.evaluation import is_better
from dlcli.engine.optim import build_optimizer, build_scheduler


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="dlcli.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_batches_cover_each_example_once_and_replay_by_seed():
    x = torch.arange(103).float()[:, None]
    task = Task({"train": (x, torch.arange(103))}, {})
    seen = torch.cat([b[1] for b in task.batches("train", 10, shuffle=True, seed=epoch_seed(0, 1))])
    assert sorted(seen.tolist()) == list(range(103)) and seen.tolist() != list(range(103))
    again = torch.cat([b[1] for b in task.batches("train", 10, shuffle=True, seed=epoch_seed(0, 1))])
    other = torch.cat([b[1] for b in task.batches("train", 10, shuffle=True, seed=epoch_seed(0, 2))])
    assert torch.equal(seen, again) and not torch.equal(seen, other)
    assert [len(b[0]) for b in task.batches("train", 50)] == [50, 50, 3]


def test_split_indices_partition():
    tr, va, te = split_indices(100, 0.2, 0.1, seed=3)
    assert (len(tr), len(va), len(te)) == (70, 20, 10)
    assert sorted(torch.cat([tr, va, te]).tolist()) == list(range(100))


def test_batch_size_words_and_best_tracking():
    assert resolve_batch_size("full", 77) == 77 and resolve_batch_size(500, 77) == 77
    assert is_better(0.5, None, "min", 0) and is_better(0.4, 0.5, "min", 0) and not is_better(0.5, 0.5, "min", 0)
    assert is_better(0.9, 0.8, "max", 0.05) and not is_better(0.84, 0.8, "max", 0.05)
    assert not is_better(float("nan"), None, "min", 0)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"])
def test_every_optimizer_config_builds_and_reduces_a_quadratic(name):
    cfg = compose_cfg(f"optimizer={name}")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    opt = build_optimizer(cfg.optimizer, model, torch.device("cpu"))
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # Weight decay only on the weight matrix, never on the bias.
    assert [g["weight_decay"] for g in opt.param_groups][1] == 0.0


@pytest.mark.parametrize("name", ["none", "step", "cosine", "warmup_cosine", "onecycle", "plateau"])
def test_every_scheduler_config_builds(name):
    cfg = compose_cfg(f"scheduler={name}")
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    sched, interval = build_scheduler(cfg.scheduler, opt, total_steps=100, mode="min")
    assert interval in ("step", "epoch", "eval") and (sched is None) == (name == "none")


def test_warmup_cosine_shape():
    cfg = OmegaConf.create({"name": "warmup_cosine", "warmup": 10, "min_lr": 0.0})
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    sched, _ = build_scheduler(cfg, opt, total_steps=110, mode="min")
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[10] == pytest.approx(1.0)  # linear warm-up to the peak
    assert lrs[60] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 0.01  # cosine half-way, then to ~0


def test_split_args_moves_flags_before_overrides():
    flags, overrides = split_args(["model=cnn", "--cfg", "job", "-m", "a=1,2"])
    assert flags == ["--cfg", "job", "-m"] and overrides == ["model=cnn", "a=1,2"]
    assert split_args(["--info", "defaults", "x=1"]) == (["--info", "defaults"], ["x=1"])


def test_atomic_save_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    atomic_save({"a": torch.ones(3)}, path)
    atomic_save({"a": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))
    assert os.listdir(path.parent) == ["last.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600


def test_label_smoothing_changes_the_loss():
    from dlcli.data.classification import ClassifyTask

    x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    model = torch.nn.Linear(3, 3)
    plain = ClassifyTask({"train": (x, y)}, {}, OmegaConf.create({"name": "auto"}))
    smooth = ClassifyTask({"train": (x, y)}, {}, OmegaConf.create({"name": "auto", "label_smoothing": 0.2}))
    a, b = plain.step(model, (x, y))[0], smooth.step(model, (x, y))[0]
    assert not math.isclose(a.item(), b.item())
