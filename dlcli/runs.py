"""Reading run directories: `dl runs`, and the summary.csv + table a sweep ends with."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


from dlcli.metrics import make_console, metrics_table


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl rows; a line cut short by a kill is skipped."""
    rows = []
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _overrides(run_dir: Path) -> list[str]:
    """The task overrides Hydra recorded for a run (.hydra/overrides.yaml)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def read_run(run_dir: Path) -> dict[str, Any]:
    """One row describing a run dir (run.json + summary.json + the overrides Hydra recorded)."""
    info = _read_json(run_dir / "run.json")
    summary = _read_json(run_dir / "summary.json")
    overrides = _overrides(run_dir)
    best = summary.get("best", {})
    row: dict[str, Any] = {
        "run": str(run_dir), "started": info.get("started", ""), "status": info.get("status", "?"),
        "model": info.get("model", ""), "dataset": info.get("dataset", ""), "overrides": " ".join(overrides),
        "epochs": summary.get("epochs"), "best_metric": best.get("metric"), "best": best.get("value"),
        "wall_time_s": summary.get("wall_time_s"),
    }
    row.update(summary.get("test", {}))
    return row


def find_runs(root: Path) -> list[Path]:
    dirs = [p.parent for p in root.glob("runs/*/run.json")] + [p.parent for p in root.glob("sweeps/*/*/run.json")]
    return sorted(dirs, key=lambda d: (d / "run.json").stat().st_mtime, reverse=True)


def list_runs_cli(root: str, last: int | None = None, as_json: bool = False) -> None:
    rows = [read_run(d) for d in find_runs(Path(root))][:last]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    console = make_console()
    if not rows:
        console.print(f"no runs under {root}/ yet; start one with: dl train")
        return
    columns = ["started", "status", "model", "dataset", "overrides", "best_metric", "best", "wall_time_s", "run"]
    console.print(metrics_table(f"runs under {root}/ (newest first)", rows, columns))


def summarize_sweep(sweep_dir: Path) -> Path | None:
    """Write <sweep>/summary.csv (one row per job: overrides + final/best/test metrics) and print it as a table."""
    jobs = sorted((p.parent for p in Path(sweep_dir).glob("*/run.json")),
                  key=lambda d: int(d.name.split("_", 1)[0]) if d.name.split("_", 1)[0].isdigit() else 0)
    if not jobs:
        return None
    runs = [read_run(d) for d in jobs]
    # One column per swept key (the keys whose value differs between jobs), in the order given.
    parsed = [dict(o.split("=", 1) for o in _overrides(d)) for d in jobs]
    keys = [k for k in dict.fromkeys(k for p in parsed for k in p) if len({p.get(k) for p in parsed}) > 1]
    rows = []
    for d, row, over in zip(jobs, runs, parsed):
        summary = _read_json(d / "summary.json")
        rows.append({"job": d.name.split("_", 1)[0], **{k: over.get(k, "") for k in keys}, "status": row["status"],
                     "best_metric": row["best_metric"], "best": row["best"], "best_epoch":
                     summary.get("best", {}).get("epoch"), **summary.get("final", {}), **summary.get("test", {}),
                     "wall_time_s": row["wall_time_s"], "overrides": row["overrides"], "run": d.name})
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    path = Path(sweep_dir) / "summary.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in columns if c not in ("run", "overrides", "best_metric") and not c.startswith("train/")]
    title = f"sweep {sweep_dir}: {len(rows)} jobs, best = {rows[0]['best_metric']}"
    make_console().print(metrics_table(title, rows, shown))
    make_console().print(f"summary: {path}")
    curves = sweep_curves(Path(sweep_dir), jobs, [{k: over.get(k, "") for k in keys} for over in parsed])
    if curves is not None:
        make_console().print(f"curves: {curves}")
    return path


def _monitor(run_dir: Path) -> str | None:
    """The metric a run monitored (summary.json, else its stored config): what its curves are compared on."""
    metric = _read_json(run_dir / "summary.json").get("best", {}).get("metric")
    config = run_dir / ".hydra" / "config.yaml"
    if metric is None and config.exists():
        from omegaconf import OmegaConf

        metric = OmegaConf.select(OmegaConf.load(config), "trainer.monitor", default=None)
    return str(metric) if metric else None


def sweep_curves(sweep_dir: Path, jobs: list[Path], differing: list[dict[str, str]]) -> Path | None:
    """<sweep>/curves.png: every job's curve of the monitored metric, labelled by the overrides that differ."""
    from dlcli.plots import overlay_curves

    metric = next((m for m in map(_monitor, jobs) if m), None)
    if metric is None:
        return None
    series = {}
    for d, diff in zip(jobs, differing):
        job = d.name.split("_", 1)[0]
        series[f"{job}: " + ", ".join(f"{k}={v}" for k, v in diff.items()) if diff else job] = read_metrics(d)
    return overlay_curves(series, metric, sweep_dir / "curves.png",
                          f"{metric} per epoch, {len(jobs)} jobs: {sweep_dir.name}")
