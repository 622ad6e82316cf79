"""Reading a word2vec corpus: words/s of reading + tokenizing + counting, and `dl train` on a corpus of ~1 GB.

    python -m bench.corpus_read                 # gutenberg (52 MB): read + tokenize + count, a regex a line (as dl
                                                #   did before) vs corpus_stream's pieces; + the run's view
    python -m bench.corpus_read --big 20        # + `dl train model=skipgram` on gutenberg x 20 (~1 GB, made in a temp
                                                #   dir, deleted after): peak RSS, seconds to the first training step,
                                                #   first run (tokenizes into the cache) and second (maps the cache)
    python -m bench.corpus_read --path FILE --big 1 --steps 500 dataset.in_memory=false

Words/s are given against wall time and against the process's CPU time (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from array import array
from pathlib import Path

from bench.common import data_dir, dl_command, machine


def per_line(path: Path) -> int:
    """What dl did before corpus_stream: a regex per line, a dict lookup per word in Python, then a bincount."""
    import torch

    from dlcli.data.corpus_stream import word_pattern

    pattern = re.compile(word_pattern("split"))
    index: dict[str, int] = {}
    ids = array("l")
    with open(path, encoding="utf-8") as f:
        for line in f:
            for t in pattern.findall(line.lower()):
                i = index.get(t)
                if i is None:
                    i = index[t] = len(index)
                ids.append(i)
    torch.bincount(torch.frombuffer(ids, dtype=torch.long))
    return len(ids)


def pieces(path: Path) -> int:
    """corpus_stream: whole 8 MB pieces through one regex and a C-level dict lookup a word, then a bincount."""
    import numpy as np

    from dlcli.data.corpus_stream import tokens_of_pieces
    from dlcli.data.token_stream import text_pieces

    tokens = tokens_of_pieces(text_pieces(path, "corpus"), True, "split")
    np.bincount(tokens.ids)
    return len(tokens.ids)


def with_view(path: Path) -> int:
    """pieces, then the run's view as dl train derives it (the train split's counts, the vocabulary with
    min_count 5, the three splits' ids and sentence starts), in memory."""
    from dlcli.data.corpus_stream import corpus_of, tokens_of_pieces
    from dlcli.data.token_stream import text_pieces

    tokens = tokens_of_pieces(text_pieces(path, "corpus"), True, "split")
    corpus_of(tokens, 0.005, 0.005, 0, 5, None, None, print)
    return len(tokens.ids)


def words_per_s(name: str, fn, path: Path, repeat: int) -> dict:
    rows = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        words = fn(path)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append({"words": words, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                     "words_per_s_wall": round(words / wall), "words_per_s_cpu": round(words / cpu)})
        print(f"{name:12s} {words:,} words  {wall:6.2f}s wall {words / wall / 1e6:5.2f}M words/s   {cpu:6.2f}s cpu "
              f"{words / cpu / 1e6:5.2f}M words/s", flush=True)
    return {"how": name, "rows": rows}


def timed_train(args: list[str], env: dict[str, str]) -> dict:
    """`dl train ARGS` in a subprocess: wall, peak RSS (its own rusage) and when its "training:" line came."""
    cmd = dl_command(["train", *args])
    start = time.perf_counter()
    first = None
    lines = []
    proc = subprocess.Popen(cmd, env={**os.environ, "DL_DATA_DIR": str(data_dir()), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if first is None and line.startswith("training:"):  # printed just before the first step
            first = time.perf_counter() - start
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    data = next((x for x in lines if x.startswith("data: ") and "words" in x), "")
    return {"returncode": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 1),
            "to_first_step_s": None if first is None else round(first, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "data_line": data,
            "tail": lines[-3:] if os.waitstatus_to_exitcode(status) else []}


def big_runs(path: Path | None, times: int, steps: int, overrides: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        if path is None or times > 1:
            src = path or data_dir() / "gutenberg" / "corpus.txt"
            path = Path(tmp) / "corpus.txt"
            with open(path, "wb") as out:
                for _ in range(times):
                    out.write(src.read_bytes())
        print(f"{path}: {path.stat().st_size / 1e9:.2f} GB", flush=True)
        args = ["model=skipgram", "dataset=corpus", f"dataset.path={path}", "trainer.epochs=1",
                f"trainer.limit_train_batches={steps}", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                "trainer.summary=false", "trainer.plots=false", "logger.console=true", *overrides]
        env = {"DL_CACHE_DIR": str(Path(tmp) / "cache")}
        rows = []
        for run in ("first", "second"):
            row = {"run": run, **timed_train(args, env)}
            rows.append(row)
            print(f"{run:6s} run: peak RSS {row['peak_rss_mb']:,} MB, first step after {row['to_first_step_s']} s, "
                  f"{row['wall_s']} s in all ({row['cpu_s']} s cpu)  {row['data_line']}", flush=True)
            if row["returncode"]:
                print("\n".join(row["tail"]))
                break
        cache = sum(p.stat().st_size for p in (Path(tmp) / "cache").rglob("*") if p.is_file())
        print(f"token cache: {cache / 1e9:.2f} GB", flush=True)
        rows.append({"cache_bytes": cache})
        return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", type=Path, default=None, help="a text file (default: gutenberg's corpus.txt)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--big", type=int, default=0, help="also time dl train on the text repeated this many times")
    ap.add_argument("--steps", type=int, default=200, help="training steps of each big run")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("overrides", nargs="*", help="more dl train overrides for the big runs")
    args = ap.parse_args()
    path = args.path or data_dir() / "gutenberg" / "corpus.txt"
    print(f"{path}: {path.stat().st_size / 1e6:.0f} MB", flush=True)
    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
              "tokenize": [words_per_s("per line", per_line, path, args.repeat),
                           words_per_s("pieces", pieces, path, args.repeat),
                           words_per_s("pieces+view", with_view, path, args.repeat)]}
    if args.big:
        result["big"] = big_runs(args.path, args.big, args.steps, args.overrides)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
