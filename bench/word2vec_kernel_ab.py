"""Two builds of word2vec_kernel.cpp side by side: the same chunks of a corpus trained by each, on one thread,
interleaved, CPU seconds per pass and a checksum of the tables (equal checksums: the builds train identically).

    git show REV:dlcli/models/word2vec_kernel.cpp > /tmp/old.cpp
    python -m bench.word2vec_kernel_ab /tmp/old.cpp dlcli/models/word2vec_kernel.cpp --words 6000000
"""

from __future__ import annotations

import argparse
import collections
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench.common import data_dir, median


def corpus_ids(path: Path, words: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids of the first `words` lower-cased words (min_count 5, by frequency), 20-word sentences, and counts."""
    tokens = path.read_text(encoding="utf-8").lower().split()[:words]
    counts = collections.Counter(tokens)
    vocab = [w for w, c in counts.most_common() if c >= 5]
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.tensor([index[w] for w in tokens if w in index])
    return ids, torch.arange(len(ids)) // 20, torch.tensor([counts[w] for w in vocab], dtype=torch.float64)


def one_pass(kernel, ids: torch.Tensor, sent: torch.Tensor, freq: torch.Tensor) -> tuple[float, float]:
    f = freq / freq.sum()
    keep = ((torch.sqrt(f / 1e-3) + 1) * 1e-3 / f).clamp(max=1).float()
    prob, alias = kernel.alias_table(freq.float() ** 0.75)
    torch.manual_seed(0)
    w_in, w_out = (torch.rand(len(freq), 100) - 0.5) / 100, torch.zeros(len(freq), 100)
    none, paths = torch.zeros(0, 100), torch.zeros(0, 0, dtype=torch.long)
    start = time.thread_time()
    for i in range(0, len(ids), 10240):
        kernel.train_chunk(w_in, w_out, none, ids[i:i + 10240], sent[i:i + 10240], keep, prob, alias, paths, paths,
                           5, 5, False, 0.025, i, 1, 512, 1)
    return time.thread_time() - start, float(w_in.double().sum())


def main(argv: list[str] | None = None) -> int:
    from torch.utils.cpp_extension import load  # slow import, only here

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--words", type=int, default=6_000_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--corpus", default=str(data_dir() / "gutenberg" / "corpus.txt"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        kernels = {}
        for name, source in (("a", args.a), ("b", args.b)):
            copy = Path(tmp) / f"w2v_ab_{name}.cpp"
            shutil.copy(source, copy)
            kernels[name] = load(name=f"w2v_ab_{name}_{abs(hash(copy.read_text())) % 10**8}", sources=[str(copy)],
                                 extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"])
    ids, sent, freq = corpus_ids(Path(args.corpus), args.words)
    print(f"{len(ids):,} words, vocabulary {len(freq):,}")
    seconds: dict[str, list[float]] = {"a": [], "b": []}
    for r in range(args.rounds):
        for name in ("a", "b") if r % 2 == 0 else ("b", "a"):
            cpu, checksum = one_pass(kernels[name], ids, sent, freq)
            seconds[name].append(cpu)
            print(f"{name}: {cpu:.2f} s CPU, checksum {checksum:.6f}", flush=True)
    for name, path in (("a", args.a), ("b", args.b)):
        print(f"{name} ({path}): median {median(seconds[name]):.2f} s CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
