"""word2vec (cbow, skipgram): the sampling distributions, the evaluation files, and short real runs through the CLI
whose exported vectors gensim loads."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import FAST, read_jsonl
from omegaconf import OmegaConf

from dlcli.base.errors import UserError
from dlcli.commands.sample_embeddings import parse_analogy
from dlcli.data.corpus import (EmbeddingTask, keep_probabilities, noise_cdf, relation_questions, relation_sentences,
                               tokenizer)
from dlcli.data.word_vectors import analogy_accuracy, read_analogies, read_similarity, spearman, unit_rows

SHORT = [*FAST, "dataset.sentences=24000", "trainer.epochs=3"]


def tiny_task(counts: list[int], window: int = 3, sample: float = 0.0, shared: int = 64) -> EmbeddingTask:
    stream = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    stream = stream[torch.randperm(len(stream), generator=torch.Generator().manual_seed(0))]
    sent = torch.arange(len(stream)) // 50  # sentences of 50 words
    cfg = OmegaConf.create({"window": window, "negative": 5, "sample": sample, "shared_negatives": shared,
                            "negative_group": 16})
    meta = {"vocab": [f"w{i}" for i in range(len(counts))], "counts": counts}
    return EmbeddingTask({"train": (stream, sent)}, meta, cfg)


def test_subsampling_keeps_rare_words_and_thins_frequent_ones():
    counts = torch.tensor([100_000.0, 10_000.0, 1_000.0, 10.0])
    p = keep_probabilities(counts, 1e-3)
    assert p[3] >= 1                # far below the threshold: always kept
    assert p[0] < p[1] < p[2] < 1   # the more frequent, the more is dropped
    t = 1e-3 * counts.sum()
    assert p[0] == pytest.approx(((counts[0] / t).sqrt() + 1) * t / counts[0])  # gensim's formula
    assert torch.equal(keep_probabilities(counts, 0.0), torch.ones(4, dtype=counts.dtype))
    # and the batches honour it: the share of kept 'w0' tokens matches p[0]
    task = tiny_task([20_000, 2_000, 500, 50], sample=1e-2)
    gen = torch.Generator().manual_seed(1)
    ids, sent = task.splits["train"]
    centers, _, _ = task.make_batch(ids, sent, gen)
    kept = torch.bincount(centers, minlength=4).double() / torch.tensor([20_000, 2_000, 500, 50]).double()
    expect = task.keep_prob.double().clamp(max=1)
    assert torch.allclose(kept, expect, atol=0.03)


def test_negatives_follow_unigram_to_the_three_quarters():
    counts = [8000, 4000, 1000, 100, 10]
    task = tiny_task(counts)
    ids, sent = task.splits["train"]
    gen = torch.Generator().manual_seed(2)
    draws = torch.cat([task.make_batch(ids, sent, gen)[2].flatten() for _ in range(40)])
    freq = torch.bincount(draws, minlength=5).double() / len(draws)
    expect = torch.tensor(counts, dtype=torch.float64) ** 0.75
    expect /= expect.sum()
    assert torch.allclose(freq, expect, atol=0.01), (freq, expect)
    assert torch.allclose(noise_cdf(torch.tensor(counts, dtype=torch.float64)), expect.cumsum(0))


def test_contexts_stay_in_the_sentence_and_windows_shrink_at_random():
    task = tiny_task([400] * 10, window=4)
    ids, sent = task.splits["train"]
    gen = torch.Generator().manual_seed(3)
    centers, contexts, negatives = task.make_batch(ids, sent, gen)
    assert torch.equal(centers, ids)  # sample=0 keeps every word
    pos = torch.arange(len(ids))[:, None] + torch.tensor([-4, -3, -2, -1, 1, 2, 3, 4])
    valid = contexts >= 0
    assert torch.equal(contexts[valid], ids[pos.clamp(0, len(ids) - 1)][valid])
    assert (sent[pos.clamp(0, len(ids) - 1)][valid] == sent[:, None].expand_as(pos)[valid]).all()
    # reach per center is uniform on 1..window: words well inside a sentence have 2*reach contexts
    inner = (torch.arange(len(ids)) % 50 >= 4) & (torch.arange(len(ids)) % 50 < 46)
    reach = valid[inner].sum(1) // 2
    share = torch.bincount(reach, minlength=5)[1:].double() / len(reach)
    assert torch.allclose(share, torch.full((4,), 0.25, dtype=torch.float64), atol=0.03)
    assert negatives.shape == (-(-len(ids) * 8 // 16), 64)  # enough groups of 16 rows for 2*window rows a center


def reference_loss(model, centers, contexts, negatives):
    """The negative-sampling loss written pair by pair with plain autograd ops (a slow, obvious reference)."""
    import torch.nn.functional as F

    w_in, w_out = model.input.weight, model.output.weight
    has = (contexts >= 0).any(1)
    centers, contexts = centers[has], contexts[has]
    pairs = int((contexts >= 0).sum()) if model.objective == "skipgram" else len(centers)
    groups = min(len(negatives), len(centers), -(-pairs // model.group))
    per_group, shared = -(-len(centers) // groups), negatives.shape[1]
    total = w_in.sum() * 0
    for r, center in enumerate(centers.tolist()):
        words = [c for c in contexts[r].tolist() if c >= 0]
        if model.objective == "skipgram":
            x, targets = w_in[center], words
        else:  # the mean's value, the sum's gradient (word2vec gives each context word the full error)
            summed = w_in[torch.tensor(words)].sum(0)
            x, targets = summed + (summed / len(words) - summed).detach(), [center]
        for t in targets:
            total = total - F.logsigmoid(x @ w_out[t])
            for s in negatives[r // per_group].tolist():
                if s != t:  # word2vec skips a negative equal to the target
                    total = total - F.logsigmoid(-(x @ w_out[s])) * (model.negative / shared)
    return total


@pytest.mark.parametrize("objective", ["skipgram", "cbow"])
def test_word2vec_written_out_gradient_matches_autograd(objective):
    """The batched path (GPUs, DDP, other optimizers) computes the loss and its sparse gradient with tensor ops
    written out by hand: against a pair-by-pair autograd reference."""
    from dlcli.models.word2vec import Word2Vec

    torch.manual_seed(0)
    model = Word2Vec(30, 8, objective, negative=5, group=4)
    with torch.no_grad():
        model.input.weight.normal_(0, 0.3)
        model.output.weight.normal_(0, 0.3)
    centers = torch.randint(0, 30, (13,))
    contexts = torch.randint(-1, 30, (13, 4))
    contexts[3] = -1                                  # a center with no context: no rows
    negatives = torch.randint(0, 30, (6, 5))
    negatives[0, :2] = torch.stack([centers[0], contexts[0, 1].clamp(min=0)])  # negatives equal to targets
    loss, pairs = model.loss(centers, contexts, negatives)
    loss.backward()
    assert model.input.weight.grad.is_sparse and model.output.weight.grad.is_sparse  # SGD touches used rows only
    got = [p.grad.to_dense() for p in (model.input.weight, model.output.weight)]
    model.zero_grad()
    expect = reference_loss(model, centers, contexts, negatives)
    expect.backward()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert int(pairs) == (int((contexts >= 0).sum()) if objective == "skipgram" else 12)
    for g, p in zip(got, (model.input.weight, model.output.weight)):
        assert torch.allclose(g, p.grad.to_dense(), atol=1e-5), (g - p.grad.to_dense()).abs().max()


def test_tokenizer_lowercases_and_splits_punctuation():
    assert tokenizer(True, "split")("The _Cat_ said: “Don't!”") == ["the", "cat", "said", ":", "“", "don't", "!",
                                                                     "”"]
    assert tokenizer(True, "drop")("Hello, World.") == ["hello", "world"]
    assert tokenizer(False, "keep")("Hello, World.") == ["Hello,", "World."]
    with pytest.raises(UserError, match="dataset.punctuation=x"):
        tokenizer(True, "x")


def test_relations_corpus_is_deterministic():
    assert relation_sentences(50, seed=0) == relation_sentences(50, seed=0)
    assert relation_sentences(50, seed=0) != relation_sentences(50, seed=1)
    assert ("capital-country", ["france", "paris", "italy", "rome"]) in relation_questions()


def test_analogy_file_counts_oov_and_rejects_malformed_lines(tmp_path):
    good = tmp_path / "q.txt"
    good.write_text(": capitals\nFrance Paris Italy Rome\nfrance paris atlantis utopia\n: plural\ncat cats dog dogs\n")
    questions = read_analogies(good)
    assert questions[0] == ("capitals", ["france", "paris", "italy", "rome"])
    vocab = ["france", "paris", "italy", "rome", "cat", "cats", "dog", "dogs"]
    # vectors in which b - a + c lands exactly on d
    base = torch.eye(8)
    vec = base.clone()
    vec[1] = base[0] + base[5]          # paris = france + capital-ness
    vec[3] = base[2] + base[5]          # rome = italy + capital-ness
    r = analogy_accuracy(unit_rows(vec), {w: i for i, w in enumerate(vocab)}, questions)
    assert (r["total"], r["answered"], r["oov"]) == (3, 2, 1)
    assert r["sections"]["capitals"] == [1, 1]
    bad = tmp_path / "bad.txt"
    bad.write_text(": capitals\nfrance paris italy\n")
    with pytest.raises(UserError, match=r"line 2 has 3 word\(s\), expected 4"):
        read_analogies(bad)
    headless = tmp_path / "headless.txt"
    headless.write_text("france paris italy rome\n")
    with pytest.raises(UserError, match="before any ': section' header"):
        read_analogies(headless)


def test_similarity_file_and_spearman(tmp_path):
    f = tmp_path / "sim.tsv"
    f.write_text("Word 1\tWord 2\tHuman (mean)\ntiger\tcat\t7.35\nbook\tpaper\t7.46\n")
    assert read_similarity(f) == [("tiger", "cat", 7.35), ("book", "paper", 7.46)]
    f.write_text("tiger cat 7.35\ntiger cat\n")
    with pytest.raises(UserError, match="line 2 is not `word1 word2 score`"):
        read_similarity(f)
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2, 2, 4]), torch.tensor([4.0, 3, 3, 1])) == pytest.approx(-1.0)


def test_parse_analogy():
    assert parse_analogy("King - man + WOMAN", True) == [(1, "king"), (-1, "man"), (1, "woman")]
    with pytest.raises(UserError, match="two operators"):
        parse_analogy("king - - man", True)


def test_skipgram_learns_planted_pairs_and_exports_vectors_gensim_loads(dl, tmp_path):
    gensim = pytest.importorskip("gensim")
    res = dl.ok("train", "model=skipgram", *SHORT)
    assert "nearest neighbours" in res.stdout and "analogies (test)" in res.stdout
    run = dl.last_run()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["test/analogy"] > 0.8, summary["test"]  # the planted relations are recovered
    assert summary["test"]["test/analogy_oov"] == 0
    # the learning rate decays linearly from model.alpha to (almost) model.min_alpha
    lrs = [r["lr"] for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]
    assert lrs[0] < 0.025 and lrs[-1] == pytest.approx(1e-4, abs=2e-5)
    kv = gensim.models.KeyedVectors.load_word2vec_format(str(run / "vectors.txt"))
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    vocab = ckpt["meta"]["vocab"]
    assert list(kv.index_to_key) == vocab
    assert torch.allclose(torch.from_numpy(kv.vectors), ckpt["model"]["input.weight"], atol=1e-5)
    # planted partners are near neighbours, and closer than words of another relation
    assert "queen" in [w for w, _ in kv.most_similar("king", topn=5)]  # with other male words (son, man, ...)
    assert kv.similarity("man", "woman") > kv.similarity("man", "cats")
    assert kv.similarity("paris", "france") > kv.similarity("paris", "dogs")
    dl.ok("export", str(run), "--binary", "--out", str(tmp_path / "v.bin"))
    kb = gensim.models.KeyedVectors.load_word2vec_format(str(tmp_path / "v.bin"), binary=True)
    assert torch.allclose(torch.from_numpy(kb.vectors), ckpt["model"]["input.weight"])
    # a user's file is never replaced without --force, a directory is no file, nothing half-written is left
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    res = dl("export", str(run), "--out", str(mine))
    assert res.returncode == 2 and "the file exists; add --force" in res.stderr and mine.read_text() == "my notes\n"
    res = dl("export", str(run), "--out", str(tmp_path))
    assert res.returncode == 2 and "that is a directory" in res.stderr
    assert not list(tmp_path.rglob("*.part"))
    dl.ok("export", str(run), "--out", str(mine), "--force")
    assert mine.read_text().startswith(f"{len(vocab)} ")
    out = dl.ok("sample", str(run), "--analogy", "king - man + woman", "--topn", "3").stdout
    assert "queen" in out
    assert "queen" in dl.ok("sample", str(run), "--word", "king", "--topn", "5").stdout
    bad = dl("sample", str(run), "--word", "zebra")
    assert bad.returncode == 2 and "--word zebra: not in the vocabulary" in bad.stderr


def test_cbow_on_a_user_corpus_file(dl, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(relation_sentences(6000, seed=5)).upper() + "\n")
    questions = tmp_path / "q.txt"
    questions.write_text(": gender\nking queen man woman\nking queen unicorn mermaid\n")
    dl.ok("train", "model=cbow", "dataset=corpus", f"dataset.path={text}", f"dataset.analogies={questions}",
          "trainer.epochs=2", *FAST)
    run = dl.last_run()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["test/analogy_oov"] == 1 and summary["test"]["test/analogy_answered"] == 1
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert "king" in ckpt["meta"]["vocab"] and "KING" not in ckpt["meta"]["vocab"]  # lower-cased
    res = dl("eval", str(run))
    assert res.returncode == 0 and "analogy" in res.stdout


def test_user_errors(dl, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text(": s\na b c\n")
    res = dl("train", "model=skipgram", f"dataset.analogies={bad}", *SHORT)
    assert res.returncode == 2 and "line 2 has 3 word(s)" in res.stderr
    res = dl("train", "model=skipgram", "dataset=corpus", f"dataset.path={tmp_path / 'none.txt'}", *FAST)
    assert res.returncode == 2 and "no such file" in res.stderr
    res = dl("train", "model=cbow", "model.window=0", *FAST)
    assert res.returncode == 2 and "model.window=0" in res.stderr
    res = dl("train", "model=skipgram", "model.negative=0", *FAST)
    assert res.returncode == 2 and "model.negative=0 with model.hs=0: nothing to train" in res.stderr
    res = dl("train", "model=skipgram", "model.hs=2", *FAST)
    assert res.returncode == 2 and "model.hs=2: 1 (hierarchical softmax" in res.stderr
    res = dl("train", "model=cbow", "dataset.cpu_batch_size=0", *FAST)
    assert res.returncode == 2 and "dataset.cpu_batch_size=0: corpus words per step on the CPU" in res.stderr
    text = tmp_path / "plain.txt"
    text.write_text("\n".join(relation_sentences(300, seed=1)))
    res = dl("train", "model=skipgram", "dataset=corpus", f"dataset.path={text}", "trainer.monitor=val/analogy", *FAST)
    assert res.returncode == 2 and "trainer.monitor=val/analogy: this embedding task logs val/loss" in res.stderr


def kernel():
    from dlcli.models.word2vec import cpu_kernel

    k = cpu_kernel()
    assert k is not None  # CI has a compiler: the op must build
    return k


def word2vec_by_hand(w_in, w_out, ids, sent, cbow, negatives, noise_word, alpha, tree=None, points=None, codes=None):
    """word2vec's SGD written pair by pair in float64 (window 1, every negative `noise_word`; with `tree`, first
    hierarchical softmax down the target's path): the C tool's and gensim's order of updates. Returns (loss, pairs)."""
    def step(x, v, label, grad):
        f = float(x @ v)
        g = (label - 1 / (1 + math.exp(-f))) * alpha
        grad += g * v
        v += g * x
        return -float(torch.nn.functional.logsigmoid(torch.tensor(f if label else -f, dtype=torch.float64)))

    loss, pairs = 0.0, 0
    for i, center in enumerate(ids):
        contexts = [ids[j] for j in (i - 1, i + 1) if 0 <= j < len(ids) and sent[j] == sent[i]]
        inputs = [contexts] if cbow else [[c] for c in contexts]
        for words in inputs:
            if not words:
                continue
            x = w_in[words].mean(0)
            grad = torch.zeros_like(x)
            if tree is not None:
                for node, code in zip(points[center].tolist(), codes[center].tolist()):
                    if node >= 0:
                        loss += step(x, tree[node], 1.0 - code, grad)
            for t, label in [(center, 1.0)] * (negatives > 0) + [(noise_word, 0.0)] * negatives:
                if label == 0.0 and t == center:
                    continue  # a negative equal to the target is skipped
                loss += step(x, w_out[t], label, grad)
            for w in words:
                w_in[w] += grad
            pairs += 1
    return loss, pairs


