"""Plots without a hard dependency: matplotlib is the optional ``plot`` extra.

::

    plt = pyplot()                 # None when matplotlib is missing: the caller notes and skips
    fig, ax = plt.subplots()
    ...
    save_figure(fig, run.path / "pgr.png")

Every PNG w2s writes (a run's own plot, ``w2s report``'s) goes through these two, so a figure is
written the same way everywhere: Agg backend (no display), tight layout, 120 dpi, and atomically
(a temp file renamed into place: a report never shows half a PNG).
"""

from __future__ import annotations

import os
from pathlib import Path

MISSING = "matplotlib is not installed: no plot (pip install 'w2s[plot]')"
"""The note a run or report records when it skips its plots."""


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` (PNG, 120 dpi) atomically, close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
