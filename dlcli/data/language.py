"""Language modelling (next token): a generated grammar (offline default), tiny-shakespeare, any UTF-8 text file.

Training draws `block_size` windows at random offsets each epoch (truncated BPTT); val/test are contiguous windows
cut from the end of the text (split by position: no window of val or test text is ever trained on).
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dlcli.base.console import make_console
from dlcli.base.errors import UserError
from dlcli.data.cache import cache_dir
from dlcli.data.download import find_or_download, user_path
from dlcli.data.sequence import TagTask
from dlcli.data.token_stream import TokenIds, ids_of_file, ids_of_text, words
from dlcli.models.decoding import generate

SHAKESPEARE = {"file": "input.txt", "subdirs": ("tinyshakespeare", "shakespeare"),
               "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare",
               "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"}


class LMTask(TagTask):
    """Next-token prediction. Metrics: loss (nats/token), ppl, and bpc (bits per character) at character level."""

    kind = "lm"

    def __init__(self, streams: dict[str, Tensor], block_size: int, meta: dict, loss_cfg: Any):
        self.block_size = block_size
        self.stream = streams["train"]
        splits = {name: windows(s, block_size) for name, s in streams.items()}
        super().__init__(splits, meta, loss_cfg)

    def to(self, device: torch.device) -> LMTask:
        self.stream = self.stream.to(device)
        super().to(device)
        return self

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        if split != "train" or not shuffle:
            yield from super().batches(split, batch_size, shuffle=shuffle, seed=seed)
            return
        gen = torch.Generator(device=self.stream.device)
        gen.manual_seed(seed)
        n = self.size("train")
        starts = torch.randint(0, len(self.stream) - self.block_size, (n,), generator=gen, device=self.stream.device)
        offsets = torch.arange(self.block_size + 1, device=self.stream.device)
        for i in range(0, n, batch_size):
            chunk = self.stream[starts[i:i + batch_size, None] + offsets]
            yield chunk[:, :-1], chunk[:, 1:]

    auto_target = 10_000_000  # tokens: tiny-shakespeare's ~1M get 10 epochs, as its tuned runs take

    def train_units(self) -> tuple[int, str]:
        return self.size("train") * self.block_size, "tokens"

    def summarize(self, stats: dict[str, Tensor]) -> dict[str, float]:
        out = super().summarize(stats)
        out["ppl"] = math.exp(min(out["loss"], 50.0))
        if self.meta.get("level") == "char":
            out["bpc"] = out["loss"] / math.log(2)
        del out["seq_acc"]
        return out

    def final_metrics(self, model: torch.nn.Module) -> dict[str, float]:
        if self.meta.get("validator") == "grammar":
            return grammar_sample_metrics(self, model)
        return {}


class MappedLMTask(LMTask):
    """An LMTask whose token streams stay in the memory-mapped cache file (uint8/16/32): each batch's windows are
    gathered from it and sent to the device as int64. The same windows, in the same order, as LMTask's on the CPU."""

    def __init__(self, streams: dict[str, np.ndarray], block_size: int, meta: dict, loss_cfg: Any):
        TagTask.__init__(self, {}, meta, loss_cfg)
        self.block_size = block_size
        self.streams = streams
        self._device = torch.device("cpu")
        for name in streams:
            self.size(name)  # a split shorter than one window: said now

    def to(self, device: torch.device) -> MappedLMTask:
        self._device = device
        return self

    @property
    def device(self) -> torch.device:
        return self._device

    def size(self, split: str) -> int:
        return len(windows_of(len(self.streams[split]), self.block_size))

    def example_input(self, n: int = 2) -> Tensor:
        return next(self.batches("train", n))[0]

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        stream, block, n = self.streams[split], self.block_size, self.size(split)
        if not shuffle:
            for i in range(0, n, batch_size):  # consecutive windows, as windows() cuts them
                m = min(batch_size, n - i)
                flat = self._ids(stream[i * block:(i + m) * block + 1])
                yield flat[:-1].view(m, block), flat[1:].view(m, block)
            return
        gen = torch.Generator().manual_seed(seed)  # the windows LMTask draws on the CPU, in its order
        if split == "train":  # windows at random offsets
            starts = torch.randint(0, len(stream) - block, (n,), generator=gen)
        else:  # the fixed windows, shuffled
            starts = torch.randperm(n, generator=gen) * block
        offsets = np.arange(block + 1)
        for i in range(0, n, batch_size):
            chunk = self._ids(stream[starts[i:i + batch_size, None].numpy() + offsets])
            yield chunk[:, :-1], chunk[:, 1:]

    def _ids(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.int64)).to(self._device, non_blocking=True)


def windows_of(n_tokens: int, block: int) -> range:
    n = (n_tokens - 1) // block
    if n < 1:
        raise UserError(f"a text split of {n_tokens} tokens is shorter than dataset.block_size={block}; "
                        "use a longer text or a smaller block_size")
    return range(n)


