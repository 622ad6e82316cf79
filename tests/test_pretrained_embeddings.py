"""model.pretrained_embeddings / freeze_embeddings / embedding_projection: word2vec files (text, binary, gensim's)
read alike, every word-level family takes the vectors (classifiers, word LMs, seq2seq sides), the one size rule,
frozen rows never move, the checkpoint needs no file afterwards, each bad input is one line; dataset=gutenberg_authors
holds its books out; +experiment=pretrained_embeddings runs end to end on a tiny corpus."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, REPO, summary
from omegaconf import OmegaConf
from test_errors import assert_one_line_error

from dlcli.base.errors import UserError
from dlcli.base.tokens import SPECIALS
from dlcli.data import build_task
from dlcli.engine.optim import build_optimizer
from dlcli.models import build_model
from dlcli.models.pretrained import Projected, load, match
from dlcli.models.vectors_file import read_word2vec, save_word2vec
from dlcli.models.vectors_recipe import is_recipe

LOSS = OmegaConf.create({"name": "auto"})


def conf(group: str, name: str, **values) -> OmegaConf:
    return OmegaConf.merge(OmegaConf.load(REPO / "conf" / group / f"{name}.yaml"), values)


def vectors_for(path: Path, words: list[str], dim: int = 16, binary: bool = True, seed: int = 0
                ) -> dict[str, torch.Tensor]:
    """A word2vec file of these words (random rows; binary: the very float32 bits); returns word -> row."""
    rows = 0.2 * torch.randn(len(words), dim, generator=torch.Generator().manual_seed(seed))  # skip-gram's scale
    save_word2vec(path, words, rows, binary=binary)
    return dict(zip(words, rows))


def words_of(vocab: list[str]) -> list[str]:
    return [w for w in vocab if w not in SPECIALS and w.strip() == w]  # (a word LM's vocabulary holds "\n")


# ------------------------------------------------------------------------------------------------------ the files
def test_text_binary_and_gensim_files_read_alike(tmp_path):
    words = ["the", "cat", "sat", "naïve", "on"]
    rows = vectors_for(tmp_path / "v.txt", words, binary=False)
    save_word2vec(tmp_path / "v.bin", words, torch.stack(list(rows.values())), binary=True)
    got_text, got_bin = read_word2vec(tmp_path / "v.txt", "k"), read_word2vec(tmp_path / "v.bin", "k")
    assert got_text[0] == got_bin[0] == words and (got_text[2], got_bin[2]) == ("text", "binary")
    assert torch.equal(got_bin[1], torch.stack(list(rows.values())))  # binary: the float32 bits themselves
    assert torch.allclose(got_text[1], got_bin[1], atol=1e-5)
    gensim = pytest.importorskip("gensim")
    kv = gensim.models.KeyedVectors(16)
    kv.add_vectors(words, got_bin[1].numpy())
    for binary in (False, True):  # gensim's binary records have no newline after them
        kv.save_word2vec_format(str(tmp_path / "g"), binary=binary)
        w, v, fmt = read_word2vec(tmp_path / "g", "k")
        assert w == words and fmt == ("binary" if binary else "text") and torch.allclose(v, got_bin[1], atol=1e-5)
    exact, lower = match(["<pad>", "the", "The", "cat"], ["THE", "The", "the"], False), \
        match(["<pad>", "the", "cat"], ["THE", "The", "cat"], True)
    assert exact.tolist() == [-1, 2, 1, -1] and lower.tolist() == [-1, 0, 2]  # lower-cased vocabularies only
    (tmp_path / "glove.txt").write_text("the 1 2\ncat 3 4\nthe 9 9\n")  # no header; a repeated word keeps its first
    w, v, _ = read_word2vec(tmp_path / "glove.txt", "k")
    assert w == ["the", "cat"] and v.tolist() == [[1, 2], [3, 4]]


def test_run_dirs_checkpoints_and_recipes_name_vectors_too(tmp_path, monkeypatch):
    words, rows = ["the", "cat", "sat"], torch.randn(3, 4)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)  # a cbow/skipgram run's checkpoint, its vectors.txt gone
    torch.save({"meta": {"kind": "embedding", "vocab": words}, "model": {"input.weight": rows}},
               run / "checkpoints" / "best.pt")
    for source in (run, run / "checkpoints" / "best.pt"):
        path, fmt, got_words, got = load(str(source))
        assert path == run / "checkpoints" / "best.pt" and fmt == "dl checkpoint"
        assert got_words == words and torch.equal(got, rows)
    save_word2vec(run / "vectors.txt", words, rows)
    assert load(str(run))[:2] == (run / "vectors.txt", "word2vec text")  # the run's vectors.txt first
    torch.save({"meta": {"kind": "classify", "vocab": words}, "model": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="other.pt holds a classify model; word vectors come from a cbow or skipgram"):
        load(str(tmp_path / "other.pt"))
    with pytest.raises(UserError, match="the folder holds no vectors.txt, vectors.bin or checkpoints"):
        load(str(tmp_path))
    monkeypatch.setenv("DL_CACHE_DIR", str(tmp_path / "cache"))
    assert is_recipe("skipgram:gutenberg trainer.epochs=1") and not is_recipe("gutenberg.txt")
    with pytest.raises(UserError, match="after MODEL:DATASET come key=value overrides of that training"):
        load("cbow:corpus dataset=text8")


BAD_FILES = [
    ("header", b"hello world again\n", "line 1 is b'hello world again'"),
    ("count", b"2 3\nthe 1 2 3\ncat 1 2\n", "line 3 has 2 numbers after its word, expected 3"),
    ("number", b"2 2\nthe 1 2\ncat 1 x0.5\n", "line 3 has b'x0.5' where a number belongs"),
    ("short", b"3 2\nthe 1 2\ncat 1 2\n", "line 1 promises 3 words, the file holds 2"),
    ("nan", b"1 2\nthe nan 2\n", "line 2 holds nan or inf"),
    ("binary", b"2 2\nthe " + torch.ones(2).numpy().tobytes() + b"\ncat \x00\x00", "binary record 2 of 2 is cut short"),
]


@pytest.mark.parametrize("content,expected", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_malformed_file_is_one_line_naming_where(tmp_path, content, expected):
    (tmp_path / "v").write_bytes(content)
    with pytest.raises(UserError, match="^model.pretrained_embeddings=") as e:
        read_word2vec(tmp_path / "v", "model.pretrained_embeddings")
    assert expected in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------------ the families
@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """A tiny task of each word-level kind: text classes, a word-level LM, word pairs."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    words = "the cat dog sat ran on a mat log big small red".split()
    (root / "book.txt").write_text("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(40)))
    (root / "pairs.tsv").write_text("".join(f"{' '.join(p)}\t{' '.join(reversed(p))} end\n"
                                            for p in (rng.choices(words, k=4) for _ in range(30))))
    return {
        "classify": build_task(conf("dataset", "reviews", n_samples=60), LOSS, torch.device("cpu")),
        "lm": build_task(conf("dataset", "text", path=str(root / "book.txt"), level="word", cache=False,
                              block_size=8), LOSS, torch.device("cpu")),
        "seq2seq": build_task(conf("dataset", "pairs", path=str(root / "pairs.tsv"), src_level="word",
                                   tgt_level="word"), LOSS, torch.device("cpu")),
    }


FAMILIES = [("rnn", "classify"), ("lstm", "classify"), ("gru", "classify"), ("transformer", "classify"),
            ("mlp", "classify"), ("lstm", "lm"), ("gru", "lm"), ("transformer", "lm"), ("seq2seq", "seq2seq"),
            ("attention", "seq2seq"), ("transformer", "seq2seq")]
SMALL = {"transformer": {"layers": 1, "ff_size": 32}, "mlp": {"hidden_sizes": [16]}}


@pytest.mark.parametrize("model,kind", FAMILIES, ids=[f"{m}-{k}" for m, k in FAMILIES])
def test_every_word_level_family_takes_the_vectors(tmp_path, tasks, model, kind):
    task = tasks[kind]
    sides = ["src_vocab", "tgt_vocab"] if kind == "seq2seq" else ["vocab"]
    known = sorted({w for s in sides for w in words_of(task.meta[s])})[::2]  # half the words are in the file
    rows = vectors_for(tmp_path / "v.txt", known, dim=16)
    cfg = conf("model", model, pretrained_embeddings=str(tmp_path / "v.txt"), **SMALL.get(model, {}))
    net = build_model(cfg, task.meta)
    tables = [m for m in net.modules() if isinstance(m, torch.nn.Embedding) and hasattr(m, "word_vectors")]
    assert len(tables) == len(sides)  # seq2seq: the source's and the target's tables, each its own vocabulary
    for side, table in zip(sides, tables):
        assert table.weight.shape == (len(task.meta[side]), 16)  # the width follows the file (auto)
        for i, w in enumerate(task.meta[side]):
            if w in rows:
                assert torch.equal(table.weight[i], rows[w]), w
            else:
                assert not any(torch.equal(table.weight[i], r) for r in rows.values())
        # the rows of words not in the file start at the vectors' scale (not N(0, 1) beside rows of std ~0.2)
        loaded = torch.tensor([w in rows for w in task.meta[side]])
        rest = ~loaded & table.weight.detach().abs().sum(1).gt(0)  # the pad row stays zero
        ratio = table.weight[rest].std() / table.weight[loaded].std()
        assert 0.99 < float(ratio) < 1.01, ratio
    batch = next(task.batches("train", 4))
    out = net(batch[0], batch[1][:, :-1]) if kind == "seq2seq" else net(batch[0])
    assert torch.isfinite(out).all()


def test_one_size_rule_and_freezing(tmp_path, tasks):
    task = tasks["classify"]
    rows = vectors_for(tmp_path / "v.txt", words_of(task.meta["vocab"]), dim=24)
    lstm = dict(pretrained_embeddings=str(tmp_path / "v.txt"), embedding_size=64)
    auto = build_model(conf("model", "lstm", **lstm), task.meta)
    assert auto.embed.weight.shape[1] == 24 and auto.rnn.input_size == 24  # embedding_size follows the vectors
    projected = build_model(conf("model", "lstm", **lstm, embedding_projection=True), task.meta)
    assert isinstance(projected.embed, Projected) and projected.rnn.input_size == 64
    assert projected.embed.table.weight.shape[1] == 24 and projected.embed.projection.weight.shape == (64, 24)
    with pytest.raises(UserError, match=r"model.embedding_size=64 but the vectors in .* have 24 dimensions"):
        build_model(conf("model", "lstm", **lstm, embedding_projection=False), task.meta)
    same = build_model(conf("model", "lstm", **lstm | {"embedding_size": 24}, embedding_projection=False), task.meta)
    assert same.embed.weight.shape[1] == 24
    tf = build_model(conf("model", "transformer", pretrained_embeddings=str(tmp_path / "v.txt")), task.meta)
    assert tf.embed.tokens.weight.shape[1] == 24 and tf.head.in_features == 24  # d_model follows too
    with pytest.raises(UserError, match=r"model.heads=5: model.d_model=24 \(the pretrained vectors' width"):
        build_model(conf("model", "transformer", pretrained_embeddings=str(tmp_path / "v.txt"), heads=5), task.meta)
    frozen = build_model(conf("model", "lstm", **lstm, freeze_embeddings=True, embedding_projection=True), task.meta)
    opt = build_optimizer(OmegaConf.create({"name": "adamw", "lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.99],
                                            "eps": 1e-8}), frozen, torch.device("cpu"))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not frozen.embed.table.weight.requires_grad and id(frozen.embed.table.weight) not in in_opt
    assert id(frozen.embed.projection.weight) in in_opt  # the projection still learns
    assert torch.equal(frozen.embed.table.weight[task.meta["vocab"].index("good")], rows["good"])


# ------------------------------------------------------------------------------------------------------ end to end
def test_frozen_rows_stay_tuned_rows_move_and_the_file_is_not_needed_later(dl_inproc, tmp_path, tasks):
    dl = dl_inproc  # the CLI in this process: no interpreter + torch start per command
    vocab = tasks["classify"].meta["vocab"]
    rows = vectors_for(tmp_path / "v.bin", words_of(vocab)[:40], dim=8, binary=True)
    args = ["train", "model=lstm", "dataset=reviews", "dataset.n_samples=60", "trainer.epochs=2",
            "model.hidden_size=8", f"model.pretrained_embeddings={tmp_path / 'v.bin'}", *FAST]
    res = dl(*args, "model.freeze_embeddings=true")
    assert res.returncode == 0, res.stderr
    assert "pretrained: 8-d word2vec binary vectors of 40 words" in res.stdout
    assert "model.embedding_size 64 -> 8, the vectors' width" in res.stdout
    line = next(ln for ln in res.stdout.splitlines() if "words found" in ln)
    record = summary(run_dir(res))["pretrained"]
    side = record["sides"]["vocab"]
    assert side["found"] == 40 and side["words"] == len(words_of(vocab)) and 0 < side["token_coverage"] < 1
    assert f"40/{side['words']} words found ({side['vocab_coverage']:.1%}), " \
           f"{side['token_coverage']:.1%} of the training tokens; frozen" in line
    frozen_run = run_dir(res)
    res = dl(*args, "model.freeze_embeddings=false")
    assert res.returncode == 0, res.stderr
    tuned_run = run_dir(res)
    for run, moved in ((frozen_run, False), (tuned_run, True)):
        weight = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]["embed.weight"]
        same = [torch.equal(weight[vocab.index(w)], r) for w, r in rows.items()]
        assert (not any(same)) if moved else all(same), run
    (tmp_path / "v.bin").unlink()  # eval, sample and a resume build the model from the checkpoint alone
    res = dl("eval", str(frozen_run / "checkpoints" / "best.pt"), "--json")
    assert res.returncode == 0 and "test" in res.stdout, res.stderr
    res = dl("train", f"trainer.resume={frozen_run}", "trainer.epochs=3")
    assert res.returncode == 0 and "words found" in res.stdout, res.stderr
    weight = torch.load(frozen_run / "checkpoints" / "last.pt", weights_only=True)["model"]["embed.weight"]
    assert all(torch.equal(weight[vocab.index(w)], r) for w, r in rows.items())


