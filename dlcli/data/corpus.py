"""Word-embedding corpora (kind `embedding`): a generated corpus with planted relations (offline default), text8,
the Project Gutenberg corpus, any text file.

A corpus becomes one stream of word ids (words rarer than min_count removed, as word2vec does) plus a sentence id
per token; lines are sentences, cut every 10,000 words as gensim does. Val/test are whole sentences drawn with a seed.
On the CPU, word2vec trains in place in C++ (EmbeddingTask.in_place_training): the op draws subsampling, windows
and negatives itself. Elsewhere batches are built with tensor ops (EmbeddingTask.batches): subsampling, dynamic
windows and negatives drawn for a whole chunk of the stream at once, on the task's device.
"""

from __future__ import annotations

import random
import re
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dlcli.base.errors import UserError
from dlcli.base.task import Task
from dlcli.data.download import download_zip_member, sha256_of
from dlcli.data.word_vectors import evaluate_embeddings, finish_run, read_analogies, read_similarity, save_word2vec
from dlcli.models.word2vec import InPlaceTraining, cpu_kernel

MIN_KEPT_WORDS = 100  # a train split expected to keep fewer words after subsampling has (next to) no pair: refused
MAX_SENTENCE = 10_000  # gensim truncates longer sentences; we cut them into pieces of this size
TEXT8 = {"url": "http://mattmahoney.net/dc/text8.zip", "member": "text8",
         # sha256 of the unzipped 100,000,000-byte file (the archive's bytes are not what we train on)
         "sha256": "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"}
PUNCTUATION = ("split", "drop", "keep")


# ------------------------------------------------------------------------------------------------------ tokenizing
def tokenizer(lowercase: bool, punctuation: str):
    """line -> list of words. split: punctuation marks become tokens of their own; drop: removed; keep: split on
    whitespace only. Underscores (Gutenberg's _italics_) never count as letters."""
    if punctuation not in PUNCTUATION:
        raise UserError(f"dataset.punctuation={punctuation}: choose one of: {', '.join(PUNCTUATION)}")
    word = r"[^\W_]+(?:['’][^\W_]+)*"
    pattern = re.compile({"split": word + r"|[^\w\s]", "drop": word, "keep": r"\S+"}[punctuation])

    def tokenize(line: str) -> list[str]:
        return pattern.findall(line.lower() if lowercase else line)

    return tokenize


def encode_lines(lines: Iterable[str], tokenize) -> tuple[list[str], Tensor, Tensor]:
    """One pass: (words in first-seen order, stream of their ids, sentence id per token)."""
    index: dict[str, int] = {}
    ids = array("l")
    lengths = array("l")
    for line in lines:
        tokens = tokenize(line)
        if not tokens:
            continue
        get = index.get
        for t in tokens:
            i = get(t)
            if i is None:
                i = index[t] = len(index)
            ids.append(i)
        lengths.append(len(tokens))
    stream = torch.frombuffer(ids, dtype=torch.long).clone() if ids else torch.zeros(0, dtype=torch.long)
    lens = torch.frombuffer(lengths, dtype=torch.long).clone() if lengths else torch.zeros(0, dtype=torch.long)
    # sentence = a line, cut every MAX_SENTENCE tokens (text8 is one line of 17M words)
    line_id = torch.repeat_interleave(torch.arange(len(lens)), lens)
    starts = torch.cumsum(lens, 0) - lens
    pos = torch.arange(len(stream)) - starts[line_id]
    chunk = pos // MAX_SENTENCE
    pieces = (lens + MAX_SENTENCE - 1) // MAX_SENTENCE
    first_piece = torch.cumsum(pieces, 0) - pieces
    return list(index), stream, first_piece[line_id] + chunk


def build_vocab(words: list[str], stream: Tensor, min_count: int, max_vocab: int | None) -> tuple[list[str], Tensor,
                                                                                                   Tensor]:
    """Keep words seen >= min_count times (the max_vocab most frequent), sorted by count as gensim does (ties in
    first-seen order). Returns (vocab, counts, old id -> new id or -1)."""
    counts = torch.bincount(stream, minlength=len(words))
    order = sorted(range(len(words)), key=lambda i: -int(counts[i]))  # stable: ties keep first-seen order
    keep = [i for i in order if counts[i] >= min_count][: max_vocab or None]
    remap = torch.full((len(words),), -1, dtype=torch.long)
    remap[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
    return [words[i] for i in keep], counts[keep] if keep else counts[:0], remap


def split_sentences(sent: Tensor, val_fraction: float, test_fraction: float, seed: int) -> Tensor:
    """0/1/2 (train/val/test) per sentence: whole sentences drawn with a seed, at least one each when possible."""
    n = int(sent.max()) + 1 if len(sent) else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction)) if n >= 3 else 0
    n_test = max(1, round(n * test_fraction)) if n >= 3 else 0
    which = torch.zeros(n, dtype=torch.long)
    which[perm[:n_val]] = 1
    which[perm[n_val:n_val + n_test]] = 2
    return which


