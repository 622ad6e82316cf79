"""The user's own config dirs: what Hydra composes from --config-dir / hydra.searchpath, dl's checks see too."""

from __future__ import annotations

import json

import pytest
from conftest import FAST
from omegaconf import OmegaConf

from dlcli.commands.hydra_app import split_args
from dlcli.config.compose import compose_jobs
from dlcli.config.search_path import take_config_sources

MYDATA = """# my copy of the spirals, with my own sizes
name: spirals
kind: classify
input: vector
n_samples: 240
n_classes: 3
noise: 0.2
turns: 1.5
val_fraction: 0.15
test_fraction: 0.15
seed: 0
epochs: 2
batch_size: 32
"""


def test_a_dataset_from_the_users_config_dir_trains(dl_inproc):
    conf = dl_inproc.cwd / "myconf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "mydata.yaml").write_text(MYDATA)
    dl_inproc.ok("train", "--config-dir", "myconf", "dataset=mydata", *FAST)
    run = dl_inproc.last_run()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and sum(int(x) for x in (summary["params"],)) > 0
    res = dl_inproc("train", "--config-dir", "myconf", "dataset=mydat", *FAST)
    assert res.returncode == 2 and "dataset=mydat: no such dataset (did you mean mydata?)" in res.stderr
    (conf / "broken.yaml").write_text(MYDATA.replace("n_classes: 3\n", ""))
    res = dl_inproc("train", "--config-dir", "myconf", "dataset=broken", *FAST)
    assert res.returncode == 2 and "the dataset config has no dataset.n_classes" in res.stderr
    res = dl_inproc("train", f"hydra.searchpath=[file://{dl_inproc.cwd / 'myconf'}]", "dataset=mydata",
                    "trainer.epochs=1", *FAST)
    assert res.returncode == 0, res.stderr


def test_config_folders_come_off_the_command_line_first_given_first(tmp_path):
    from dlcli.base.errors import UserError

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    flags, overrides = split_args(["-m", "--config-dir", str(tmp_path / "a"), f"--config-path={tmp_path / 'b'}",
                                   "hydra.searchpath=[pkg://x.y,'file://" + str(tmp_path) + "']", "model=mlp"])
    flags, overrides, sources = take_config_sources(flags, overrides)
    assert flags == ["-m"] and overrides == ["model=mlp"]
    assert sources == [f"file://{tmp_path / 'a'}", f"file://{tmp_path / 'b'}", "pkg://x.y", f"file://{tmp_path}"]
    with pytest.raises(UserError, match="hydra.searchpath nowhere: no such directory"):
        take_config_sources([], ["hydra.searchpath=[nowhere]"])


SHADOW_MLP = """# my own mlp: one hidden layer of 5
name: mlp
hidden_sizes: [5]
activation: relu
dropout: 0.0
norm: none
"""


def test_a_users_file_shadows_dls_option_of_the_same_name(dl_inproc):
    """myconf/model/mlp.yaml replaces dl's model=mlp however the folder is given, in one run, a sweep, --cfg and a
    resume; a key it lacks is one line naming the file. (Plain Hydra would keep its own mlp: hydra#2758.)"""
    (dl_inproc.cwd / "myconf" / "model").mkdir(parents=True)
    mine = dl_inproc.cwd / "myconf" / "model" / "mlp.yaml"
    mine.write_text(SHADOW_MLP)
    params = 2 * 5 + 5 + 5 * 3 + 3  # spirals: 2 features, 3 classes
    small = ["dataset=spirals", "dataset.n_samples=200", "trainer.epochs=1", *FAST]
    for given in (["--config-dir", "myconf"], ["--config-path", "myconf"], ["-cd=myconf"],
                  [f"hydra.searchpath=[{dl_inproc.cwd / 'myconf'}]"]):
        dl_inproc.ok("train", *given, "model=mlp", *small)
        assert json.loads((dl_inproc.last_run() / "summary.json").read_text())["params"] == params, given
    assert "- 5" in dl_inproc.ok("train", "--config-dir", "myconf", "model=mlp", "--cfg", "job").stdout
    run = dl_inproc.last_run()
    dl_inproc.ok("train", f"trainer.resume={run}", "trainer.epochs=2")  # the run's record brings myconf back
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    dl_inproc.ok("train", "-m", "--config-dir", "myconf", "model=mlp", "optimizer=sgd,adam", *small)
    sweep = next((dl_inproc.cwd / "outputs" / "sweeps").iterdir())
    assert [json.loads(p.read_text())["params"] for p in sorted(sweep.glob("*/summary.json"))] == [params, params]
    mine.write_text(SHADOW_MLP.replace("norm: none\n", ""))
    res = dl_inproc("train", "--config-dir", "myconf", "model=mlp", *small)
    assert res.returncode == 2 and res.stderr.strip() == (
        "error: myconf/model/mlp.yaml: model.name=mlp: the model config has no model.norm (or leaves it ???), which "
        "mlp needs (the keys mlp takes: dl train model=mlp --cfg job)")


