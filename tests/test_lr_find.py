"""trainer.lr_find: the lr range test (engine/lr_find.py) and what dl train does with it (true | apply)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import FAST, read_jsonl, summary
from omegaconf import OmegaConf

from dlcli.engine.lr_find import smooth, suggest, sweep_lrs

TINY = ["trainer.summary=false", "trainer.epochs=1", "trainer.limit_train_batches=6", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.lr_find_steps=40", "trainer.log_every_n_steps=1"]  # + trainer.plots


def test_the_sweep_rises_exponentially_from_min_to_max():
    lrs = sweep_lrs(1e-6, 1.0, 25)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([10 ** 0.25] * 24)


def test_the_suggestion_is_a_tenth_of_the_lr_of_the_lowest_smoothed_loss():
    lrs = sweep_lrs(1e-7, 10.0, 161)  # 20 steps a decade: 1e-2 is step 100
    # a loss lowest at lr 1e-2 (a parabola in log-lr), then diverging: the last steps shoot up
    losses = [1 + (math.log10(lr) + 2) ** 2 / 25 for lr in lrs[:150]] + [50.0, 400.0]
    assert suggest(lrs, smooth(losses)) == pytest.approx(1e-3)
    # noise (here as large as the fall over the last decade) moves it by less than a third of a decade
    noisy = [v + 0.04 * math.sin(7.3 * i) for i, v in enumerate(losses)]
    assert abs(math.log10(suggest(lrs, smooth(noisy))) + 3) < 0.34
    # a loss that never falls, or is lowest within the sweep's first decade, gives none
    assert suggest(lrs, smooth([1.0 + i * 1e-3 for i in range(161)])) is None
    assert suggest(lrs, smooth([1 + (math.log10(lr) + 6.5) ** 2 for lr in lrs])) is None


def test_lr_find_true_writes_the_plot_json_and_summary_and_trains_nothing(dl):
    res = dl.ok("train", *TINY, "trainer.plots=true", "trainer.lr_find=true", "model.hidden_sizes=[32]")
    run = dl.last_run()
    found = json.loads((run / "lr_find.json").read_text())
    s = summary(run)["lr_find"]
    assert (run / "plots" / "lr_find.png").stat().st_size > 10_000
    assert s["method"] == found["method"] == "minimum/10" and s["suggested_lr"] == found["suggested_lr"]
    assert 1e-7 <= s["suggested_lr"] <= 10 and (s["min_lr"], s["max_lr"]) == (1e-7, 10.0)
    assert s["suggested_lr"] == pytest.approx(s["lowest_loss_lr"] / 10, rel=0.05)  # 2 significant digits
    assert s["steps"] == len(found["lrs"]) == len(found["losses"]) <= 40
    ratios = [b / a for a, b in zip(found["lrs"], found["lrs"][1:])]
    assert ratios == pytest.approx([1e8 ** (1 / 39)] * len(ratios))  # 40 steps over 8 decades
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("lr_find:"))
    shown = f"optimizer.lr={s['suggested_lr']:.1e}"
    assert "no training was done" in line and "dl train " in line and line.endswith(shown)
    assert "trainer.lr_find" not in line.split("Train with it:")[1]
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_apply_trains_with_the_suggestion_from_the_same_start_state(dl):
    dl.ok("train", *TINY, "trainer.plots=false", "trainer.lr_find=apply")
    applied = dl.last_run()
    lr = summary(applied)["lr_find"]["suggested_lr"]
    stored = OmegaConf.load(applied / ".hydra" / "config.yaml")
    assert stored.optimizer.lr == lr and stored.trainer.lr_find is False
    assert f"optimizer.lr={lr}" in OmegaConf.load(applied / ".hydra" / "overrides.yaml")
    dl.ok("train", *TINY, "trainer.plots=false", f"optimizer.lr={lr}")
    by_hand = dl.last_run()
    steps = [[r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "step"] for run in (applied, by_hand)]
    assert steps[0][0]["loss"] == steps[1][0]["loss"]  # the first batch: the same weights, the same data
    assert steps[0] == steps[1] and summary(applied)["test"] == summary(by_hand)["test"]  # and the same lr after it
    # a resume trains on with the recorded lr and does not sweep again
    res = dl.ok("train", f"trainer.resume={applied}", "trainer.epochs=2")
    assert "lr_find" not in res.stdout
    assert OmegaConf.load(applied / ".hydra" / "config.yaml").optimizer.lr == lr
    # asked for again on a resume: said, not silently dropped
    res = dl.ok("train", f"trainer.resume={applied}", "trainer.epochs=3", "trainer.lr_find=true")
    assert "trainer.lr_find=true is not run on a resume" in res.stdout + res.stderr
    assert summary(applied)["epochs"] == 3


def test_a_dry_run_sweeps_only_a_few_steps_and_leaves_nothing(dl):
    res = dl.ok("train", "trainer.fast_dev_run=true", "trainer.lr_find=true", "trainer.summary=false")
    out = res.stdout + res.stderr
    assert "lr_find:" in out and "10 steps from 1e-07 to 10" in out and "nothing kept" in out
    assert dl.runs() == []


@pytest.mark.parametrize("override,expected", [
    (["trainer.lr_find=maybe"], "trainer.lr_find=maybe"),
    (["trainer.lr_find=true", "trainer.lr_find_steps=5"], "trainer.lr_find_steps=5: must be an integer in [10, "),
    (["trainer.lr_find_min=-1"], "trainer.lr_find_min=-1: must be a number > 0"),
    (["trainer.lr_find_min=1", "trainer.lr_find_max=0.1"],
     "trainer.lr_find_min=1 must be below trainer.lr_find_max=0.1"),
    (["trainer.lr_find=true", "trainer.devices=2", "device=cpu"], "trainer.lr_find with trainer.devices=2"),
])
def test_bad_values_are_one_line_each(dl_inproc, override, expected):
    res = dl_inproc("train", *override, *FAST)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and expected in lines[0], res.stderr
    assert "apply" in lines[0] or "maybe" not in override[0]  # the choices are named
    assert not (dl_inproc.cwd / "outputs").exists() or not list((dl_inproc.cwd / "outputs").glob("*/*"))
