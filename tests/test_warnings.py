"""Warnings that save a run: one line each, said once, kept in summary.json."""

from __future__ import annotations

import json

from conftest import FAST


def warnings_of(dl) -> list[str]:
    return json.loads((dl.last_run() / "summary.json").read_text())["warnings"]


def test_overfitting_a_flat_loss_and_a_short_budget_are_each_said_once(dl):
    out = dl.ok("train", "dataset.n_samples=100", "dataset.noise=0.5", "trainer.epochs=60", "scheduler=none",
                "optimizer.lr=0.01", *FAST).stdout
    assert out.count("warning: val/loss has risen for") == 1 and out.count("warning:") == 1
    assert len(warnings_of(dl)) == 1 and "overfitting" in warnings_of(dl)[0]
    assert "warning: val/loss has risen" in dl.ok("runs", "show", str(dl.last_run())).stdout  # dl runs show too

    out = dl.ok("train", "optimizer.lr=1e-9", "scheduler=none", "dataset.n_samples=600", "trainer.batch_size=16",
                "trainer.epochs=1", *FAST).stdout
    assert "warning: the training loss did not fall during epoch 1" in out and "optimizer.lr (now 1e-09)" in out

    # one-cycle keeps its own course (the step-wise warm-up/cosine/linear/noam schedules follow a budget's plan)
    out = dl.ok("train", "trainer.batch_size=1", "trainer.max_time=0.5", "trainer.epochs=40", "scheduler=onecycle",
                *FAST).stdout  # epochs given: without them the budget would decide them (trainer.epochs=auto)
    assert "warning: trainer.max_time=0.5 ended the run" in out and "into epoch 1 of 40" in out
    assert "did not fall" not in out  # an epoch cut short (still warming up) says nothing about the lr

    dl.ok("train", "dataset.n_samples=300", "trainer.epochs=3", *FAST)  # a run that goes well: no warning
    assert warnings_of(dl) == []


def test_a_vocabulary_of_words_seen_once_is_said(dl):
    words = " ".join(f"w{i}" for i in range(3000))  # every word once, then a common line
    (dl.cwd / "rare.txt").write_text(words + "\n" + "the cat sat\n" * 200)
    out = dl.ok("train", "model=lstm", "dataset=text", "dataset.path=rare.txt", "dataset.level=word",
                "dataset.block_size=16", "model.hidden_size=8", "model.num_layers=1", "trainer.epochs=1", *FAST,
                env={"DL_CACHE_DIR": str(dl.cwd / "cache")}).stdout
    assert "warning: 100% of the 3,004 distinct word tokens occur once" in out and "dataset.min_freq=2" in out
