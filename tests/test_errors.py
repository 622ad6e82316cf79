"""Mistakes users make: each ends in one line naming the bad value, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import CLI, DATA_DIR, FAST

GOOD_CSV = "a,b,label\n" + "".join(f"{i},{i % 7},{'x' if i % 2 else 'y'}\n" for i in range(40))


class Evil:
    """Unpickling this would create a file: proof that code ran."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def csv_table(rows: list, header: str = "a,b,y") -> bytes:
    return (header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n").encode()


_rows = random.Random(0)
BLOBS = [[round(_rows.random(), 3), round(_rows.random(), 3), _rows.choice([0, 1])] for _ in range(40)]

# (id, arguments, what stderr must say, files to create first)
TRAIN_CASES = [
    ("unknown-model", ["model=foo"], "model=foo: no such model; choose one of: attention, cbow, cnn, gru, lstm, mlp, rnn, seq2seq", {}),
    ("unknown-optimizer", ["optimizer=adamm"], "did you mean adam?", {}),
    ("wrong-type", ["trainer.epochs=abc"], "trainer.epochs must be an integer", {}),
    ("unknown-key", ["trainer.epocs=3"], "no key 'trainer.epocs' (did you mean trainer.epochs?)", {}),
    ("list-expected", ["model.hidden_sizes=abc"], "must be a list", {}),
    ("bad-batch-size", ["trainer.batch_size=-3"], "trainer.batch_size=-3: must be an integer >= 1, or full", {}),
    ("hydra-modes-clash", ["-m", "--cfg", "job"], "cannot go together", {}),
    ("sweep-without-m", ["optimizer=sgd,adam"], "add -m (multirun)", {}),
    ("sweep-bad-value", ["-m", "optimizer=sgd,adamx"], "optimizer=adamx: no such optimizer", {}),
    ("sweep-bad-key", ["-m", "trainer.epochz=1,2"], "no key 'trainer.epochz'", {}),
    ("unknown-experiment", ["-m", "+experiment=lstm_vs_rn"], "experiment=lstm_vs_rn: no such experiment (did you mean lstm_vs_rnn?)", {}),
    ("experiment-without-plus", ["-m", "experiment=lstm_vs_rnn"], "so it is added with a +: dl train -m +experiment=lstm_vs_rnn", {}),
    ("experiment-without-m", ["+experiment=lstm_vs_rnn"], "compares several runs (model=rnn,lstm,gru): add -m", {}),
    ("bad-devices", ["trainer.devices=0"], "trainer.devices=0: must be an integer in [1, 1024]", {}),
    ("model-data-mismatch", ["model=cnn", "dataset=sine"], "model=cnn does not fit dataset=sine", {}),
    ("csv-no-path", ["dataset=csv"], "dataset=csv needs dataset.path", {}),
    ("csv-missing-file", ["dataset=csv", "dataset.path=nope.csv", "dataset.target=y"],
     "dataset.path=nope.csv: no such file", {}),
    ("csv-no-target-column", ["dataset=csv", "dataset.path=d.csv", "dataset.target=nope"],
     "dataset.target=nope: no such column in d.csv; columns: a, b, label", {"d.csv": GOOD_CSV.encode()}),
    ("csv-empty", ["dataset=csv", "dataset.path=e.csv", "dataset.target=y"], "needs a header row", {"e.csv": b""}),
    ("csv-not-utf8", ["dataset=csv", "dataset.path=l.csv", "dataset.target=y"], "not UTF-8",
     {"l.csv": "a,y\ncaf\xe9,1\n".encode("latin-1")}),
    ("csv-ragged", ["dataset=csv", "dataset.path=r.csv", "dataset.target=b"], "line 3 has 3 fields",
     {"r.csv": b"a,b\n1,2\n3,4,5\n"}),
    ("mnist-absent-no-download", ["dataset=mnist", "model=cnn", "dataset.root=nowhere", "dataset.download=false"],
     "mnist not found under nowhere", {}),
    ("mnist-absent-no-network", ["dataset=mnist", "model=cnn", "dataset.root=nowhere",
                                 "dataset.url=http://127.0.0.1:9/mnist"], "could not download", {}),
    ("monitor-not-logged", ["dataset=sine", "trainer.monitor=val/acc"],
     "trainer.monitor=val/acc: this regress task logs val/loss", {}),
    ("monitor-eval-only", ["trainer.monitor=train/macro_f1", "trainer.mode=max"],  # only evaluations measure it
     "trainer.monitor=train/macro_f1: this classify task logs train/loss, train/acc", {}),
    ("bad-mode", ["trainer.mode=up"], "trainer.mode=up: choose min or max", {}),
    ("bad-activation", ["model.activation=swish"], "model.activation=swish: unknown activation", {}),
    ("loss-mismatch", ["loss.name=mse"], "loss.name=mse does not fit a classification task", {}),
    ("nesterov-no-momentum", ["optimizer=sgd", "optimizer.nesterov=true"], "needs optimizer.momentum > 0", {}),
    ("fp16-on-cpu", ["device=cpu", "trainer.precision=fp16"], "needs a CUDA device", {}),
    ("bad-precision", ["trainer.precision=fp8"], "trainer.precision=fp8: choose one of", {}),
    ("cnn-too-deep", ["model=cnn", "model.channels=[8,8,8,8,8,8]"], "shrinks the", {}),
    ("bad-group-in-eval-style", ["device=tpu"], "device=tpu: no such device", {}),
    ("bidirectional-lm", ["model=lstm", "model.bidirectional=true"], "cannot do language modelling", {}),
    ("lstm-on-images", ["model=lstm", "dataset=mnist"], "model=lstm does not fit dataset=mnist", {}),
    ("cnn-on-text", ["model=cnn", "dataset=grammar"],
     "datasets for cnn: cifar10, fashion_mnist, image_folder, mnist, shapes", {}),
    ("text-no-path", ["model=gru", "dataset=text"], "dataset=text needs dataset.path", {}),
    ("text-not-utf8", ["model=gru", "dataset=text", "dataset.path=l.txt"], "not UTF-8",
     {"l.txt": "caf\xe9 ".encode("latin-1") * 200}),
    ("leak-out-of-range", ["model=rnn", "model.leak_alpha=1.5"], "model.leak_alpha=1.5: must be in [0, 1)", {}),
    ("tie-weights-sizes", ["model=lstm", "model.tie_weights=true"], "needs model.embedding_size == model.hidden_size",
     {}),
    ("block-longer-than-text", ["model=rnn", "dataset=grammar", "dataset.n_sentences=50", "dataset.block_size=4000"],
     "shorter than dataset.block_size=4000", {}),
    # hostile input (issue 18): values of the right type but meaningless, and what a user's own file can hold
    ("negative-clip-norm", ["trainer.clip_grad_norm=-1"], "trainer.clip_grad_norm=-1: must be a number > 0, or null", {}),
    ("label-smoothing-1.5", ["loss.label_smoothing=1.5"], "loss.label_smoothing=1.5: must be a number in [0, 1)", {}),
    ("betas-out-of-range", ["optimizer.betas=[1.5,0.9]"], "each in [0, 1)", {}),
    ("lr-inf", ["optimizer.lr=inf"], "optimizer.lr=inf: must be a number > 0", {}),
    ("nan-anywhere", ["model=skipgram", "model.alpha=nan"], "(from ${oc.select:model.alpha,null}): must be", {}),
    ("block-size-0", ["model=lstm", "dataset.block_size=0"], "dataset.block_size=0: must be an integer >= 1", {}),
    ("epochs-1e9", ["trainer.epochs=1000000000"], "trainer.epochs=1000000000: must be an integer in [1, 100000]", {}),
    ("key-twice", ["optimizer.lr=0.1", "optimizer.lr=0.2"], "optimizer.lr is given twice", {}),
    ("trailing-comma", ["optimizer.lr=0.1,"], "a trailing comma", {}),
    ("unquoted-space", ["dataset=csv", "dataset.path=my", "file.csv"], "a value with a space must be quoted", {}),
    ("config-dir-missing", ["--config-dir", "nowhere"], "--config-dir nowhere: no such directory", {}),
    ("model-too-big", ["model.hidden_sizes=[100000000000]"], "its weights do not fit in memory", {}),
    ("data-root-is-a-file", ["model=lstm", "dataset=shakespeare", "dataset.root=afile"], "is a file, not a directory",
     {"afile": b"x"}),
    ("csv-empty-target", ["dataset=csv", "dataset.path=t.csv", "dataset.target=y"], "data row 41 has no value in the target column y",
     {"t.csv": csv_table(BLOBS + [[1, 2, ""]])}),
    ("csv-inf-cell", ["dataset=csv", "dataset.path=t.csv", "dataset.target=y"], "data row 41, column b holds 'inf'",
     {"t.csv": csv_table(BLOBS + [[1, "inf", 1]])}),
    ("csv-one-class", ["dataset=csv", "dataset.path=t.csv", "dataset.target=y"], "holds one value ('0') in all 40 rows",
     {"t.csv": csv_table([[a, b, 0] for a, b, _ in BLOBS])}),
    ("csv-target-in-features", ["dataset=csv", "dataset.path=t.csv", "dataset.target=y", "dataset.features=[a,y]"],
     "dataset.features lists the target column y", {"t.csv": csv_table(BLOBS)}),
    ("csv-duplicate-header", ["dataset=csv", "dataset.path=t.csv", "dataset.target=y"], "the header names 'a' more than once",
     {"t.csv": csv_table(BLOBS, "a,a,y")}),
    ("csv-empty-delimiter", ["dataset=csv", "dataset.path=t.csv", "dataset.target=y", "dataset.delimiter="],
     "dataset.delimiter='': one character", {"t.csv": csv_table(BLOBS)}),
    ("csv-unclosed-quote", ["dataset=csv", "dataset.path=t.csv", "dataset.target=y"], "line 2 does not read as CSV",
     {"t.csv": b'a,b,y\n1,"' + b"x" * 140000 + b'\n1,2,1\n'}),
    ("outputs-not-a-directory", [], "cannot create a run directory under outputs/runs: Not a directory",
     {"outputs": b"a file where the outputs directory should be"}),
    ("run-dir-unwritable", ["hydra.run.dir=blocked/run"], "hydra.run.dir=blocked/run: cannot create it",
     {"blocked": b"a file"}),
    # dataset=image_folder; the cases that need class folders are in tests/test_image_folder.py
    ("image-folder-no-path", ["model=cnn", "dataset=image_folder"], "dataset=image_folder needs dataset.path=DIR", {}),
    ("image-folder-missing", ["model=cnn", "dataset=image_folder", "dataset.path=photos"],
     "dataset.path=photos: no such folder", {}),
    ("image-folder-is-a-file", ["model=cnn", "dataset=image_folder", "dataset.path=cat.png"],
     "dataset.path=cat.png: that is a file; name the folder that holds one subfolder per class",
     {"cat.png": b"\x89PNG\r\n\x1a\n"}),
    ("image-folder-channels", ["model=cnn", "dataset=image_folder", "dataset.path=photos", "dataset.channels=2"],
     "dataset.channels=2: 1 (grayscale) or 3 (RGB)", {}),
    ("image-folder-crop-padding", ["model=cnn", "dataset=image_folder", "dataset.path=photos",
                                   "dataset.augment.crop_padding=-2"],
     "dataset.augment.crop_padding=-2: must be an integer in [0, 1024]", {}),
]
if importlib.util.find_spec("tensorboard") is None:
    TRAIN_CASES.append(("tensorboard-missing", ["logger=tensorboard"], "needs the tensorboard package", {}))
if not torch.cuda.is_available():
    TRAIN_CASES.append(("cuda-absent", ["device=cuda"], "device=cuda: CUDA is not available", {}))


def assert_one_line_error(res, expected: str) -> None:
    assert res.returncode == 2, f"exit {res.returncode}\nstdout:{res.stdout}\nstderr:{res.stderr}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in res.stdout + res.stderr


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny models on a busy 2-core machine: one intra-op thread is 2-3x faster than two fighting for the cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.parametrize("args,expected,files", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_user_errors(dl_inproc, args, expected, files):
    dl = dl_inproc
    for name, content in files.items():
        (dl.cwd / name).write_bytes(content)
    res = dl("train", *args, *FAST)
    assert_one_line_error(res, expected)
    if (dl.cwd / "outputs").is_dir():
        assert not list((dl.cwd / "outputs").glob("*/*")), "a failed start must leave no run or sweep directory"
    for name, content in files.items():
        assert (dl.cwd / name).read_bytes() == content, f"{name} was changed"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories anyway")
def test_read_only_outputs(dl):
    (dl.cwd / "outputs" / "runs").mkdir(parents=True)
    (dl.cwd / "outputs" / "runs").chmod(0o555)
    try:
        assert_one_line_error(dl("train", *FAST), "cannot create a run directory under outputs/runs: Permission")
    finally:
        (dl.cwd / "outputs" / "runs").chmod(0o755)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("trained")
    CLI(cwd).ok("train", "trainer.epochs=1", "dataset.n_samples=300", *FAST, env={"OMP_NUM_THREADS": "1"})
    return CLI(cwd).last_run()


LM_TEXT = "the cat sat on the mat. " * 60


@pytest.fixture(scope="module")
def trained_lm(tmp_path_factory) -> Path:
    """A character LM trained on a text of a few letters (its vocabulary)."""
    cwd = tmp_path_factory.mktemp("trained_lm")
    (cwd / "a.txt").write_text(LM_TEXT)
    CLI(cwd).ok("train", "model=rnn", "dataset=text", f"dataset.path={cwd / 'a.txt'}", "dataset.block_size=16",
                "model.hidden_size=16", "trainer.epochs=1", *FAST, env={"OMP_NUM_THREADS": "1"})
    return CLI(cwd).last_run()


def _write_ckpts(cwd: Path, good: Path) -> None:
    data = good.read_bytes()
    (cwd / "truncated.pt").write_bytes(data[: len(data) // 2])
    (cwd / "text.pt").write_text("hello")
    torch.save({"weights": torch.zeros(2)}, cwd / "other.pt")
    newer = torch.load(good, weights_only=True)
    newer["version"] = 99
    torch.save(newer, cwd / "newer.pt")
    with open(cwd / "evil.pt", "wb") as f:
        pickle.dump(Evil(), f)
    torch.save({"format": "dlcli.checkpoint", "model": Evil()}, cwd / "evil_torch.pt")
    (cwd / "emptydir").mkdir()
    (cwd / "loop.pt").symlink_to("loop2.pt")
    (cwd / "loop2.pt").symlink_to("loop.pt")
    broken = cwd / "brokenrun"  # a run whose last.pt was cut short
    shutil.copytree(good.parent.parent / ".hydra", broken / ".hydra")
    (broken / "checkpoints").mkdir()
    (broken / "checkpoints" / "last.pt").write_bytes(data[: len(data) // 3])
    badyaml = torch.load(good, weights_only=True)  # a checkpoint whose stored config was edited into nonsense
    badyaml["config"] = "model: [unclosed"
    torch.save(badyaml, cwd / "badyaml.pt")
    badrun = cwd / "badyamlrun"  # ... and a run whose last.pt holds such a config: resuming it says so too
    shutil.copytree(good.parent.parent / ".hydra", badrun / ".hydra")
    (badrun / "checkpoints").mkdir()
    torch.save(badyaml, badrun / "checkpoints" / "last.pt")
    othermodel = torch.load(good, weights_only=True)  # ... or names another model than its weights are
    othermodel["config"] = othermodel["config"].replace("name: mlp", "name: cnn", 1)
    torch.save(othermodel, cwd / "othermodel.pt")


EVAL_CASES = [
    ("missing", ["eval", "missing.pt"], "no such checkpoint: missing.pt"),
    ("truncated", ["eval", "truncated.pt"], "truncated or corrupt"),
    ("not-torch", ["eval", "text.pt"], "not a readable checkpoint"),
    ("not-dlcli", ["eval", "other.pt"], "not a dlcli checkpoint"),
    ("newer-format", ["eval", "newer.pt"], "format version 99, newer than this dlcli reads"),
    ("malicious-pickle", ["eval", "evil.pt"], "refused to load"),
    ("malicious-torch-save", ["sample", "evil_torch.pt"], "refused to load: it asks to import posix.system"),
    ("dir-without-checkpoints", ["eval", "emptydir"], "without checkpoints/best.pt"),
    ("symlink-loop", ["eval", "loop.pt"], "loop.pt is a symbolic link that leads to no file"),
    ("unknown-override", ["eval", "GOOD", "trainer.epocs=1"], "has no key 'trainer.epocs'"),
    ("bad-split", ["eval", "GOOD", "--split", "dev"], "--split dev: choose one of: train, val, test"),
    ("eval-cuda", ["eval", "GOOD", "device=cuda"], "CUDA is not available"),
    ("sample-two-ckpts", ["sample", "GOOD", "GOOD"], "dl sample takes one checkpoint"),
    ("sample-missing-input", ["sample", "GOOD", "--input", "nope.csv"], "--input=nope.csv: no such file"),
    ("sample-input-wrong-columns", ["sample", "GOOD", "--input", "cols.csv"], "needs the column(s) x, y"),
    ("eval-other-vocabulary", ["eval", "LM", "dataset.path=other.txt"],
     "dataset.path=other.txt has 3 token(s) outside the model's training vocabulary"),
    ("export-not-word2vec", ["export", "GOOD", "--format", "word2vec"],
     "--format word2vec: the word2vec format holds word vectors, from cbow/skipgram checkpoints"),
    ("export-two-ckpts", ["export", "GOOD", "GOOD"], "dl export takes one checkpoint, got 2"),
    ("export-truncated", ["export", "truncated.pt"], "truncated or corrupt"),
    ("eval-batch-size-0", ["eval", "GOOD", "trainer.eval_batch_size=0"],
     "trainer.eval_batch_size=0: must be an integer >= 1"),
    ("stored-config-not-yaml", ["eval", "badyaml.pt"], "the checkpoint's stored config does not read as YAML"),
    ("stored-config-other-model", ["eval", "othermodel.pt"], "othermodel.pt: model.name=cnn: the model config has no model.channels"),
    ("sample-foreign-option", ["sample", "GOOD", "--prompt", "hi"], "--prompt is for language models"),
    ("sample-nan-temperature", ["sample", "LM", "--temperature", "nan"], "--temperature nan: must be a number in"),
    ("sample-huge-generation", ["sample", "LM", "--max-new-tokens", "1000000000"], "must be an integer in [1, 10000]"),
    ("sample-zero", ["sample", "GOOD", "-n", "0"], "--num-samples 0: must be an integer in [1, 10000]"),
    ("sample-input-is-a-dir", ["sample", "GOOD", "--input", "emptydir"], "that is a directory"),
    ("export-into-a-dir", ["export", "GOOD", "--out", "emptydir"], "--out emptydir: that is a directory"),
    ("resume-finished-run", ["train", "trainer.resume=RUN"], "already finished 1 of trainer.epochs=1"),
    ("resume-other-model", ["train", "trainer.resume=RUN", "model=cnn", "trainer.epochs=3"],
     "was trained with model=mlp; it cannot go on with model=cnn"),
    ("resume-not-a-run", ["train", "trainer.resume=other.pt"], "is not inside a dl run dir"),
    ("resume-truncated-checkpoint", ["train", "trainer.resume=brokenrun"], "truncated or corrupt"),
    ("resume-stored-config-not-yaml", ["train", "trainer.resume=badyamlrun"],
     "the checkpoint's stored config does not read as YAML"),
]
if torch.cuda.is_available():
    EVAL_CASES = [c for c in EVAL_CASES if c[0] != "eval-cuda"]


@pytest.mark.parametrize("args,expected", [c[1:] for c in EVAL_CASES], ids=[c[0] for c in EVAL_CASES])
def test_eval_and_sample_user_errors(dl_inproc, trained, trained_lm, args, expected):
    dl = dl_inproc
    good = trained / "checkpoints" / "best.pt"
    _write_ckpts(dl.cwd, good)
    (dl.cwd / "cols.csv").write_text("p,q\n1,2\n")
    (dl.cwd / "other.txt").write_text("xyz " * 200)
    before = {p: p.read_bytes() for run in (trained, trained_lm) for p in run.rglob("*") if p.is_file()}
    places = {"GOOD": str(good), "RUN": str(trained), "LM": str(trained_lm / "checkpoints" / "best.pt")}
    res = dl(*[places.get(a, a.replace("RUN", str(trained))) for a in args])
    assert_one_line_error(res, expected)
    assert not (dl.cwd / "PWNED").exists(), "the malicious pickle ran code"
    after = {p: p.read_bytes() for run in (trained, trained_lm) for p in run.rglob("*") if p.is_file()}
    assert after == before, "a failed command changed a run"


@pytest.mark.parametrize("case", ["unknown-model", "csv-no-target-column", "monitor-not-logged"])
def test_user_errors_in_a_real_process(dl, case):
    """The cases above run in-process for speed; these go through a real `python -m dlcli` as a user's shell would."""
    args, expected, files = next(c[1:] for c in TRAIN_CASES if c[0] == case)
    for name, content in files.items():
        (dl.cwd / name).write_bytes(content)
    assert_one_line_error(dl("train", *args, *FAST), expected)
    assert not (dl.cwd / "outputs").exists() or not list((dl.cwd / "outputs").glob("*/*"))


@pytest.mark.parametrize("case", ["truncated", "malicious-torch-save"])
def test_checkpoint_errors_in_a_real_process(dl, trained, case):
    args, expected = next(c[1:] for c in EVAL_CASES if c[0] == case)
    _write_ckpts(dl.cwd, trained / "checkpoints" / "best.pt")
    assert_one_line_error(dl(*args), expected)
    assert not (dl.cwd / "PWNED").exists()


def test_existing_run_dir_is_never_overwritten(dl, trained):
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    res = dl("train", f"hydra.run.dir={trained}", *FAST)
    assert_one_line_error(res, "already holds a run")
    assert {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()} == before


def test_debug_env_shows_the_traceback(dl):
    res = dl("train", "model=foo", env={"DL_DEBUG": "1"})
    assert res.returncode != 0 and "Traceback" in res.stderr


# Failures after training began: exit 2 and one line as well, but the run dir stays (run.json failed, with the
# error) and so does the last good checkpoint.
RUN_CASES = [
    ("loss-diverges", ["optimizer=sgd", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=1e9"], {},
     "the training loss became nan at step"),
    ("disk-full", [], {"DL_TEST_ENOSPC_AT_SAVE": "3"}, "no space left writing"),
]


@pytest.mark.parametrize("args,env,expected", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_failed_run_keeps_the_last_good_checkpoint(dl, args, env, expected):
    res = dl("train", "trainer.epochs=3", "dataset.n_samples=300", "trainer.log_every_n_steps=2", *args, *FAST,
             env=env)
    assert_one_line_error(res, expected)
    run = dl.last_run()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and expected in info["error"]
    assert not (run / "summary.json").exists()
    ckpts = sorted((run / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["best.pt", "last.pt"], "no temp file may be left"
    for path in ckpts:  # epoch 1's, whole and finite: epoch 2 failed before (or while) saving
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["epoch"] == 1 and all(t.isfinite().all() for t in ckpt["model"].values())
    if "nan" in expected:  # the first non-finite step, in epoch 2 (steps 5-8), and the knobs to turn
        assert "(epoch 2, batch" in res.stderr and "optimizer.lr (now 0.05" in res.stderr
        assert "trainer.clip_grad_norm=1.0" in res.stderr and "trainer.precision=fp32" in res.stderr
    else:
        assert str(run / "checkpoints") in res.stderr and "is intact" in res.stderr


def test_run_dirs_made_in_the_same_second_never_collide(tmp_path):
    from dlcli.commands.hydra_app import fresh_dir

    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(fresh_dir(tmp_path / "runs", "_mlp_spirals")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and all(p.is_dir() for p in made)


def test_two_runs_started_at_once_get_their_own_dirs(dl):
    env = {**os.environ, "DL_DATA_DIR": str(DATA_DIR), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "dlcli", "train", "trainer.epochs=1", "dataset.n_samples=300", *FAST]
    procs = [subprocess.Popen(args, cwd=dl.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, stdin=subprocess.DEVNULL) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = dl.runs()
    assert len(runs) == 2 and all((r / "summary.json").exists() for r in runs)
    assert {json.loads((r / "run.json").read_text())["status"] for r in runs} == {"completed"}


# Caught by the argument parser (Typer/click or Hydra's argparse) before dl's own checks: exit 2, a usage line,
# then the error naming the option and, where it can, the valid ones.
USAGE_CASES = [
    ("unknown-command", ["trian"], "No such command 'trian'"),
    ("eval-unknown-option", ["eval", "x.pt", "--splt", "test"], "No such option: --splt"),
    ("runs-wrong-type", ["runs", "--last", "abc"], "Invalid value for '--last'"),
    ("train-unknown-flag", ["train", "--foo"], "unrecognized arguments: --foo"),
]


@pytest.mark.parametrize("args,expected", [c[1:] for c in USAGE_CASES], ids=[c[0] for c in USAGE_CASES])
def test_usage_errors(dl, args, expected):
    res = dl(*args)
    assert res.returncode == 2 and expected in res.stdout + res.stderr, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert not list((dl.cwd / "outputs").glob("*/*")), "a refused command must leave no run directory"
