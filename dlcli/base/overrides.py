"""Override values as Hydra's grammar reads them: quoting a path so that '=', ',' and spaces stay one string."""

from __future__ import annotations

from pathlib import Path

from dlcli.base.errors import UserError


def hydra_path(path: Path) -> str:
    """A path as an override value: quoted, so that '=', ',' and spaces (a sweep job's dir has them) stay one string."""
    if "'" in str(path):
        raise UserError(f"the run directory {path} has a quote in it; choose another one with hydra.run.dir=PATH")
    return f"'{path}'"


def is_number(text: str | bytes) -> bool:
    """Whether float() reads the text: a sweep's override value (a numeric axis), a field of a vectors file."""
    try:
        float(text)
        return True
    except ValueError:
        return False


def unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def budget_epochs(overrides: list[str]) -> list[str]:
    """A time budget given (trainer.max_time=S) and no trainer.epochs: the budget decides how long the run trains
    (trainer.epochs=auto) instead of the dataset's recommended epochs stopping it early. Added as an override, so
    the run's record (.hydra/overrides.yaml), a resume and a sweep's jobs all see it."""
    def key(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    budget = [o for o in overrides if key(o) == "trainer.max_time" and "=" in o]
    if not budget or any(key(o) == "trainer.epochs" for o in overrides):
        return overrides
    if all(unquote(o.split("=", 1)[1].strip()).lower() in ("null", "none", "") for o in budget):
        return overrides
    return [*overrides, "trainer.epochs=auto"]
