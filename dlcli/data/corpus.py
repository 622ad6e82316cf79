"""Word-embedding corpora (kind `embedding`): a generated corpus with planted relations (offline default), text8,
the Project Gutenberg corpus, any text file.

A corpus becomes one stream of word ids (words rarer than min_count removed, as word2vec does) with its sentences;
lines are sentences, cut every 10,000 words as gensim does. Val/test are whole sentences drawn with a seed. Files are
tokenized once into the token cache and read back memory-mapped (corpus_stream.py); a split is held as int64 tensors
when it fits, else read chunk by chunk from the map. On the CPU, word2vec trains in place in C++
(EmbeddingTask.in_place_training): the op draws subsampling, windows and negatives itself. Elsewhere batches are built
with tensor ops (EmbeddingTask.batches): subsampling, dynamic windows and negatives drawn for a whole chunk of the
stream at once, on the task's device.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.base.task import Task
from dlcli.data.cache import cache_dir
from dlcli.data.corpus_stream import (SPLITS, Corpus, Stream, corpus_of, split_tensors, tokens_of_file,
                                      tokens_of_pieces, word_pattern)
from dlcli.data.download import download_zip_member, sha256_of
from dlcli.data.word_vectors import evaluate_embeddings, finish_run, read_analogies, read_similarity
from dlcli.models.vectors_file import save_word2vec
from dlcli.models.word2vec import InPlaceTraining, cpu_kernel

MIN_KEPT_WORDS = 100  # a train split expected to keep fewer words after subsampling has (next to) no pair: refused
# Splits as int64 tensors (ids + sentence ids: 16 bytes a word) up to this many corpus words (1 GB); past it, chunks
# read from the memory-mapped cache (dataset.in_memory=auto)
IN_MEMORY_WORDS = 1 << 26
TEXT8 = {"url": "http://mattmahoney.net/dc/text8.zip", "member": "text8",
         # sha256 of the unzipped 100,000,000-byte file (the archive's bytes are not what we train on)
         "sha256": "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"}


def tokenizer(lowercase: bool, punctuation: str):
    """line -> list of words, as corpora are tokenized (corpus_stream.word_pattern)."""
    pattern = re.compile(word_pattern(punctuation))

    def tokenize(line: str) -> list[str]:
        return pattern.findall(line.lower() if lowercase else line)

    return tokenize


# ---------------------------------------------------------------------------------------------------------- the task
class EmbeddingTask(Task):
    """Word2vec training data. splits[s] = (word ids, sentence ids) as int64 tensors, or (a corpus larger than
    memory) streams[s] read chunk by chunk; batch_size counts corpus words per step.

    A batch (see `batches`) is (centers [n], contexts [n, 2*window] with -1 for none, negatives [G, S]): contexts
    within a randomly shrunk window (word2vec's dynamic window), inside the same sentence, after frequent words were
    dropped at random (subsampling). Negatives are drawn from unigram^0.75, S = model.shared_negatives for each
    group of model.negative_group training rows (skip-gram pairs, cbow centers), enough groups for every row; the
    model shares them within a group (weighted so each pair still counts model.negative of them): one matrix
    product per group instead of k dot products per pair.
    """

    kind = "embedding"
    gradient_of_sum = True  # step()'s gradient is the summed loss's: under DDP ranks' gradients add (distributed.py)

    def __init__(self, splits: dict[str, tuple[Tensor, ...]], meta: dict, cfg: Any, questions: list | None = None,
                 similarity: list | None = None, streams: dict[str, Stream] | None = None):
        super().__init__(splits, meta)
        self.streams = streams or {}
        self._device = torch.device("cpu")  # where chunks of streams go
        counts = torch.tensor(meta["counts"], dtype=torch.float64)
        self.window = int(cfg.window)
        self.negative = int(cfg.negative)
        self.shared = int(cfg.get("shared_negatives", 32))
        self.group = int(cfg.get("negative_group", 384))
        if self.shared < 1 or self.group < 1:
            raise UserError(f"model.shared_negatives={self.shared}, model.negative_group={self.group}: both >= 1")
        if self.window < 1:
            raise UserError(f"model.window={cfg.window}: must be >= 1")
        if self.negative < 0:
            raise UserError(f"model.negative={cfg.negative}: noise words per pair, >= 0 (0: hierarchical softmax only)")
        self.keep_prob = keep_probabilities(counts, float(cfg.sample)).float()
        kept = float((self.keep_prob.double() * counts).sum())  # counts: the train split's
        if kept < MIN_KEPT_WORDS:  # (val/test: an evaluation that scores no pair says nan, never a loss of 0)
            raise UserError(f"dataset={cfg.name}: after subsampling frequent words (dataset.sample={cfg.sample}) its "
                            f"train split keeps ~{kept:.0f} of its {self.size('train')} words: nothing to train "
                            "on; raise dataset.sample (1 keeps every word) or use a longer, more varied corpus")
        exponent = float(cfg.get("ns_exponent", 0.75))
        self.noise_weights = counts.pow(exponent)  # the C++ trainer's alias tables
        self.noise_cdf = noise_cdf(counts, exponent)  # the batched path's draws
        self.questions = questions or []
        self.similarity = similarity or []
        # what eval_metrics will report (so trainer.monitor=val/analogy is refused up front when there is no file)
        self.eval_metric_names = tuple(n for n, have in (("analogy", self.questions), ("analogy_oov", self.questions),
                                                         ("similarity", self.similarity),
                                                         ("similarity_oov", self.similarity)) if have)
        self.probes = [str(w) for w in (cfg.get("probes") or [])]
        self.show = bool(cfg.get("show_neighbours", True))
        self.cpu_threads = int(cfg.get("cpu_threads") or 0)
        self.cpu_batch_size = cfg.get("cpu_batch_size", 10240)
        if isinstance(self.cpu_batch_size, bool) or not isinstance(self.cpu_batch_size, int) or self.cpu_batch_size < 1:
            raise UserError(f"dataset.cpu_batch_size={self.cpu_batch_size}: corpus words per step on the CPU, an "
                            "integer >= 1 (default 10240)")

    def to(self, device: torch.device) -> EmbeddingTask:
        if device.type == "cpu" and self.cpu_threads:
            # dataset.cpu_threads=1 leaves a core to other work; the default (all cores) is faster: on 2 cores,
            # Gutenberg skip-gram 382k vs 285k words/s, cbow 450k vs 405k (docs/performance.md)
            torch.set_num_threads(self.cpu_threads)
        super().to(device)
        self._device = device
        self.keep_prob = self.keep_prob.to(device)
        self.noise_cdf = self.noise_cdf.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self._device if self.streams else super().device

    def size(self, split: str) -> int:
        return len(self.streams[split]) if self.streams else super().size(split)

    def chunk(self, split: str, a: int, b: int) -> tuple[Tensor, Tensor]:
        """Words a..b-1 of a split and their sentence ids, int64 on the task's device (of a stream, only these are
        read and converted)."""
        if self.streams:
            return tuple(t.to(self._device) for t in self.streams[split].chunk(a, b))  # type: ignore[return-value]
        ids, sent = self.splits[split]
        return ids[a:b], sent[a:b]

    def example_input(self, n: int = 2) -> Tensor:
        return self.chunk("train", 0, n)[0]

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[tuple]:
        starts = torch.arange(0, self.size(split), batch_size)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if shuffle else 12345)  # val/test: the same draws every evaluation
        if shuffle:  # chunks in a seeded order (word order inside a chunk is the text's: windows need it)
            starts = starts[torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed))]
        for s in starts.tolist():
            yield self.make_batch(*self.chunk(split, s, s + batch_size), gen)

    def make_batch(self, ids: Tensor, sent: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        keep = torch.rand(len(ids), generator=gen, device=ids.device) < self.keep_prob[ids]
        ids, sent = ids[keep], sent[keep]
        n, w = len(ids), self.window
        # dynamic window: each center looks `reach` in [1, window] words each way (word2vec's b = rand % window)
        reach = torch.randint(1, w + 1, (n, 1), generator=gen, device=ids.device)
        offsets = torch.cat([torch.arange(-w, 0, device=ids.device), torch.arange(1, w + 1, device=ids.device)])
        pos = torch.arange(n, device=ids.device)[:, None] + offsets
        inside = (pos >= 0) & (pos < n)
        pos = pos.clamp(0, max(n - 1, 0))
        valid = inside & (offsets.abs() <= reach) & (sent[pos] == sent[:, None])
        contexts = torch.where(valid, ids[pos], -1)
        groups = max(1, -(-n * 2 * w // self.group))  # enough for every possible row (skip-gram: 2w per center)
        u = torch.rand(groups, self.shared, generator=gen, device=ids.device, dtype=torch.float64)
        negatives = torch.searchsorted(self.noise_cdf, u).clamp_(max=len(self.noise_cdf) - 1)
        return ids, contexts, negatives

    def in_place_training(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                          deterministic: bool) -> InPlaceTraining | None:
        """word2vec's own pair-by-pair SGD in C++ (models/word2vec.py, InPlaceTraining) for a run the engine found
        plain enough (engine/in_place.py), when the model wants it (model.cpu_kernel), its tables are fp32 and the op
        builds."""
        weights = (model.input.weight, model.output.weight)
        if not (getattr(model, "use_cpu_kernel", False) and all(w.dtype == torch.float32 for w in weights)):
            return None
        kernel = cpu_kernel()
        if kernel is None:
            return None
        return InPlaceTraining(model, kernel, self.size("train"), partial(self.chunk, "train"), self.keep_prob,
                               self.noise_weights, self.window, optimizer, deterministic, self.cpu_batch_size)

    def step(self, model: torch.nn.Module, batch: tuple) -> tuple[Tensor, dict[str, Tensor]]:
        loss_sum, pairs = model.loss(*batch)
        pairs_f = pairs.clamp(min=1).to(loss_sum.dtype)
        # The value is the mean loss per pair (readable); the gradient is that of the sum, so that an SGD step of
        # lr alpha moves each pair as much as word2vec's own per-pair update does.
        loss = (loss_sum - loss_sum.detach()) + loss_sum.detach() / pairs_f
        return loss, {"loss_sum": loss_sum.detach(), "pairs": pairs.to(loss_sum.dtype)}

    def summarize(self, stats: dict[str, Tensor]) -> dict[str, float]:
        pairs = float(stats["pairs"])
        # no pair scored (all subsampled away): the loss is undefined, not 0 (a 0 would be taken as the best)
        return {"loss": float(stats["loss_sum"]) / pairs if pairs else float("nan")}

    def eval_metrics(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        return evaluate_embeddings(self, model, show=self.show and split == "val")

    def final_metrics(self, model: torch.nn.Module) -> dict[str, float]:
        return finish_run(self, model)

    def write_outputs(self, model: torch.nn.Module, run_dir: Path) -> list[Path]:
        """Every `dl train` run leaves vectors.txt (word2vec text format) that gensim and other tools load."""
        return [save_word2vec(run_dir / "vectors.txt", self.meta["vocab"], model.vectors())]


def keep_probabilities(counts: Tensor, sample: float) -> Tensor:
    """word2vec's subsampling: keep a word of frequency f with p = (sqrt(f/t) + 1) t/f, t = sample (gensim's
    formula); sample=0 keeps every word."""
    if sample < 0:
        raise UserError(f"model.sample={sample}: a threshold >= 0 (0 = no subsampling; word2vec uses 1e-3..1e-5)")
    if sample == 0:
        return torch.ones_like(counts)
    threshold = sample * counts.sum()
    return ((counts / threshold).sqrt() + 1) * threshold / counts.clamp(min=1)


def noise_cdf(counts: Tensor, exponent: float = 0.75) -> Tensor:
    """Cumulative unigram^0.75 distribution: negatives are searchsorted(cdf, uniform)."""
    p = counts.pow(exponent)
    cdf = torch.cumsum(p / p.sum(), 0)
    cdf[-1] = 1.0
    return cdf


def corpus_task(corpus: Corpus, cfg: Any, name: str, questions: list | None = None, similarity: list | None = None,
                in_memory: bool = True) -> EmbeddingTask:
    """The task of a corpus's view: its splits as int64 tensors (in_memory), else streams read chunk by chunk."""
    if not corpus.corpus_words:
        raise UserError(f"dataset={name}: the corpus has no words")
    vocab = corpus.vocab
    if len(vocab) < 2:
        raise UserError(f"dataset={name}: only {len(vocab)} word(s) occur >= model.min_count={cfg.min_count} times; "
                        "lower model.min_count or use a longer corpus")
    meta = {"kind": "embedding", "vocab": vocab, "vocab_size": len(vocab), "counts": corpus.counts.tolist(),
            "corpus_words": corpus.corpus_words, "train_words": len(corpus.splits["train"][0]),
            "lowercase": bool(cfg.get("lowercase", True))}
    if questions is None and cfg.get("analogies"):
        questions = read_analogies(cfg.analogies, lowercase=meta["lowercase"])
    if similarity is None and cfg.get("similarity"):
        similarity = read_similarity(cfg.similarity, lowercase=meta["lowercase"])
    if in_memory:
        return EmbeddingTask({k: split_tensors(*corpus.splits[k]) for k in SPLITS}, meta, cfg, questions, similarity)
    return EmbeddingTask({}, meta, cfg, questions, similarity, {k: Stream(*corpus.splits[k]) for k in SPLITS})