NO_PATHS = (torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long))


@pytest.mark.parametrize("hs", [False, True], ids=["negative", "negative+hs"])
@pytest.mark.parametrize("objective", ["skipgram", "cbow"])
def test_in_place_training_takes_word2vecs_steps_pair_by_pair(objective, hs):
    """The C++ trainer used on the CPU updates the tables exactly as word2vec does, step after step (a
    sentence boundary stops the window; a negative equal to the center is skipped; hierarchical softmax first)."""
    from dlcli.models.word2vec import huffman

    k = kernel()
    torch.manual_seed(0)
    w_in, w_out, tree = torch.randn(6, 8) * 0.3, torch.randn(6, 8) * 0.3, torch.randn(5, 8) * 0.3
    points, codes = huffman([9, 7, 5, 3, 2, 1]) if hs else NO_PATHS
    ids = torch.tensor([0, 1, 5, 3, 1, 4, 2, 5])
    sent = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])      # the last word is a sentence alone: no context
    noise = torch.tensor([0.0, 0, 0, 0, 0, 1])        # every negative is word 5
    prob, alias = k.alias_table(noise)
    expect = [w.double() for w in (w_in, w_out, tree)]
    expect_loss, expect_pairs = word2vec_by_hand(*expect[:2], ids.tolist(), sent.tolist(), objective == "cbow", 2, 5,
                                                 0.1, *((expect[2], points, codes) if hs else ()))
    loss, loss_sum, pairs, kept = k.train_chunk(w_in, w_out, tree if hs else tree[:0], ids, sent, torch.ones(6),
                                                prob, alias, points, codes, 1, 2, objective == "cbow", 0.1, 123, 1,
                                                512)
    assert int(kept) == 8 and int(pairs) == expect_pairs == (10 if objective == "skipgram" else 7)
    assert float(loss_sum) == pytest.approx(expect_loss, rel=1e-5)
    assert float(loss) == pytest.approx(expect_loss / expect_pairs, rel=1e-5)
    for got, want in zip((w_in, w_out, tree), expect):
        assert torch.allclose(got.double(), want, atol=1e-6)


