"""User-facing errors: one line, exit code 2, no traceback (DL_DEBUG=1 shows it)."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable

from rich.console import Console
from rich.markup import escape


class UserError(Exception):
    """A mistake the user can fix (bad override, missing file, wrong checkpoint...)."""

    exit_code = 2


def choices(bad: str, valid: Iterable[str]) -> str:
    """' (did you mean X?) choose one of: a, b, c' for an error message."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(bad), valid, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{hint}; choose one of: {', '.join(valid)}"


def debug() -> bool:
    return os.environ.get("DL_DEBUG", "") not in ("", "0")


def report(err: BaseException) -> None:
    """Print one red line on stderr."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(err))}")


def exit_with(err: UserError) -> None:
    if debug():
        raise err
    report(err)
    sys.exit(err.exit_code)


def missing_key(e: Exception, group: str, name: str) -> UserError:
    """OmegaConf's 'Missing key x' while a builder reads a YAML without it: one line naming the key and the builder."""
    key = getattr(e, "full_key", None) or str(e).splitlines()[0]
    return UserError(f"{group}.name={name}: the {group} config has no {key} (or leaves it ???), which {name} needs "
                     f"(the keys {name} takes: dl train {group}={name} --cfg job)")