def test_experiments_and_a_primary_config_of_the_users_own(dl_inproc):
    """myconf/experiment/tiny.yaml is +experiment=tiny; myconf/quick.yaml, built on dl's config, is --config-name
    quick, and a resume of its run composes it again."""
    conf = dl_inproc.cwd / "myconf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "tiny.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: mlp\n  - override /dataset: spirals\n"
        "model:\n  hidden_sizes: [4]\ndataset:\n  n_samples: 200\ntrainer:\n  epochs: 1\n")
    dl_inproc.ok("train", "--config-dir", "myconf", "+experiment=tiny", *FAST)
    assert json.loads((dl_inproc.last_run() / "summary.json").read_text())["params"] == 2 * 4 + 4 + 4 * 3 + 3
    (conf / "quick.yaml").write_text("defaults:\n  - config\n  - _self_\ntrainer:\n  epochs: 1\n  seed: 7\n")
    dl_inproc.ok("train", "-cd", "myconf", "--config-name", "quick", "dataset.n_samples=200", *FAST)
    run = dl_inproc.last_run()
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1
    dl_inproc.ok("train", f"trainer.resume={run}", "trainer.epochs=2")
    assert OmegaConf.load(run / ".hydra" / "config.yaml").trainer.seed == 7  # quick.yaml again, not dl's config
    res = dl_inproc("train", "-cd", "myconf", "--config-name", "nope")
    assert res.returncode == 2 and "Cannot find primary config 'nope'" in res.stderr


def test_a_sweep_over_group_options_by_glob():
    jobs = compose_jobs(["optimizer=glob(ad*)", "trainer.epochs=1"], multirun=True)
    assert [c.optimizer.name for c in jobs] == ["adagrad", "adam", "adamw"]


def test_dl_ls_lists_every_option_with_its_line_and_what_fits(dl_inproc):
    from dlcli.config.listing import ADDED_GROUPS, group_options
    from dlcli.models import families

    out = dl_inproc.ok("ls").stdout
    for group, options in group_options().items():
        assert f"{group}  ({'+' if group in ADDED_GROUPS else ''}{group}=OPTION)" in out
        assert all(o in out for o in options)
    model = dl_inproc.ok("ls", "model").stdout
    assert all(f.about[:30] in " ".join(model.split()) for f in families().values())
    assert "cifar10, fashion_mnist, image_folder, mnist, shapes" in model  # cnn's datasets
    dataset = dl_inproc.ok("ls", "dataset").stdout
    assert "seq2seq on pairs" in dataset and "seq2seq, attention, transformer" in dataset
    assert "Adam with decoupled weight decay" in dl_inproc.ok("ls", "optimizer").stdout
    res = dl_inproc("ls", "modle")
    assert res.returncode == 2 and "no such config group (did you mean model?)" in res.stderr


def test_dl_cp_copies_a_config_out_that_trains_as_the_users_own(dl_inproc):
    dl_inproc.ok("cp", "model/lstm")
    mine = dl_inproc.cwd / "conf" / "model" / "my_lstm.yaml"
    first = mine.read_text().splitlines()[0]
    assert first == "# Copied from dl's model/lstm.yaml. Use it with: dl train --config-dir conf model=my_lstm"
    assert (dl_inproc.cwd / "conf" / "dataset" / "auto" / "my_lstm.yaml").exists()  # its default dataset
    mine.write_text(mine.read_text().replace("hidden_size: 256", "hidden_size: 24"))
    dl_inproc.ok("train", "--config-dir", "conf", "model=my_lstm", "dataset.n_sentences=200", "trainer.epochs=1",
                 *FAST)
    assert json.loads((dl_inproc.last_run() / "summary.json").read_text())["params"] < 20_000  # the edited width
    res = dl_inproc("cp", "model/lstm")
    assert res.returncode == 2 and "exists; add --force" in res.stderr
    dl_inproc.ok("cp", "model/lstm", "--force")
    res = dl_inproc("cp", "model/lstm", "elsewhere/lstm.yaml")
    assert res.returncode == 2 and "has the name of a shipped model" in res.stderr
    res = dl_inproc("cp", "model/lstn")
    assert res.returncode == 2 and "no such model (did you mean lstm?)" in res.stderr
    res = dl_inproc("train", "--config-dir", "conf", "model=my_lstm", "dataset=spirals", *FAST)
    assert res.returncode == 2 and "model=lstm does not fit dataset=spirals" in res.stderr


