"""Small helpers for the sentences that state what a run shows (the lab's verdicts).

A verdict is computed from a run's figures by a fixed rule written before the run; these are the
pieces every method's rule shares.
"""

from __future__ import annotations

from typing import Any


def short(v: Any) -> str:
    """A figure in a sentence: 3 significant digits for floats, ``-`` for missing."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)


def significant(win_rate: float | None, se: float | None) -> bool:
    """Above 50 by more than two standard errors (about a 95% one-sided test)."""
    return win_rate is not None and se is not None and win_rate - 2 * se > 50
