"""What every command prints with: the two rich consoles, tables and cells, and the one hook a
command that may load a model calls first (:func:`register_model_builders`)."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Piped output (files, CI logs) gets a wide fixed width instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 400)


def register_model_builders() -> None:
    """Let the model layer load the names it cannot make itself: ``tiny:llama-2x64+toy-sentiment``
    is a tiny model that is TRAINED on a corpus first, by :mod:`w2s.tiny`, which sits above the
    model layer and fills its table of builders (:mod:`w2s.models.builders`) when imported.

    Called when a command that may load a model starts, never at import: :mod:`w2s.tiny` imports
    torch, and `w2s --help` stays torch-free.
    """
    import w2s.tiny  # noqa: F401


def _print_table(title: str, rows: list[dict], columns: list[str] | None = None) -> None:
    table = Table(title=escape(title))
    columns = columns or (list(rows[0].keys()) if rows else [])
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*[escape(_cell(r.get(c))) for c in columns])
    console.print(table)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)
