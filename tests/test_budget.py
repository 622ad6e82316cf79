"""trainer.max_time as a budget the run plans for: the steps it allows are planned once, the schedule ends with them,
trainer.epochs=auto trains until it is used, and a resume keeps the plan."""

from __future__ import annotations

import json

import torch
from conftest import FAST


def step_lrs(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["lr"] for r in rows if r["split"] == "step"]


def test_epochs_auto_trains_until_the_budget_and_the_schedule_ends_at_its_floor(dl):
    out = dl.ok("train", "trainer.epochs=auto", "trainer.max_time=4", "trainer.log_every_n_steps=1", *FAST).stdout
    assert "time budget: trainer.max_time=4s plans" in out and "the learning-rate schedule ends with them" in out
    summary = json.loads((dl.last_run() / "summary.json").read_text())
    lrs = step_lrs(dl.last_run())
    assert summary["stopped_by"] == "max_time" and len(lrs) == summary["steps"]
    assert max(lrs) > 1e-3 and lrs[-1] == 0.0  # warmed up to the peak, annealed to min_lr 0 by the last step
    assert f"stopping: the {summary['steps']:,} steps trainer.max_time=4s planned are done" in out
    assert summary["wall_time_s"] < 4 * 1.25 + 2  # training within the budget's slack, evaluation included


def test_with_epochs_given_the_budget_or_the_epochs_end_it_whichever_first(dl):
    dl.ok("train", "trainer.epochs=2", "trainer.max_time=600", "dataset.n_samples=300", *FAST)
    summary = json.loads((dl.last_run() / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["stopped_by"] == "epochs"  # the epochs came first


def test_a_resume_keeps_the_plan_and_ends_annealed(dl):
    args = ["trainer.epochs=auto", "trainer.max_time=6", "trainer.log_every_n_steps=1", *FAST]
    res = dl("train", *args, env={"DL_TEST_SIGNAL_AT_STEP": "40"})
    assert res.returncode == 130, res.stdout + res.stderr
    run = dl.last_run()
    # the resume keeps the saved plan; a roomier clock (the cut past 1.25x the budget) so that a resumed process slowed
    # by a busy machine still ends at the plan rather than at the clock
    dl.ok("train", f"trainer.resume={run}", "trainer.max_time=60")
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    summary = json.loads((run / "summary.json").read_text())
    assert last["best"]["planned_steps"] == summary["steps"]  # stopped where the plan said
    assert step_lrs(run)[-1] == 0.0


