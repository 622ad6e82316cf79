"""The end of a sweep, beyond its summary table: the lesson picture + table of an experiment
(`dl train -m +experiment=NAME`), and Optuna's best trial for a search (`+hparams_search=NAME`).

An experiment file (conf/experiment/NAME.yaml) lists its runs in hydra.sweeper.params and describes its report in an
`experiment:` block, which every job's stored config carries:

    experiment:
      name: lstm_vs_rnn
      title: "..."                  # the picture's and table's title
      expect: "..."                 # the outcome the lesson predicts (printed under the table)
      label: [model]                # the overrides that name each run (default: those that differ)
      columns: [test/mse, best]     # table columns: test/x, val/x, train/x (last epoch), best, best_epoch,
                                    # wall_time_s, params, grad_norm/max, grad_time/first, grad_time/last
      panels:                       # one subplot each
        - {plot: curves, metric: val/loss, log: true}    # per epoch (x: step for split step / grad_norm)
        - {plot: bars, metric: test/mse, baseline: 0.1667, baseline_label: always the mean}
        - {plot: by_length}         # seq2seq: test exact match by source length (summary.json)
        - {plot: grad_time}         # recurrent: ||dLoss/d state_t|| per time step (plots/grad_time.json)
        - {plot: by_setting, metric: test/acc, x: dataset.per_class, lines: experiment.embeddings, logx: true}
                                    # a metric against one swept setting, a line per value of another

It writes <sweep>/<name>.png and <sweep>/<name>.csv and prints the table.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dlcli.base.console import make_console, metrics_table
from dlcli.base.overrides import is_number
from dlcli.reports.plots import pyplot, save_figure
from dlcli.reports.runs import read_metrics, recorded_overrides, run_record, run_summary, sweep_jobs


def _read_list(path: Path) -> list | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, list) else None


def _block(job: Path) -> dict | None:
    """The `experiment:` block of a job's stored config (None when the sweep was not an experiment)."""
    path = job / ".hydra" / "config.yaml"
    if not path.exists():
        return None
    block = OmegaConf.select(OmegaConf.load(path), "experiment", default=None)
    if block is None:
        return None
    try:  # a title may quote the run's settings: "adding problem, T=${dataset.seq_len}"
        return OmegaConf.to_container(block, resolve=True)
    except Exception:  # an interpolation this config cannot resolve: show it as written
        return OmegaConf.to_container(block, resolve=False)


def report_sweep(sweep_dir: Path) -> list[Path]:
    """After summarize_sweep: Optuna's best trial, and the experiment's lesson picture + table (if any)."""
    sweep_dir = Path(sweep_dir)
    jobs = sweep_jobs(sweep_dir)
    if not jobs:
        return []
    _report_optuna(sweep_dir, jobs)
    failed = [j.name.split("_", 1)[0] for j in jobs if run_record(j).get("status") == "failed"]
    if failed:  # a diverged job does not stop a sweep; say so once more at the end
        make_console().print(f"[yellow]{len(failed)} of {len(jobs)} jobs failed[/] (job {', '.join(failed)}; "
                             "each run.json holds its error)")
    block = _block(jobs[0])
    if not block:
        return []
    return report_experiment(sweep_dir, jobs, block)


def _report_optuna(sweep_dir: Path, jobs: list[Path]) -> None:
    path = sweep_dir / "optimization_results.yaml"
    if not path.exists():
        return
    result = OmegaConf.to_container(OmegaConf.load(path))
    if "best_value" not in result:  # several objectives: Optuna's file lists the Pareto front
        make_console().print(f"optuna: {len(result.get('solutions', []))} Pareto-optimal trials in {path}")
        return
    best = float(result["best_value"])
    job = next((j for j in jobs if _close(run_summary(j).get("best", {}).get("value"),
                                          best)), None)
    params = "  ".join(f"{k}={v}" for k, v in result.get("best_params", {}).items())
    where = f"job {job.name.split('_', 1)[0]} ({job})" if job else "see the table"
    make_console().print(f"optuna best trial: {where}\n  value {best:.6g}  {params}\n  results: {path}")