def _view(cfg: Any) -> tuple[float, float, int, int, int | None]:
    """What a run's view of a corpus depends on beyond its tokens (corpus_stream.corpus_of)."""
    return (float(cfg.val_fraction), float(cfg.test_fraction), int(cfg.get("seed", 0)), int(cfg.min_count),
            cfg.get("max_vocab"))


def lines_task(lines: list[str], cfg: Any, name: str, questions: list | None = None,
               similarity: list | None = None) -> EmbeddingTask:
    """Lines in memory (a generated corpus): tokenized in memory, never cached."""
    tokens = tokens_of_pieces(["\n".join(lines) + "\n"], bool(cfg.get("lowercase", True)),
                              str(cfg.get("punctuation", "split")))
    return corpus_task(corpus_of(tokens, *_view(cfg), None, print), cfg, name, questions, similarity)


def file_task(path: str | Path, cfg: Any, name: str, what: str) -> EmbeddingTask:
    """A corpus file, tokenized once into the token cache (dataset.cache; corpus_stream.py); its splits in memory
    or read from the memory-mapped cache (dataset.in_memory), and one line saying which."""
    choice = cfg.get("in_memory", "auto")
    if choice not in ("auto", True, False):
        raise UserError(f"dataset.in_memory={choice}: choose auto, true or false")
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what}={path}: no such file")
    cache = cache_dir(cfg, "tokens") if cfg.get("cache", True) else None
    say = make_console(stderr=True).print
    tokens = tokens_of_file(p, bool(cfg.get("lowercase", True)), str(cfg.get("punctuation", "split")), cache, what,
                            say)
    corpus = corpus_of(tokens, *_view(cfg), cache, say)
    in_memory = corpus.corpus_words <= IN_MEMORY_WORDS if choice == "auto" else choice
    task = corpus_task(corpus, cfg, name, in_memory=in_memory)
    where = f"token cache {corpus.cache}" if corpus.cache else "memory"
    mapped = bool(task.streams) and corpus.cache is not None
    task.loading = (f"{corpus.corpus_words:,} words ({len(corpus.vocab):,} in the vocabulary) "
                    f"{'read from' if tokens.from_cache else 'tokenized into'} {where}; "
                    f"{'batches read from the memory-mapped file' if mapped else 'batches from memory'}")
    return task


