"""word2vec: dlcli (the one training loop) vs gensim on the same corpus, parameters and machine.

Both train on the same tokens: dlcli tokenizes the corpus, builds the vocabulary and the train split, and gensim gets
exactly those sentences (min_count=1, as every word left already passed model.min_count). Words/s = training
words × epochs / training seconds (corpus reading and evaluation excluded, for both). Quality: analogy accuracy
(questions-words.txt) and Spearman rho (wordsim353), both from gensim's test data, measured on both sets of vectors
with the same code (dlcli.data.word_vectors; 3CosAdd over the 300k most frequent words, as gensim does).

    python -m bench.word2vec                              # all of gutenberg, skipgram, 1 epoch, twice each
    python -m bench.word2vec --model cbow --epochs 5
    python -m bench.word2vec --corpus text8               # needs $DL_DATA_DIR/text8/text8 (or downloads it)
    python -m bench word2vec [--quick]                    # in the suite: the first 3M (quick: 1M) words of gutenberg
    python -m bench word2vec --device cuda --quick        # dlcli's batched path on the GPU (fp32), gensim on the CPU
    python -m bench.word2vec --epochs 3 --repeat 3 --pieces-per-thread 1   # the C++ trainer's steps cut as before
                                                          # (one piece per thread, no hand-out), against the default
Needs the bench extra: pip install -e ".[bench]" (gensim).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench import common
from bench.common import Context, Result


def compose(model: str, corpus: str, epochs: int, extra: list[str], device: str = "cpu"):
    data = f"dataset={corpus}" if corpus in ("gutenberg", "text8", "relations") else "dataset=corpus"
    overrides = [f"model={model}", data, f"trainer.epochs={epochs}", f"device={device}", *extra]
    if data == "dataset=corpus":
        overrides.append(f"dataset.path={corpus}")
    return common.compose(overrides)


def sentences_of(task) -> list[list[str]]:
    ids, sent = task.splits["train"]
    vocab = task.meta["vocab"]
    bounds = (torch.nonzero(sent[1:] != sent[:-1]).flatten() + 1).tolist()
    return [[vocab[i] for i in piece.tolist()] for piece in torch.tensor_split(ids, bounds)]


def quality(vectors: torch.Tensor, vocab: list[str], questions, pairs) -> dict:
    from dlcli.data.word_vectors import analogy_accuracy, similarity_spearman, unit_rows

    unit = unit_rows(vectors)
    index = {w: i for i, w in enumerate(vocab)}
    a = analogy_accuracy(unit, index, questions)
    s = similarity_spearman(unit, index, pairs)
    return {"analogy": a["accuracy"], "analogy_answered": a["answered"], "analogy_oov": a["oov"],
            "spearman": s["spearman"], "similarity_pairs": s["pairs"], "similarity_oov": s["oov"]}


def run_dlcli(cfg, task) -> tuple[float, torch.Tensor]:
    """The real pieces of `dl train`: model, optimizer, scheduler and loop.fit (no checkpoints, no evaluation
    beyond the loop's own val loss)."""
    from dlcli.base.console import make_console
    from dlcli.engine.batches import train_batch_size
    from dlcli.engine.in_place import choose_in_place
    from dlcli.engine.logger import MetricsLogger, Reporter
    from dlcli.engine.loop import Training, fit
    from dlcli.engine.optim import build_optimizer, build_scheduler
    from dlcli.engine.runtime import setup
    from dlcli.engine.stopping import LoopState
    from dlcli.models import build_model

    runtime = setup(cfg)
    model = build_model(cfg.model, task.meta).to(runtime.device)
    optimizer = build_optimizer(cfg.optimizer, model, runtime.device)
    # as dl train decides it (on the CPU: the C++ trainer, built or loaded from torch's cache before the clock starts)
    in_place = choose_in_place(task, model, optimizer, cfg.trainer, runtime)
    steps = task.num_batches("train", train_batch_size(cfg.trainer, task, in_place))
    scheduler, interval = build_scheduler(cfg.scheduler, optimizer, steps * int(cfg.trainer.epochs), "min")
    saved = task.questions, task.similarity, task.show
    task.questions, task.similarity, task.show = [], [], False  # evaluation is timed apart
    with tempfile.TemporaryDirectory() as tmp:
        logger = MetricsLogger(Path(tmp))
        common.sync(runtime.device)
        start = time.perf_counter()
        fit(Training(model, task, optimizer, scheduler, interval, runtime, cfg.trainer, logger,
                     Reporter(make_console(), enabled=False), lambda which, state: None, in_place), LoopState())
        common.sync(runtime.device)
        seconds = time.perf_counter() - start
        logger.close()
    task.questions, task.similarity, task.show = saved
    return seconds, model.vectors().cpu().clone()


def run_gensim(cfg, sentences: list[list[str]], vocab: list[str], workers: int,
               seed: int) -> tuple[float, torch.Tensor]:
    from gensim.models import Word2Vec

    m = cfg.model
    w2v = Word2Vec(vector_size=int(m.vector_size), window=int(m.window), min_count=1, negative=int(m.negative),
                   sample=float(m.sample), alpha=float(m.alpha), min_alpha=float(m.min_alpha),
                   sg=int(m.name == "skipgram"), hs=int(m.get("hs", 0)), ns_exponent=float(m.ns_exponent), workers=workers, seed=seed)
    w2v.build_vocab(sentences)
    words = sum(len(s) for s in sentences)
    start = time.perf_counter()
    w2v.train(sentences, total_words=words, epochs=int(cfg.trainer.epochs))
    seconds = time.perf_counter() - start
    kv = w2v.wv
    vectors = torch.stack([torch.from_numpy(kv[w].copy()) for w in vocab])
    return seconds, vectors


def compare(corpus: str, model: str, epochs: int, workers: int, repeat: int, only: str | None = None,
            overrides: list[str] | None = None, device: str = "cpu") -> tuple[list[dict], dict]:
    """gensim and dlcli (on `device`; gensim always on the CPU), alternating, `repeat` times each on the same tokens;
    prints a line per run. Returns (rows, corpus facts)."""
    import gensim

    from dlcli.data import build_task
    from dlcli.data.word_vectors import read_analogies, read_similarity

    test_data = Path(gensim.__file__).parent / "test" / "test_data"
    questions = read_analogies(test_data / "questions-words.txt")
    pairs = read_similarity(test_data / "wordsim353.tsv")
    cfg = compose(model, corpus, epochs, overrides or [], device)
    t = time.perf_counter()
    task = build_task(cfg.dataset, cfg.loss, torch.device("cpu"))
    facts = {"corpus": corpus, "train_words": task.meta["train_words"], "vocab": task.meta["vocab_size"],
             "model": model, "epochs": epochs, "vector_size": int(cfg.model.vector_size),
             "window": int(cfg.model.window), "negative": int(cfg.model.negative), "hs": int(cfg.model.get("hs", 0)), "sample": float(cfg.model.sample),
             "min_count": int(cfg.model.min_count), "device": device,
             "precision": str(cfg.trainer.precision)}
    print(f"corpus {corpus}: {task.meta['train_words']:,} training words, vocabulary "
          f"{task.meta['vocab_size']:,} (read in {time.perf_counter() - t:.1f}s); {model}, "
          f"{epochs} epoch(s), vector_size {cfg.model.vector_size}, window {cfg.model.window}, negative "
          f"{cfg.model.negative}, hs {cfg.model.get('hs', 0)}, sample {cfg.model.sample}, min_count {cfg.model.min_count}")
    sentences = sentences_of(task)
    if device != "cpu":  # dlcli's side trains there (gensim has the sentences already)
        task.to(torch.device(device))
    vocab = task.meta["vocab"]
    words = task.meta["train_words"] * epochs
    rows = []
    for r in range(repeat):
        for tool in ("gensim", "dlcli") if r % 2 == 0 else ("dlcli", "gensim"):
            if only and tool != only:
                continue
            if tool == "dlcli":
                seconds, vectors = run_dlcli(cfg, task)
                threads = torch.get_num_threads() if device == "cpu" else device
            else:
                seconds, vectors = run_gensim(cfg, sentences, vocab, workers, seed=r)
                threads = workers
            row = {"tool": tool, "repeat": r + 1, "threads": threads, "seconds": round(seconds, 2),
                   "words_per_s": round(words / seconds), **quality(vectors, vocab, questions, pairs)}
            rows.append(row)
            print(f"{tool:7s} #{r + 1}  {threads} thread(s)  {seconds:7.1f}s  {row['words_per_s']:>9,} words/s  "
                  f"analogy {row['analogy']:.4f} ({row['analogy_answered']} answered, {row['analogy_oov']} OOV)  "
                  f"spearman {row['spearman']:.4f} ({row['similarity_pairs']} pairs, {row['similarity_oov']} OOV)",
                  flush=True)
    return rows, facts


def corpus_slice(words: int, path: Path) -> Path:
    """The first `words` whitespace-separated words of gutenberg (whole lines), written to `path`."""
    src = common.data_dir() / "gutenberg" / "corpus.txt"
    n = 0
    with open(src, encoding="utf-8") as f, open(path, "w", encoding="utf-8") as out:
        for line in f:
            out.write(line)
            n += len(line.split())
            if n >= words:
                break
    return path


def run(ctx: Context, names: list[str] | None = None) -> list[Result]:
    if importlib.util.find_spec("gensim") is None:
        return [Result(case="word2vec", metric="words/s", dl=None,
                       details={"skipped": "gensim is not installed: pip install -e '.[bench]'"})]
    if not (common.data_dir() / "gutenberg" / "corpus.txt").is_file():
        return [Result(case="word2vec", metric="words/s", dl=None,
                       details={"skipped": f"no gutenberg corpus under {common.data_dir()}"})]
    words = 1_000_000 if ctx.quick else 3_000_000
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = str(corpus_slice(words, Path(tmp) / "gutenberg_slice.txt"))
        for model in names or ["skipgram"]:
            rows, facts = compare(corpus, model, 1, os.cpu_count() or 2, 1 if ctx.quick else 2,
                                  device=ctx.device.type)
            by = {t: [x for x in rows if x["tool"] == t] for t in ("dlcli", "gensim")}
            dl = statistics.median(x["words_per_s"] for x in by["dlcli"])
            gs = statistics.median(x["words_per_s"] for x in by["gensim"])
            mean = {t: {k: statistics.mean(x[k] for x in v) for k in ("analogy", "spearman")} for t, v in by.items()}
            facts["corpus"] = f"gutenberg, first {words / 1e6:g}M words"
            results.append(Result(
                case=f"word2vec/{model}", metric="words/s", dl=dl, baseline=gs,
                baseline_name=f"gensim {by['gensim'][0]['threads']} threads (dl {by['dlcli'][0]['threads']}"
                              + (" threads)" if ctx.device.type == "cpu" else ")"),
                ratio=dl / gs, ratio_name="dl / gensim words/s", goal="report (parity is the aim)",
                details={**facts, "rows": rows,
                         "analogy_dl_minus_gensim": mean["dlcli"]["analogy"] - mean["gensim"]["analogy"],
                         "spearman_dl_minus_gensim": mean["dlcli"]["spearman"] - mean["gensim"]["spearman"]}))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="gutenberg", help="gutenberg, text8 or a text file")
    ap.add_argument("--model", default="skipgram", choices=("skipgram", "cbow"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gensim worker threads")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--only", choices=("dlcli", "gensim"), default=None)
    ap.add_argument("--pieces-per-thread", type=int, default=None,
                    help="the C++ trainer's pieces per thread and step (default: InPlaceTraining.PIECES_PER_WORKER; "
                         "1: one piece per thread, as before they were handed out)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("overrides", nargs="*", help="more dl train overrides, e.g. model.vector_size=200")
    args = ap.parse_args()
    if args.pieces_per_thread is not None:
        from dlcli.models.word2vec import InPlaceTraining

        InPlaceTraining.PIECES_PER_WORKER = args.pieces_per_thread
    rows, _ = compare(args.corpus, args.model, args.epochs, args.workers, args.repeat, args.only, args.overrides)
    by = {tool: [x for x in rows if x["tool"] == tool] for tool in ("dlcli", "gensim")}
    if by["dlcli"] and by["gensim"]:
        mean = {t: {k: sum(x[k] for x in v) / len(v) for k in ("words_per_s", "analogy", "spearman")}
                for t, v in by.items()}
        print(f"dlcli / gensim words/s: {mean['dlcli']['words_per_s'] / mean['gensim']['words_per_s']:.2f}x;  "
              f"analogy {mean['dlcli']['analogy'] - mean['gensim']['analogy']:+.4f};  "
              f"spearman {mean['dlcli']['spearman'] - mean['gensim']['spearman']:+.4f}  (means over repeats)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": common.machine(), "args": vars(args), "rows": rows},
                                              indent=2))


if __name__ == "__main__":
    main()
