"""Render a results file of `python -m bench` as the Markdown block docs/performance.md shows.

    python -m bench.report bench/results/2026-11-23_cpu.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (int, float)):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def render(data: dict) -> str:
    m = data["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpus']} CPUs"
    lines = [f"Measured {data['date'][:10]} on {data['device']} ({where}; {m['threads']} torch threads, "
             f"torch {m['torch']}, Python {m['python']}, load average {m.get('load_avg_1m', '?')} at the start) with "
             f"`{data['command']}` in {data['seconds']:.0f} s."
             + (f" Note: {data['note']}." if data.get("note") else ""),
             "", "| case | metric | dl | baseline | ratio | goal | |", "|---|---|---:|---:|---:|---|---|"]
    for r in data["results"]:
        d = r["details"]
        if d.get("skipped"):
            lines.append(f"| {r['case']} | {r['metric']} | skipped: {d['skipped']} | | | | |")
            continue
        base = f"{num(r['baseline'])} ({r['baseline_name']})" if r["baseline"] is not None else ""
        ratio = f"{r['ratio']:.3f} ({r['ratio_name']})" if r["ratio"] is not None else ""
        if d.get("ratio_cpu") is not None:
            ratio += f"; by CPU time {d['ratio_cpu']:.3f}"
        met = {True: "met", False: "**not met**", None: ""}[r["met"]]
        lines.append(f"| {r['case']} | {r['metric']} | {num(r['dl'])} | {base} | {ratio} | {r['goal']} | {met} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(render(json.loads(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
