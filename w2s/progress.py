"""Progress bars for long work (training steps, generation), shared by every method.

Bars go to stderr and show only where someone is watching: ``progress=None`` (the default of
:func:`w2s.train.train` and :func:`w2s.models.generate`) means "on when stderr is a terminal",
so piped logs, CI and tests stay clean. ``W2S_PROGRESS=1`` forces bars on, ``0`` off. A bar is
transient: it disappears when its work ends, and the method prints its own summary lines.
"""

from __future__ import annotations

import os
import sys


def progress_enabled(progress: bool | None = None) -> bool:
    """Resolve a ``progress`` argument: an explicit bool wins, then ``W2S_PROGRESS``, then
    whether stderr is a terminal."""
    if progress is not None:
        return bool(progress)
    env = os.environ.get("W2S_PROGRESS", "").strip().lower()
    if env in {"1", "true", "yes", "on"}:
        return True
    if env in {"0", "false", "no", "off"}:
        return False
    return sys.stderr.isatty()


class Bar:
    """One rich progress bar on stderr: ``description``, done/total, optional live fields
    (e.g. loss and lr), elapsed and remaining time. A no-op when ``on`` is false."""

    def __init__(self, description: str, total: int, completed: int = 0, *, on: bool = True,
                 fields: tuple[str, ...] = ()):
        self.progress = None
        if not on or not total:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
        if fields:
            columns.append(TextColumn("  ".join(f"{f} {{task.fields[{f}]}}" for f in fields)))
        columns += [TimeElapsedColumn(), TimeRemainingColumn()]
        self.progress = Progress(*columns, console=Console(stderr=True), transient=True)
        self.task = self.progress.add_task(description, total=total, completed=completed,
                                           **{f: "-" for f in fields})
        self.progress.start()

    def update(self, completed: int | None = None, advance: int = 0, **fields: str) -> None:
        if self.progress is None:
            return
        if completed is not None:
            self.progress.update(self.task, completed=completed, **fields)
        else:
            self.progress.update(self.task, advance=advance, **fields)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