def _close(a: Any, b: float) -> bool:
    return isinstance(a, (int, float)) and math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-12)

# ------------------------------------------------------------------------------------------------------ one run
class Run:
    """What the report needs of one job: its label, summary, metric rows and gradient-through-time numbers."""

    def __init__(self, job: Path, label: str):
        self.job = job
        self.label = label
        self.status = run_record(job).get("status", "?")
        self.summary = run_summary(job)
        self.rows = read_metrics(job)
        self.grad_time = _read_list(job / "plots" / "grad_time.json")

    def value(self, name: str) -> float | None:
        """A table/bar value: best, best_epoch, wall_time_s, params, test/x, val/x, train/x, grad_norm/max,
        grad_time/first, grad_time/last."""
        s = self.summary
        if name in ("best", "best_epoch"):
            return s.get("best", {}).get("value" if name == "best" else "epoch")
        if name in ("wall_time_s", "params", "epochs"):
            return s.get(name)
        if name.startswith("test/"):
            return s.get("test", {}).get(name)
        if name == "grad_norm/max":
            norms = [v for _, v in self.series("grad_norm/total")]
            return max(norms) if norms else None
        if name.startswith("grad_time/"):
            if not self.grad_time:
                return None
            return self.grad_time[0] if name.endswith("first") else self.grad_time[-1]
        return s.get("final", {}).get(name)

    def series(self, metric: str, x: str | None = None) -> list[tuple[int, float]]:
        """(x, value) per logged row: x is the epoch for train/val rows, the step for step/ and grad_norm/ rows
        (or as asked). grad_norm/total is the global norm of the per-layer norms (what clip_grad_norm compares)."""
        split, _, name = metric.partition("/")
        x = x or ("epoch" if split in ("train", "val") else "step")
        out = []
        for r in self.rows:
            if r.get("split") != split:
                continue
            if split == "grad_norm" and name == "total":
                parts = [v for k, v in r.items() if k not in ("step", "epoch", "split") and isinstance(v, (int, float))]
                value = math.sqrt(sum(v * v for v in parts)) if parts else None
            else:
                value = r.get(name)
            if isinstance(value, (int, float)) and math.isfinite(value):  # a diverged step: the line ends
                out.append((r[x], float(value)))
        return out


def _labels(jobs: list[Path], keys: list[str] | None) -> list[str]:
    over = [dict(o.split("=", 1) for o in recorded_overrides(j) if "=" in o) for j in jobs]
    if not keys:  # the overrides that differ between jobs
        keys = [k for k in dict.fromkeys(k for o in over for k in o) if len({o.get(k) for o in over}) > 1]
    if len(keys) == 1:
        return [o.get(keys[0], "(default)") for o in over]
    short = {k: k.lstrip("+").rsplit(".", 1)[-1].rsplit("/", 1)[-1] for k in keys}
    return [", ".join(f"{short[k]}={o.get(k, '-')}" for k in keys) for o in over]


def report_experiment(sweep_dir: Path, jobs: list[Path], block: dict) -> list[Path]:
    name = str(block.get("name") or sweep_dir.name)
    labels = _labels(jobs, block.get("label"))
    if len(set(labels)) < len(labels):  # the command line swept more than the lesson's keys (trainer.seed=0,1)
        labels = _labels(jobs, None)
    runs = [Run(j, label) for j, label in zip(jobs, labels)]
    columns = list(block.get("columns") or ["best"])
    rows = [{"run": r.label, "status": r.status, **{c: r.value(c) for c in columns}} for r in runs]
    csv_path = sweep_dir / f"{name}.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["run", "status", *columns, "job"])
        writer.writeheader()
        writer.writerows({**row, "job": r.job.name} for row, r in zip(rows, runs))
    title = str(block.get("title") or name)
    console = make_console()
    console.print(metrics_table(f"experiment {name}: {title}", rows, ["run", "status", *columns]))
    png = lesson_figure(runs, list(block.get("panels") or []), sweep_dir / f"{name}.png", title)
    if block.get("expect"):
        console.print(f"expected: {block['expect']}")
    console.print(f"lesson: {png or '(no picture: the runs logged nothing to draw)'}\ntable: {csv_path}")
    return [p for p in (csv_path, png) if p is not None]