@pytest.mark.parametrize("hs", [False, True], ids=["negative", "negative+hs"])
@pytest.mark.parametrize("objective", ["skipgram", "cbow"])
def test_in_place_threads_train_copies_of_the_hot_rows_and_add_up_their_changes(objective, hs):
    """Two pieces at once: each trains its own copy of the first hot_rows rows (the tree's last), and their changes
    are added after (here every row is hot, so the result is exactly: start + piece 1's change + piece 2's)."""
    from dlcli.models.word2vec import huffman

    k = kernel()
    torch.manual_seed(1)
    w_in, w_out, tree = torch.randn(7, 8) * 0.3, torch.randn(7, 8) * 0.3, torch.randn(6, 8) * 0.3
    points, codes = huffman([9, 8, 7, 6, 5, 4, 3]) if hs else NO_PATHS
    tree = tree if hs else tree[:0]
    ids = torch.cat([torch.randint(0, 3, (64,)), torch.randint(3, 6, (64,))])  # two texts, disjoint words
    sent = torch.tensor([0] * 64 + [1] * 64)
    prob, alias = k.alias_table(torch.tensor([0.0, 0, 0, 0, 0, 0, 1]))    # negatives: word 6, which both share
    start = [w.double() for w in (w_in, w_out, tree)]
    changes, total_loss = [], 0.0
    for half in (slice(0, 64), slice(64, 128)):
        mine = [w.clone() for w in start]
        loss, _ = word2vec_by_hand(*mine[:2], ids[half].tolist(), sent[half].tolist(), objective == "cbow", 2, 6, 0.1,
                                   *((mine[2], points, codes) if hs else ()))
        changes.append([m - w for m, w in zip(mine, start)])
        total_loss += loss
    _, loss_sum, _, _ = k.train_chunk(w_in, w_out, tree, ids, sent, torch.ones(7), prob, alias, points, codes, 1, 2,
                                      objective == "cbow", 0.1, 5, 2, 7)
    assert float(loss_sum) == pytest.approx(total_loss, rel=1e-5)
    for got, w, c1, c2 in zip((w_in, w_out, tree), start, *changes):
        assert torch.allclose(got.double(), w + c1 + c2, atol=1e-5)


