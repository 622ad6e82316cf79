"""dataset=text_classes (labelled texts of the user's own) and dataset=reviews: every text-classifying family learns
them through the CLI, padding never changes a model's answer, the split is stratified, mistakes are one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import FAST, summary
from omegaconf import OmegaConf
from test_errors import assert_one_line_error

from dlcli.base.errors import UserError
from dlcli.data import build_task
from dlcli.data.classification import macro_f1, per_class
from dlcli.data.text_classes import review, sorted_labels
from dlcli.models import family

TOPICS = {"sport": ["goal", "match", "team", "coach", "score"],
          "food": ["recipe", "oven", "flavour", "dinner", "spice"],
          "tech": ["laptop", "software", "chip", "server", "code"]}
NOISE = ["the", "a", "today", "we", "talked", "about", "new", "very", "really", "some", "and", "it", "was", "nice"]
QUICK = ["trainer.epochs=8", "trainer.batch_size=32", "optimizer.lr=0.005"]
RNN = ["model.hidden_size=32", "model.embedding_size=32", *QUICK]
# One recurrent cell end to end is enough: rnn, lstm and gru share one code path (all three are in the padding tests)
MODELS = {
    "lstm": ["model=lstm", *RNN],
    "bilstm-max": ["model=lstm", "model.bidirectional=true", "model.pool=max", *RNN],
    "transformer": ["model=transformer", "model.d_model=32", "model.layers=1", "model.ff_size=64", *QUICK],
    "mlp": ["model=mlp", "model.hidden_sizes=[32]", "model.embedding_size=32", *QUICK],
}


def topic_texts(n: int, seed: int) -> list[tuple[str, str]]:
    """(label, text): noise words of every length around one or two keywords of the label's topic."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = sorted(TOPICS)[i % 3]
        words = rng.choices(NOISE, k=rng.randint(2, 14)) + rng.choices(TOPICS[label], k=rng.randint(1, 2))
        rng.shuffle(words)
        rows.append((label, " ".join(words).capitalize() + rng.choice([".", "!", "?"])))
    return rows


def tsv(rows: list[tuple[str, str]]) -> str:
    return "".join(f"{label}\t{text}\n" for label, text in rows)


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "texts.tsv"
    path.write_text(tsv(topic_texts(600, 0)))
    return path


def dataset_cfg(name: str, **values) -> OmegaConf:
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "dataset" / f"{name}.yaml")
    return OmegaConf.merge(cfg, values)


def task_of(name: str, **values):
    return build_task(dataset_cfg(name, **values), OmegaConf.create({"name": "auto"}), torch.device("cpu"))


