"""word2vec: dlcli (the one training loop) vs gensim on the same corpus, parameters and machine.

Both train on the same tokens: dlcli tokenizes the corpus, builds the vocabulary and the train split, and gensim gets
exactly those sentences (min_count=1, as every word left already passed model.min_count). Words/s = training
words × epochs / training seconds (corpus reading and evaluation excluded, for both). Quality: analogy accuracy
(questions-words.txt) and Spearman rho (wordsim353), both from gensim's test data, measured on both sets of vectors
with the same code (dlcli.embeddings; 3CosAdd over the 300k most frequent words, as gensim does).

    python bench/word2vec.py                              # gutenberg, skipgram, 1 epoch, twice each
    python bench/word2vec.py --model cbow --epochs 5
    python bench/word2vec.py --corpus text8               # needs $DL_DATA_DIR/text8/text8 (or downloads it)
Needs the bench extra: pip install -e ".[bench]" (gensim).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def compose(model: str, corpus: str, epochs: int, extra: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    data = f"dataset={corpus}" if corpus in ("gutenberg", "text8", "relations") else "dataset=corpus"
    overrides = [f"model={model}", data, f"trainer.epochs={epochs}", "device=cpu", *extra]
    if data == "dataset=corpus":
        overrides.append(f"dataset.path={corpus}")
    with initialize_config_module("dlcli.conf", version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def sentences_of(task) -> list[list[str]]:
    ids, sent = task.splits["train"]
    vocab = task.meta["vocab"]
    bounds = (torch.nonzero(sent[1:] != sent[:-1]).flatten() + 1).tolist()
    return [[vocab[i] for i in piece.tolist()] for piece in torch.tensor_split(ids, bounds)]


def quality(vectors: torch.Tensor, vocab: list[str], questions, pairs) -> dict:
    from dlcli.embeddings import analogy_accuracy, similarity_spearman, unit_rows

    unit = unit_rows(vectors)
    index = {w: i for i, w in enumerate(vocab)}
    a = analogy_accuracy(unit, index, questions)
    s = similarity_spearman(unit, index, pairs)
    return {"analogy": a["accuracy"], "analogy_answered": a["answered"], "analogy_oov": a["oov"],
            "spearman": s["spearman"], "similarity_pairs": s["pairs"], "similarity_oov": s["oov"]}


def run_dlcli(cfg, task) -> tuple[float, torch.Tensor]:
    """The real pieces of `dl train`: model, optimizer, scheduler and loop.fit (no checkpoints, no evaluation
    beyond the loop's own val loss)."""
    from dlcli.loop import LoopState, fit, resolve_batch_size
    from dlcli.metrics import MetricsLogger, Reporter, make_console
    from dlcli.models import build_model
    from dlcli.optim import build_optimizer, build_scheduler
    from dlcli.runtime import setup

    runtime = setup(cfg)
    model = build_model(cfg.model, task.meta)
    optimizer = build_optimizer(cfg.optimizer, model, runtime.device)
    steps = task.num_batches("train", resolve_batch_size(cfg.trainer.batch_size, task.size("train")))
    scheduler, interval = build_scheduler(cfg.scheduler, optimizer, steps * int(cfg.trainer.epochs), "min")
    saved = task.questions, task.similarity, task.show
    task.questions, task.similarity, task.show = [], [], False  # evaluation is timed apart
    with tempfile.TemporaryDirectory() as tmp:
        logger = MetricsLogger(Path(tmp))
        start = time.perf_counter()
        fit(model, task, optimizer, scheduler, interval, runtime, cfg.trainer, logger,
            Reporter(make_console(), enabled=False), lambda which, state: None, LoopState())
        seconds = time.perf_counter() - start
        logger.close()
    task.questions, task.similarity, task.show = saved
    return seconds, model.vectors().clone()


def run_gensim(cfg, sentences: list[list[str]], vocab: list[str], workers: int, seed: int) -> tuple[float, torch.Tensor]:
    from gensim.models import Word2Vec

    m = cfg.model
    w2v = Word2Vec(vector_size=int(m.vector_size), window=int(m.window), min_count=1, negative=int(m.negative),
                   sample=float(m.sample), alpha=float(m.alpha), min_alpha=float(m.min_alpha),
                   sg=int(m.name == "skipgram"), hs=0, ns_exponent=float(m.ns_exponent), workers=workers, seed=seed)
    w2v.build_vocab(sentences)
    words = sum(len(s) for s in sentences)
    start = time.perf_counter()
    w2v.train(sentences, total_words=words, epochs=int(cfg.trainer.epochs))
    seconds = time.perf_counter() - start
    kv = w2v.wv
    vectors = torch.stack([torch.from_numpy(kv[w].copy()) for w in vocab])
    return seconds, vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="gutenberg", help="gutenberg, text8 or a text file")
    ap.add_argument("--model", default="skipgram", choices=("skipgram", "cbow"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gensim worker threads")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--only", choices=("dlcli", "gensim"), default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("overrides", nargs="*", help="more dl train overrides, e.g. model.vector_size=200")
    args = ap.parse_args()
    os.environ.setdefault("DL_DATA_DIR", str(REPO.parent / "shared" / "data"))
    import gensim

    from dlcli.data import build_task
    from dlcli.embeddings import read_analogies, read_similarity

    test_data = Path(gensim.__file__).parent / "test" / "test_data"
    questions = read_analogies(test_data / "questions-words.txt")
    pairs = read_similarity(test_data / "wordsim353.tsv")
    cfg = compose(args.model, args.corpus, args.epochs, args.overrides)
    t = time.perf_counter()
    task = build_task(cfg.dataset, cfg.loss, torch.device("cpu"))
    print(f"corpus {args.corpus}: {task.meta['train_words']:,} training words, vocabulary "
          f"{task.meta['vocab_size']:,} (read in {time.perf_counter() - t:.1f}s); {args.model}, "
          f"{args.epochs} epoch(s), vector_size {cfg.model.vector_size}, window {cfg.model.window}, negative "
          f"{cfg.model.negative}, sample {cfg.model.sample}, min_count {cfg.model.min_count}")
    sentences = sentences_of(task)
    vocab = task.meta["vocab"]
    words = task.meta["train_words"] * args.epochs
    rows = []
    for r in range(args.repeat):
        for tool in ("gensim", "dlcli"):
            if args.only and tool != args.only:
                continue
            if tool == "dlcli":
                seconds, vectors = run_dlcli(cfg, task)
                threads = torch.get_num_threads()
            else:
                seconds, vectors = run_gensim(cfg, sentences, vocab, args.workers, seed=r)
                threads = args.workers
            row = {"tool": tool, "repeat": r + 1, "threads": threads, "seconds": round(seconds, 2),
                   "words_per_s": round(words / seconds), **quality(vectors, vocab, questions, pairs)}
            rows.append(row)
            print(f"{tool:7s} #{r + 1}  {threads} thread(s)  {seconds:7.1f}s  {row['words_per_s']:>9,} words/s  "
                  f"analogy {row['analogy']:.4f} ({row['analogy_answered']} answered, {row['analogy_oov']} OOV)  "
                  f"spearman {row['spearman']:.4f} ({row['similarity_pairs']} pairs, {row['similarity_oov']} OOV)",
                  flush=True)
    by = {tool: [x for x in rows if x["tool"] == tool] for tool in ("dlcli", "gensim")}
    if by["dlcli"] and by["gensim"]:
        mean = {t: {k: sum(x[k] for x in v) / len(v) for k in ("words_per_s", "analogy", "spearman")}
                for t, v in by.items()}
        print(f"dlcli / gensim words/s: {mean['dlcli']['words_per_s'] / mean['gensim']['words_per_s']:.2f}x;  "
              f"analogy {mean['dlcli']['analogy'] - mean['gensim']['analogy']:+.4f};  "
              f"spearman {mean['dlcli']['spearman'] - mean['gensim']['spearman']:+.4f}  (means over repeats)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                               "cpus": os.cpu_count(), "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
