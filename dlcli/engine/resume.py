"""`dl train trainer.resume=RUN_DIR|CKPT|auto`: continue a run in its own directory, exactly where it stopped.

The run's recorded overrides (.hydra/overrides.yaml) are applied again, then the new ones (e.g. trainer.epochs=20 to
train longer), so the resumed job has the same config. Model, optimizer, scheduler, every RNG, the epoch/step counters,
best-so-far and early-stopping count come from checkpoints/last.pt; each epoch's data order depends only on
(seed, epoch); so a resumed CPU run reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dlcli.base.errors import UserError
from dlcli.base.targets import model_name
from dlcli.engine.run_dir import holder

KEY = "trainer.resume"


def find_resume_checkpoint(value: str, outputs: Path = Path("outputs")) -> Path:
    """RUN_DIR -> RUN_DIR/checkpoints/last.pt; a .pt file as is; auto -> the newest unfinished run's last.pt."""
    if value == "auto":
        candidates = []
        for info in outputs.glob("runs/*/run.json"):
            status = _status(info.parent)
            last = info.parent / "checkpoints" / "last.pt"
            if status in ("interrupted", "failed", "running") and last.is_file() and holder(info.parent) is None:
                candidates.append(last)
        if not candidates:
            raise UserError(f"trainer.resume=auto: no interrupted or failed run with checkpoints/last.pt under "
                            f"{outputs}/runs; name one: trainer.resume=outputs/runs/<run>")
        return max(candidates, key=lambda p: p.stat().st_mtime)
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(f"trainer.resume={value}: no checkpoint there (give a run dir with checkpoints/last.pt, "
                        "a .pt file, or auto)")
    if not (path.parent.parent / ".hydra" / "overrides.yaml").is_file():
        raise UserError(f"trainer.resume={value}: {path} is not inside a dl run dir (no .hydra/overrides.yaml "
                        "next to its checkpoints/); resume continues a run made by dl train")
    return path.resolve()


def resume_overrides(overrides: list[str]) -> tuple[list[str], Path | None]:
    """If the overrides ask to resume: (the run's own overrides + the new ones + the checkpoint, its run dir)."""
    asked = [o for o in overrides if o.split("=", 1)[0].lstrip("+") == KEY]
    if not asked:
        return overrides, None
    value = asked[-1].split("=", 1)[1]
    if value in ("", "null", "None"):
        return [o for o in overrides if o not in asked], None
    ckpt = find_resume_checkpoint(value)
    run_dir = ckpt.parent.parent

    recorded = [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    merged: dict[str, str] = {}
    for o in recorded + [o for o in overrides if o not in asked]:
        key = o.split("=", 1)[0].lstrip("+~")
        if key != KEY:
            merged[key] = o  # later wins: a new override replaces the recorded one
    if "'" in str(ckpt):
        raise UserError(f"trainer.resume: the path {ckpt} has a quote in it; move the run dir")
    return [*merged.values(), f"{KEY}='{ckpt}'"], run_dir  # quoted: Hydra's grammar, any path characters


def recorded_config(run_dir: Path) -> tuple[list[str], str]:
    """What the run was composed from beyond its overrides, from its Hydra record: the user's config folders
    (search-path URLs: a resume finds their model and data YAMLs without being told again) and the primary config's
    name (--config-name; dl's own is "config")."""
    try:
        record = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml")
    except Exception:  # an older or edited record: the user passes --config-dir again
        return [], "config"
    sources = OmegaConf.select(record, "hydra.runtime.config_sources", default=None) or []
    return recorded_sources(sources), str(OmegaConf.select(record, "hydra.job.config_name", default=None) or "config")


def recorded_sources(config_sources: Iterable[Any]) -> list[str]:
    """The user's config folders in a run's hydra.runtime.config_sources (Hydra's record), as search-path URLs."""
    return [f"{s.schema}://{s.path}" for s in config_sources
            if s.provider not in ("hydra", "main", "schema") and s.schema in ("file", "pkg") and s.path]


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def check_resumable(ckpt_path: Path, cfg: object) -> None:
    """Refuse before anything is written: a finished run that already did all its epochs has nothing to resume.
    (Killed after its last epoch but before the test split and summary: resuming finishes those.)"""
    from dlcli.engine.checkpoint import config_of, load_checkpoint  # lazy: torch; imported before --help/--cfg

    run_dir = ckpt_path.parent.parent
    live = holder(run_dir)
    if live:
        raise UserError(f"trainer.resume: {run_dir} is still being trained ({live}); wait for it to end, or stop "
                        "it first (Ctrl-C saves checkpoints/last.pt), then resume (nothing was changed)")
    ckpt = load_checkpoint(ckpt_path)
    done, want = int(ckpt["epoch"]), cfg.trainer.epochs  # type: ignore[attr-defined]
    if str(want) != "auto" and done >= int(want) and _status(run_dir) == "completed":
        raise UserError(f"trainer.resume: {run_dir.name} already finished {done} of "
                        f"trainer.epochs={want}; to train longer add trainer.epochs={done + 10} (say)")
    stored = config_of(ckpt)
    for group in ("model", "dataset", "optimizer", "scheduler"):  # what the saved state belongs to
        was, now = OmegaConf.select(stored, f"{group}.name"), cfg[group].get("name")  # type: ignore[index]
        if group == "model":  # a model of the user's own goes by its _target_'s name
            was, now = model_name(stored.model), model_name(cfg.model)  # type: ignore[attr-defined]
        if was != now:
            raise UserError(f"trainer.resume: {run_dir.name} was trained with {group}={was}; it cannot go on with "
                            f"{group}={now} (drop {group}={now}, or start a new run; nothing was changed)")
