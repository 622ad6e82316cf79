"""Time to accuracy: `dl train model=cnn dataset=mnist` (the default settings, exactly the README's command) to
>= 99.0% test accuracy, timed from the shell: interpreter start, data load, training, evaluations, checkpoints,
plots. Goal on a 2-core CPU: >= 0.990 in <= 30 s wall.

Also a tuning tool: compare settings side by side, alternating runs so a busy machine slows each alike:

    python -m bench.mnist --compare "" "trainer.batch_size=256 optimizer.lr=0.004" --repeat 2 [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import Context, Result, run_cli

COMMAND = ["train", "model=cnn", "dataset=mnist"]
GOAL_ACC, GOAL_CPU_S = 0.990, 30.0


def train_once(overrides: list[str], device: str | None = None) -> dict[str, Any]:
    """One `dl train model=cnn dataset=mnist OVERRIDES` in a fresh directory; what it took and what it reached."""
    args = [*COMMAND, *([f"device={device}"] if device else []), *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        res = run_cli(args, cwd=Path(tmp))
        if res.returncode != 0:
            raise RuntimeError(f"dl {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}")
        run = next((Path(tmp) / "outputs" / "runs").iterdir())
        summary = json.loads((run / "summary.json").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [r["acc"] for r in rows if r["split"] == "val"]
    return {"command": "dl " + " ".join(args), "wall_s": res.seconds, "cpu_s": res.cpu_seconds,
            "peak_rss_mb": res.peak_rss_mb, "test_acc": summary["test"]["test/acc"],
            "train_and_test_s": summary["wall_time_s"], "epochs": summary["epochs"], "val_acc": val}


def run(ctx: Context, names: list[str] | None = None) -> list[Result]:
    device = "cuda" if ctx.device.type == "cuda" else "cpu"
    r = train_once([], device)
    met = r["test_acc"] >= GOAL_ACC and (device == "cuda" or r["wall_s"] <= GOAL_CPU_S)
    goal = f">= {GOAL_ACC} test acc" + ("" if device == "cuda" else f" in <= {GOAL_CPU_S:g} s")
    return [Result(case="mnist/cnn time-to-acc", metric="s wall", dl=r["wall_s"], ratio=r["test_acc"],
                   ratio_name="test acc", goal=goal, met=met, details=r)]


def compare(settings: list[str], repeat: int, seeds: list[int]) -> None:
    """Alternate the settings (A B, B A, ...) for each seed and repeat; print each run and a summary per setting."""
    out: dict[str, list[dict]] = {s: [] for s in settings}
    order = list(settings)
    for r in range(repeat):
        for seed in seeds:
            for s in order:
                res = train_once([*shlex.split(s), f"trainer.seed={seed}"])
                out[s].append(res)
                print(f"[{s or 'default'}] seed {seed}: test acc {res['test_acc']:.4f}  wall {res['wall_s']:.1f}s  "
                      f"cpu {res['cpu_s']:.1f}s  val {[round(v, 4) for v in res['val_acc']]}", flush=True)
            order.reverse()
    for s, rows in out.items():
        print(f"{s or 'default':60s} acc mean {statistics.mean(r['test_acc'] for r in rows):.4f} "
              f"min {min(r['test_acc'] for r in rows):.4f}  "
              f"wall median {statistics.median(r['wall_s'] for r in rows):.1f}s"
              f"  cpu median {statistics.median(r['cpu_s'] for r in rows):.1f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", nargs="+", default=[""], help="override strings, one per setting ('' = default)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()
    compare(args.compare, args.repeat, [int(s) for s in args.seeds.split(",")])


if __name__ == "__main__":
    main()
