"""The live progress bar (loss, speed, the epoch's and the run's ETA; one plain line per epoch off a terminal) and
`dl train`'s shell completion (group=option, +group=option, group.key=)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from io import StringIO

from rich.console import Console

from dlcli.commands.cli import complete_overrides
from dlcli.engine.logger import Reporter

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal() -> Console:
    return Console(force_terminal=True, file=StringIO(), width=200, color_system=None)


def shown(console: Console) -> str:
    return ANSI.sub("", console.file.getvalue())


def test_bar_shows_smoothed_loss_speed_and_both_etas():
    console = terminal()
    reporter = Reporter(console)
    with reporter.epoch_progress(1, 4, 30) as advance:
        for i in range(30):
            time.sleep(0.004)
            advance({9: 1.0, 19: 0.5}.get(i))  # the loop passes a loss only at its log steps
    out = shown(console)
    assert "epoch 1/4" in out and "30/30" in out
    assert "loss 0.8" in out  # 0.6 * 1.0 + 0.4 * 0.5: smoothed, not the last value alone
    speed = float(re.findall(r"([\d.]+) it/s", out)[-1])
    assert 20 < speed < 300  # 30 batches at >= 4 ms each
    assert re.search(r"eta \d:\d\d:\d\d", out)
    # epochs 2-4 left at this epoch's pace (~0.12-1.5 s each): seconds, not minutes
    run_eta = re.findall(r"run eta (\d):(\d\d):(\d\d)", out)[-1]
    assert run_eta[:2] == ("0", "00")


def test_run_eta_uses_the_time_per_epoch_and_the_time_budget():
    console = terminal()
    reporter = Reporter(console)
    for epoch in (1, 2):
        with reporter.epoch_progress(epoch, 100, 10, time_left=5.0 if epoch == 2 else None) as advance:
            for _ in range(10):
                time.sleep(0.003)
                advance()
    assert len(reporter.pace.epoch_seconds) == 1  # epoch 1, start to start
    # 98 epochs left at >= 30 ms each would be > 3 s; the budget leaves at most 5 s: a minimum of the two
    assert reporter.pace.run_left(5, speed=100.0) <= 5.0
    reporter.pace.time_left = None
    assert reporter.pace.run_left(5, speed=100.0) > 98 * 0.03
    assert "loss -" in shown(console)  # nothing logged yet: no made-up value
    reporter.epoch_line(2, 100, {"train": {"loss": 0.75}}, 0.1)  # an epoch that logged no step loss: its mean
    assert reporter.pace.loss == 0.75


def test_off_a_terminal_no_bar_and_one_plain_line_per_epoch():
    console = Console(file=StringIO(), width=200)
    reporter = Reporter(console)
    assert not console.is_terminal
    with reporter.epoch_progress(1, 2, 5) as advance:
        for _ in range(5):
            advance(0.5)
    assert console.file.getvalue() == ""
    reporter.epoch_line(1, 2, {"train": {"loss": 0.5}, "val": {"loss": 0.25, "acc": 0.75}}, 1.25)
    assert console.file.getvalue() == "epoch 1/2  train/loss 0.5  val/loss 0.25  val/acc 0.75  1.2s\n"


def test_the_loop_hands_the_bar_the_losses_it_logs(tmp_path):
    """fit() passes advance() the loss of each logged step (None in between): the bar adds no host sync."""
    from bench.common import build_parts, compose
    from dlcli.engine.logger import MetricsLogger
    from dlcli.engine.loop import Training, fit
    from dlcli.engine.stopping import LoopState

    cfg = compose(["trainer.epochs=2", "dataset.n_samples=200", "device=cpu", "trainer.log_every_n_steps=2",
                   "trainer.batch_size=16"])
    parts = build_parts(cfg)
    seen: list[float | None] = []

    class Recording(Reporter):
        @contextlib.contextmanager
        def epoch_progress(self, *args, **kwargs):
            with super().epoch_progress(*args, **kwargs) as advance:
                def record(loss=None):
                    seen.append(loss)
                    advance(loss)

                yield record

    console = terminal()
    logger = MetricsLogger(tmp_path)
    fit(Training(parts.model, parts.task, parts.optimizer, parts.scheduler, parts.interval, parts.runtime,
                 cfg.trainer, logger, Recording(console), lambda which, state: None), LoopState())
    logged = [r["loss"] for r in logger.epochs("step")]
    assert len(seen) == 2 * parts.task.num_batches("train", 16)
    assert [v for v in seen if v is not None] == logged and len(logged) == len(seen) // 2
    assert "loss " in shown(console) and "it/s" in shown(console)


def test_completion_offers_groups_added_groups_and_keys():
    assert complete_overrides("optimizer=a") == ["optimizer=adagrad", "optimizer=adam", "optimizer=adamw"]
    trainer = complete_overrides("trainer.")
    assert {"trainer.epochs=", "trainer.max_time=", "trainer.batch_size=", "trainer.resume="} <= set(trainer)
    assert all(k.startswith("trainer.") and k.endswith("=") for k in trainer)
    assert complete_overrides("trainer.max_t") == ["trainer.max_time="]
    assert complete_overrides("loss.") == ["loss.label_smoothing=", "loss.name="]
    plus = complete_overrides("+")
    assert {"+experiment=optimizers", "+debug=fast", "+hparams_search=mlp_spirals"} <= set(plus)
    assert all(p.startswith(("+experiment=", "+debug=", "+hparams_search=")) for p in plus)
    assert "trainer=default" in complete_overrides("trainer")  # a bare group name: its options and its keys
    assert "trainer.epochs=" in complete_overrides("trainer")
    assert not [p for p in complete_overrides("") if "." in p]  # nothing typed: no wall of keys


def test_completion_keys_follow_the_options_chosen_so_far():
    assert "model.hidden_sizes=" in complete_overrides("model.")  # the default model: mlp
    lstm = complete_overrides("model.", ["model=lstm"])
    assert "model.forget_bias=" in lstm and "model.hidden_sizes=" not in lstm
    assert "dataset.n_sentences=" in complete_overrides("dataset.", ["model=lstm"])  # lstm's default: grammar
    assert "dataset.augment.hflip=" in complete_overrides("dataset.", ["model=cnn", "dataset=cifar10"])
    assert "optimizer.momentum=" in complete_overrides("optimizer.", ["model=skipgram"])  # word2vec picks sgd
    assert "optimizer.momentum=" not in complete_overrides("optimizer.", ["model=skipgram", "optimizer=adam"])


def test_shell_completion_through_click_stays_light():
    """The shell's own call: no torch, Hydra or OmegaConf imported, and the words typed before count."""
    probe = ("import runpy, sys\n"
             "try:\n    runpy.run_module('dlcli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('HEAVY', [m for m in ('torch', 'hydra', 'omegaconf', 'mlflow', 'wandb') if m in sys.modules])\n")
    env = {**os.environ, "_DL_COMPLETE": "complete_bash", "COMP_WORDS": "dl train model=lstm model.hid",
           "COMP_CWORD": "3"}
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    lines = res.stdout.split()
    assert lines[0] == "model.hidden_size=", res.stdout + res.stderr
    assert res.stdout.strip().endswith("HEAVY []")
    assert seconds < 10  # ~0.2 s on an idle core (Python's own start included); a loose bound for a busy machine
