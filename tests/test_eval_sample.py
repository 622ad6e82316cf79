"""dl eval and dl sample rebuild everything from the checkpoint alone and agree with training."""

from __future__ import annotations

import json

import pytest
from conftest import FAST, needs_mnist, summary

CSV_ROWS = ["height,weight,colour,kind"] + [
    f"{h},{w},{c},{k}" for i in range(240)
    for h, w, c, k in [(150 + (i * 7) % 40 + (30 if i % 2 else 0), 50 + (i * 3) % 20 + (25 if i % 2 else 0),
                        ["red", "blue", "green"][i % 3], "big" if i % 2 else "small")]]


@needs_mnist
@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_eval_reproduces_training_test_accuracy_on_mnist(dl, model):
    dl.ok("train", f"model={model}", "dataset=mnist", "dataset.subset=3000", "trainer.epochs=1", *FAST)
    run = dl.last_run()
    reported = summary(run)["test"]["test/acc"]
    assert reported > 0.6
    res = dl.ok("eval", str(run / "checkpoints" / "best.pt"), "--json")
    out = json.loads(res.stdout)
    assert out["test/acc"] == pytest.approx(reported, abs=1e-9) and out["examples"] == 500
    res = dl.ok("eval", str(run), str(run / "checkpoints" / "last.pt"), "device=cpu", "--split", "val")
    assert "val/acc" in res.stdout and res.stdout.count("mnist") >= 2  # one row per checkpoint
    res = dl.ok("sample", str(run / "checkpoints" / "best.pt"), "-n", "6")
    assert "predicted" in res.stdout and "/6 correct" in res.stdout
    assert (run / "plots" / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_csv_classification_eval_with_new_file_and_sample_input(dl):
    (dl.cwd / "people.csv").write_text("\n".join(CSV_ROWS) + "\n")
    dl.ok("train", "dataset=csv", "dataset.path=people.csv", "dataset.target=kind", "trainer.epochs=15", *FAST)
    run = dl.last_run()
    s = summary(run)
    assert s["kind"] == "classify" and s["test"]["test/acc"] >= 0.9
    # A new file: the preprocessing (means, categories, classes) comes from the checkpoint, not the new data.
    (dl.cwd / "more.csv").write_text("\n".join([CSV_ROWS[0]] + CSV_ROWS[1:121]) + "\n")
    out = json.loads(dl.ok("eval", str(run), "dataset.path=more.csv", "--json").stdout)
    assert out["dataset"] == "csv" and out["test/acc"] >= 0.8
    (dl.cwd / "new.csv").write_text("height,weight,colour\n185,80,red\n150,50,blue\n")
    res = dl.ok("sample", str(run / "checkpoints" / "best.pt"), "--input", "new.csv")
    lines = [ln for ln in res.stdout.splitlines() if "row " in ln]
    assert "big" in lines[0] and "small" in lines[1]


def test_regression_sample_and_eval(dl):
    dl.ok("train", "dataset=sine", "trainer.epochs=10", *FAST)
    run = dl.last_run()
    out = json.loads(dl.ok("eval", str(run), "--json").stdout)
    assert out["test/r2"] == pytest.approx(summary(run)["test"]["test/r2"], abs=1e-6)
    (dl.cwd / "x.csv").write_text("x\n0.0\n1.5708\n")
    res = dl.ok("sample", str(run), "--input", "x.csv")
    assert "row 1" in res.stdout and "row 2" in res.stdout
    res = dl.ok("sample", str(run), "-n", "3")
    assert res.stdout.count("test #") == 3


def test_sample_cnn_on_own_image_files(dl):
    from PIL import Image

    dl.ok("train", "model=cnn", "dataset.n_samples=400", "trainer.epochs=1", *FAST)
    img = Image.new("L", (40, 40), 0)
    img.paste(255, (10, 10, 30, 30))  # a white square
    img.save(dl.cwd / "square.png")
    res = dl.ok("sample", str(dl.last_run()), "--input", "square.png", "--out", "grid.png")
    assert "square.png" in res.stdout and (dl.cwd / "grid.png").is_file()