# ---------------------------------------------------------------------------------------------------------- the task
class EmbeddingTask(Task):
    """Word2vec training data. splits[s] = (word ids, sentence ids); batch_size counts corpus words per step.

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
                 similarity: list | None = None):
        super().__init__(splits, meta)
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
        kept = float(self.keep_prob[splits["train"][0]].sum())
        if kept < MIN_KEPT_WORDS:  # (val/test: an evaluation that scores no pair says nan, never a loss of 0)
            raise UserError(f"dataset={cfg.name}: after subsampling frequent words (dataset.sample={cfg.sample}) its "
                            f"train split keeps ~{kept:.0f} of its {len(splits['train'][0])} words: nothing to train "
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
        self.keep_prob = self.keep_prob.to(device)
        self.noise_cdf = self.noise_cdf.to(device)
        return self

    def example_input(self, n: int = 2) -> Tensor:
        return self.splits["train"][0][:n]

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[tuple]:
        ids, sent = self.splits[split]
        n = len(ids)
        starts = torch.arange(0, n, batch_size)
        gen = torch.Generator(device=ids.device)
        gen.manual_seed(seed if shuffle else 12345)  # val/test: the same draws every evaluation
        if shuffle:  # chunks in a seeded order (word order inside a chunk is the text's: windows need it)
            starts = starts[torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed))]
        for s in starts.tolist():
            yield self.make_batch(ids[s:s + batch_size], sent[s:s + batch_size], gen)

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
        return InPlaceTraining(model, kernel, self.splits["train"], self.keep_prob, self.noise_weights, self.window,
                               optimizer, deterministic, self.cpu_batch_size)

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


def corpus_task(lines: Iterable[str], cfg: Any, name: str, questions: list | None = None,
                similarity: list | None = None) -> EmbeddingTask:
    tokenize = tokenizer(bool(cfg.get("lowercase", True)), str(cfg.get("punctuation", "split")))
    words, stream, sent = encode_lines(lines, tokenize)
    if not len(stream):
        raise UserError(f"dataset={name}: the corpus has no words")
    which = split_sentences(sent, float(cfg.val_fraction), float(cfg.test_fraction), int(cfg.get("seed", 0)))[sent]
    train_ids = stream[which == 0]
    vocab, counts, remap = build_vocab(words, train_ids, int(cfg.min_count), cfg.get("max_vocab"))
    if len(vocab) < 2:
        raise UserError(f"dataset={name}: only {len(vocab)} word(s) occur >= model.min_count={cfg.min_count} times; "
                        "lower model.min_count or use a longer corpus")
    new = remap[stream]
    splits = {}
    for k, split in enumerate(("train", "val", "test")):
        m = (which == k) & (new >= 0)
        splits[split] = (new[m], sent[m])
    meta = {"kind": "embedding", "vocab": vocab, "vocab_size": len(vocab), "counts": counts.tolist(),
            "corpus_words": int(len(stream)), "train_words": int(len(splits["train"][0])),
            "lowercase": bool(cfg.get("lowercase", True))}
    if questions is None and cfg.get("analogies"):
        questions = read_analogies(cfg.analogies, lowercase=meta["lowercase"])
    if similarity is None and cfg.get("similarity"):
        similarity = read_similarity(cfg.similarity, lowercase=meta["lowercase"])
    return EmbeddingTask(splits, meta, cfg, questions, similarity)


# ------------------------------------------------------------------------------------------------------- datasets
def read_lines(path: str | Path, what: str) -> Iterator[str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what}={path}: no such file")
    try:
        with open(p, encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise UserError(f"{what}={path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def corpus_file(cfg: Any, loss_cfg: Any, **_: Any) -> EmbeddingTask:
    """Any text file: one sentence or paragraph per line."""
    return corpus_task(read_lines(cfg.path, "dataset.path"), cfg, "corpus")


def gutenberg(cfg: Any, loss_cfg: Any, **_: Any) -> EmbeddingTask:
    """109 public-domain books (9.4M words), one paragraph per line; only read from <root>/gutenberg/corpus.txt."""
    path = Path(str(cfg.root)).expanduser() / "gutenberg" / "corpus.txt"
    if not path.is_file():
        raise UserError(f"gutenberg: {path} not found; set DL_DATA_DIR or dataset.root to the folder holding "
                        "gutenberg/corpus.txt (or use dataset=corpus dataset.path=FILE)")
    return corpus_task(read_lines(path, "gutenberg"), cfg, "gutenberg")


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
    return corpus_task(read_lines(found, "text8"), cfg, "text8")


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
    return corpus_task(lines, cfg, "relations", questions=None if cfg.get("analogies") else relation_questions(),
                       similarity=None if cfg.get("similarity") else relation_similarity())


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"relations": relations, "text8": text8, "gutenberg": gutenberg, "corpus": corpus_file}
