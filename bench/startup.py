"""Start-up time of the CLI: `dl --help` (goal <= 0.3 s: no torch import) and `dl train --help` (composes the config).

Usage: python bench/startup.py [--repeat N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time


def wall_times(cmd: list[str], repeat: int) -> list[float]:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache once
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    dl = shutil.which("dl")
    base = [dl] if dl else [sys.executable, "-m", "dlcli"]
    results = {}
    for name, extra in (("dl --help", ["--help"]), ("dl train --help", ["train", "--help"])):
        times = wall_times(base + extra, args.repeat)
        results[name] = {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
                         "repeat": args.repeat}
    print(f"{'command':<18} {'median':>8} {'min':>8}   ({platform.processor() or platform.machine()}, "
          f"python {platform.python_version()})")
    for name, r in results.items():
        print(f"{name:<18} {r['median_s']:>7.3f}s {r['min_s']:>7.3f}s")
    goal = results["dl --help"]["median_s"] <= 0.3
    print(f"goal dl --help <= 0.3 s: {'met' if goal else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
