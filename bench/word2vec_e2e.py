"""word2vec end to end: the whole `dl train model=skipgram dataset=corpus dataset.path=PATH ...` command a user types
(start-up, reading, tokenizing, vocabulary, the epochs, evaluation, vectors.txt) against gensim's whole
`Word2Vec(LineSentence(path), ...)` + `save_word2vec_format`, each in a fresh Python process, with the same parameters
on the same lower-cased text, interleaved, the C++ op already built (a warm-up dl run builds it first).

Each dl run gets an empty token cache (dataset.cache_dir in a temp dir): it reads and tokenizes as a first run does
(`--cached` keeps one cache: the second-run case). Reported: wall seconds of each command, their ratio (gensim / dl:
> 1 means dl is faster), and the epoch times of both (dl: the epoch lines' times; gensim: its EPOCH log lines).

    python -m bench.word2vec_e2e                       # the shared Gutenberg corpus, 3 epochs, 3 rounds
    python -m bench.word2vec_e2e --rounds 1 --epochs 1 --path other.txt
Needs the bench extra (gensim).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import data_dir, machine, median, run_cli

PARAMS = {"vector_size": 100, "window": 5, "negative": 5, "min_count": 5, "sample": 1e-3}

GENSIM = """
import logging, re, sys, time
from gensim.models import Word2Vec
from gensim.models.word2vec import LineSentence
epochs = []
class Epochs(logging.Handler):
    def emit(self, record):
        m = re.search(r"EPOCH \\d+: training on .* took ([0-9.]+)s", record.getMessage())
        if m:
            epochs.append(float(m.group(1)))
logging.getLogger("gensim").addHandler(Epochs())
logging.getLogger("gensim").setLevel(logging.INFO)
path, out, n_epochs, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = Word2Vec(LineSentence(path), sg=1, epochs=n_epochs, workers=workers, {params})
model.wv.save_word2vec_format(out)
print("EPOCHS", epochs, "VOCAB", len(model.wv))
"""


def lowercased(path: Path, folder: Path) -> Path:
    """The text as both read it: lower-cased once here (dl lower-cases by default; LineSentence does not)."""
    out = folder / "corpus.lower.txt"
    with open(path, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            dst.write(line.lower())
    return out


def run_dl(path: Path, epochs: int, workdir: Path, cache: Path) -> dict:
    res = run_cli(["train", "model=skipgram", "dataset=corpus", f"dataset.path={path}", f"trainer.epochs={epochs}",
                   f"dataset.cache_dir={cache}", "trainer.summary=false",
                   *[f"model.{k}={v}" for k, v in PARAMS.items()]], cwd=workdir, env={"CI": "true"})
    if res.returncode != 0:
        raise SystemExit(f"dl train failed ({res.returncode}): {res.stdout[-2000:]}")
    seconds = [float(m) for m in re.findall(r"^epoch \d+/\d+ .*?([0-9.]+)s(?:\s|$)", res.stdout, re.M)]
    return {"wall_s": round(res.seconds, 2), "epoch_s": seconds}


def run_gensim(path: Path, epochs: int, workdir: Path, workers: int) -> dict:
    code = GENSIM.replace("{params}", ", ".join(f"{k}={v!r}" for k, v in PARAMS.items()))
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, str(path), str(workdir / "gensim.txt"), str(epochs),
                          str(workers)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"gensim failed: {res.stderr[-2000:]}")
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("EPOCHS"))
    return {"wall_s": round(wall, 2), "epoch_s": json.loads(line.split("EPOCHS", 1)[1].split("VOCAB")[0])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", default=str(data_dir() / "gutenberg" / "corpus.txt"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gensim worker threads")
    ap.add_argument("--cached", action="store_true", help="dl keeps its token cache between rounds")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        text = lowercased(Path(args.path), folder)
        run_dl(text, 1, folder, folder / "warmup-cache")  # builds the C++ op (cached by torch afterwards)
        rounds = []
        for i in range(args.rounds):
            cache = folder / ("cache" if args.cached else f"cache{i}")
            dl, gs = run_dl(text, args.epochs, folder, cache), run_gensim(text, args.epochs, folder, args.workers)
            rounds.append({"dl": dl, "gensim": gs, "ratio": round(gs["wall_s"] / dl["wall_s"], 3)})
            print(f"round {i + 1}: dl {dl['wall_s']:.1f} s (epochs {dl['epoch_s']}), gensim {gs['wall_s']:.1f} s "
                  f"(epochs {gs['epoch_s']}): gensim / dl = {rounds[-1]['ratio']:.2f}", flush=True)
    result = {"path": args.path, "epochs": args.epochs, "params": PARAMS, "cached": args.cached,
              "rounds": rounds, "median_ratio": median([r["ratio"] for r in rounds]),
              "machine": machine()}
    print(json.dumps({k: result[k] for k in ("median_ratio", "cached", "epochs")}))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
