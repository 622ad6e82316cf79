"""`dl sample CKPT --input FILE --out FILE`: every prediction as CSV or JSON Lines, joinable on `id`."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import FAST


@pytest.fixture(scope="module")
def spirals_run(tmp_path_factory):
    from conftest import CLI

    dl = CLI(tmp_path_factory.mktemp("spirals"))
    dl.ok("train", "dataset.n_samples=300", "trainer.epochs=2", *FAST)
    return dl, dl.last_run()


def test_a_classifier_writes_one_row_per_input_in_either_format(spirals_run):
    dl, run = spirals_run
    rows = ["x,y"] + [f"{i / 10 - 2},{(i * 7) % 40 / 10 - 2}" for i in range(40)]
    (dl.cwd / "new.csv").write_text("\n".join(rows) + "\n")
    dl.ok("sample", str(run), "--input", "new.csv", "--out", "out/preds.csv")
    with open(dl.cwd / "out" / "preds.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [int(r["id"]) for r in got] == list(range(1, 41))  # data rows, 1-based: they join back
    for r in got:
        probs = {k[5:]: float(v) for k, v in r.items() if k.startswith("prob_")}
        assert len(probs) == 3 and sum(probs.values()) == pytest.approx(1, abs=1e-5)
        assert r["predicted"] == max(probs, key=probs.get) and float(r["probability"]) == max(probs.values())
    jsonl = dl.ok("sample", str(run), "--input", "new.csv", "--json").stdout
    assert [json.loads(line) for line in jsonl.splitlines()] == [
        {k: (int(v) if k == "id" else v if k == "predicted" else float(v)) for k, v in r.items()} for r in got]
    stdout = dl.ok("sample", str(run), "--input", "new.csv", "--out", "-").stdout
    assert list(csv.DictReader(io.StringIO(stdout))) == got
    dl.ok("sample", str(run), "-n", "5", "--out", "test.jsonl")  # test examples: with the true class
    test = [json.loads(line) for line in (dl.cwd / "test.jsonl").read_text().splitlines()]
    assert len(test) == 5 and all(r["id"].startswith("test #") and "true" in r for r in test)


def test_bad_predictions_requests_are_one_line(spirals_run):
    dl, run = spirals_run
    (dl.cwd / "adir").mkdir(exist_ok=True)
    res = dl("sample", str(run), "-n", "2", "--out", "adir")
    assert res.returncode == 2 and "--out adir: that is a directory" in res.stderr


def test_a_regressor_and_an_image_classifier_predict_to_files(dl):
    dl.ok("train", "dataset=sine", "trainer.epochs=2", *FAST)
    dl.ok("sample", str(dl.last_run()), "-n", "4", "--out", "sine.jsonl")
    rows = [json.loads(line) for line in (dl.cwd / "sine.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(isinstance(r["predicted"], float) and "true" in r for r in rows)

    dl.ok("train", "model=cnn", "dataset=mnist", "dataset.subset=600", "trainer.epochs=1", *FAST)
    run = dl.last_run()
    from PIL import Image

    (dl.cwd / "digits" / "more").mkdir(parents=True)
    for i, where in enumerate(["digits", "digits", "digits/more"]):
        Image.new("L", (28, 28), color=40 * i).save(dl.cwd / where / f"d{i}.png")
    (dl.cwd / "digits" / "notes.txt").write_text("not an image")
    dl.ok("sample", str(run), "--input", "digits", "--out", "digits.csv")
    with open(dl.cwd / "digits.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["id"] for r in got] == ["digits/d0.png", "digits/d1.png", "digits/more/d2.png"]
    assert all(r["predicted"] in "0123456789" and len([k for k in r if k.startswith("prob_")]) == 10 for r in got)


def test_an_out_that_is_not_a_predictions_file_is_one_line(spirals_run):
    dl, run = spirals_run
    res = dl("sample", str(run), "-n", "2", "--out", "preds.txt")
    assert res.returncode == 2 and "--out preds.txt: name a .csv or .jsonl file" in res.stderr
    res = dl("sample", str(run), "-n", "2", "--json", "--prompt", "x")
    assert res.returncode == 2 and "--prompt is for language models" in res.stderr
