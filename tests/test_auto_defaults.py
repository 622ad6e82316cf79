"""Defaults that follow the user's data (issue 20): token level of a pairs file, epochs scaled to the data, a time
budget deciding the epochs, and what was chosen said in one line and in summary.json."""

from __future__ import annotations

import random

import pytest
from conftest import FAST, summary
from hypothesis import given, strategies as st

from dlcli.base.overrides import budget_epochs
from dlcli.base.task import AUTO_EPOCHS_MAX, Task
from dlcli.data.translation import choose_level

WORDS = "the cat sat on a mat and dog ran to red blue big small house tree".split()


def test_numbers_are_read_as_characters_and_their_words_as_words() -> None:
    numbers = [str(n) for n in random.Random(0).sample(range(10**6), 500)]
    assert choose_level(numbers, "source")[0] == "char"
    phrases = [" ".join(random.Random(i).choices(WORDS, k=5)) for i in range(500)]
    level, why = choose_level(phrases, "target")
    assert level == "word" and "recur" in why


def test_single_words_from_a_small_vocabulary_stay_words() -> None:
    # a label-like source: one word a line, but each word seen many times
    assert choose_level([WORDS[i % 4] for i in range(200)], "source")[0] == "word"


def test_one_off_single_words_are_read_as_characters() -> None:
    level, why = choose_level([f"name{i}" for i in range(200)], "source")
    assert level == "char" and "occur once" in why


@pytest.mark.parametrize("args, added", [
    (["trainer.max_time=60"], True),
    (["+trainer.max_time=60", "model=lstm"], True),
    (["trainer.max_time=60", "trainer.epochs=3"], False),
    (["trainer.max_time=null"], False),
    (["trainer.epochs=2"], False),
    ([], False),
])
def test_a_budget_without_epochs_lets_the_budget_decide(args: list[str], added: bool) -> None:
    out = budget_epochs(args)
    assert out[:len(args)] == args
    assert (out[len(args):] == ["trainer.epochs=auto"]) is added


@given(st.lists(st.sampled_from(["trainer.max_time=5", "trainer.epochs=2", "model=cnn", "trainer.max_time=null",
                                 "++trainer.epochs=4", "dataset=mnist"]), max_size=5))
def test_budget_epochs_adds_at_most_one_override_and_never_a_second_epochs(args: list[str]) -> None:
    out = budget_epochs(args)
    assert len(out) - len(args) in (0, 1)
    assert sum(o.lstrip("+").startswith("trainer.epochs=") for o in out) <= max(1, sum(
        a.lstrip("+").startswith("trainer.epochs=") for a in args))


class _Sized(Task):
    def __init__(self, n: int):
        self.n = n

    def size(self, split: str) -> int:
        return self.n


@pytest.mark.parametrize("n, epochs", [(1, AUTO_EPOCHS_MAX), (1_000, 200), (2_000, 100), (200_000, 1),
                                       (10**8, 1)])
def test_auto_epochs_scale_with_the_data_within_bounds(n: int, epochs: int) -> None:
    got, why = _Sized(n).auto_epochs()
    assert got == epochs and f"{n:,} an epoch" in why


def test_budget_epochs_shows_in_the_composed_config(dl_inproc) -> None:
    res = dl_inproc("train", "trainer.max_time=5", "--cfg", "job")
    assert res.returncode == 0 and "epochs: auto" in res.stdout


def test_a_text_file_gets_epochs_from_its_size_said_and_recorded(dl, tmp_path) -> None:
    text = tmp_path / "t.txt"
    text.write_text(" ".join(random.Random(1).choices(WORDS, k=40_000)))  # ~220k characters: ~45 epochs
    res = dl.ok("train", "model=lstm", "dataset=text", f"dataset.path={text}", "dataset.block_size=32",
                "model.hidden_size=16", "model.embedding_size=8", "trainer.limit_train_batches=1",
                "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", *FAST)
    s = summary(dl.last_run())
    chosen = s["chosen"]["trainer.epochs"]
    assert chosen.startswith(f"{s['epochs']} (") and AUTO_EPOCHS_MAX > s["epochs"] > 10
    assert f"auto: trainer.epochs={chosen}" in res.stdout
    shown = dl.ok("runs", "show", str(dl.last_run()))
    assert "auto: trainer.epochs=" in shown.stdout


def test_a_pairs_file_of_numbers_chooses_characters_for_them(dl, tmp_path) -> None:
    tsv = tmp_path / "numbers.tsv"
    rng = random.Random(2)
    tsv.write_text("".join(f"{n}\t{' '.join(rng.choices(WORDS, k=3))}\n" for n in rng.sample(range(10**6), 200)))
    res = dl.ok("train", "model=attention", "dataset=pairs", f"dataset.path={tsv}", "trainer.fast_dev_run=true")
    assert "auto: dataset.src_level=char" in res.stdout and "auto: dataset.tgt_level=word" in res.stdout


@pytest.mark.parametrize("args, layers, forget_bias, floor", [
    # real text: what measured best there (docs/performance.md): 2 layers, forget bias 0, no decay after warm-up
    (["model=lstm", "dataset=shakespeare"], 2, 0.0, 0.003),
    (["model=lstm", "dataset=text", "dataset.path=x.txt", "optimizer.lr=0.01"], 2, 0.0, 0.01),
    (["model=lstm"], 1, 1.0, 0.0),                  # the grammar LM and the long-lag tasks keep remembering
    (["model=lstm", "dataset=adding"], 1, 1.0, 0.0),
    (["model=lstm", "dataset=shakespeare", "model.num_layers=3", "model.forget_bias=0.5", "scheduler.min_lr=0"],
     3, 0.5, 0.0),                                  # the user's word wins
    (["model=transformer", "dataset=shakespeare"], None, None, 0.0),  # other families: their own schedule
])
def test_a_dataset_recommends_the_lstm_settings_measured_on_it(args: list[str], layers: int | None,
                                                                forget_bias: float | None, floor: float) -> None:
    from hydra import compose, initialize_config_module
    with initialize_config_module(config_module="dlcli.conf", version_base="1.3"):
        cfg = compose("config", overrides=args)
    assert (cfg.model.get("num_layers"), cfg.model.get("forget_bias")) == (layers, forget_bias)
    assert cfg.scheduler.min_lr == floor


def test_a_model_of_the_user_s_own_without_a_name_gets_the_plain_schedule() -> None:
    from hydra import compose, initialize_config_module
    with initialize_config_module(config_module="dlcli.conf", version_base="1.3"):
        cfg = compose("config", overrides=["dataset=shakespeare"])
    from omegaconf import open_dict
    with open_dict(cfg):
        del cfg.model["name"]  # a `_target_` model's YAML need not name itself
    assert cfg.scheduler.min_lr == 0.0
