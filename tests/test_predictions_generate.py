"""`dl sample CKPT ... --out FILE` for the generating kinds (language models, encoder-decoders, word embeddings): one
row per input line, written as it is made; and generation that streams tokens without keeping what it no longer
needs."""

from __future__ import annotations

import csv
import inspect
import io
import json
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, InProcessCLI, trained_once
from omegaconf import OmegaConf

from dlcli.base.errors import UserError
from dlcli.commands import predictions, sample
from dlcli.commands.sample_options import MAX_NEW_TOKENS
from dlcli.models.decoding import generate_tokens

LM_TEXT = "the cat sat on the mat. " * 60


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory) -> Path:
    return trained_once(tmp_path_factory, "generate", "lm", "model=rnn", "dataset=text", "dataset.block_size=16",
                        "model.hidden_size=16", "trainer.epochs=1", text=LM_TEXT)


@pytest.fixture(scope="session")
def s2s_run(tmp_path_factory) -> Path:
    return trained_once(tmp_path_factory, "generate", "s2s", "model=attention", "model.hidden_size=16",
                        "dataset=reverse", "dataset.n_train=200", "dataset.n_val=20", "dataset.n_test=20",
                        "dataset.max_len=6", "trainer.epochs=1")


@pytest.fixture(scope="session")
def w2v_run(tmp_path_factory) -> Path:
    return trained_once(tmp_path_factory, "generate", "w2v", "model=skipgram", "model.cpu_kernel=false",
                        "model.vector_size=16", "dataset.sentences=2000", "trainer.epochs=1")


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _one_line_error(res, expected: str) -> None:
    assert res.returncode == 2 and expected in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------------------- language models
def test_a_language_model_writes_a_row_per_prompt_line_and_sample(lm_run, tmp_path):
    dl = InProcessCLI(tmp_path)
    (tmp_path / "prompts.txt").write_text("the cat\n\nsat on\nthe\n")  # a blank line: no row, ids stay line numbers
    args = ["sample", str(lm_run), "--prompt-file", "prompts.txt", "-n", "2", "--max-new-tokens", "12", "--seed", "3"]
    res = dl.ok(*args, "--out", "gen.jsonl")
    rows = _jsonl((tmp_path / "gen.jsonl").read_text())
    assert [(r["id"], r["sample"], r["prompt"]) for r in rows] == [
        (1, 1, "the cat"), (1, 2, "the cat"), (3, 1, "sat on"), (3, 2, "sat on"), (4, 1, "the"), (4, 2, "the")]
    assert all(len(r["generation"]) == 12 and set(r["generation"]) <= set(LM_TEXT) for r in rows)  # char level
    assert res.stdout == "" and res.stderr.strip() == "generations: gen.jsonl (6 rows)"
    # the same seed: the same rows in CSV, and on stdout with nothing else there
    dl.ok(*args, "--out", "gen.csv")
    assert [{**r, "id": int(r["id"]), "sample": int(r["sample"])} for r in _csv((tmp_path / "gen.csv").read_text())] \
        == rows
    assert _jsonl(dl.ok(*args, "--json").stdout) == rows
    # an existing file is replaced only with --force
    res = dl(*args, "--seed", "4", "--out", "gen.jsonl")
    _one_line_error(res, "--out gen.jsonl: the file exists; add --force")
    assert _jsonl((tmp_path / "gen.jsonl").read_text()) == rows
    dl.ok(*args, "--seed", "4", "--out", "gen.jsonl", "--force")
    assert _jsonl((tmp_path / "gen.jsonl").read_text()) != rows
    # one prompt, one sample: no sample column; greedy rows continue the prompt as the terminal stream does
    one = ["sample", str(lm_run), "--prompt", "the", "--temperature", "0", "--max-new-tokens", "20"]
    streamed = dl.ok(*one).stdout
    [row] = _csv(dl.ok(*one, "--out", "-").stdout)
    assert list(row) == ["id", "prompt", "generation"] and streamed == "the" + row["generation"] + "\n"


