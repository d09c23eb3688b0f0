"""The task registry and :func:`load_task`, the one entry point the methods call.

A task name is one of:

- a registered name (``w2s tasks`` lists them): hub datasets formatted as the papers' code did
  (``sciq``, ``hh-harmless``, ...), BIG-bench shortcuts (``multiemo``, ``hhh-alignment``) and
  project-made synthetic tasks (``toy-sentiment``);
- ``local:PATH[#kind]``: a jsonl / json / parquet / csv file, or a folder holding
  ``train.<ext>`` and ``test.<ext>`` (:mod:`w2s.data.local`);
- ``bigbench:<task path>[#prompts]``: a task of the BIG-bench archive, read offline
  (:mod:`w2s.data.bigbench`).

Splits: hub datasets use their own train/test (or validation) splits; data that comes unsplit
(local files, synthetic, BIG-bench) is split 80/20 by :func:`~w2s.data.splits.split_rows` with a
fixed seed, so the test rows never depend on the experiment seed. ``split="all"`` returns every
row of unsplit data. ``n`` then takes a seeded sample of the split.

Registering a task (EleutherAI/w2s style)::

    @register_task("my-task", kind="classification", source="synthetic",
                   description="what it is")
    def load_my_task(*, split: str, n: int | None, seed: int) -> TaskData:
        ...

A loader takes keyword arguments ``split``, ``n`` and ``seed`` (plus any options of its own,
passed through ``load_task(name, **options)``) and returns a :class:`TaskData`.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from w2s.data.core import INPUT_FIELD, KINDS, TaskData
from w2s.data.splits import SPLIT_SEED, TEST_FRACTION, split_rows, warn_if_small
from w2s.errors import W2SError, did_you_mean

SOURCES = ("hub", "local", "bigbench", "synthetic")


@dataclass
class TaskSpec:
    """One registry entry.

    name: what ``load_task`` and recipes call it; kind: one of :data:`~w2s.data.core.KINDS`;
    source: hub / local / bigbench / synthetic; description: one line for ``w2s tasks``;
    loader: ``loader(*, split, n, seed, **options) -> TaskData``; hub_id: the Hugging Face
    dataset (hub tasks); license: the data's licence where known; notes: formatting choices
    worth knowing (which split is the test split, rows dropped, known quirks).
    """

    name: str
    kind: str
    source: str
    description: str
    loader: Callable[..., TaskData]
    hub_id: str | None = None
    license: str | None = None
    notes: str = ""
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind {self.kind!r} not in {KINDS}")
        if self.source not in SOURCES:
            raise ValueError(f"task {self.name}: source {self.source!r} not in {SOURCES}")


TASKS: dict[str, TaskSpec] = {}
"""name -> TaskSpec, in registration order (the order ``w2s tasks`` lists them)."""


def register_task(name: str, *, kind: str, source: str, description: str,
                  hub_id: str | None = None, license: str | None = None, notes: str = "",
                  **options) -> Callable[[Callable[..., TaskData]], Callable[..., TaskData]]:
    """Decorator registering ``loader`` under ``name``; ``options`` are fixed keyword arguments
    passed to the loader on every call (one loader can serve several registered tasks)."""

    def wrap(loader: Callable[..., TaskData]) -> Callable[..., TaskData]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        TASKS[name] = TaskSpec(name, kind, source, description, loader, hub_id, license, notes,
                               dict(options))
        return loader

    return wrap


def load_task(name: str, *, split: str = "train", n: int | None = None, seed: int = 0,
              **options) -> TaskData:
    """Load a task split as validated :class:`TaskData`.

    name: a registered name, ``local:PATH[#kind]`` or ``bigbench:<task>[#prompts]``;
    split: ``train``, ``test`` (hub tasks also accept their own split names; unsplit data also
    ``all``); n: a seeded sample of that many rows (None: all); seed: the sample's seed and the
    seed of any random formatting (sciq's 50/50 answer choice); options: the loader's own
    (``prefix_words=8`` for prompt views, ``labels=[...]`` for BIG-bench).

    Warns (:class:`~w2s.data.splits.SmallTestSetWarning`) when a test split has < 500 rows, and
    (UserWarning) when the split has fewer than ``n`` rows (all of them are used).
    """
    name = name.strip()
    if name in TASKS:
        spec = TASKS[name]
        for key in options:
            if key in spec.options:
                raise W2SError(f"task '{name}' fixes {key}={spec.options[key]!r}; pick another "
                               "task for another value (`w2s tasks`)")
        data = _call(spec.loader, name, split=split, n=n, seed=seed, **spec.options, **options)
    elif name.startswith("local:"):
        from w2s.data.local import load_local

        data = _call(load_local, name, name[len("local:"):], split=split, n=n, seed=seed,
                     **options)
    elif name.startswith("bigbench:"):
        from w2s.data.bigbench import load_bigbench

        data = _call(load_bigbench, name, name[len("bigbench:"):], split=split, n=n, seed=seed,
                     **options)
    else:
        raise W2SError(f"unknown task '{name}'{did_you_mean(name, TASKS)} (run `w2s tasks` for "
                       "the list, or use local:PATH or bigbench:<task>)")
    data.validate()
    if n is not None and len(data) < n:
        warnings.warn(f"task '{name}' split '{split}' has only {len(data)} usable rows; using all "
                      f"of them (asked for n={n})", stacklevel=2)
    if split == "test":
        warn_if_small(len(data), f"task '{name}' test split", stacklevel=3)
    return data


def task_options(name: str) -> list[str] | None:
    """The options ``load_task(name, **options)`` takes besides split, n and seed (a hub task's
    are its formatter's, less the ones its registration fixes); None for an unknown name."""
    name = name.strip()
    if name in TASKS:
        spec = TASKS[name]
        if spec.source == "hub":
            from w2s.data.hub import options_of

            return [o for o in options_of(name) if o not in spec.options]
        loader = spec.loader
    elif name.startswith("local:"):
        from w2s.data.local import load_local as loader
    elif name.startswith("bigbench:"):
        from w2s.data.bigbench import load_bigbench as loader
    else:
        return None
    params = inspect.signature(loader).parameters
    fixed = TASKS[name].options if name in TASKS else {}
    return [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY
            and p not in ("split", "n", "seed") and p not in fixed]


def _call(loader: Callable[..., TaskData], name: str, *args, **kwargs) -> TaskData:
    """Call a loader, turning an option it does not take into a W2SError naming the valid ones."""
    params = inspect.signature(loader).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        own = [p for p in params if p not in ("split", "n", "seed")
               and params[p].kind is inspect.Parameter.KEYWORD_ONLY]
        for key in kwargs:
            if key not in params:
                raise W2SError(f"task '{name}' has no option '{key}'{did_you_mean(key, own)} "
                               f"(its options: {', '.join(own) or 'none'})")
    return loader(*args, **kwargs)


def split_in_memory(data: TaskData, split: str, n: int | None, seed: int) -> TaskData:
    """Split data that comes unsplit (80/20, fixed seed, rows sharing an input kept together),
    then take a seeded sample of ``n`` rows. ``split="all"`` keeps every row."""
    if split != "all":
        if split not in ("train", "test"):
            raise W2SError(f"task '{data.name}' has no split '{split}'; use train, test or all")
        parts = split_rows(data.rows, {"train": 1.0 - TEST_FRACTION, "test": TEST_FRACTION},
                           seed=SPLIT_SEED, group=INPUT_FIELD[data.kind])
        data = TaskData(data.name, data.kind, parts[split],
                        {**data.meta, "split": split, "split_rule":
                         f"{1 - TEST_FRACTION:g}/{TEST_FRACTION:g} by input, seed {SPLIT_SEED}",
                         "rows_before_split": len(data.rows)})
    else:
        data = dataclasses.replace(data, meta={**data.meta, "split": "all"})
    return data.subset(n, seed)


def tasks_table() -> list[dict]:
    """One row per registered task plus the two name patterns, for ``w2s tasks``.

    ``where`` says how the data can be had on this machine: ``in-process`` (synthetic),
    ``hf cache`` / ``hub only`` (hub datasets), ``w2s cache`` / ``pip download`` (BIG-bench);
    ``offline`` is True when it loads without a network.
    """
    from w2s.data import bigbench, hub

    rows = []
    for spec in TASKS.values():
        if spec.source == "synthetic":
            where = "in-process"
        elif spec.source == "hub":
            where = "hf cache" if hub.is_cached(spec.name) else "hub only"
        else:
            where = bigbench.archive_status()
        rows.append({"name": spec.name, "kind": spec.kind, "source": spec.source,
                     "offline": where in ("in-process", "hf cache", "w2s cache"),
                     "where": where, "hub_id": spec.hub_id, "description": spec.description})
    rows.append({"name": "local:PATH[#kind]", "kind": "any", "source": "local", "offline": True,
                 "where": "your file", "hub_id": None,
                 "description": "jsonl / json / parquet / csv file, or a folder with "
                                "train.* and test.*; kind inferred from the fields"})
    rows.append({"name": "bigbench:<task>[#prompts]", "kind": "any", "source": "bigbench",
                 "offline": bigbench.archive_status() == "w2s cache",
                 "where": bigbench.archive_status(), "hub_id": None,
                 "description": "any JSON task of the BIG-bench archive, e.g. "
                                "bigbench:multiemo/all_text_en, bigbench:hhh_alignment/harmless"})
    return rows