# ------------------------------------------------------------------------------------------- training, end to end
@pytest.mark.parametrize("model", list(MODELS))
def test_each_family_learns_labelled_texts(dl, texts, model):
    plots = ["trainer.summary=false"] if model == "lstm" else FAST  # one run draws its plots
    dl.ok("train", *MODELS[model], "dataset=text_classes", f"dataset.path={texts}", *plots)
    run = dl.last_run()
    s = summary(run)
    assert s["kind"] == "classify" and s["test"]["test/acc"] > 0.8, s["test"]  # 3 classes: chance is 1/3
    assert s["test"]["test/macro_f1"] > 0.8 and "val/macro_f1" in s["final"]
    for split in ("val", "test"):
        assert sorted(s["per_class"][split]) == ["food", "sport", "tech"]
        assert all(0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 for m in s["per_class"][split].values())
    assert sum(m["support"] for m in s["per_class"]["test"].values()) == 60  # 10% of 600, every class
    if model == "lstm":
        assert (run / "plots" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    if model == "mlp":  # dl eval rebuilds the vocabulary and classes from the checkpoint, scores what training did
        out = json.loads(dl.ok("eval", str(run / "checkpoints" / "best.pt"), "--json").stdout)
        assert out["test/acc"] == pytest.approx(s["test"]["test/acc"], abs=1e-9)
        # another file, its words in another order of frequency (new ones too): encoded with the stored vocabulary
        other = dl.cwd / "other.tsv"
        other.write_text(tsv([(label, f"zebra quagga {text} zebra") for label, text in topic_texts(300, 9)]))
        out = json.loads(dl.ok("eval", str(run), f"dataset.path={other}", "--json").stdout)
        assert out["test/acc"] > 0.8


def test_csv_with_named_columns(dl):
    rows = topic_texts(300, 1)
    lines = ["id,topic,body"] + [f'{i},{label},"{text}"' for i, (label, text) in enumerate(rows)]
    (dl.cwd / "texts.csv").write_text("\n".join(lines) + "\n")
    # (word dropout off: on 300 rows and 8 epochs it would only slow the learning this test does not look at)
    dl.ok("train", *MODELS["mlp"], "model.word_dropout=0", "dataset=text_classes", "dataset.path=texts.csv",
          "dataset.text=body", "dataset.label=topic", *FAST)
    s = summary(dl.last_run())
    assert s["test"]["test/acc"] > 0.8 and sorted(s["per_class"]["test"]) == ["food", "sport", "tech"]


# ------------------------------------------------------------------------------------------- the data
def test_stratified_split_keeps_every_class_in_every_split(texts):
    uneven = texts.with_name("uneven.tsv")
    rows = topic_texts(600, 0)
    uneven.write_text(tsv([r for i, r in enumerate(rows) if r[0] != "tech" or i % 10 == 0]))  # tech: 20 texts
    task = task_of("text_classes", path=str(uneven), val_fraction=0.1, test_fraction=0.2)
    counts = {s: torch.bincount(task.splits[s][1], minlength=3).tolist() for s in ("train", "val", "test")}
    assert counts == {"train": [140, 140, 14], "val": [20, 20, 2], "test": [40, 40, 4]}  # food, sport, tech
    again = task_of("text_classes", path=str(uneven), val_fraction=0.1, test_fraction=0.2)
    other = task_of("text_classes", path=str(uneven), val_fraction=0.1, test_fraction=0.2, seed=1)
    assert torch.equal(task.splits["test"][0], again.splits["test"][0])  # seeded
    assert not torch.equal(task.splits["test"][0], other.splits["test"][0])


def test_separate_files_vocabulary_from_train_only_and_truncation(tmp_path):
    for name, seed, n in (("train", 0, 90), ("val", 1, 30), ("test", 2, 30)):
        (tmp_path / f"{name}.tsv").write_text(tsv(topic_texts(n, seed)))
    (tmp_path / "test.tsv").write_text((tmp_path / "test.tsv").read_text() + "tech\tZebra code, zebra!\n")
    task = task_of("text_classes", path=str(tmp_path / "train.tsv"), val_path=str(tmp_path / "val.tsv"),
                   test_path=str(tmp_path / "test.tsv"), max_len=6, min_freq=2)
    assert [task.size(s) for s in ("train", "val", "test")] == [90, 30, 31]
    vocab = task.meta["vocab"]
    assert vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and "zebra" not in vocab and "code" in vocab
    assert "!" in vocab and all(w == w.lower() for w in vocab[4:])  # punctuation split off, lower-cased
    last = [vocab[i] for i in task.splits["test"][0][-1].tolist()]
    assert last == ["<unk>", "code", "<unk>", "<unk>", "!", "<pad>"]  # "," and "zebra": never in train
    assert task.splits["train"][0].shape[1] == 6 and task.warnings  # cut to max_len, and said so
    assert task.meta["class_names"] == ["food", "sport", "tech"] and task.meta["pad_id"] == 0


def test_class_names_are_the_labels_sorted_numbers_by_value():
    assert sorted_labels({"10", "2", "1", "-1", "spam"}) == ["-1", "1", "2", "10", "spam"]  # ratings read in order


def test_reviews_are_generated_deterministically_and_not_flips_the_label():
    rng_a, rng_b = random.Random(3), random.Random(3)
    assert [review(rng_a, 0.5) for _ in range(20)] == [review(rng_b, 0.5) for _ in range(20)]
    rng = random.Random(0)
    pairs = [review(rng, 1.0) for _ in range(200)]
    for label, text in pairs:
        assert " not " in text and label in ("negative", "neutral", "positive")
    flipped = {label for label, text in pairs if any(w in text for w in ("great", "wonderful", "brilliant"))}
    assert flipped == {"negative"}  # a negated praise is a negative review
    task = task_of("reviews", n_samples=300)
    assert task.meta["class_names"] == ["negative", "neutral", "positive"]


# ------------------------------------------------------------------------------------------- padding and pooling
PADDED = {"rnn": {}, "lstm": {}, "gru": {}, "lstm-bi-last": {"bidirectional": True},
          "gru-bi-mean": {"bidirectional": True, "pool": "mean"}, "lstm-max": {"pool": "max"},
          "rnn-leaky": {"leak_alpha": 0.5, "pool": "mean"}, "transformer": {}, "transformer-cls": {"pool": "cls"},
          "transformer-learned": {"positional": "learned"}, "mlp": {}}


def text_model(name: str) -> torch.nn.Module:
    """A small model of PADDED's setting `name` for 30-token texts in 3 classes, in eval mode."""
    base = name.split("-")[0]
    small = {"hidden_size": 16, "embedding_size": 8} if base in ("rnn", "lstm", "gru") else {}
    cfg = OmegaConf.merge(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / f"{base}.yaml"),
                          small, PADDED[name])
    meta = {"kind": "classify", "vocab_size": 30, "num_classes": 3, "pad_id": 0, "max_len": 16}
    torch.manual_seed(0)
    return family(base).build(cfg, meta).eval()