def test_language_model_input_errors_are_one_line_and_write_nothing(lm_run, tmp_path):
    dl = InProcessCLI(tmp_path)
    (tmp_path / "bad.txt").write_text("the cat\nthe zoo\n")
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "latin1.txt").write_bytes("the cat\ncaf\xe9\n".encode("latin-1"))
    (tmp_path / "adir").mkdir()
    for args, expected in [
        (["--prompt-file", "bad.txt"], "--prompt-file=bad.txt line 2 has 1 token(s) the model never saw: 'z'"),
        (["--prompt-file", "empty.txt"], "--prompt-file=empty.txt: the file has no lines to read"),
        (["--prompt-file", "latin1.txt"], "--prompt-file=latin1.txt: line 2 is not UTF-8 text"),
        (["--prompt-file", "nope.txt"], "--prompt-file=nope.txt: no such file"),
        (["--prompt-file", "adir"], "--prompt-file=adir: that is a directory"),
        (["--beam", "2"], "--beam is for encoder-decoders"),
    ]:
        _one_line_error(dl("sample", str(lm_run), *args, "--out", "g.jsonl"), expected)
    _one_line_error(dl("sample", str(lm_run), "--out", "adir"), "--out adir: that is a directory")
    _one_line_error(dl("sample", str(lm_run), "--out", "gen.txt"), "--out gen.txt: name a .csv or .jsonl file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "bad.txt", "empty.txt", "latin1.txt"]


# ------------------------------------------------------------------------------------------------- encoder-decoders
def test_an_encoder_decoder_translates_a_file_in_batches_as_line_by_line(s2s_run, tmp_path, monkeypatch):
    dl = InProcessCLI(tmp_path)
    sources = ["abc", "", "cab", "bbbb", "fed", "a"]
    (tmp_path / "src.txt").write_text("\n".join(sources) + "\n")
    dl.ok("sample", str(s2s_run), "--input", "src.txt", "--out", "tr.csv", "--max-new-tokens", "6")
    rows = _csv((tmp_path / "tr.csv").read_text())
    assert [(r["id"], r["source"]) for r in rows] == [("1", "abc"), ("3", "cab"), ("4", "bbbb"), ("5", "fed"),
                                                      ("6", "a")]
    assert list(rows[0]) == ["id", "source", "translation"] and all(len(r["translation"]) <= 6 for r in rows)
    # batches of 2 (padded sources) give what one sentence at a time does, and what the terminal prints
    pairs = dl.ok("sample", str(s2s_run), "trainer.eval_batch_size=2", "--input", "src.txt", "--json",
                  "--max-new-tokens", "6").stdout
    assert [r["translation"] for r in _jsonl(pairs)] == [r["translation"] for r in rows]
    alone = [dl.ok("sample", str(s2s_run), "--input", s, "--max-new-tokens", "6").stdout.strip() for s in sources if s]
    assert alone == [r["translation"] for r in rows]
    # beam search: a score per row, the best of the beams it ranked
    beam = _jsonl(dl.ok("sample", str(s2s_run), "--input", "src.txt", "--beam", "3", "--json").stdout)
    assert all(isinstance(r["score"], float) and r["score"] <= 0 for r in beam) and len(beam) == 5
    # beams batched too: a batch of 3 rows holds one sentence's 3 beams, and finds the same
    single = _jsonl(dl.ok("sample", str(s2s_run), "trainer.eval_batch_size=3", "--input", "src.txt", "--beam", "3",
                          "--json").stdout)
    assert [r["translation"] for r in single] == [r["translation"] for r in beam]
    assert [r["score"] for r in single] == pytest.approx([r["score"] for r in beam], abs=1e-4)
    # lines on stdin: ids are their line numbers
    monkeypatch.setattr(sys, "stdin", io.StringIO("abc\n\nfed\n"))
    piped = _jsonl(dl.ok("sample", str(s2s_run), "--json", "--max-new-tokens", "6").stdout)
    assert [(r["id"], r["translation"]) for r in piped] == [(1, rows[0]["translation"]), (3, rows[3]["translation"])]


def test_encoder_decoder_test_examples_come_with_their_targets_and_errors_are_one_line(s2s_run, tmp_path,
                                                                                       monkeypatch):
    dl = InProcessCLI(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # nothing piped in: test examples
    rows = _jsonl(dl.ok("sample", str(s2s_run), "-n", "4", "--json").stdout)
    assert len(rows) == 4 and all(r["id"].startswith("test #") and r["target"] == r["source"][::-1] for r in rows)
    (tmp_path / "bad.txt").write_text("abc\nabz\n")
    _one_line_error(dl("sample", str(s2s_run), "--input", "bad.txt", "--out", "x.csv"),
                    "--input=bad.txt line 2 has 1 token(s) the model never saw: 'z'")
    _one_line_error(dl("sample", str(s2s_run), "--input", "missing.txt", "--out", "x.csv"),
                    "--input=missing.txt: no such file")
    _one_line_error(dl("sample", str(s2s_run), "--input", "abc", "--top-k", "3", "--json"), "--top-k is for language")
    assert not (tmp_path / "x.csv").exists()


# ------------------------------------------------------------------------------------------------- word embeddings
def test_word_neighbours_rows_mark_unknown_words(w2v_run, tmp_path):
    dl = InProcessCLI(tmp_path)
    words = ["--word", "king", "--word", "Zebra", "--word", "QUEEN", "--topn", "3"]
    res = dl.ok("sample", str(w2v_run), *words, "--out", "nb.jsonl")
    rows = _jsonl((tmp_path / "nb.jsonl").read_text())
    assert [(r["id"], r["word"], r["in_vocabulary"]) for r in rows] == [(1, "king", True), (2, "zebra", False),
                                                                        (3, "queen", True)]
    for r in rows[0], rows[2]:
        sims = [n["similarity"] for n in r["neighbours"]]
        assert len(sims) == 3 and sims == sorted(sims, reverse=True) and r["word"] not in [n["word"] for n in
                                                                                           r["neighbours"]]
    assert rows[1]["neighbours"] == [] and res.stderr.strip() == "neighbours: nb.jsonl (3 rows)"
    flat = _csv(dl.ok("sample", str(w2v_run), *words, "--out", "-").stdout)
    assert list(flat[0]) == ["id", "word", "in_vocabulary", *[f"{c}_{i}" for i in (1, 2, 3)
                                                              for c in ("neighbour", "similarity")]]
    assert [flat[0][f"neighbour_{i}"] for i in (1, 2, 3)] == [n["word"] for n in rows[0]["neighbours"]]
    assert flat[1]["in_vocabulary"] == "False" and flat[1]["neighbour_1"] == ""
    # the terminal: a table per known word, a line for the unknown one
    shown = dl.ok("sample", str(w2v_run), *words).stdout
    assert "nearest to king" in shown and "zebra: not in the vocabulary" in shown
    # words from a file, one per line (ids: line numbers); none known at all: one line, nothing written
    (tmp_path / "words.txt").write_text("paris\n\nunicorn\n")
    from_file = _jsonl(dl.ok("sample", str(w2v_run), "--input", "words.txt", "--json").stdout)
    assert [(r["id"], r["in_vocabulary"]) for r in from_file] == [(1, True), (3, False)]
    (tmp_path / "unknown.txt").write_text("unicorn\nmermaid\n")
    _one_line_error(dl("sample", str(w2v_run), "--input", "unknown.txt", "--out", "none.csv"),
                    "--input=unknown.txt: none of its 2 words is in the vocabulary")
    _one_line_error(dl("sample", str(w2v_run), "--word", "unicorn", "--word", "mermaid", "--json"),
                    "--word unicorn, mermaid: not in the vocabulary")
    assert not (tmp_path / "none.csv").exists()


# ------------------------------------------------------------------------------------------------- streaming
class CountingLM(torch.nn.Module):
    """Random logits, each step's watched: which of them are still alive while generation goes on."""

    def __init__(self) -> None:
        super().__init__()
        self.alive: list[weakref.ref] = []
        self.steps = 0

    def step(self, tokens: torch.Tensor, state: object = None) -> tuple[torch.Tensor, None]:
        logits = torch.randn(tokens.shape[0], tokens.shape[1], 5)
        self.alive.append(weakref.ref(logits))
        self.steps += 1
        return logits, None


def test_generation_of_the_longest_length_keeps_no_old_logits():
    model = CountingLM()
    tokens = generate_tokens(model, torch.zeros(2, 3, dtype=torch.long), MAX_NEW_TOKENS)
    assert inspect.isgenerator(tokens) and model.steps == 0  # nothing runs before the first token is asked for
    most, made = 0, 0
    for tok in tokens:
        assert tok.shape == (2,)
        made += 1
        model.alive = [r for r in model.alive if r() is not None]
        most = max(most, len(model.alive))
    assert made == MAX_NEW_TOKENS and model.steps == MAX_NEW_TOKENS and most <= 1


def test_a_transformer_generates_past_its_window_with_a_cropped_context():
    from dlcli.models.transformer import build

    meta = {"kind": "lm", "vocab_size": 6, "block_size": 8, "vocab": list("abcdef"), "level": "char"}
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "model" / "transformer.yaml"),
                          {"d_model": 16, "heads": 2, "ff_size": 32, "layers": 1, "dropout": 0.0})
    model = build(cfg, meta).eval()
    seen, step = [], model.step

    def watched(tokens: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        logits, state = step(tokens, state)
        seen.append(state["tokens"].shape[1])  # the context the next step starts from
        return logits, state

    model.step = watched
    made = list(generate_tokens(model, torch.zeros(1, 3, dtype=torch.long), 5 * 8, temperature=0))
    assert len(made) == 40 and max(seen) == 8 and seen[-1] <= 8  # history cropped to the training window


# ------------------------------------------------------------------------------------------------- the writer
def test_a_run_stopped_halfway_leaves_the_old_file_and_no_temporary_one(tmp_path):
    old = tmp_path / "p.csv"
    old.write_text("id,x\n1,2\n")

    def rows():
        yield {"id": 1, "x": 3}
        raise UserError("--input=in.txt line 2: bad")

    with pytest.raises(UserError):
        predictions.write(str(old), False, rows())
    assert old.read_text() == "id,x\n1,2\n" and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]
    assert predictions.write(str(old), False, iter([{"id": 1, "x": 3}])) == (old, 1)
    assert old.read_text().splitlines() == ["id,x", "1,3"]