def test_huffman_tree_gives_frequent_words_short_prefix_free_paths():
    from dlcli.models.word2vec import huffman

    counts = [1000, 400, 300, 120, 80, 50, 30, 10, 6, 4]
    points, codes = huffman(counts)
    lengths = (points >= 0).sum(1)
    assert (points[:, 0] == len(counts) - 2).all()            # every path starts at the root
    assert lengths.tolist() == sorted(lengths.tolist())       # the more frequent, the shorter
    paths = ["".join(map(str, codes[w, :n].tolist())) for w, n in enumerate(lengths.tolist())]
    assert not any(a != b and b.startswith(a) for a in paths for b in paths)  # prefix-free: one leaf per path
    p = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    entropy = float(-(p * p.log2()).sum())
    assert entropy <= float((p * lengths).sum()) < entropy + 1  # an optimal code's average length
    assert set(points[points >= 0].tolist()) == set(range(len(counts) - 1))  # every inner node on some path


@pytest.mark.parametrize("objective", ["skipgram", "cbow"])
def test_batched_and_in_place_hierarchical_softmax_score_the_same_loss(objective):
    """At a learning rate of 0 the C++ trainer only scores: its summed loss equals the batched path's (autograd over
    the tree) on the same words and windows."""
    from dlcli.models.word2vec import Word2Vec

    k = kernel()
    counts = [50, 30, 20, 10, 5, 3]
    model = Word2Vec(6, 8, objective, negative=0, counts=counts)
    with torch.no_grad():
        for table in (model.input, model.output, model.tree):
            table.weight.normal_(0, 0.3)
    ids = torch.tensor([0, 1, 5, 3, 1, 4, 2, 5, 0, 2])
    sent = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 2])
    prob, alias = k.alias_table(torch.ones(6))
    _, loss_sum, pairs, _ = k.train_chunk(model.input.weight.detach(), model.output.weight.detach(),
                                          model.tree.weight.detach(), ids, sent, torch.ones(6), prob, alias,
                                          model.points, model.codes, 1, 0, objective == "cbow", 0.0, 1, 1, 0)
    contexts = torch.tensor([[ids[j] if 0 <= j < len(ids) and sent[j] == sent[i] else -1 for j in (i - 1, i + 1)]
                             for i in range(len(ids))])
    loss, batched_pairs = model.loss(ids, contexts, torch.zeros(1, 1, dtype=torch.long))
    assert int(pairs) == int(batched_pairs)
    assert float(loss.detach()) == pytest.approx(float(loss_sum), rel=1e-5)
    loss.backward()
    assert model.tree.weight.grad.is_sparse and model.input.weight.grad.is_sparse


