"""Progress bars: on where someone watches (a terminal), forced by W2S_PROGRESS, off in logs."""

import io
import sys

import pytest

from w2s.progress import Bar, progress_enabled


@pytest.mark.parametrize("env, tty, expected", [
    ("", False, False), ("", True, True), ("1", False, True), ("on", False, True),
    ("0", True, False), ("off", True, False)])
def test_progress_follows_the_terminal_unless_forced(env, tty, expected, monkeypatch):
    monkeypatch.setenv("W2S_PROGRESS", env)
    stream = io.StringIO()
    stream.isatty = lambda: tty  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stderr", stream)
    assert progress_enabled(None) is expected
    assert progress_enabled(True) is True and progress_enabled(False) is False  # explicit wins


def test_a_bar_that_is_off_does_nothing_and_one_that_is_on_counts():
    off = Bar("x", 10, on=False)
    off.update(advance=3)
    off.stop()
    assert off.progress is None
    on = Bar("train", 4, 1, on=True, fields=("loss",))
    task = on.task
    on.update(3, loss="0.5")
    assert on.progress.tasks[task].completed == 3
    assert on.progress.tasks[task].fields["loss"] == "0.5"
    on.update(advance=1)
    assert on.progress.tasks[task].completed == 4
    on.stop()
    assert on.progress is None
    assert Bar("empty", 0, on=True).progress is None  # nothing to count: no bar
