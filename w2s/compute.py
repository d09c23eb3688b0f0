"""What a run spent, stage by stage: the ``compute`` record of every metrics.json.

Comparing methods honestly needs their cost beside their quality, counted the same way for all
of them. The shared layers count as they work, into the stage that is current::

    from w2s import compute

    with compute.stage("weak_ceiling"):     # a method names its stages
        train(...)                          # the loop counts forward and backward tokens
    compute.record()
    # -> {"stages": {"weak_ceiling": {"wall_s", "forward_tokens", "backward_tokens",
    #                                 "generated_tokens", "peak_memory_bytes", "cached"}},
    #     "total": {...the same keys summed; wall_s: since the run started; peak: the largest}}

- ``forward_tokens``: real (unpadded) tokens through a model's forward pass, training and
  scoring alike (a training step's forward counts once, its backward again in
  ``backward_tokens``);
- ``generated_tokens``: new tokens sampled;
- ``peak_memory_bytes``: the accelerator's peak allocated memory during the stage (CUDA), else
  the process's peak resident memory so far (CPU: it never goes down);
- ``cached``: the stage's result came from the cache (its counts are then what reading it cost).

Counts go to the stage opened last (``"main"`` outside any), per process: under a distributed
launch each rank counts its own share, and the record is rank 0's. Wall time is measured on
entry and exit of the stage block; nested stages count into the innermost and their wall time
also lies inside the outer one.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

_FIELDS = ("wall_s", "forward_tokens", "backward_tokens", "generated_tokens")
_stages: dict[str, dict[str, Any]] = {}
_open: list[str] = []
_started = time.perf_counter()


def reset() -> None:
    """Forget every stage and restart the clock (a new run starts counting from zero)."""
    global _started
    _stages.clear()
    _open.clear()
    _started = time.perf_counter()


def _entry(name: str) -> dict[str, Any]:
    if name not in _stages:
        _stages[name] = {**{k: 0 for k in _FIELDS}, "wall_s": 0.0, "peak_memory_bytes": 0,
                         "cached": False}
    return _stages[name]


def current() -> str:
    """The stage counts go to now."""
    return _open[-1] if _open else "main"


@contextlib.contextmanager
def stage(name: str) -> Iterator[dict[str, Any]]:
    """Count everything inside the block into stage ``name`` (re-entering adds to it)."""
    entry = _entry(name)
    _note_peak()  # the stages around this one keep the peak they reached so far
    _open.append(name)
    _reset_peak()
    start = time.perf_counter()
    try:
        yield entry
    finally:
        entry["wall_s"] += time.perf_counter() - start
        _note_peak()  # into this stage and every one around it
        _open.pop()


def _note_peak() -> None:
    peak = _peak_memory()
    for name in _open:
        _stages[name]["peak_memory_bytes"] = max(_stages[name]["peak_memory_bytes"], peak)


def count(*, forward: int = 0, backward: int = 0, generated: int = 0) -> None:
    """Add tokens to the current stage (called by the training loop, generation, scoring)."""
    entry = _entry(current())
    entry["forward_tokens"] += int(forward)
    entry["backward_tokens"] += int(backward)
    entry["generated_tokens"] += int(generated)


def mark_cached() -> None:
    """The current stage's result was read from the cache."""
    _entry(current())["cached"] = True


def record() -> dict[str, Any]:
    """The ``compute`` record: every stage and their total (see the module docstring)."""
    stages = {name: {**entry, "wall_s": round(entry["wall_s"], 3)}
              for name, entry in _stages.items()}
    if "main" in stages:
        stages["main"]["peak_memory_bytes"] = max(stages["main"]["peak_memory_bytes"],
                                                  _peak_memory())
    total = {k: sum(e[k] for e in stages.values()) for k in _FIELDS}
    total["wall_s"] = round(time.perf_counter() - _started, 3)  # the run's, stages or not
    total["peak_memory_bytes"] = max((e["peak_memory_bytes"] for e in stages.values()),
                                     default=_peak_memory())
    return {"stages": stages, "total": total}


def _cuda():
    torch = sys.modules.get("torch")  # never import torch just to count
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda
    return None


def _reset_peak() -> None:
    cuda = _cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()


def _peak_memory() -> int:
    cuda = _cuda()
    if cuda is not None:
        return int(cuda.max_memory_allocated())
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
