"""The command surface: help texts, Hydra pass-through, start-up without torch."""

from __future__ import annotations

import subprocess
import sys


def test_dl_help_lists_commands_and_imports_no_torch():
    code = ("import sys\nfrom dlcli.commands.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'hydra', 'omegaconf', 'matplotlib') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for command in ("train", "eval", "sample", "runs"):
        assert command in out


def test_train_help_lists_groups_options_and_examples(dl):
    res = dl.ok("train", "--help")
    out = res.stdout
    for group, option in (("model", "cnn"), ("dataset", "mnist"), ("optimizer", "nesterov"),
                          ("scheduler", "warmup_cosine"), ("device", "cuda"), ("trainer", "default")):
        assert group in out and option in out, (group, option)
    assert "Examples:" in out and "dl train -m" in out
    assert "clip_grad_norm" in out  # the composed config, so every key is listed
    assert not (dl.cwd / "outputs").exists()


def test_cfg_job_prints_config_and_trains_nothing(dl):
    res = dl.ok("train", "model=cnn", "--cfg", "job")  # flag after the override: reordered for Hydra
    assert "name: cnn" in res.stdout and "name: shapes" in res.stdout
    assert not (dl.cwd / "outputs").exists()


def test_model_default_dataset_and_override(dl):
    assert "name: spirals" in dl.ok("train", "--cfg", "job").stdout
    assert "name: shapes" in dl.ok("train", "--cfg", "job", "model=cnn").stdout
    assert "name: mnist" in dl.ok("train", "--cfg", "job", "model=cnn", "dataset=mnist").stdout


def test_python_m_dlcli_and_subcommand_help(dl):
    assert "Evaluate checkpoints" in dl.ok("eval", "--help").stdout
    assert "--input" in dl.ok("sample", "--help").stdout


def test_shell_completion_offers_group_options(dl):
    env = {"_DL_COMPLETE": "complete_bash", "COMP_WORDS": "dl train optimizer=a", "COMP_CWORD": "2"}
    res = subprocess.run([sys.executable, "-m", "dlcli"], cwd=dl.cwd, capture_output=True, text=True,
                         env={**__import__("os").environ, **env})
    assert res.stdout.split() == ["optimizer=adagrad", "optimizer=adam", "optimizer=adamw"]