def windows(stream: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping (input, next-token target) windows covering the stream."""
    n = len(windows_of(len(stream), block))
    x = stream[: n * block].view(n, block)
    y = stream[1: n * block + 1].view(n, block)
    return x, y


def tokenize(text: str, level: str) -> list[str]:
    """A text's tokens as training made them (data/token_stream.py), e.g. a prompt's."""
    if level == "char":
        return list(text)
    if level == "word":  # whitespace-separated words; line breaks kept as a token of their own
        return words(text)
    raise UserError(f"dataset.level={level}: choose char or word")


def detokenize(tokens: list[str], level: str) -> str:
    if level == "char":
        return "".join(tokens)
    return " ".join(tokens).replace(" \n ", "\n").replace(" \n", "\n")


def lm_task(text: str, cfg: Any, loss_cfg: Any, extra_meta: dict | None = None,
            vocab: list[str] | None = None) -> LMTask:
    """A text in memory. vocab: a trained model's vocabulary (dl eval on new text); else built from this text."""
    level = _level(cfg)
    tokens = ids_of_text(text, level, int(cfg.get("min_freq", 1)), vocab)
    return _lm_task_from(tokens, cfg, loss_cfg, extra_meta, in_memory=True)


def _lm_task_from(tokens: TokenIds, cfg: Any, loss_cfg: Any, extra_meta: dict | None, in_memory: bool) -> LMTask:
    if tokens.unseen:
        source = f"dataset.path={cfg.path}" if cfg.get("path") not in (None, "???") else f"dataset={cfg.name}"
        raise UserError(f"{source} has {len(tokens.unseen)} token(s) outside the model's training vocabulary "
                        f"({len(tokens.vocab)} tokens): {', '.join(repr(t) for t in tokens.unseen[:10])}; evaluate on "
                        "text made of the same tokens (a model trained with dataset.min_freq=2 maps rare ones to "
                        "<unk>)")
    n = len(tokens.ids)
    val_n = int(n * float(cfg.val_fraction))
    test_n = int(n * float(cfg.test_fraction))
    train_n = n - val_n - test_n
    cuts = {"train": (0, train_n), "val": (train_n, train_n + val_n), "test": (train_n + val_n, n)}
    meta = {"kind": "lm", "vocab": tokens.vocab, "vocab_size": len(tokens.vocab), "level": _level(cfg),
            "unk": tokens.unk, "block_size": int(cfg.block_size), **(extra_meta or {})}
    task = _make_lm_task(tokens, cuts, cfg, meta, loss_cfg, in_memory)
    if tokens.once > 0.5 and len(tokens.vocab) > 1000 and int(cfg.get("min_freq", 1)) == 1:
        task.warnings.append(f"{round(100 * tokens.once)}% of the {len(tokens.vocab):,} distinct {meta['level']} "
                             "tokens occur once: the model sees each of them a single time; try dataset.min_freq=2 "
                             "(rare ones become <unk>) or dataset.level=char")
    return task


def _make_lm_task(tokens: TokenIds, cuts: dict, cfg: Any, meta: dict, loss_cfg: Any, in_memory: bool) -> LMTask:
    if in_memory:
        streams = {k: torch.from_numpy(np.asarray(tokens.ids[a:b], dtype=np.int64)) for k, (a, b) in cuts.items()}
        return LMTask(streams, int(cfg.block_size), meta, loss_cfg)
    return MappedLMTask({k: tokens.ids[a:b] for k, (a, b) in cuts.items()}, int(cfg.block_size), meta, loss_cfg)


def _level(cfg: Any) -> str:
    level = str(cfg.get("level", "char"))
    if level not in ("char", "word"):
        raise UserError(f"dataset.level={level}: choose char or word")
    return level


# ------------------------------------------------------------------------------------------------ generated grammar
NOUNS = {"sg": ["cat", "dog", "bird", "fox", "horse"], "pl": ["cats", "dogs", "birds", "foxes", "horses"]}
VERBS = {"sg": ["sees", "chases", "likes", "hears"], "pl": ["see", "chase", "like", "hear"]}
ADJECTIVES = ["big", "small", "red", "old", "quick"]
DETERMINERS = {"sg": ["the", "a"], "pl": ["the", "some"]}


def _noun_phrase(rng: random.Random, number: str) -> list[str]:
    words = [rng.choice(DETERMINERS[number])]
    if rng.random() < 0.3:
        words.append(rng.choice(ADJECTIVES))
    return words + [rng.choice(NOUNS[number])]


def grammar_sentence(rng: random.Random, relative_p: float) -> str:
    """S -> NP_n [that NP_m V_m] V_n [NP] '.': the verb agrees with its subject across a relative clause."""
    number = rng.choice(["sg", "pl"])
    words = _noun_phrase(rng, number)
    if rng.random() < relative_p:
        inner = rng.choice(["sg", "pl"])
        words += ["that", *_noun_phrase(rng, inner), rng.choice(VERBS[inner])]
    words.append(rng.choice(VERBS[number]))
    if rng.random() < 0.7:
        words += _noun_phrase(rng, rng.choice(["sg", "pl"]))
    return " ".join(words) + " ."


def is_grammatical(sentence: str) -> bool:
    """Parse one line of the grammar above (agreement included)."""
    toks = sentence.split()
    pos = 0

    def noun_phrase() -> str | None:
        nonlocal pos
        if pos >= len(toks):
            return None
        det = toks[pos]
        pos += 1
        if pos < len(toks) and toks[pos] in ADJECTIVES:
            pos += 1
        if pos >= len(toks):
            return None
        noun = toks[pos]
        pos += 1
        for number in ("sg", "pl"):
            if noun in NOUNS[number] and det in DETERMINERS[number]:
                return number
        return None

    def verb(number: str) -> bool:
        nonlocal pos
        ok = pos < len(toks) and toks[pos] in VERBS[number]
        pos += 1
        return ok

    subject = noun_phrase()
    if subject is None:
        return False
    if pos < len(toks) and toks[pos] == "that":
        pos += 1
        inner = noun_phrase()
        if inner is None or not verb(inner):
            return False
    if not verb(subject):
        return False
    if pos < len(toks) and toks[pos] != ".":
        if noun_phrase() is None:
            return False
    return pos == len(toks) - 1 and toks[-1] == "."


def grammar(cfg: Any, loss_cfg: Any, vocab: list[str] | None = None) -> LMTask:
    rng = random.Random(int(cfg.seed))
    n = int(cfg.n_sentences)
    if n < 50:
        raise UserError(f"dataset.n_sentences={n}: use at least 50")
    text = "\n".join(grammar_sentence(rng, float(cfg.relative_p)) for _ in range(n)) + "\n"
    return lm_task(text, cfg, loss_cfg, {"validator": "grammar"}, vocab)


def shakespeare(cfg: Any, loss_cfg: Any, vocab: list[str] | None = None) -> LMTask:
    files = find_or_download("tiny-shakespeare", cfg.root, SHAKESPEARE["subdirs"],
                             {SHAKESPEARE["file"]: SHAKESPEARE["sha256"]}, cfg.get("url") or SHAKESPEARE["url"],
                             bool(cfg.download))
    return lm_task(files[SHAKESPEARE["file"]].read_text(encoding="utf-8"), cfg, loss_cfg, vocab=vocab)


# Ids as int64 tensors in memory up to this many tokens (2 GB); past it, read from the memory-mapped cache file.
IN_MEMORY_TOKENS = 1 << 28


def text_file(cfg: Any, loss_cfg: Any, vocab: list[str] | None = None) -> LMTask:
    """Any UTF-8 text: tokenized once into the token cache (data/token_stream.py); in memory or memory-mapped."""
    if cfg.get("path") in (None, "???"):
        raise UserError("dataset=text needs dataset.path=FILE (any UTF-8 text), e.g. dl train model=lstm "
                        "dataset=text dataset.path=book.txt")
    path = user_path(cfg.path, "dataset.path")
    cache = cache_dir(cfg, "tokens") if cfg.get("cache", True) else None
    say = make_console(stderr=True).print
    tokens = ids_of_file(path, _level(cfg), int(cfg.get("min_freq", 1)), vocab, cache, "dataset.path", say)
    if len(tokens.ids) < 4 * int(cfg.block_size):
        raise UserError(f"dataset.path={cfg.path}: {len(tokens.ids)} tokens is too little text for "
                        f"dataset.block_size={cfg.block_size}")
    choice = cfg.get("in_memory", "auto")
    in_memory = {"auto": len(tokens.ids) <= IN_MEMORY_TOKENS, True: True, False: False}.get(choice)
    if in_memory is None:
        raise UserError(f"dataset.in_memory={cfg.in_memory}: choose auto, true or false")
    task = _lm_task_from(tokens, cfg, loss_cfg, None, in_memory)
    where = f"token cache {tokens.cache}" if tokens.cache else "memory"
    task.loading = (f"{len(tokens.ids):,} {_level(cfg)} tokens ({len(tokens.vocab):,} distinct) "
                    f"{'read from' if tokens.from_cache else 'tokenized into'} {where}; "
                    f"{'batches from memory' if in_memory else 'batches read from the memory-mapped file'}")
    return task


def grammar_validity(texts: list[str]) -> tuple[int, int]:
    """(grammatical, complete) sentences in generated texts; a line is complete once its newline was generated."""
    valid = total = 0
    for text in texts:
        for line in text.split("\n")[:-1]:
            if line.strip():
                total += 1
                valid += is_grammatical(line)
    return valid, total


def grammar_sample_metrics(task: LMTask, model: torch.nn.Module) -> dict[str, float]:
    """Generate 32 x 300 characters after a newline (seeded, temperature 1) and parse every complete sentence."""
    vocab = task.meta["vocab"]
    device = task.device
    prompt = torch.full((32, 1), vocab.index("\n"), device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    out = generate(model, prompt, 300, temperature=1.0, generator=gen)
    texts = ["".join(vocab[i] for i in row.tolist()) for row in out]
    valid, total = grammar_validity(texts)
    return {"valid": valid / total if total else 0.0, "sentences": float(total)}


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"grammar": grammar, "shakespeare": shakespeare, "text": text_file}