def corpus_file(cfg: Any, loss_cfg: Any, **_: Any) -> EmbeddingTask:
    """Any text file: one sentence or paragraph per line."""
    return file_task(cfg.path, cfg, "corpus", "dataset.path")


def gutenberg(cfg: Any, loss_cfg: Any, **_: Any) -> EmbeddingTask:
    """109 public-domain books (9.4M words), one paragraph per line; only read from <root>/gutenberg/corpus.txt."""
    path = Path(str(cfg.root)).expanduser() / "gutenberg" / "corpus.txt"
    if not path.is_file():
        raise UserError(f"gutenberg: {path} not found; set DL_DATA_DIR or dataset.root to the folder holding "
                        "gutenberg/corpus.txt (or use dataset=corpus dataset.path=FILE)")
    return file_task(path, cfg, "gutenberg", "gutenberg")


def text8(cfg: Any, loss_cfg: Any, **_: Any) -> EmbeddingTask:
    """text8 (Matt Mahoney, first 10^8 bytes of Wikipedia, cleaned): <root>/text8/text8, else downloaded."""
    root = Path(str(cfg.root)).expanduser()
    sha = str(cfg.get("sha256") or TEXT8["sha256"])
    found = next((p for p in (root / "text8" / "text8", root / "text8") if p.is_file()), None)
    if found is not None and sha256_of(found) != sha:
        raise UserError(f"{found} has sha256 {sha256_of(found)[:16]}…, expected {sha[:16]}… (set dataset.sha256 "
                        "if you trust this copy)")
    if found is None:
        if not cfg.download:
            raise UserError(f"text8 not found under {root} (looked for {root / 'text8' / 'text8'}) and "
                            "dataset.download=false")
        found = download_zip_member(str(cfg.get("url") or TEXT8["url"]), TEXT8["member"], root / "text8" / "text8",
                                    sha)
    return file_task(found, cfg, "text8", "text8")


