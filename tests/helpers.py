"""Plain functions and constants the test modules share (``from helpers import cli``); the
shared fixtures are in conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def cli(args: list[str], entry=None, **kwargs) -> int:
    """Run the CLI ``entry`` (``w2s.cli.main`` unless given) on ``args``, with ``kwargs``; its
    exit code (it always ends by raising SystemExit)."""
    if entry is None:
        from w2s.cli import main as entry
    with pytest.raises(SystemExit) as exit_info:
        entry(args, **kwargs)
    return exit_info.value.code


def run_cli(args: list[str], capsys, entry=None, **kwargs) -> tuple[int, str, str]:
    """:func:`cli`, and what it printed: (exit code, stdout, stderr)."""
    code = cli(args, entry, **kwargs)
    out = capsys.readouterr()
    return code, out.out, out.err


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file, one a line."""
    return [json.loads(line) for line in path.read_text().splitlines()]
