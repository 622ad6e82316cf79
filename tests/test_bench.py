"""Smoke test of the benchmark suite (`python -m bench`): one tiny case end to end, in-process. Speed itself is
measured by the suite, never asserted here."""

from __future__ import annotations

import json
import math
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))  # bench/ lives beside the package, not inside it

from bench.__main__ import main, parse_names  # noqa: E402


def test_names_select_cases_and_parts():
    assert parse_names(["loop/mlp", "loop/cnn", "data"]) == {"loop": ["mlp", "cnn"], "data": None}
    assert parse_names(["loop", "loop/mlp"]) == {"loop": None}  # the whole case wins over one of its parts
    assert list(parse_names([])) == ["startup", "loop", "data", "recurrent", "transformer", "mnist", "word2vec"]
    with pytest.raises(SystemExit, match="unknown case 'loops'"):
        parse_names(["loops"])


def test_loop_overhead_case_runs_both_loops_on_the_same_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bench.loop.CASES", {"mlp": (["model=mlp", "dataset.n_samples=600"], (2, None), (2, None))})
    out = tmp_path / "r.json"
    assert main(["loop/mlp", "--quick", "--repeat", "2", "--device", "cpu", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["quick"] and data["machine"]["cpus"] >= 1
    (r,) = data["results"]
    assert r["case"] == "loop/mlp" and r["metric"] == "steps/s" and r["dl"] > 0 and r["baseline"] > 0
    assert len(r["details"]["dl_steps_per_s"]) == len(r["details"]["bare_steps_per_s"]) == 2  # timed rounds
    assert r["dl"] == max(r["details"]["dl_steps_per_s"])  # each side's fastest round, and their time ratio
    assert r["ratio"] == pytest.approx(r["baseline"] / r["dl"]) and r["details"]["ratio_cpu"] > 0
    # Same seed, data order, optimizer and schedule: the hand-written loop computes exactly what dl's loop does.
    assert r["details"]["train_loss_dl"] == r["details"]["train_loss_bare"]
    assert r["details"]["steps_per_rep"] == 2 * 7  # 420 training points / batch 64 = 7 steps, 2 epochs
    assert "loop/mlp" in capsys.readouterr().out


def test_the_bare_char_lm_trains_on_dl_s_own_split(tmp_path):
    from bench import char_lm_budget

    line = "the cat sat on the mat and the dog ran far away.\n"
    text = tmp_path / "t.txt"
    text.write_text(line * 400)
    # a fixed number of steps (the seconds are the bench's; a busy test machine would take fewer steps in them)
    result = char_lm_budget.run(str(text), seconds=600.0, eval_every=600.0, max_steps=25)
    assert result["steps"] == 25 and len(result["curve"]) == 1
    # it learns: well below guessing uniformly among the text's characters
    assert result["best_val"] == result["curve"][0][2] < math.log(len(set(line))) - 0.3
