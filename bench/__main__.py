"""python -m bench [names...] [--device cpu|cuda] [--quick]: run the benchmark cases side by side, print a table,
write bench/results/<date>_<device>.json.

Names: a case (startup, loop, data, recurrent, transformer, mnist, word2vec) or one part of it (loop/mlp,
loop/cnn, recurrent/gru, transformer/throughput, word2vec/cbow ...). No names: every case.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from bench.common import REPO, Context, Result, machine

# case -> module; in the order they run (the quick start-up timings first, before anything warms the caches)
CASES = {"startup": "bench.startup", "loop": "bench.loop", "data": "bench.data_path", "recurrent": "bench.recurrent",
         "transformer": "bench.transformer", "mnist": "bench.mnist", "word2vec": "bench.word2vec"}


def parse_names(names: list[str]) -> dict[str, list[str] | None]:
    """['loop/mlp', 'loop/cnn', 'data'] -> {'loop': ['mlp', 'cnn'], 'data': None} (None: all its parts)."""
    chosen: dict[str, list[str] | None] = {}
    for name in names or list(CASES):
        case, _, part = name.partition("/")
        if case not in CASES:
            sys.exit(f"error: unknown case {name!r}; choose from: {', '.join(CASES)} (or case/part, e.g. loop/mlp)")
        if not part:
            chosen[case] = None
        elif chosen.get(case, []) is not None:
            chosen[case] = [*chosen.get(case, []), part]
    return {c: chosen[c] for c in CASES if c in chosen}


def fmt(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def line(r: Result) -> str:
    """One result as it arrives (the table comes at the end)."""
    if r.details.get("skipped"):
        return f"  {r.case}: skipped: {r.details['skipped']}"
    text = f"  {r.case}: {fmt(r.dl)} {r.metric}"
    if r.baseline is not None:
        text += f" vs {fmt(r.baseline)} ({r.baseline_name})"
    if r.ratio is not None:
        text += f"; {r.ratio_name} {r.ratio:.3f}"
        if r.details.get("ratio_cpu") is not None:
            text += f" (by CPU time {r.details['ratio_cpu']:.3f})"
    if r.goal:
        text += f"; goal {r.goal}: {'met' if r.met else 'NOT met' if r.met is False else '-'}"
    return text


def table(results: list[Result], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col, justify in (("case", "left"), ("metric", "left"), ("dl", "right"), ("baseline", "right"),
                         ("ratio", "right"), ("goal", "left"), ("", "left")):
        t.add_column(col, justify=justify)
    for r in results:
        skipped = r.details.get("skipped")
        base = f"{fmt(r.baseline)} ({r.baseline_name})" if r.baseline is not None else ""
        ratio = f"{r.ratio:.3f} {r.ratio_name}" if r.ratio is not None else ""
        if r.details.get("ratio_cpu") is not None:
            ratio += f" (CPU time: {r.details['ratio_cpu']:.3f})"
        mark = {True: "[green]met[/]", False: "[red]NOT met[/]", None: ""}[r.met]
        t.add_row(r.case, r.metric, fmt(r.dl) if not skipped else f"skipped: {skipped}", base, ratio, r.goal, mark)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="cases to run (default: all)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="smaller shapes and fewer repetitions")
    ap.add_argument("--repeat", type=int, default=7, help="timed rounds per case (interleaved; --quick: at most 3)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the transformer (both sides)")
    ap.add_argument("--note", default="", help="stored with the results, e.g. 'busy machine'")
    ap.add_argument("--out", help="JSON path (default bench/results/<date>_<device>.json; '-' for none)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: CUDA is not available on this machine")
    chosen = parse_names(args.names)
    ctx = Context(torch.device(args.device), quick=args.quick, repeat=args.repeat, compile=args.compile)
    console = Console(width=None if Console().is_terminal else 160)  # a log file keeps whole rows
    info = machine()
    console.print(f"[bold]dl benchmarks[/] on {args.device} ({info.get('gpu') or info['cpu']}, {info['cpus']} CPUs, "
                  f"{info['threads']} torch threads, torch {info['torch']}){' --quick' if args.quick else ''}")
    results: list[Result] = []
    timings: dict[str, float] = {}
    start = time.perf_counter()
    for case, parts in chosen.items():
        t = time.perf_counter()
        console.print(f"[dim]{case} ...[/]")
        for r in importlib.import_module(CASES[case]).run(ctx, parts):
            results.append(r)
            console.print(line(r), highlight=False)
        timings[case] = round(time.perf_counter() - t, 1)
    total = time.perf_counter() - start
    console.print(table(results, f"dl vs baselines on {args.device} ({total:.0f} s)"))
    if args.out != "-":
        default = REPO / "bench" / "results" / f"{time.strftime('%Y-%m-%d')}_{args.device}.json"
        out = Path(args.out) if args.out else default
        out.parent.mkdir(parents=True, exist_ok=True)
        command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
        out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command.strip(),
                                   "device": args.device, "quick": args.quick, "note": args.note, "machine": info,
                                   "seconds": round(total, 1), "case_seconds": timings,
                                   "results": [dataclasses.asdict(r) for r in results]}, indent=2, default=str))
        console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
