"""`dl runs show RUN` (one run: its config against the defaults, its summary) and `dl runs compare RUN...|SWEEP`
(one table, one overlaid curves plot)."""

from __future__ import annotations

import glob
import json
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from rich.markup import escape
from rich.table import Table

from dlcli.base.console import fmt, make_console
from dlcli.base.errors import UserError
from dlcli.config.compose import CONFIG_MODULE
from dlcli.reports.runs import (DISPLAY_ONLY, STYLE, format_duration, monitor_of, read_metrics, read_run,
                                recorded_overrides, run_record, run_summary, sweep_jobs)

EXPECTED = "a run directory holding run.json ({root}/runs/<run>, {root}/sweeps/<ts>/<job>) or a run's name"


def resolve(arg: str, root: Path, sweeps: bool = False) -> list[Path]:
    """RUN as typed -> run dirs: a run dir, a file inside one (a checkpoint), a run name under root/runs/ or a
    sweep, or (sweeps=True) a sweep dir, which stands for all its jobs. Anything else is a UserError."""
    path = Path(arg)
    if not path.exists():
        named = [p for p in (root / "runs" / arg, root / "sweeps" / arg) if p.is_dir()]
        named += [p for p in root.glob(f"sweeps/*/{glob_escape(arg)}") if p.is_dir()]
        if path.name.isdigit():  # <sweep>/<job number>, as `dl runs --jobs` shows it
            for sweep in (path.parent, root / "sweeps" / path.parent):
                named += [p for p in sweep.glob(f"{path.name}_*") if (p / "run.json").is_file()]
        if not named:
            raise UserError(f"{arg}: no such run; expected {EXPECTED.format(root=root)}"
                            + (", or a sweep directory" if sweeps else ""))
        path = named[0]
    if path.is_file():  # e.g. outputs/runs/<run>/checkpoints/best.pt
        run = next((p for p in path.parents[:3] if (p / "run.json").is_file()), None)
        if run is None:
            raise UserError(f"{arg}: a file outside any run directory; expected {EXPECTED.format(root=root)}")
        return [run]
    if (path / "run.json").is_file():
        return [path]
    jobs = sweep_jobs(path)
    if jobs and sweeps:
        return jobs
    if jobs:
        raise UserError(f"{arg} is a sweep ({len(jobs)} jobs), not one run; compare its jobs with: "
                        f"dl runs compare {arg}")
    raise UserError(f"{arg} is not a run directory (no run.json in it); expected {EXPECTED.format(root=root)}"
                    + (", or a sweep directory" if sweeps else ""))


def short(run_dir: Path) -> str:
    """A sweep job as <sweep>/<num> (resolve() reads it back), not its long <num>_<overrides> dir name."""
    num = run_dir.name.split("_", 1)[0]
    is_job = num.isdigit() and ((run_dir.parent / "multirun.yaml").exists() or run_dir.parent.parent.name == "sweeps")
    return str(run_dir.parent / num) if is_job else str(run_dir)


def glob_escape(name: str) -> str:
    return glob.escape(name)