# -------------------------------------------------------------------------------------- generated planted relations
CAPITALS = [("france", "paris", "french"), ("italy", "rome", "italian"), ("germany", "berlin", "german"),
            ("spain", "madrid", "spanish"), ("japan", "tokyo", "japanese"), ("russia", "moscow", "russian"),
            ("greece", "athens", "greek"), ("egypt", "cairo", "egyptian"), ("china", "beijing", "chinese"),
            ("poland", "warsaw", "polish")]
PLURALS = [("cat", "cats", "purr"), ("dog", "dogs", "bark"), ("horse", "horses", "gallop"),
           ("bird", "birds", "fly"), ("cow", "cows", "graze"), ("frog", "frogs", "jump"), ("bee", "bees", "buzz"),
           ("wolf", "wolves", "howl"), ("duck", "ducks", "swim"), ("mouse", "mice", "squeak")]
GENDER = [("king", "queen", "royal"), ("man", "woman", "adult"), ("boy", "girl", "young"),
          ("father", "mother", "parent"), ("brother", "sister", "sibling"), ("son", "daughter", "child"),
          ("uncle", "aunt", "relative"), ("husband", "wife", "married"), ("prince", "princess", "palace"),
          ("actor", "actress", "stage")]
# (section, pairs, templates for the first word, for the second, for both) — {a}/{b} the pair, {t} its own topic word
RELATIONS = [
    ("capital-country", CAPITALS,
     ["{a} is a country", "the country of {a} has many towns", "the nation of {a} has a long border",
      "people across {a} speak {t}", "the {t} government rules {a}"],
     ["{b} is a city", "the city of {b} has busy streets", "the mayor of {b} lives in the city",
      "people in {b} speak {t}", "the {t} government sits in {b}"],
     ["{b} is the capital of {a}", "the capital of {a} is {b}"]),
    ("plural-nouns", PLURALS,
     ["a {a} can {t}", "one {a} is here", "this {a} is small", "every {a} likes to {t}", "the {a} sleeps alone"],
     ["some {b} {t}", "many {b} are here", "these {b} are small", "all {b} like to {t}", "the {b} sleep together"],
     ["one {a} and two {b}", "a {a} among the {b}"]),
    ("gender", GENDER,
     ["the {a} said he was {t}", "he is a {t} {a}", "the {a} and his friend", "mister {a} is {t}",
      "a {a} is a male"],
     ["the {b} said she was {t}", "she is a {t} {b}", "the {b} and her friend", "madam {b} is {t}",
      "a {b} is a female"],
     ["the {a} and the {b}", "a {b} and a {a}"]),
]
FILLER = ["it was a long day", "the weather is nice today", "we went home after the walk",
          "there is a small house near the river", "she read a book in the evening", "they ate bread and cheese"]


