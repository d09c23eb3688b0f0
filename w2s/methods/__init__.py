"""The methods: one package per weak-to-strong method, and the registry built from them.

A method is a package ``w2s/methods/<name>/``:

- ``__init__.py``: the method in a paragraph, its 1-GPU and N-GPU commands, and ``SPEC``, a
  :class:`MethodSpec` naming its config class, its run function, help text, aliases, headline
  metric keys and its leg of the offline lab;
- ``config.py``: the config dataclass, its validation and plan. It never imports torch nor the
  package's experiment modules, so ``w2s --help`` stays fast;
- ``experiment.py`` (and more modules where the method needs them): ``run(cfg)`` and the steps
  of the experiment, importing the shared layers (models, data, train, evaluation).

``METHODS`` maps each command name to its spec, in the order of ``SPEC.order``; the CLI, ``w2s
lab``, ``w2s runs`` and ``w2s report`` are built from it and hold no per-method code::

    from w2s.methods import METHODS

    spec = METHODS["generalize"]
    cfg = spec.config(weak="tiny:llama-1x32", strong="tiny:llama-2x64", task="toy-sentiment")
    metrics = spec.run(cfg)            # torch is imported here, not before

Adding a method is a new package with a ``SPEC``, its recipes under ``recipes/<name>/`` and its
tests: nothing else is edited.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import MappingProxyType

from w2s.methods.spec import LabLeg, MethodSpec

__all__ = ["METHODS", "MethodSpec", "LabLeg", "headline_keys", "method_for"]


def _discover() -> dict[str, MethodSpec]:
    """Every subpackage of ``w2s.methods`` that defines ``SPEC``, by ``(order, name)``."""
    specs = []
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if isinstance(spec, MethodSpec):
            specs.append(spec)
    specs.sort(key=lambda s: (s.order, s.name))
    return {s.name: s for s in specs}


METHODS = MappingProxyType(_discover())
"""Command name -> :class:`MethodSpec`, for every method package."""


def headline_keys() -> tuple[str, ...]:
    """Every method's headline metric keys, each once, in registry order (the columns of
    ``w2s runs`` and ``w2s report``)."""
    return tuple(dict.fromkeys(k for spec in METHODS.values() for k in spec.headline))


def method_for(name: str | None) -> MethodSpec | None:
    """The spec of a method by its command name or an alias; None when unknown."""
    if name in METHODS:
        return METHODS[name]
    return next((s for s in METHODS.values() if name in s.aliases), None)