def run_dir(res) -> Path:
    return Path(next(ln for ln in res.stdout.splitlines() if ln.startswith("run dir: "))[len("run dir: "):])


BAD = [
    ("missing", ["model.pretrained_embeddings=nowhere.txt"], "model.pretrained_embeddings=nowhere.txt: no such file"),
    ("malformed", ["model.pretrained_embeddings=v.txt"], "line 3 has 1 numbers after its word, expected 2"),
    ("width", ["model.pretrained_embeddings=ok.txt", "model.embedding_projection=false"],
     "model.embedding_size=64 but the vectors in ok.txt have 2 dimensions"),
    ("nothing-matched", ["model.pretrained_embeddings=french.txt"],
     "vocabulary words is in the file's 2; the vocabulary starts '"),
    ("characters", ["model.pretrained_embeddings=ok.txt", "dataset.level=char"],
     "this model reads characters (dataset.level=char); word vectors need word tokens"),
    ("no-words", ["model.pretrained_embeddings=ok.txt", "dataset=adding"], "this model reads no words here"),
    ("freeze-alone", ["model.freeze_embeddings=true"], "model.freeze_embeddings=true freezes pretrained vectors"),
    ("projection", ["model.pretrained_embeddings=ok.txt", "model.embedding_projection=maybe"],
     "model.embedding_projection=maybe: must be auto, true or false"),
]