def test_image_files_are_read_and_predicted_a_batch_at_a_time(tmp_path, monkeypatch):
    from PIL import Image

    for i in range(5):
        Image.new("L", (8, 8), color=50 * i).save(tmp_path / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    meta = {"input_shape": [1, 8, 8], "num_classes": 2, "class_names": ["dark", "light"]}
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    r = SimpleNamespace(ckpt={"meta": meta}, model=model, runtime=SimpleNamespace(device=torch.device("cpu")),
                        cfg=OmegaConf.create({"trainer": {"eval_batch_size": 2}}))
    read = []
    real = sample.load_image_files
    monkeypatch.setattr(sample, "load_image_files", lambda files, m: (read.append(len(files)), real(files, m))[1])
    sample._write_predictions(r, "classify", str(tmp_path), 10, 0, str(tmp_path / "p.csv"), False)
    rows = _csv((tmp_path / "p.csv").read_text())
    assert read == [2, 2, 1] and [Path(r["id"]).name for r in rows] == [f"im{i}.png" for i in range(5)]
    assert all(r["predicted"] in ("dark", "light") for r in rows)


def test_a_progress_bar_on_a_terminal_and_only_the_rows_off_one(lm_run, tmp_path):
    dl = InProcessCLI(tmp_path)
    (tmp_path / "prompts.txt").write_text("the\nsat\n")
    args = ["sample", str(lm_run), "--prompt-file", "prompts.txt", "--max-new-tokens", "5"]
    res = dl.ok(*args, "--out", "a.jsonl", env={"TTY_COMPATIBLE": "1"})  # rich: stderr is a terminal
    assert "\x1b[" in res.stderr and "generations" in res.stderr and "a.jsonl (2 rows)" in res.stderr
    res = dl.ok(*args, "--json")
    assert res.stderr == "" and len(_jsonl(res.stdout)) == 2