def test_in_place_draws_negatives_subsampling_and_windows_with_the_right_shape():
    k = kernel()
    counts = torch.tensor([8000.0, 4000, 1000, 100, 10, 1])
    prob, alias = k.alias_table(counts ** 0.75)
    freq = torch.bincount(k.draw_alias(prob, alias, 400_000, 1), minlength=6).double() / 400_000
    expect = (counts ** 0.75).double() / (counts ** 0.75).sum()
    assert torch.allclose(freq, expect, atol=3e-3), (freq, expect)
    # subsampling: the words kept match the keep probabilities
    task = tiny_task([20_000, 2_000, 500, 50], sample=1e-2)
    ids, sent = task.splits["train"]
    w_in, w_out = torch.zeros(4, 4), torch.zeros(4, 4)
    kept = sum(int(k.train_chunk(w_in, w_out, w_in[:0], ids, sent, task.keep_prob.float(), prob[:4],
                                 alias[:4].clamp(max=3), *NO_PATHS, 3, 1, True, 0.0, seed, 2, 0)[3])
               for seed in range(5)) / 5
    assert kept == pytest.approx(float(task.keep_prob.clamp(max=1)[ids].sum()), rel=0.01)
    # dynamic window: reach uniform on 1..4, so a word inside a long sentence has 2 * 2.5 context words on average
    ids = torch.randint(0, 4, (20_000,), generator=torch.Generator().manual_seed(0))
    _, _, pairs, _ = k.train_chunk(w_in, w_out, w_in[:0], ids, torch.zeros_like(ids), torch.ones(4), prob[:4],
                                   alias[:4].clamp(max=3), *NO_PATHS, 4, 1, False, 0.0, 7, 2, 0)
    assert int(pairs) / 20_000 == pytest.approx(5.0, rel=0.02)