GRAMMAR = [  # (overrides, multirun, what every composed job shows) — Hydra's override grammar through dl's checks
    (["trainer.epochs=range(1,3)"], True, lambda jobs: [c.trainer.epochs for c in jobs] == [1, 2]),
    (["optimizer.lr=choice(0.1,0.01)"], True, lambda jobs: [c.optimizer.lr for c in jobs] == [0.1, 0.01]),
    (["trainer.seed=shuffle(1,2)"], True, lambda jobs: sorted(c.trainer.seed for c in jobs) == [1, 2]),
    (["optimizer=glob(*,exclude=[ad*,rms*])"], True,
     lambda jobs: sorted(c.optimizer.name for c in jobs) == ["sgd", "sgd", "sgd"]),  # sgd, momentum, nesterov
    (["optimizer=sgd,adam", "trainer.epochs=1,2"], True, lambda jobs: len(jobs) == 4),
    (["++trainer.seed=3"], False, lambda jobs: jobs[0].trainer.seed == 3),
    (["++trainer.brand_new=3"], False, lambda jobs: jobs[0].trainer.brand_new == 3),
    (["+foo.bar=1"], False, lambda jobs: jobs[0].foo.bar == 1),
    (["~trainer.summary"], False, lambda jobs: "summary" not in jobs[0].trainer),
    (["dataset=csv", "dataset.path='a b, c=d.csv'", "dataset.target=y"], False,
     lambda jobs: jobs[0].dataset.path == "a b, c=d.csv"),
    # oc.env gives text (refused below as no number); oc.decode makes it one; a nested one is quoted, as in Hydra
    (["optimizer.lr='${oc.decode:${oc.env:DL_TEST_LR,0.25}}'"], False, lambda jobs: jobs[0].optimizer.lr == 0.25),
    (["trainer.epochs=${dataset.epochs}"], False, lambda jobs: jobs[0].trainer.epochs == 40),
]


@pytest.mark.parametrize("overrides,multirun,check", GRAMMAR, ids=[" ".join(g[0]) for g in GRAMMAR])
def test_hydras_override_grammar_goes_through_dls_checks(overrides, multirun, check):
    assert check(compose_jobs(overrides, multirun=multirun))


@pytest.mark.parametrize("overrides,multirun,expected", [
    (["trainer.epochs=range(1,3)"], False, "lists several values: add -m"),
    (["~trainer.nothing"], False, "trainer.nothing"),
    (["optimizer=glob(zz*)", "trainer.epochs=1"], True, "optimizer=glob(zz*): no value to run"),
    (["optimizer.lr=${oc.env:DL_TEST_LR,0.25}"], False, "optimizer.lr must be a number"),  # oc.env gives text
])
def test_hydras_own_refusals_are_one_line(overrides, multirun, expected):
    from dlcli.base.errors import UserError

    with pytest.raises(UserError) as e:
        compose_jobs(overrides, multirun=multirun)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_processes_started_for_trainer_devices_see_the_users_folders(tmp_path):
    """trainer.devices=2 starts `dl train` again in two processes: they compose the user's shadowing mlp.yaml and
    primary config too (Hydra keeps neither in the job's overrides)."""
    from conftest import CLI

    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "mlp.yaml").write_text(SHADOW_MLP)
    (tmp_path / "myconf" / "quick.yaml").write_text("defaults:\n  - config\n  - _self_\ntrainer:\n  epochs: 1\n")
    dl = CLI(tmp_path)
    dl.ok("train", "-cd", "myconf", "--config-name", "quick", "model=mlp", "dataset=spirals", "dataset.n_samples=200",
          "trainer.devices=2", *FAST)
    summary = json.loads((dl.last_run() / "summary.json").read_text())
    assert summary["params"] == 2 * 5 + 5 + 5 * 3 + 3 and summary["epochs"] == 1
