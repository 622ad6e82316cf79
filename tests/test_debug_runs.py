"""Quick debug runs (Lightning's names): trainer.fast_dev_run, limit_{train,val,test}_batches, overfit_batches."""

from __future__ import annotations

import json

import pytest
from conftest import FAST

SMALL = ["dataset.n_samples=400", *FAST]  # spirals: 280 train / 60 val / 60 test examples


def test_fast_dev_run_runs_everything_once_and_keeps_nothing(dl):
    out = dl.ok("train", "trainer.fast_dev_run=true", "model=cnn").stdout
    assert "epoch 1/1" in out and "test (best checkpoint)" in out and "nothing kept" in out
    assert not list((dl.cwd / "outputs").glob("runs/*"))


def test_limits_cut_each_pass_to_a_count_or_a_share(dl):
    dl.ok("train", *SMALL, "trainer.batch_size=10", "trainer.epochs=2", "trainer.limit_train_batches=3",
          "trainer.log_every_n_steps=1")
    summary = json.loads((dl.last_run() / "summary.json").read_text())
    assert summary["steps"] == 6  # 2 epochs of 3 batches, not of 28
    dl.ok("train", *SMALL, "trainer.batch_size=10", "trainer.epochs=1", "trainer.limit_train_batches=0.25",
          "trainer.limit_val_batches=1", "trainer.limit_test_batches=0.5", "trainer.eval_batch_size=20")
    summary = json.loads((dl.last_run() / "summary.json").read_text())
    assert summary["steps"] == 7  # a quarter of 28 batches
    assert {"val/loss", "val/acc"} <= set(summary["final"]) and "test/acc" in summary["test"]


@pytest.mark.parametrize("limit,n,expected", [(None, 28, 28), (3, 28, 3), (100, 28, 28), (0.25, 28, 7),
                                              (0.01, 28, 1), (1.0, 28, 28), (1, 28, 1)])
def test_a_limit_is_a_count_when_an_integer_and_a_share_when_a_fraction(limit, n, expected):
    from dlcli.engine.batches import batch_limit

    assert batch_limit(limit, n, "limit_val_batches") == expected


def test_overfit_batches_drives_the_loss_to_about_zero(dl):
    dl.ok("train", *SMALL, "trainer.overfit_batches=2", "trainer.epochs=60", "scheduler=none", "optimizer.lr=0.01")
    summary = json.loads((dl.last_run() / "summary.json").read_text())
    assert summary["steps"] == 120 and summary["final"]["train/loss"] < 0.15
    assert summary["final"]["val/loss"] < 0.15  # validated on the very batches it trained on


@pytest.mark.parametrize("override,expected", [
    ("trainer.limit_train_batches=2.5", "trainer.limit_train_batches=2.5: a number of batches (an integer >= 1) or "
                                        "a fraction in (0, 1]"),
    ("trainer.limit_val_batches=0", "trainer.limit_val_batches=0: must be a number > 0, or null"),
    ("trainer.limit_test_batches=nan", "trainer.limit_test_batches"),
    ("trainer.overfit_batches=-1", "trainer.overfit_batches=-1"),
])
def test_meaningless_limits_are_one_line_before_anything_runs(dl_inproc, override, expected):
    res = dl_inproc("train", override)
    assert res.returncode == 2 and expected in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (dl_inproc.cwd / "outputs").exists()


def test_the_debug_group_holds_them_as_configs(dl, dl_inproc):
    assert "nothing kept" in dl.ok("train", "+debug=fast", "model=lstm").stdout
    assert not list((dl.cwd / "outputs").glob("runs/*"))
    dl.ok("train", "+debug=overfit", "dataset.n_samples=400", "trainer.summary=false")
    summary = json.loads((dl.last_run() / "summary.json").read_text())
    assert summary["steps"] == 120 and summary["final"]["train/loss"] < 0.15
    res = dl_inproc("train", "debug=fast")
    assert res.returncode == 2 and "debug is not in the default config, so it is added with a +: dl train " \
                                   "+debug=fast" in res.stderr
    assert "debug  (+debug=OPTION)" in dl_inproc.ok("ls", "debug").stdout