def padded(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


@pytest.mark.parametrize("name", list(PADDED))
def test_padding_never_changes_the_output(name):
    model = text_model(name)
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(4, 30, (n,), generator=gen) for n in (5, 1, 9, 3)]
    with torch.no_grad():
        alone = torch.cat([model(r[None]) for r in rows])
        for width in (9, 14):  # padded to the longest row, and beyond it
            torch.testing.assert_close(model(padded(rows, width)), alone, atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")  # checked below
@pytest.mark.parametrize("name", ["lstm", "lstm-bi-last", "transformer-cls", "mlp"])
def test_a_traced_text_model_takes_other_batch_sizes_and_lengths(name):
    """forward(ids) -> logits, lengths from the pads: what torchscript / ONNX export records works for any batch."""
    model = text_model(name)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        traced = torch.jit.trace(model, padded([torch.randint(4, 30, (n,), generator=gen) for n in (4, 2)], 5))
        other = padded([torch.randint(4, 30, (n,), generator=gen) for n in (7, 1, 3)], 8)
        torch.testing.assert_close(traced(other), model(other))


@pytest.mark.parametrize("keys,expected", [
    ({"pool": "first"}, "model.pool=first: no such pooling for a text classifier; choose one of: cls, mean"),
    ({"positional": "learned", "max_len": 16, "pool": "cls"}, "set model.max_len>=17"),
])
def test_transformer_text_settings_are_checked(keys, expected):
    cfg = OmegaConf.merge(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "transformer.yaml"),
                          keys)
    meta = {"kind": "classify", "vocab_size": 30, "num_classes": 3, "pad_id": 0, "max_len": 16}
    with pytest.raises(UserError, match=expected.replace("(", r"\(")):
        family("transformer").build(cfg, meta)


def test_pad_ids_are_masked_not_just_zero_vectors():
    """Changing what a pad id's embedding holds changes nothing: pads are never read."""
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "lstm.yaml")
    meta = {"kind": "classify", "vocab_size": 30, "num_classes": 3, "pad_id": 0, "max_len": 16}
    model = family("lstm").build(OmegaConf.merge(cfg, {"bidirectional": True, "pool": "mean"}), meta).eval()
    x = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]])
    with torch.no_grad():
        before = model(x)
        model.embed.weight[0] = 100.0
        torch.testing.assert_close(model(x), before)


# ------------------------------------------------------------------------------------------- metrics
def test_macro_f1_and_per_class_from_a_confusion_matrix():
    confusion = torch.tensor([[2.0, 1, 0], [0, 3, 0], [1, 0, 0]])  # true down, predicted across
    precision = [2 / 3, 3 / 4, 0.0]
    recall = [2 / 3, 3 / 3, 0 / 1]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    got = per_class(confusion, ["a", "b", "c"])
    assert [got[c]["precision"] for c in "abc"] == pytest.approx(precision)
    assert [got[c]["recall"] for c in "abc"] == pytest.approx(recall)
    assert [got[c]["support"] for c in "abc"] == [3, 3, 1]
    assert macro_f1(confusion) == pytest.approx(sum(f1) / 3)
    absent = torch.zeros(4, 4)
    absent[:3, :3] = confusion  # a 4th class neither in the split nor predicted: left out of the mean
    assert macro_f1(absent) == pytest.approx(sum(f1) / 3)


