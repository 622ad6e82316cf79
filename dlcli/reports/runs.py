"""Reading run directories: `dl runs`, and the summary.csv + table a sweep ends with."""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.markup import escape
from rich.table import Table

from dlcli.base.console import fmt, make_console, metrics_table
from dlcli.base.errors import UserError, choices


def read_json(path: Path) -> dict:
    """A JSON object file; {} when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


NUMBER = (int, float)
# What dl train writes in run.json / summary.json, by type: a field of another type (a file edited by hand, or
# written by something else) reads as absent, so a broken file costs its own run's cells, never the listing.
RUN_FIELDS = {"status": str, "command": str, "started": str, "ended": str, "model": str, "dataset": str,
              "seed": int, "device": str, "versions": dict, "host": str, "pid": int, "resumed": list, "error": str,
              "wall_time_s": NUMBER}
SUMMARY_FIELDS = {"model": str, "dataset": str, "kind": str, "epochs": int, "steps": int, "stopped_by": str,
                  "best": dict, "final": dict, "test": dict, "params": int, "wall_time_s": NUMBER, "device": str,
                  "warnings": list, "chosen": dict}
BEST_FIELDS = {"metric": str, "mode": str, "value": NUMBER, "epoch": int}


def _typed(data: dict, fields: dict) -> dict:
    return {k: v for k, v in data.items()
            if k in fields and isinstance(v, fields[k]) and not isinstance(v, bool)}


def run_record(run_dir: Path) -> dict:
    """run.json, its fields of the right type only (resumed: a list of stamps)."""
    info = _typed(read_json(run_dir / "run.json"), RUN_FIELDS)
    if "resumed" in info:
        info["resumed"] = [r for r in info["resumed"] if isinstance(r, str)]
    return info


def run_summary(run_dir: Path) -> dict:
    """summary.json, its fields of the right type only (best: metric, mode, value, epoch)."""
    summary = _typed(read_json(run_dir / "summary.json"), SUMMARY_FIELDS)
    if "best" in summary:
        summary["best"] = _typed(summary["best"], BEST_FIELDS)
    return summary


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


def recorded_overrides(run_dir: Path) -> list[str]:
    """The task overrides Hydra recorded for a run (.hydra/overrides.yaml)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    import yaml  # a plain list of strings: the C loader reads it ~10x faster than OmegaConf.load (dl runs, many runs)

    try:
        items = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in items or []]

# Overrides that change what is printed, not what is trained: left out of the listing's "overrides" column.
DISPLAY_ONLY = ("hydra.", "trainer.summary=", "trainer.plots=", "logger=", "logger.")
STATUSES = ("completed", "failed", "interrupted", "running", "died")


def key_overrides(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.lstrip("+~").startswith(DISPLAY_ONLY)]