# ------------------------------------------------------------------------------------------------------ picture
def lesson_figure(runs: list[Run], panels: list[dict], path: Path, title: str) -> Path | None:
    """One subplot per panel that has data, every run in the same colour throughout."""
    drawers = {"curves": _curves, "bars": _bars, "by_length": _by_length, "grad_time": _grad_time,
               "by_setting": _by_setting}
    panels = [p for p in panels if _has_data(p, runs)]
    if not panels:
        return None
    plt = pyplot()
    cols = min(len(panels), 3)
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.4 * cols, 4.3 * nrows), squeeze=False)
    palette = plt.get_cmap("tab10").colors
    colors = {r.job: palette[i % len(palette)] for i, r in enumerate(runs)}
    for ax, panel in zip(axes.flat, panels):
        drawers[panel["plot"]](ax, panel, runs, colors)
        ax.grid(alpha=0.3, which="major")
        if panel.get("title"):
            ax.set_title(panel["title"], fontsize=10)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return save_figure(fig, path, title)


def _has_data(panel: dict, runs: list[Run]) -> bool:
    kind = panel.get("plot")
    if kind == "curves":
        return any(r.series(panel["metric"]) for r in runs)
    if kind in ("bars", "by_setting"):
        return any(r.value(panel["metric"]) is not None for r in runs)
    if kind == "by_length":
        return any(r.summary.get("exact_by_source_length") for r in runs)
    if kind == "grad_time":
        return any(r.grad_time for r in runs)
    raise ValueError(f"experiment panel plot={kind}: use curves, bars, by_length, grad_time or by_setting")


def _legend(ax: Any, n: int) -> None:
    ax.legend(fontsize=8 if n <= 6 else 7, ncol=1 if n <= 6 else 2)


