"""Models the model layer can name but not make: a table of builders that higher layers fill.

Most model names load from weights on disk or from a seeded initialiser. A few name a model that
has to be TRAINED first: ``tiny:llama-2x64+toy-sentiment`` is a tiny model pretrained on the
toy-sentiment reviews. Training is :mod:`w2s.train`, one layer above this one (the loop loads and
wraps models), so :mod:`w2s.models` may not import it. Instead this layer keeps a table of
builders by name pattern, and the package that can train such a model registers its builder when
it is imported::

    # in w2s.tiny.corpus (above w2s.train)
    register_builder(r"^tiny:[^+]+\\+", build, provider="w2s.tiny")

    # in w2s.models.tiny (the model layer)
    folder = pretrained_folder("tiny:llama-2x64+toy-sentiment@300", log)  # save_pretrained dir

Every entry point that loads models imports :mod:`w2s.tiny`: the CLI before a command runs, and
each method's core. A program that imports only :mod:`w2s.models` and asks for such a name gets a
one-line :class:`~w2s.errors.W2SError` that says to import it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from w2s.errors import W2SError

Build = Callable[..., Path]
"""``build(name, log=None) -> Path``: the ``save_pretrained`` folder of model ``name`` (built once,
then cached by the builder); ``log`` receives one dict per training stage."""


@dataclass(frozen=True)
class Builder:
    """One row of the table: names matching ``pattern`` are built by ``build`` (from ``provider``)."""

    pattern: re.Pattern
    build: Build
    provider: str


BUILDERS: list[Builder] = []
"""The registered builders; the first whose pattern matches a name builds it."""


def register_builder(pattern: str, build: Build, *, provider: str) -> None:
    """Let ``build`` make every model whose name matches ``pattern`` (a regex, ``re.match``ed).

    Registering a pattern again replaces its builder, so importing (or reloading) a provider twice
    is harmless.
    """
    BUILDERS[:] = [b for b in BUILDERS if b.pattern.pattern != pattern]
    BUILDERS.append(Builder(re.compile(pattern), build, provider))


def find_builder(name: str) -> Builder | None:
    """The builder of model ``name``, or None when nothing registered one that matches."""
    return next((b for b in BUILDERS if b.pattern.match(name)), None)


def pretrained_folder(name: str, log=None, *, needs: str = "a package above w2s.models") -> Path:
    """The ``save_pretrained`` folder of model ``name``, made by its registered builder.

    ``needs`` names what would have registered one, for the error when nothing did.
    """
    builder = find_builder(name)
    if builder is None:
        raise W2SError(f"model '{name}' must be trained before use, and no builder for it is "
                       f"registered: import {needs} first (the w2s CLI and every method do)")
    return builder.build(name, log=log)
