"""`dl sample CKPT` for text classifiers (dataset=reviews here): a text, lines of a file or of stdin, or test examples,
read as training read them; rows for --out/--json. And sequence classifiers (parity) show their test examples."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import InProcessCLI, trained_once
from test_errors import assert_one_line_error

from dlcli.commands.restore import restore, restore_task
from dlcli.data.text_classes import text_tokenizer

CLASSES = ["negative", "neutral", "positive"]


@pytest.fixture(scope="session")
def reviews_run(tmp_path_factory) -> Path:
    # a bag of embeddings learns the generated reviews in a few epochs (test accuracy ~0.97 after 3; word dropout,
    # which slows that, is off: these tests are about reading inputs and writing predictions)
    return trained_once(tmp_path_factory, "text-classes", "reviews", "model=mlp", "dataset=reviews",
                        "trainer.epochs=5", "model.word_dropout=0")


@pytest.fixture
def dl(tmp_path, monkeypatch) -> InProcessCLI:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # nothing piped in unless a test says so
    return InProcessCLI(tmp_path)


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _probs(row: dict) -> list[float]:
    return [row[f"prob_{c}"] for c in CLASSES]


def test_a_text_gets_its_class_and_the_likeliest_classes(reviews_run, dl):
    res = dl.ok("sample", str(reviews_run), "--input", "The acting was truly brilliant; we had popcorn.")
    cells = [c.strip() for c in next(ln for ln in res.stdout.splitlines() if "brilliant" in ln).split("│")[1:-1]]
    assert "runners-up" in res.stdout and cells[1:3] == ["0/10", "positive"]  # unknown, predicted
    assert sorted(c.split()[0] for c in cells[4].split(", ")) == ["negative", "neutral"]  # top 3 of 3 classes
    res = dl.ok("sample", str(reviews_run), "--input", "the ending was dull", "--top-k", "1")
    assert "runner" not in res.stdout and "negative" in res.stdout
    # unknown words are counted, never an error; a text of nothing but unknown words is still classified
    res = dl.ok("sample", str(reviews_run), "--input", "Zorblax quux, the plot was dull.", "--json")
    (row,) = _jsonl(res.stdout)
    assert row["unknown"] == 2 and row["id"] == 1 and row["text"] == "Zorblax quux, the plot was dull."
    (row,) = _jsonl(dl.ok("sample", str(reviews_run), "--input", "zorblax quux", "--json").stdout)
    assert row["unknown"] == 2 and sum(_probs(row)) == pytest.approx(1, abs=1e-5)
    assert_one_line_error(dl("sample", str(reviews_run), "--input", "  "), "--input is empty")
    assert_one_line_error(dl("sample", str(reviews_run), "--input", "good", "--top-k", "2", "--json"),
                          "--top-k sets how many classes the table shows")
    assert_one_line_error(dl("sample", str(reviews_run), "--prompt", "good"), "checkpoint is one of the classifiers")


def test_lines_of_a_file_or_stdin_become_rows_with_their_line_numbers(reviews_run, dl, monkeypatch):
    texts = ["the film was awful.", "", "The music is really wonderful.", "the cast seemed not boring"]
    (dl.cwd / "texts.txt").write_text("\n".join(texts) + "\n")
    dl.ok("sample", str(reviews_run), "--input", "texts.txt", "--out", "preds.csv", "trainer.eval_batch_size=2")
    with open(dl.cwd / "preds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "text", "unknown", "predicted", "probability", *(f"prob_{c}" for c in CLASSES)]
    assert [r["id"] for r in rows] == ["1", "3", "4"]  # the blank line is skipped; ids stay line numbers
    assert [r["predicted"] for r in rows] == ["negative", "positive", "positive"]
    for r in rows:
        probs = [float(r[f"prob_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1, abs=1e-5) and float(r["probability"]) == max(probs)
    # the same lines on stdin, as JSON: the same answers (batches of 2 padded vs. one batch)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(texts) + "\n"))
    piped = _jsonl(dl.ok("sample", str(reviews_run), "--json").stdout)
    assert [(r["id"], r["text"]) for r in piped] == [(1, texts[0]), (3, texts[2]), (4, texts[3])]
    for a, b in zip(rows, piped):
        assert [float(a[f"prob_{c}"]) for c in CLASSES] == pytest.approx(_probs(b), abs=1e-5)
    # each text alone: the same probabilities as among the others
    alone = _jsonl(dl.ok("sample", str(reviews_run), "--input", texts[2], "--json").stdout)
    assert _probs(alone[0]) == pytest.approx(_probs(piped[1]), abs=1e-5)
    assert_one_line_error(dl("sample", str(reviews_run), "--input", "missing.txt"), "--input=missing.txt: no such file")


def test_a_text_is_read_as_the_training_data_was(reviews_run, dl):
    """A test text, decoded and given back as --input: the model's probabilities for the test split's own ids."""
    r = restore(reviews_run, ["device=cpu"])
    x, y = restore_task(r).splits["test"]
    meta = r.ckpt["meta"]
    row = next(i for i in range(len(x)) if meta["unk_id"] not in x[i].tolist())
    ids = [i for i in x[row].tolist() if i != meta["pad_id"]]
    text = " ".join(meta["vocab"][i] for i in ids)
    tokenize = text_tokenizer(meta["level"], meta["lowercase"], meta["punctuation"])
    assert [meta["vocab"].index(t) for t in tokenize(text.upper())] == ids  # lower-cased as training did
    with torch.no_grad():
        want = r.model(x[row:row + 1]).softmax(-1)[0].tolist()
    (got,) = _jsonl(dl.ok("sample", str(reviews_run), "--input", text.upper(), "--json").stdout)
    assert _probs(got) == pytest.approx(want, abs=1e-5) and got["unknown"] == 0
    # test examples: with their true class, shown as their tokens
    rows = _jsonl(dl.ok("sample", str(reviews_run), "-n", "30", "--json").stdout)
    assert len(rows) == 30 and all(r["id"].startswith("test #") and r["true"] in CLASSES for r in rows)
    assert sum(r["true"] == r["predicted"] for r in rows) >= 24
    shown = dl.ok("sample", str(reviews_run), "-n", "5").stdout
    assert "test #" in shown and "true" in shown and "/5 correct" in shown


def test_sequence_classifiers_show_their_test_sequences(tmp_path_factory, dl):
    run = trained_once(tmp_path_factory, "text-classes", "parity", "model=rnn", "dataset=parity",
                       "dataset.n_samples=100", "dataset.seq_len=6", "model.hidden_size=8", "trainer.epochs=1")
    res = dl.ok("sample", str(run), "-n", "3")
    assert "sequence" in res.stdout and "/3 correct" in res.stdout
    bits = [c for line in res.stdout.splitlines() if "test #" in line for c in line.split("│")[2].split()]
    assert len(bits) == 3 and all(len(b) == 6 and set(b) <= {"0", "1"} for b in bits)
    rows = _jsonl(dl.ok("sample", str(run), "-n", "3", "--json").stdout)
    assert [r["true"] for r in rows] == [("even", "odd")[b.count("1") % 2] for b in bits]
    assert_one_line_error(dl("sample", str(run), "--input", "x.csv"), "reads generated sequences")