def _curves(ax: Any, panel: dict, runs: list[Run], colors: dict) -> None:
    from matplotlib.ticker import MaxNLocator  # lazy: matplotlib, only when drawing

    metric = panel["metric"]
    x = panel.get("x") or ("epoch" if metric.split("/")[0] in ("train", "val") else "step")
    shown = 0
    for r in runs:
        pts = r.series(metric, x)
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "-o" if len(pts) <= 30 else "-", markersize=3, linewidth=1.3, color=colors[r.job],
                    label=r.label, alpha=0.9)
            shown += 1
    if panel.get("hline") is not None:  # e.g. the clipping threshold
        ax.axhline(float(panel["hline"]), color="black", linestyle="--", linewidth=1,
                   label=panel.get("hline_label", str(panel["hline"])))
        shown += 1
    values = [v for r in runs for _, v in r.series(metric, x)]
    if panel.get("log") and min(values) > 0 and max(values) / min(values) > 10:  # a log axis needs decades
        ax.set_yscale("log")
    xs = sorted({p for r in runs for p, _ in r.series(metric, x)})
    if panel.get("logx"):  # runs with a thousand times more steps than others
        ax.set_xscale("log")
    elif len(xs) <= 2:  # one or two epochs: integer ticks at them, not 0.95 ... 1.05
        ax.set_xticks(xs)
        ax.set_xlim(xs[0] - 0.5, xs[-1] + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    ax.set_xlabel(x)
    ax.set_ylabel(panel.get("ylabel", metric))
    _legend(ax, shown)


def _bars(ax: Any, panel: dict, runs: list[Run], colors: dict) -> None:
    metric = panel["metric"]
    values = [r.value(metric) for r in runs]
    xs = range(len(runs))
    heights = [v if v is not None else 0.0 for v in values]
    ax.bar(xs, heights, color=[colors[r.job] for r in runs])
    for x, v, r in zip(xs, values, runs):
        text = "failed" if r.status == "failed" else ("n/a" if v is None else f"{v:.3g}")
        ax.annotate(text, (x, heights[x]), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
    if panel.get("baseline") is not None:
        ax.axhline(float(panel["baseline"]), color="black", linestyle="--", linewidth=1,
                   label=panel.get("baseline_label", "baseline"))
        ax.legend(fontsize=8)
    if panel.get("log") and all(v is not None and v > 0 for v in values):
        ax.set_yscale("log")
        ax.set_ylim(top=max(heights + [float(panel.get("baseline") or 0)]) * 4)  # room for the value labels
    elif panel.get("ylim"):
        ax.set_ylim(*panel["ylim"])
    else:
        ax.set_ylim(0, max(heights + [float(panel.get("baseline") or 0)]) * 1.15 or 1)
    long = max(len(r.label) for r in runs) * len(runs) > 60  # labels side by side would overlap
    ax.set_xticks(list(xs), [r.label for r in runs], rotation=30 if long else 0, ha="right" if long else "center",
                  fontsize=8)
    ax.set_ylabel(panel.get("ylabel", metric))
    ax.grid(alpha=0.3, axis="y")


def _by_length(ax: Any, panel: dict, runs: list[Run], colors: dict) -> None:
    for r in runs:
        by = r.summary.get("exact_by_source_length") or {}
        if by:
            pts = sorted((int(k), v["exact"]) for k, v in by.items())
            ax.plot(*zip(*pts), "-o", markersize=3, color=colors[r.job], label=r.label)
    ax.set_xlabel("source length (tokens)")
    ax.set_ylabel(panel.get("ylabel", "exact match (test)"))
    ax.set_ylim(-0.02, 1.02)
    _legend(ax, len(runs))


def _grad_time(ax: Any, panel: dict, runs: list[Run], colors: dict) -> None:
    for r in runs:
        if r.grad_time and any(v > 0 for v in r.grad_time):
            # a gradient that underflowed to 0 (float32: below ~1e-38) has no place on a log axis: a gap
            ys = [v if v > 0 else float("nan") for v in r.grad_time]
            ax.plot(range(1, len(ys) + 1), ys, "-", linewidth=1.5, color=colors[r.job], label=r.label)
    ax.set_yscale("log")
    ax.set_xlabel("time step t (1 = first input)")
    ax.set_ylabel(panel.get("ylabel", "||dLoss / d state_t||"))
    _legend(ax, len(runs))


def _by_setting(ax: Any, panel: dict, runs: list[Run], colors: dict) -> None:
    """panel.metric against the swept setting panel.x (numbers on a number axis), a line per value of panel.lines."""
    lines: dict[str, list[tuple[Any, float]]] = {}
    for r in runs:
        over = dict(o.lstrip("+").split("=", 1) for o in recorded_overrides(r.job) if "=" in o)
        value = r.value(panel["metric"])
        if value is not None:
            lines.setdefault(over.get(panel["lines"], "(default)"), []).append((over.get(panel["x"], "-"), value))
    xs = list(dict.fromkeys(x for pts in lines.values() for x, _ in pts))
    numeric = all(is_number(x) for x in xs)
    palette = _palette()
    for i, (name, pts) in enumerate(lines.items()):
        pts = sorted(pts, key=lambda p: float(p[0]) if numeric else xs.index(p[0]))
        ax.plot([float(x) if numeric else xs.index(x) for x, _ in pts], [v for _, v in pts], "-o", markersize=4,
                color=palette[i % len(palette)], label=name)
    if panel.get("logx") and numeric:
        ax.set_xscale("log")
        ax.minorticks_off()  # the swept values alone, not 5x10^0 between them
        ax.set_xticks([float(x) for x in xs], xs)
    elif not numeric:
        ax.set_xticks(range(len(xs)), xs)
    if panel.get("baseline") is not None:
        ax.axhline(float(panel["baseline"]), color="black", linestyle="--", linewidth=1,
                   label=panel.get("baseline_label", "baseline"))
    ax.set_xlabel(panel["x"].rsplit(".", 1)[-1])
    ax.set_ylabel(panel.get("ylabel", panel["metric"]))
    _legend(ax, len(lines) + (panel.get("baseline") is not None))


def _palette() -> tuple:
    from matplotlib import colormaps  # lazy: matplotlib, only when drawing

    return colormaps["tab10"].colors