def _time(stamp: str | None) -> float | None:
    """run.json times ("2026-11-23T18:31:08+0000") as epoch seconds."""
    try:
        return datetime.strptime(stamp or "", "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _process_start(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), from /proc on Linux; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def is_alive(info: dict) -> bool | None:
    """Is the process that wrote this "running" run.json still there? None: cannot tell (another host, or a
    record from before run.json kept the pid)."""
    pid, host = info.get("pid"), info.get("host")
    if not isinstance(pid, int) or host != platform.node():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    # A pid is reused after a crash or reboot: the live process must be older than the run's (last) start.
    began = _process_start(pid)
    since = _time(([info.get("started")] + info.get("resumed", []))[-1])
    return not (began is not None and since is not None and began > since + 2)


def monitor_of(run_dir: Path) -> tuple[str | None, str]:
    """(metric, mode) the run monitored: summary.json, else its stored config."""
    best = run_summary(run_dir).get("best", {})
    if best.get("metric"):
        return str(best["metric"]), str(best.get("mode", "min"))
    config = run_dir / ".hydra" / "config.yaml"
    if config.exists():
        cfg = OmegaConf.load(config)
        metric = OmegaConf.select(cfg, "trainer.monitor", default=None)
        return (str(metric) if metric else None), str(OmegaConf.select(cfg, "trainer.mode", default="min"))
    return None, "min"


def best_so_far(rows: list[dict], metric: str, mode: str) -> tuple[float | None, int | None]:
    """(value, epoch) of the best logged `metric` ("split/name") in metrics.jsonl rows."""
    split, _, name = metric.partition("/")
    pts = [(r[name], r["epoch"]) for r in rows if r.get("split") == split and isinstance(r.get(name), (int, float))]
    if not pts:
        return None, None
    return (min if mode == "min" else max)(pts, key=lambda p: p[0])


def read_run(run_dir: Path) -> dict[str, Any]:
    """One row describing a run dir (run.json + summary.json + the overrides Hydra recorded). A run without a
    summary (running, interrupted, failed, died) gets its best monitored value so far from metrics.jsonl."""
    info, summary = run_record(run_dir), run_summary(run_dir)
    overrides = recorded_overrides(run_dir)
    status = info.get("status") if info.get("status") in STATUSES else "?"
    if status == "running" and is_alive(info) is False:
        status = "died"  # killed (SIGKILL, power loss) with no chance to say so
    metric, mode = monitor_of(run_dir)
    best = summary.get("best", {})
    value, best_epoch, epochs = best.get("value"), best.get("epoch"), summary.get("epochs")

    if not summary and metric:
        rows = read_metrics(run_dir)
        value, best_epoch = best_so_far(rows, metric, mode)
        epochs = max((r["epoch"] for r in rows if r.get("split") == "train"), default=None)
    started, ended = _time(info.get("started")), _time(info.get("ended"))
    if summary.get("wall_time_s") is not None and not info.get("resumed"):
        duration = summary["wall_time_s"]
    elif started is not None and ended is not None:
        duration = ended - started
    elif started is not None:  # still going (now), or died (its last write)
        last = max((p.stat().st_mtime for p in run_dir.glob("*") if p.is_file()), default=started)
        duration = (time.time() if status == "running" else last) - started
    else:
        duration = None
    row: dict[str, Any] = {
        "run": str(run_dir), "started": info.get("started", ""), "status": status,
        "model": info.get("model", ""), "dataset": info.get("dataset", ""), "overrides": " ".join(overrides),
        "epochs": epochs, "best_metric": metric, "best_mode": mode, "best": value, "best_epoch": best_epoch,
        "wall_time_s": summary.get("wall_time_s"), "duration_s": None if duration is None else round(duration, 3),
    }
    if status != info.get("status"):
        row["recorded_status"] = info.get("status")
    if info.get("error"):
        row["error"] = info["error"]
    row.update(summary.get("test", {}))
    return row


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """A sweep's job dirs in job order (<num>_<overrides>)."""
    def num(d: Path) -> int:
        head = d.name.split("_", 1)[0]
        return int(head) if head.isdigit() else 0

    return sorted((p.parent for p in Path(sweep_dir).glob("*/run.json") if p.parent.name.split("_")[0].isdigit()),
                  key=num)


def _sweep_row(sweep_dir: Path, jobs: list[dict]) -> dict[str, Any]:
    """One row for a whole sweep: status counts, swept values (k=a,b), the best job, first start to last end."""
    counts = {s: sum(j["status"] == s for j in jobs) for s in STATUSES if any(j["status"] == s for j in jobs)}
    values: dict[str, list[str]] = {}
    for j in jobs:
        for o in key_overrides(j["overrides"].split()):
            k, _, v = o.partition("=")
            values.setdefault(k, [])
            if v not in values[k]:
                values[k].append(v)
    scored = [j for j in jobs if j["best"] is not None]
    best = None
    if scored:
        best = (min if scored[0]["best_mode"] == "min" else max)(scored, key=lambda j: j["best"])
    starts = [t for t in (_time(j["started"]) for j in jobs) if t is not None]
    ends = [t + j["duration_s"] for j in jobs if j["duration_s"] is not None and (t := _time(j["started"]))]
    return {"run": str(sweep_dir), "kind": "sweep", "started": min((j["started"] for j in jobs), default=""),
            "status": ", ".join(f"{n} {s}" for s, n in counts.items()),
            "model": ",".join(dict.fromkeys(j["model"] for j in jobs)),
            "dataset": ",".join(dict.fromkeys(j["dataset"] for j in jobs)),
            "overrides": " ".join(f"{k}={','.join(v)}" for k, v in values.items()),
            "best_metric": best["best_metric"] if best else jobs[0]["best_metric"],
            "best": best["best"] if best else None,
            "best_job": Path(best["run"]).name.split("_", 1)[0] if best else None,
            "duration_s": round(max(ends) - min(starts), 3) if starts and ends else None, "jobs": jobs}


def collect(root: Path, model: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """Runs and sweeps under root, newest first; a sweep keeps the jobs that pass the filters."""
    if status is not None and status not in STATUSES:
        raise UserError(f"--status {status}: no such status{choices(status, STATUSES)}")

    def keep(row: dict) -> bool:
        return (model is None or row["model"] == model) and (status is None or row["status"] == status)

    entries = [r for r in (read_run(p.parent) for p in root.glob("runs/*/run.json")) if keep(r)]
    for sweep in sorted(p for p in root.glob("sweeps/*") if p.is_dir()):
        jobs = [r for r in map(read_run, sweep_jobs(sweep)) if keep(r)]
        if jobs:
            entries.append(_sweep_row(sweep, jobs))
    return sorted(entries, key=lambda e: (_time(e["started"]) or 0, e["run"]), reverse=True)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}m{sec:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"

STYLE = {"completed": "green", "failed": "red", "interrupted": "yellow", "running": "cyan", "died": "magenta"}


def _cells(row: dict, name: str) -> list[str]:
    status = ", ".join(f"[{STYLE.get(s.split()[-1], '')}]{escape(s)}[/]" if s.split()[-1] in STYLE else escape(s)
                       for s in row["status"].split(", "))
    best = f"{row['best_metric']} {fmt(row['best'])}" if row.get("best") is not None else ""
    if best and row.get("best_job") is not None:
        best += f" (job {row['best_job']})"
    shown = row["overrides"] if row.get("kind") == "sweep" else " ".join(key_overrides(row["overrides"].split()))
    return [row["started"][:19].replace("T", " "), status, escape(row["model"]), escape(row["dataset"]),
            escape(shown), best, format_duration(row.get("duration_s")), escape(name)]


def list_runs_cli(root: str, last: int | None = None, as_json: bool = False, model: str | None = None,
                  status: str | None = None, jobs: bool = False) -> None:
    """`dl runs`: runs and sweeps, newest first (a sweep is one row; --jobs lists its jobs under it)."""
    base = Path(root)
    if base.exists() and not base.is_dir():
        raise UserError(f"--dir {root}: not a directory; expected the outputs directory holding runs/ and sweeps/")
    if last is not None and last < 1:
        raise UserError(f"--last {last}: must be a positive number of runs")
    entries = collect(base, model, status)[:last]
    if as_json:  # flat: one object per run or sweep job (a job names its sweep)
        flat = []
        for e in entries:
            flat += [{**j, "sweep": e["run"]} for j in e["jobs"]] if e.get("kind") == "sweep" else [e]
        print(json.dumps(flat, indent=2))
        return
    console = make_console()
    if not entries:
        filters = " ".join(f"--{k} {v}" for k, v in (("model", model), ("status", status)) if v)
        console.print(f"no runs under {root}/{' matching ' + filters if filters else ''}; start one with: dl train")
        return

    table = Table(title=f"runs under {root}/ (newest first)", title_justify="left")
    for c in ("started", "status", "model", "dataset", "overrides", "best", "duration", "run"):
        table.add_column(c, justify="right" if c == "duration" else "left", overflow="fold")
    for e in entries:
        table.add_row(*_cells(e, str(Path(root) / Path(e["run"]).relative_to(base))))
        for j in e.get("jobs", []) if jobs else []:
            num = Path(j["run"]).name.split("_", 1)[0]  # `dl runs show <sweep>/<num>` finds the job
            cells = _cells(j, str(Path(root) / Path(e["run"]).relative_to(base) / num))
            table.add_row(f"  └ job {num}", *cells[1:])
    console.print(table)


def summarize_sweep(sweep_dir: Path) -> Path | None:
    """Write <sweep>/summary.csv (one row per job: overrides + final/best/test metrics) and print it as a table."""
    jobs = sweep_jobs(Path(sweep_dir))
    if not jobs:
        return None
    runs = [read_run(d) for d in jobs]
    # One column per swept key (the keys whose value differs between jobs), in the order given.
    parsed = [dict(o.split("=", 1) for o in recorded_overrides(d)) for d in jobs]
    keys = [k for k in dict.fromkeys(k for p in parsed for k in p) if len({p.get(k) for p in parsed}) > 1]
    rows = []
    for d, row, over in zip(jobs, runs, parsed):
        summary = run_summary(d)
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


def sweep_curves(sweep_dir: Path, jobs: list[Path], differing: list[dict[str, str]]) -> Path | None:
    """<sweep>/curves.png: every job's curve of the monitored metric, labelled by the overrides that differ."""
    from dlcli.reports.plots import overlay_curves  # lazy: torch + matplotlib; dl runs lists runs without them

    metric = next((m for m, _ in map(monitor_of, jobs) if m), None)
    if metric is None:
        return None
    series = {}
    for d, diff in zip(jobs, differing):
        job = d.name.split("_", 1)[0]
        series[f"{job}: " + ", ".join(f"{k}={v}" for k, v in diff.items()) if diff else job] = read_metrics(d)
    return overlay_curves(series, metric, sweep_dir / "curves.png",
                          f"{metric} per epoch, {len(jobs)} jobs: {sweep_dir.name}")
