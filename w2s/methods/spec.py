"""What a method package declares about itself: :class:`MethodSpec` (and its lab leg).

Torch-free: the registry (:data:`w2s.methods.METHODS`) imports every method's spec to build the
command line, so nothing here may load a model library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LabLeg:
    """A method's leg of the offline lab (``w2s lab``, ``make demo``).

    ``recipe`` is a file name under the lab's recipes folder (``recipes/lab/``); each entry of
    ``variants`` is one run of it with these overrides (e.g. generalize runs once with xent and
    once with logconf); ``summarize`` turns ``{variant: metrics}`` into the leg's summary, which
    must hold ``shows`` (bool: does the paper's effect show here) and ``verdict`` (a sentence
    computed from the figures by a fixed rule).
    """

    recipe: str
    summarize: Callable[[dict[str, dict]], dict]
    variants: dict[str, dict] = field(default_factory=lambda: {"run": {}})


@dataclass(frozen=True)
class MethodSpec:
    """One method, as the CLI, the lab, ``w2s runs`` and ``w2s report`` see it.

    ``entry`` is ``"module:function"`` of the run function, imported on first use (:attr:`run`)
    so that listing the methods never imports torch. ``headline`` names the metric keys that
    summarise a run of this method (``pgr``, ``win_rate``, ...): every run's metrics.json holds
    them (null with ``<key>_reason`` when undefined).
    """

    name: str
    config: type
    entry: str
    help: str
    aliases: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()
    lab: LabLeg | None = None
    order: int = 100

    @property
    def run(self) -> Callable[[Any], dict]:
        """The method's ``run(cfg) -> metrics`` (its experiment module is imported now)."""
        module, _, function = self.entry.partition(":")
        return getattr(importlib.import_module(module), function)

    @property
    def commands(self) -> tuple[str, ...]:
        """The command name and its aliases."""
        return (self.name, *self.aliases)