# ------------------------------------------------------------------------------------------- mistakes
ROWS = tsv(topic_texts(60, 5))
ERRORS = [  # (id, file, its content, dataset keys, what the one line says)
    ("no-tab", "t.tsv", "sport\tgoal now\nfood recipe without a tab\n", {}, "dataset.path=t.tsv: line 2 has no tab"),
    ("no-label", "t.tsv", ROWS + "\tjust a text\n", {}, "dataset.path=t.tsv: line 61 has no label"),
    ("empty-text", "t.tsv", ROWS + "food\t   \n", {}, "line 61 has an empty text"),
    ("no-tokens", "t.tsv", ROWS + "food\t?!\n", {"punctuation": "drop"}, "line 61 has no tokens once tokenized"),
    ("one-class", "t.tsv", "".join(f"sport\tgoal {i}\n" for i in range(30)), {}, "needs two classes or more"),
    ("empty-file", "t.tsv", "\n\n", {}, "the file holds no labelled texts"),
    ("empty-csv", "t.csv", "", {}, "needs a header row"),
    ("csv-column", "t.csv", "label,body\nsport,goal\n", {}, "dataset.text=text: no such column in "),
    ("csv-empty-cell", "t.csv", "label,text\nsport,goal\n,oven\n", {}, "dataset.path=t.csv: data row 2 has no label"),
    ("csv-label", "t.csv", "topic,text\nsport,goal\n", {}, "; its columns: topic, text"),
    ("too-few", "t.tsv", ROWS + "rare\tzebra one\nrare\tzebra two\n", {},
     "class 'rare' has 2 example(s); splitting every class into train/val/test needs at least 3"),
    ("unknown-label", "t.tsv", ROWS, {"val_path": "v.tsv", "test_path": "t.tsv"},
     "dataset.val_path=v.tsv: line 61 has the label 'music', which the training texts do not have"),
    ("one-of-two-files", "t.tsv", ROWS, {"val_path": "t.tsv"}, "give both dataset.val_path and dataset.test_path"),
    ("max-len", "t.tsv", ROWS, {"max_len": 0}, "dataset.max_len=0: must be a positive integer"),
    ("max-vocab", "t.tsv", ROWS, {"max_vocab": "lots"}, "dataset.max_vocab=lots: must be a positive integer or null"),
    ("level", "t.tsv", ROWS, {"level": "byte"}, "dataset.level=byte: choose one of: word, char"),
    ("missing-file", "absent.tsv", None, {}, "dataset.path=absent.tsv"),
]


@pytest.mark.parametrize("name,content,keys,expected", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_input_is_one_line(tmp_path, monkeypatch, name, content, keys, expected):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        Path(name).write_text(content)
    Path("v.tsv").write_text(ROWS + "music\tsome song\n")
    with pytest.raises(UserError) as e:
        task_of("text_classes", path=name, **keys)
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_mistakes_through_the_cli_exit_2_with_one_line(dl_inproc):
    (dl_inproc.cwd / "t.tsv").write_text("sport\tgoal now\nfood recipe without a tab\n")
    res = dl_inproc("train", "model=mlp", "dataset=text_classes", "dataset.path=t.tsv", *FAST)
    assert_one_line_error(res, "dataset.path=t.tsv: line 2 has no tab; expected label<TAB>text, got 'food recipe")
    assert_one_line_error(dl_inproc("train", "model=mlp", "dataset=text_classes", *FAST),
                          "dataset=text_classes needs dataset.path=FILE")
    res = dl_inproc("train", "model=cnn", "dataset=text_classes", "dataset.path=t.tsv", *FAST)
    assert_one_line_error(res, "model=cnn does not fit dataset=text_classes (a classify task on text inputs); "
                               "datasets for cnn:")


def test_word_dropout_turns_a_share_of_the_words_into_unk_in_training_only():
    from dlcli.models.common import WordDropout

    drop = WordDropout(0.3, {"pad_id": 0, "unk_id": 1})
    gen = torch.Generator().manual_seed(3)
    x = padded([torch.randint(4, 30, (n,), generator=gen) for n in (200, 50, 120)], 200)
    torch.manual_seed(0)
    y = drop(x)
    real, changed = x != 0, y != x
    assert torch.equal(y[~real], x[~real])  # pads stay pads
    assert (y[changed] == 1).all() and 0.25 < changed.sum() / real.sum() < 0.35
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # drawn from the seeded global stream: a resume replays it
    assert torch.equal(drop.eval()(x), x)  # evaluation, dl sample and exports see every word
    assert torch.equal(WordDropout(0.3, {"kind": "lm"}).train()(x), x)  # not a padded text: nothing to drop
