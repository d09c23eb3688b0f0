"""What a decoder spent: :class:`Compute` (tokens sampled, read and scored, time per model
group) and :class:`Clock`, which adds the wall time of a block to it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Compute:
    """What one decoder spent (summed over prompt batches)."""

    rows_per_prompt: int = 1            # candidates sampled in parallel per prompt
    base_tokens: int = 0                # tokens the base model sampled
    guide_tokens_scored: int = 0        # response tokens scored, both guide models together
    guide_tokens_read: int = 0          # tokens through the guide models (+ prompts, re-reads)
    retokenized: int = 0                # guide tokens taken back when new text re-tokenized
    rounds: int = 0                     # chunks (selection rounds), summed over prompt batches
    base_s: float = 0.0                 # wall time in the base model (sampling, reordering)
    guide_s: float = 0.0                # wall time in the guide models
    wall_s: float = 0.0                 # the whole decoder
    models_s: dict[str, float] = field(default_factory=dict)
    """Logit decoders: wall time per model group (a group is one model, one KV cache; its name
    joins the roles it plays, e.g. ``base`` or ``tuned``)."""
    models_tokens_read: dict[str, int] = field(default_factory=dict)
    """Logit decoders: tokens through each model group (prompts and sampled tokens)."""
    timer: Callable[[], float] = field(default=time.perf_counter, repr=False)
    """What the ``*_s`` figures count: wall time; benchmarks on a shared CPU use
    ``time.process_time`` (this process's CPU time, blind to other processes)."""

    def as_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "timer"}
        for key in ("base_s", "guide_s", "wall_s"):
            out[key] = round(out[key], 4)
        out["models_s"] = {k: round(v, 4) for k, v in out["models_s"].items()}
        return out


class Clock:
    """Adds the wall time of ``with clock("base"):`` blocks to a :class:`Compute` (waiting for
    the GPU first, so the time is the work's, not the launch's); ``clock("guide", "tuned")``
    also adds it to that model group's ``models_s``."""

    def __init__(self, compute: Compute, device: torch.device | None = None):
        self.compute = compute
        self.cuda = device is not None and device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, what: str, group: str | None = None):
        if self.cuda:
            torch.cuda.synchronize()
        t0 = self.compute.timer()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            spent = self.compute.timer() - t0
            setattr(self.compute, f"{what}_s", getattr(self.compute, f"{what}_s") + spent)
            if group is not None:
                self.compute.models_s[group] = self.compute.models_s.get(group, 0.0) + spent
