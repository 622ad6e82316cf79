"""Mistakes users make: each ends in one line naming the bad value, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import FAST, CLI

GOOD_CSV = "a,b,label\n" + "".join(f"{i},{i % 7},{'x' if i % 2 else 'y'}\n" for i in range(40))


class Evil:
    """Unpickling this would create a file: proof that code ran."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


# (id, arguments, what stderr must say, files to create first)
TRAIN_CASES = [
    ("unknown-model", ["model=foo"], "model=foo: no such model; choose one of: cnn, gru, lstm, mlp, rnn", {}),
    ("unknown-optimizer", ["optimizer=adamm"], "did you mean adam?", {}),
    ("wrong-type", ["trainer.epochs=abc"], "trainer.epochs must be an integer", {}),
    ("unknown-key", ["trainer.epocs=3"], "no key 'trainer.epocs' (did you mean trainer.epochs?)", {}),
    ("list-expected", ["model.hidden_sizes=abc"], "must be a list", {}),
    ("bad-batch-size", ["trainer.batch_size=-3"], "trainer.batch_size=-3: use a positive integer", {}),
    ("hydra-modes-clash", ["-m", "--cfg", "job"], "cannot go together", {}),
    ("sweep-without-m", ["optimizer=sgd,adam"], "add -m (multirun)", {}),
    ("sweep-bad-value", ["-m", "optimizer=sgd,adamx"], "optimizer=adamx: no such optimizer", {}),
    ("sweep-bad-key", ["-m", "trainer.epochz=1,2"], "no key 'trainer.epochz'", {}),
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
    ("cnn-on-text", ["model=cnn", "dataset=grammar"], "datasets for cnn: fashion_mnist, mnist, shapes", {}),
    ("text-no-path", ["model=gru", "dataset=text"], "dataset=text needs dataset.path", {}),
    ("text-not-utf8", ["model=gru", "dataset=text", "dataset.path=l.txt"], "not UTF-8",
     {"l.txt": "caf\xe9 ".encode("latin-1") * 200}),
    ("leak-out-of-range", ["model=rnn", "model.leak_alpha=1.5"], "model.leak_alpha=1.5: must be in [0, 1)", {}),
    ("tie-weights-sizes", ["model=lstm", "model.tie_weights=true"], "needs model.embedding_size == model.hidden_size",
     {}),
    ("block-longer-than-text", ["model=rnn", "dataset=grammar", "dataset.n_sentences=50", "dataset.block_size=4000"],
     "shorter than dataset.block_size=4000", {}),
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


@pytest.mark.parametrize("args,expected,files", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_user_errors(dl, args, expected, files):
    for name, content in files.items():
        (dl.cwd / name).write_bytes(content)
    res = dl("train", *args, *FAST)
    assert_one_line_error(res, expected)
    assert not list((dl.cwd / "outputs").glob("*/*")), "a failed start must leave no run or sweep directory"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("trained")
    CLI(cwd).ok("train", "trainer.epochs=1", "dataset.n_samples=300", *FAST)
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


EVAL_CASES = [
    ("missing", ["eval", "missing.pt"], "no such checkpoint: missing.pt"),
    ("truncated", ["eval", "truncated.pt"], "truncated or corrupt"),
    ("not-torch", ["eval", "text.pt"], "not a readable checkpoint"),
    ("not-dlcli", ["eval", "other.pt"], "not a dlcli checkpoint"),
    ("newer-format", ["eval", "newer.pt"], "format version 99, newer than this dlcli reads"),
    ("malicious-pickle", ["eval", "evil.pt"], "refused to load"),
    ("malicious-torch-save", ["sample", "evil_torch.pt"], "refused to load: it asks to import posix.system"),
    ("dir-without-checkpoints", ["eval", "emptydir"], "without checkpoints/best.pt"),
    ("unknown-override", ["eval", "GOOD", "trainer.epocs=1"], "has no key 'trainer.epocs'"),
    ("bad-split", ["eval", "GOOD", "--split", "dev"], "--split dev: choose one of: train, val, test"),
    ("eval-cuda", ["eval", "GOOD", "device=cuda"], "CUDA is not available"),
    ("sample-two-ckpts", ["sample", "GOOD", "GOOD"], "dl sample takes one checkpoint"),
    ("sample-missing-input", ["sample", "GOOD", "--input", "nope.csv"], "--input=nope.csv: no such file"),
    ("sample-input-wrong-columns", ["sample", "GOOD", "--input", "cols.csv"], "needs the column(s) x, y"),
]
if torch.cuda.is_available():
    EVAL_CASES = [c for c in EVAL_CASES if c[0] != "eval-cuda"]


@pytest.mark.parametrize("args,expected", [c[1:] for c in EVAL_CASES], ids=[c[0] for c in EVAL_CASES])
def test_eval_and_sample_user_errors(dl, trained, args, expected):
    good = trained / "checkpoints" / "best.pt"
    _write_ckpts(dl.cwd, good)
    (dl.cwd / "cols.csv").write_text("p,q\n1,2\n")
    before = good.read_bytes()
    res = dl(*[str(good) if a == "GOOD" else a for a in args])
    assert_one_line_error(res, expected)
    assert not (dl.cwd / "PWNED").exists(), "the malicious pickle ran code"
    assert good.read_bytes() == before


def test_existing_run_dir_is_never_overwritten(dl, trained):
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    res = dl("train", f"hydra.run.dir={trained}", *FAST)
    assert_one_line_error(res, "already holds a run")
    assert {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()} == before


def test_debug_env_shows_the_traceback(dl):
    res = dl("train", "model=foo", env={"DL_DEBUG": "1"})
    assert res.returncode != 0 and "Traceback" in res.stderr