# ------------------------------------------------------------------------------------------------ dl runs show
def _compose(overrides: list[str]) -> Any:
    """The config `dl train OVERRIDES` composes (with Hydra's node, for runtime.choices)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _flat(cfg: Any) -> dict[str, Any]:
    """key.path -> value (lists stay whole); interpolations resolved where they can be."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves inside Hydra (${hydra:...}): compare it as written
        tree = OmegaConf.to_container(cfg, resolve=False)

    def walk(node: Any, prefix: str) -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, sub in node.items() for k, v in walk(sub, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    return walk(tree, "")


def config_diff(run_dir: Path) -> dict[str, Any]:
    """How the run's config differs from the defaults: the group options it chose instead of the default ones,
    then each key whose value differs from what those options give by themselves (overrides, experiments)."""
    hydra_yaml, config_yaml = run_dir / ".hydra" / "hydra.yaml", run_dir / ".hydra" / "config.yaml"
    if not (hydra_yaml.exists() and config_yaml.exists()):
        return {"error": "no .hydra/config.yaml in the run dir"}
    picked = {g: str(v) for g, v in OmegaConf.load(hydra_yaml).hydra.runtime.choices.items()
              if v is not None and not g.startswith("hydra/")}
    try:
        defaults = {g: str(v) for g, v in _compose([]).hydra.runtime.choices.items()
                    if v is not None and not g.startswith("hydra/")}
        # The run's options minus experiments: what an experiment set must show up as changed keys.
        base = _compose([f"{g}={v}" for g, v in picked.items() if g != "experiment" and g in defaults])
    except Exception as e:  # conf/ changed since (an option renamed) or a user --config-dir option
        return {"error": f"the defaults do not compose any more ({str(e).splitlines()[0]})"}
    with open_dict(base):
        del base["hydra"]
    ours, theirs = _flat(OmegaConf.load(config_yaml)), _flat(base)
    missing = "(absent)"
    keys = [k for k in dict.fromkeys([*theirs, *ours]) if ours.get(k, missing) != theirs.get(k, missing)]
    return {"groups": {g: [defaults.get(g), v] for g, v in picked.items() if defaults.get(g) != v},
            "keys": {k: [theirs.get(k, missing), ours.get(k, missing)] for k in keys}}


def show_run_cli(arg: str, root: str, as_json: bool = False) -> None:
    run_dir = resolve(arg, Path(root))[0]
    row = read_run(run_dir)
    info, summary = run_record(run_dir), run_summary(run_dir)
    diff = config_diff(run_dir)
    plots = sorted(str(p) for p in (run_dir / "plots").glob("*.png"))
    if as_json:
        print(json.dumps({"run": str(run_dir), "status": row["status"], "record": info, "config_diff": diff,
                          "summary": summary, "best": {k: row[k] for k in ("best_metric", "best", "best_epoch")},
                          "plots": plots}, indent=2))
        return

    console = make_console()
    status = row["status"]
    note = {"died": " (run.json says running, but its process is gone: killed or the machine went down; "
                    f"continue with: dl train trainer.resume={run_dir})",
            "interrupted": f" (continue with: dl train trainer.resume={run_dir})"}.get(status, "")
    lines = [("run", str(run_dir)), ("status", f"[{STYLE.get(status, 'dim')}]{escape(status)}[/]{escape(note)}"),
             ("command", escape(info.get("command", ""))),
             ("started", f"{info.get('started', '')}  ended {info.get('ended') or '-'}  "
                         f"duration {format_duration(row['duration_s'])}"),
             ("where", f"host {info.get('host', '?')}  pid {info.get('pid', '?')}  device {info.get('device', '?')}  "
                       f"seed {info.get('seed', '?')}  "
                       + "  ".join(f"{k} {v}" for k, v in info.get("versions", {}).items()))]
    if info.get("resumed"):
        lines.append(("resumed", ", ".join(info["resumed"])))
    if info.get("error"):
        lines.append(("error", f"[red]{escape(info['error'])}[/]"))
    for name, value in lines:
        console.print(f"[bold]{name:>8}[/]  {value}", highlight=False)
    if "error" in diff:
        console.print(f"config: {diff['error']}; the overrides were: "
                      f"{' '.join(recorded_overrides(run_dir)) or '(none)'}", highlight=False)
    elif not diff["groups"] and not diff["keys"]:
        console.print("config: the defaults, unchanged", highlight=False)
    else:
        table = Table(title="config vs the defaults", title_justify="left")
        for c in ("key", "default", "this run"):
            table.add_column(c, overflow="fold")
        for g, (default, picked) in diff["groups"].items():
            table.add_row(f"{g} (group)", str(default), f"[bold]{escape(picked)}[/]")
        for k, (default, ours) in diff["keys"].items():
            table.add_row(escape(k), escape(str(default)), f"[bold]{escape(str(ours))}[/]")
        console.print(table)
    metric = row["best_metric"]
    best = (f"best {metric} {fmt(row['best'])} at epoch {row['best_epoch']}" if row["best"] is not None
            else f"no {metric} logged yet")
    if summary:
        console.print(f"summary: {best}; {summary.get('epochs')} epochs, {summary.get('steps')} steps, stopped by "
                      f"{summary.get('stopped_by')}; {summary.get('params', 0):,} parameters", highlight=False)
        for part in ("final", "test"):
            values = summary.get(part) or {}
            if values:
                console.print(f"{part:>8}: " + "  ".join(f"{k} {fmt(v)}" for k, v in values.items()), highlight=False)
        for key, value in (summary.get("chosen") or {}).items():  # settings left to auto, what they became, why
            console.print(f"    auto: {escape(key)}={escape(str(value))}", highlight=False)
        for warning in summary.get("warnings") or []:  # what the run warned about while it trained
            console.print(f"[yellow] warning:[/] {escape(str(warning))}", highlight=False)
    else:
        console.print(f"no summary.json ({status}); from metrics.jsonl: {best}, {row['epochs'] or 0} epochs done",
                      highlight=False)
    for p in plots:
        console.print(f"    plot: {p}", highlight=False)

# --------------------------------------------------------------------------------------------- dl runs compare
def _final(rows: list[dict]) -> dict[str, Any]:
    """The last val values and the test values a run logged (so unfinished runs compare too)."""
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        last = [r for r in rows if r.get("split") == split][-1:]
        out.update({f"{split}/{k}": v for r in last for k, v in r.items() if k not in ("step", "epoch", "split")})
    return out


def compare_cli(items: list[str], root: str, metric: str | None = None, out: str | None = None,
                as_json: bool = False) -> Path | None:
    """One table (the overrides that differ, status, best, last val and test metrics, duration) and one plot of
    `metric` per epoch for every run (default: the monitored one)."""
    base = Path(root)
    dirs = list(dict.fromkeys(d for item in items for d in resolve(item, base, sweeps=True)))
    runs = [read_run(d) for d in dirs]
    parsed = [dict(o.split("=", 1) for o in recorded_overrides(d) if "=" in o and not o.startswith(DISPLAY_ONLY))
              for d in dirs]
    keys = [k for k in dict.fromkeys(k for p in parsed for k in p) if len({p.get(k) for p in parsed}) > 1]
    extra = [c for c in ("model", "dataset") if len({r[c] for r in runs}) > 1 and c not in keys]
    histories = [read_metrics(d) for d in dirs]
    metric = metric or next((m for m, _ in map(monitor_of, dirs) if m), None) or "val/loss"
    logged = sorted({f"{r['split']}/{k}" for h in histories for r in h if r.get("split") in ("train", "val")
                     for k in r if k not in ("step", "epoch", "split")})
    if logged and metric not in logged:  # a typo, not a run that has yet to log it
        raise UserError(f"--metric {metric}: these runs do not log it; they log: {', '.join(logged)}")
    rows, series = [], {}
    sweep = len(items) == 1 and len(dirs) > 1  # one sweep dir: its curves.png is the picture
    # a sweep's jobs keep their numbers (as in its summary.csv and curves.png); other runs count from 1
    ids = [d.name.split("_", 1)[0] for d in dirs] if sweep else [str(i) for i in range(1, len(dirs) + 1)]
    for i, d, r, p, h in zip(ids, dirs, runs, parsed, histories):
        differing = {**{c: r[c] for c in extra}, **{k: p.get(k, "(default)") for k in keys}}
        label = f"{i}: " + (", ".join(f"{k}={v}" for k, v in differing.items()) or d.name)
        series[label] = h
        rows.append({"#": i, **differing, "status": r["status"], "best": r["best"], "best_epoch": r["best_epoch"],
                     "epochs": r["epochs"], **_final(h), "duration": format_duration(r["duration_s"]), "run": short(d)})
    path = Path(out) if out else (dirs[0].parent / "curves.png" if sweep else
                                  base / "compare" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}.png")
    from dlcli.reports.plots import overlay_curves  # lazy: torch + matplotlib; dl runs show needs neither

    title = f"{metric} per epoch: {Path(items[0]).name if sweep else f'{len(dirs)} runs'}"
    written = overlay_curves(series, metric, path, title)
    if as_json:
        print(json.dumps({"metric": metric, "plot": str(written) if written else None, "runs": rows}, indent=2))
        return written

    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    monitored = ", ".join(dict.fromkeys(str(r["best_metric"]) for r in runs))
    table = Table(title=f"{len(rows)} runs (best = the best {monitored}; val/ = the last evaluation)",
                  title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold", justify="right" if isinstance(rows[0].get(c), (int, float)) else "left")
    for r in rows:
        table.add_row(*(escape(fmt(r[c])) if r.get(c) is not None else "" for c in columns))
    console = make_console()
    console.print(table)
    console.print(f"curves: {written}" if written else f"no run logged {metric} yet: no plot written", highlight=False)
    return written
