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




class SplitSizes:
    """What evaluation_reserve reads of a task: examples and batches per split."""

    chosen: dict = {}

    def __init__(self, **sizes: int):
        self.sizes = sizes

    def size(self, split: str) -> int:
        return self.sizes.get(split, 0)

    def num_batches(self, split: str, batch_size: int) -> int:
        return -(-self.size(split) // batch_size)


def test_evaluations_that_would_not_fit_in_the_budget_run_on_a_share_of_val_and_test():
    from omegaconf import OmegaConf

    from dlcli.engine.batches import EVAL_BUDGET_SHARE, eval_batches, evaluation_reserve
    tcfg = OmegaConf.create({"eval_batch_size": 100, "limit_val_batches": None, "limit_test_batches": None})
    task = SplitSizes(val=10_000, test=20_000)
    # 2 val evaluations + the test: 40,000 examples at 1 ms each = 40 s
    assert evaluation_reserve(tcfg, task, 2, 1e-3, max_time=1000) == (40.0, None)  # fits in a quarter of 1000 s
    assert evaluation_reserve(tcfg, task, 2, 1e-3, max_time=None) == (40.0, None)  # no budget, nothing shared
    reserve, share = evaluation_reserve(tcfg, task, 2, 1e-3, max_time=40)
    assert 0 < share < 1 and reserve <= EVAL_BUDGET_SHARE * 40 + 0.2  # within a batch of val's and test's share
    assert eval_batches(tcfg, task, "val", 100, share) == int(100 * share)
    assert eval_batches(tcfg, task, "test", 100, share) == int(200 * share)
    # a split the user limited keeps its limit; the other takes what is left of the quarter
    tcfg.limit_test_batches = 20  # 2,000 examples: 2 s
    reserve, share = evaluation_reserve(tcfg, task, 2, 1e-3, max_time=40)
    assert eval_batches(tcfg, task, "test", 100, share) == 20
    assert abs(reserve - EVAL_BUDGET_SHARE * 40) <= 0.2
    # both limited by the user: nothing to share, whatever it costs
    tcfg.limit_val_batches = 1.0
    assert evaluation_reserve(tcfg, task, 2, 1e-3, max_time=4)[1] is None
    # a budget smaller than one batch's worth: still at least one batch each
    tcfg.limit_val_batches = tcfg.limit_test_batches = None
    _, share = evaluation_reserve(tcfg, task, 2, 1.0, max_time=1)
    assert eval_batches(tcfg, task, "val", 100, share) == eval_batches(tcfg, task, "test", 100, share) == 1


def test_a_budget_that_whole_evaluations_would_overrun_evaluates_a_share_and_says_so(dl, tmp_path):
    import random
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
    (tmp_path / "big.txt").write_text("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(40_000)))
    out = dl.ok("train", "model=lstm", "dataset=text", f"dataset.path={tmp_path / 'big.txt'}", "dataset.cache=false",
                "dataset.val_fraction=0.4", "dataset.test_fraction=0.4", "model.hidden_size=16",
                "model.embedding_size=8", "trainer.eval_batch_size=16", "trainer.max_time=2", *FAST).stdout
    assert "auto: trainer.limit_val_batches=" in out and "auto: trainer.limit_test_batches=" in out
    chosen = json.loads((dl.last_run() / "summary.json").read_text())["chosen"]
    assert "of trainer.max_time=2s" in chosen["trainer.limit_val_batches"]
    shared = int(chosen["trainer.limit_test_batches"].split()[0].replace(",", ""))
    total = int(chosen["trainer.limit_test_batches"].split("(of ")[1].split(":")[0].replace(",", ""))
    assert 1 <= shared < total
