"""How dl prints: a rich console sized for terminals and pipes, numbers formatted one way, tables of metrics."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def make_console(stderr: bool = False) -> Console:
    """On a terminal rich fits the window; on a pipe or in CI, keep lines whole and tables wide."""
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, soft_wrap=True, width=None if probe.is_terminal else 160)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def metrics_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="right" if rows and isinstance(rows[0].get(c), (int, float)) else "left")
    for r in rows:
        table.add_row(*(fmt(r.get(c, "")) if r.get(c) is not None else "" for c in columns))
    return table
