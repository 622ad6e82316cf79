"""Start-up: wall time of `dl --help` (goal <= 0.3 s: it imports no torch) and `dl train --help` (composes the
config), and the peak RSS and wall time of the default `dl train` (MLP on spirals, plots included).

    python -m bench startup            (in the suite)
    python -m bench.startup [--repeat N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.common import Context, Result, machine, run_cli

HELP_GOAL_S = 0.3


def help_times(args: list[str], repeat: int) -> list[float]:
    run_cli(args)  # warm the file cache once
    return [run_cli(args).seconds for _ in range(repeat)]


def run(ctx: Context, names: list[str] | None = None) -> list[Result]:
    repeat = 5 if ctx.quick else 10
    results = []
    for args, goal in ((["--help"], HELP_GOAL_S), (["train", "--help"], None)):
        times = help_times(args, repeat)
        med = statistics.median(times)
        results.append(Result(case=f"startup/dl {' '.join(args)}", metric="s wall", dl=med,
                              goal=f"<= {goal} s" if goal else "", met=med <= goal if goal else None,
                              details={"times_s": times, "min_s": min(times)}))
    with tempfile.TemporaryDirectory() as tmp:
        r = run_cli(["train"], cwd=Path(tmp), env={"CUDA_VISIBLE_DEVICES": ""} if ctx.device.type == "cpu" else None)
    if r.returncode != 0:
        raise RuntimeError(f"dl train failed ({r.returncode}):\n{r.stdout[-3000:]}")
    results.append(Result(case="startup/dl train (default run)", metric="MB peak RSS", dl=r.peak_rss_mb,
                          details={"wall_s": r.seconds, "cpu_s": r.cpu_seconds}))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = {}
    for extra in (["--help"], ["train", "--help"]):
        times = help_times(extra, args.repeat)
        results["dl " + " ".join(extra)] = {"median_s": round(statistics.median(times), 4),
                                            "min_s": round(min(times), 4), "repeat": args.repeat}
    for name, r in results.items():
        print(f"{name:<18} median {r['median_s']:.3f}s  min {r['min_s']:.3f}s")
    met = results["dl --help"]["median_s"] <= HELP_GOAL_S
    print(f"goal dl --help <= {HELP_GOAL_S} s: {'met' if met else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
