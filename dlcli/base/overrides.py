"""Override values as Hydra's grammar reads them: quoting a path so that '=', ',' and spaces stay one string."""

from __future__ import annotations

from pathlib import Path

from dlcli.base.errors import UserError


def hydra_path(path: Path) -> str:
    """A path as an override value: quoted, so that '=', ',' and spaces (a sweep job's dir has them) stay one string."""
    if "'" in str(path):
        raise UserError(f"the run directory {path} has a quote in it; choose another one with hydra.run.dir=PATH")
    return f"'{path}'"


def unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value