def in_place_for(overrides: list[str]):
    from dlcli.config.compose import compose_jobs
    from dlcli.data import build_task
    from dlcli.engine.in_place import choose_in_place
    from dlcli.engine.optim import build_optimizer
    from dlcli.engine.runtime import setup
    from dlcli.models import build_model

    (cfg,) = compose_jobs(["model=skipgram", "dataset.sentences=200", "device=cpu", *overrides], multirun=False)
    runtime = setup(cfg)
    task = build_task(cfg.dataset, cfg.loss, runtime.device)
    model = build_model(cfg.model, task.meta)
    return choose_in_place(task, model, build_optimizer(cfg.optimizer, model, runtime.device), cfg.trainer, runtime)


def test_in_place_training_only_when_the_run_is_plain_sgd_on_the_cpu():
    assert in_place_for([]) is not None
    for overrides in (["model.cpu_kernel=false"], ["optimizer.momentum=0.9"], ["trainer.clip_grad_norm=1.0"],
                      ["optimizer=adagrad"], ["trainer.precision=bf16"]):
        assert in_place_for(overrides) is None, overrides


def test_without_a_compiler_batched_gradients_train_and_say_so(monkeypatch, capsys):
    """The C++ trainer cannot be built (no compiler, no ninja): one line says so and batched gradients train."""
    import torch.utils.cpp_extension

    from dlcli.models import word2vec

    def no_compiler(*_a, **_k):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(word2vec, "_KERNEL", None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    assert in_place_for([]) is None
    err = capsys.readouterr().err
    assert "could not be built (RuntimeError: Ninja is required" in err and "batched tensor ops" in err


def test_a_split_subsampling_empties_reports_nan_never_a_best_loss_of_0(dl, tmp_path):
    """Two stop words only: subsampling leaves val/test (nearly) no pair. Their loss is undefined (nan), so it is
    never taken as the best; a train split left with nothing is refused before anything runs."""
    (tmp_path / "stop.txt").write_text("\n".join(["the of the of the of the of the of the of"] * 300) + "\n")
    dl.ok("train", "model=cbow", "dataset=corpus", f"dataset.path={tmp_path / 'stop.txt'}", "dataset.sample=0.01",
          "trainer.epochs=1", *FAST)
    rows = [r for r in read_jsonl(dl.last_run() / "metrics.jsonl") if r["split"] in ("val", "test")]
    assert rows and all(r["loss"] is None or r["loss"] != 0 for r in rows), rows  # nan is written as null
    res = dl("train", "model=cbow", "dataset=corpus", f"dataset.path={tmp_path / 'stop.txt'}",
             "dataset.sample=0.00001", "trainer.epochs=1", *FAST)
    assert res.returncode == 2 and "its train split keeps ~" in res.stderr and "nothing to train on" in res.stderr