def relation_sentences(n: int, seed: int) -> list[str]:
    """n sentences from the templates above (seeded): pair-specific topic words plus role words plant the
    relations word2vec's vector offsets recover (paris - france + italy ≈ rome)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.1:
            out.append(rng.choice(FILLER))
            continue
        _, pairs, first, second, both = rng.choice(RELATIONS)
        a, b, t = rng.choice(pairs)
        r = rng.random()
        template = rng.choice(first if r < 0.42 else second if r < 0.84 else both)
        out.append(template.format(a=a, b=b, t=t))
    return out


def relation_questions() -> list[tuple[str, list[str]]]:
    """Every ordered pair of pairs per relation, in questions-words.txt form: (section, [a, b, c, d])."""
    out = []
    for section, pairs, *_ in RELATIONS:
        for a1, b1, _t in pairs:
            for a2, b2, _t2 in pairs:
                if a1 != a2:
                    out.append((section, [a1, b1, a2, b2]))
    return out


def relation_similarity() -> list[tuple[str, str, float]]:
    """Word pairs scored by the planted structure: partners 9, same role 5, across relations 1."""
    out = []
    for _, pairs, *_ in RELATIONS:
        for i, (a, b, _t) in enumerate(pairs):
            out.append((a, b, 9.0))
            a2, b2, _ = pairs[(i + 1) % len(pairs)]
            out += [(a, a2, 5.0), (b, b2, 5.0)]
    words = [[p[0] for p in pairs] for _, pairs, *_ in RELATIONS]
    for i in range(len(words[0])):
        out.append((words[0][i], words[1][i], 1.0))
        out.append((words[1][i], words[2][i], 1.0))
    return out


def relations(cfg: Any, loss_cfg: Any, **_: Any) -> EmbeddingTask:
    """The offline default: a generated corpus (seeded) with country/capital, singular/plural and male/female pairs."""
    n = int(cfg.sentences)
    if n < 100:
        raise UserError(f"dataset.sentences={n}: generate at least 100 sentences")
    lines = relation_sentences(n, int(cfg.get("seed", 0)))
    return lines_task(lines, cfg, "relations", questions=None if cfg.get("analogies") else relation_questions(),
                       similarity=None if cfg.get("similarity") else relation_similarity())


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"relations": relations, "text8": text8, "gutenberg": gutenberg, "corpus": corpus_file}