@pytest.mark.parametrize("args,expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_one_line(dl_inproc, args, expected):
    (dl_inproc.cwd / "v.txt").write_text("2 2\nthe 1 2\ncat 1\n")
    (dl_inproc.cwd / "ok.txt").write_text("2 2\nthe 1 2\ngood 3 4\n")
    (dl_inproc.cwd / "french.txt").write_text("2 2\nbonjour 1 2\nmonde 3 4\n")
    data = [] if any(a.startswith("dataset=") for a in args) else ["dataset=reviews", "dataset.n_samples=60"]
    assert_one_line_error(dl_inproc("train", "model=lstm", *data, *args, *FAST), expected)


# ------------------------------------------------------------------------------------------------------ the lesson
AUTHORS = {"Austen, Jane": "Persuasion", "Dickens, Charles": "Hard Times", "Doyle, Arthur Conan": "The Valley of Fear",
           "Hardy, Thomas": "The Mayor of Casterbridge", "Twain, Mark": "The Prince and The Pauper"}
COMMON = "the a of and to in was he she it that his her with as had for at but not on".split()


def tiny_gutenberg(root: Path, per_book: tuple[int, int] = (16, 6)) -> Path:
    """corpus.txt + books.tsv as the shared corpus has them: the YAML's five authors, a book each besides the held-out
    one, paragraphs of 35 words (a fifth of them the author's own, one the book's: `other` or `held`), and a short
    one."""
    rng = random.Random(0)
    folder = root / "gutenberg"
    folder.mkdir(parents=True)
    books, lines = [], []
    for author, held in AUTHORS.items():
        own = [f"{author.split(',')[0].lower()}{k}" for k in range(8)]
        for title, n in (("Other Book", per_book[0]), (held + (", Complete" if "Pauper" in held else ""), per_book[1])):
            mark = "other" if title == "Other Book" else "held"
            lines += [" ".join([mark] + [rng.choice(own) if rng.random() < 0.2 else rng.choice(COMMON)
                                         for _ in range(34)]) for _ in range(n)]
            lines.append("Too short to draw.")
            books.append(f"{len(books) + 1}\t0\t{title}\t{author}\tx\tx\t0\t{n + 1}\t0\tx\n")
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n")
    (folder / "books.tsv").write_text("order\tpg_ebook_no\ttitle\tauthor\tsource_path\tgit_blob\tsource_bytes\t"
                                      "paragraphs\twords\tcanonical_url\n" + "".join(books))
    return root


def test_author_task_holds_a_book_out(tmp_path):
    root = tiny_gutenberg(tmp_path)
    sizes = dict(root=str(root), val_per_class=3, test_per_class=5)
    small, big = (build_task(conf("dataset", "gutenberg_authors", per_class=n, **sizes), LOSS, torch.device("cpu"))
                  for n in (4, 12))
    assert small.meta["class_names"] == ["Austen", "Dickens", "Doyle", "Hardy", "Twain"]
    assert [small.size(s) for s in ("train", "val", "test")] == [20, 15, 25]

    def texts(task, split):
        return [[task.meta["vocab"][i] for i in row if i] for row in task.splits[split][0].tolist()]

    assert all(row[0] == "other" for row in texts(small, "train") + texts(small, "val"))
    assert all(row[0] == "<unk>" for row in texts(small, "test"))  # "held": never seen in training
    pairs = zip(texts(small, "val"), texts(big, "val"))
    assert all(a == b or "<unk>" in (a, b) for r, q in pairs for a, b in zip(r, q))
    assert len(texts(small, "val")) == len(texts(big, "val"))  # val: the same paragraphs whatever per_class is
    assert all(row in texts(big, "train") for row in texts(small, "train"))  # 4 a class: a subset of 12
    with pytest.raises(UserError, match="Austen, Jane has 13 paragraphs of >= 30 words for train in the other books, "
                                        "14 wanted; lower dataset.per_class"):
        build_task(conf("dataset", "gutenberg_authors", per_class=14, **sizes), LOSS, torch.device("cpu"))
    with pytest.raises(UserError, match="Austen, Jane has no book 'Emma'"):
        build_task(conf("dataset", "gutenberg_authors", **sizes, authors={"Austen, Jane": "Emma", "Twain, Mark": None}),
                   LOSS, torch.device("cpu"))
    sys.path.insert(0, str(REPO))  # bench/ lives beside the package
    from bench.text_baseline import run

    row = run(["dataset=gutenberg_authors", f"dataset.root={root}", "dataset.per_class=8", "dataset.val_per_class=3",
               "dataset.test_per_class=5"])
    assert row["train"] == 40 and row["test"] == 25 and row["test_acc"] > 0.5  # chance: 0.2


@pytest.mark.slow
def test_the_lesson_runs_in_one_command(dl, tmp_path):
    root = tiny_gutenberg(tmp_path / "data")
    recipe = "'skipgram:gutenberg trainer.epochs=1 model.vector_size=8 model.cpu_kernel=false'"
    res = dl.ok("train", "-m", "+experiment=pretrained_embeddings", f"experiment.vectors={recipe}",
                "dataset.per_class=4,8", "dataset.val_per_class=3", "dataset.test_per_class=3", "trainer.epochs=2",
                "model.hidden_size=8", *FAST, env={"DL_DATA_DIR": str(root), "DL_CACHE_DIR": str(tmp_path / "cache")})
    assert res.stderr.count("making the vectors of 'skipgram:gutenberg") == 1  # once, then read by every run
    assert len(list((tmp_path / "cache" / "vectors").glob("skipgram-gutenberg-*/vectors.txt"))) == 1
    sweep = next((dl.cwd / "outputs" / "sweeps").glob("*"))
    with open(sweep / "pretrained_embeddings.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert (sweep / "pretrained_embeddings.png").stat().st_size > 10_000
    assert {r["run"] for r in table} == {f"embeddings={e}, per_class={n}" for e in ("random", "frozen", "fine_tuned")
                                        for n in (4, 8)}
    assert all(0 <= float(r["test/acc"]) <= 1 and r["status"] == "completed" for r in table)
    for job in (p for p in sweep.iterdir() if (p / "summary.json").is_file()):
        s = json.loads((job / "summary.json").read_text())
        assert 0 <= s["test"]["test/acc"] <= 1
        if "random" in job.name:
            assert "pretrained" not in s
        else:
            assert s["pretrained"]["freeze"] == ("frozen" in job.name) and s["pretrained"]["sides"]["vocab"]["found"]
