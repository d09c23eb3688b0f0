"""Deterministic splits: the same rows and seed give the same split on every machine.

Python's ``random.shuffle`` and numpy's generators are reproducible only within a version, so
the permutation here orders positions by a hash: position ``i`` sorts by
``blake2b(f"{seed}:{i}")``. That depends on nothing but the seed and the number of rows.

Splits keep rows that share an input together when asked (``group=``): two pairs with the same
prompt, or two copies of one text, never end up on both sides of a train/test split.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable

from w2s.errors import W2SError

SPLIT_SEED = 0
"""The fixed seed of the train/test split of data that comes unsplit (local files, synthetic,
BIG-bench): experiment seeds vary the subsets and labels, never which rows are test rows."""

TEST_FRACTION = 0.2
"""Share of unsplit data that becomes the test split."""

MIN_TEST_ROWS = 500
"""Below this a test split is 'tiny': openai/weak-to-strong#3 reported below-chance accuracy from
a 200-example default test set, where one run's noise swamps the effect being measured."""


class SmallTestSetWarning(UserWarning):
    """A test split has fewer than :data:`MIN_TEST_ROWS` rows."""


def permutation(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)``, identical on every machine and Python version."""
    def key(i: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()

    return sorted(range(n), key=key)


def split_rows(rows: list, sizes: dict[str, int | float], seed: int = SPLIT_SEED,
               group: str | Callable[[dict], object] | None = None) -> dict[str, list]:
    """Split ``rows`` into named parts by a seeded permutation.

    ``sizes`` maps each part's name to an int (that many rows) or a float (that fraction of the
    rows left after the int-sized parts). ``{"train": 0.8, "test": 0.2}`` uses every row;
    ``{"test": 500, "train": 1.0}`` takes 500 test rows and the rest for train. Parts are filled
    in the order given from one permutation, so they are disjoint; rows keep their original
    relative order inside each part.

    ``group`` (a field name or a function of a row) keeps rows with the same key in the same
    part; sizes then count groups. Ask for more rows than exist and you get a W2SError.
    """
    if not sizes:
        raise W2SError("split_rows needs at least one part, e.g. {'train': 0.8, 'test': 0.2}")
    units = _groups(rows, group)
    n = len(units)
    counts = _counts(sizes, n)
    order = permutation(n, seed)
    parts: dict[str, list] = {}
    start = 0
    for name, count in counts.items():
        positions = sorted(i for u in order[start:start + count] for i in units[u])
        parts[name] = [rows[i] for i in positions]
        start += count
    return parts


def _groups(rows: list, group) -> list[list[int]]:
    """Positions of rows per unit: one row each, or rows sharing a key (first-seen order)."""
    if group is None:
        return [[i] for i in range(len(rows))]
    key = (lambda r: r[group]) if isinstance(group, str) else group
    index: dict[object, int] = {}
    units: list[list[int]] = []
    for i, row in enumerate(rows):
        k = key(row)
        if k not in index:
            index[k] = len(units)
            units.append([])
        units[index[k]].append(i)
    return units


def _counts(sizes: dict[str, int | float], n: int) -> dict[str, int]:
    fixed = {k: v for k, v in sizes.items() if isinstance(v, int) and not isinstance(v, bool)}
    fractions = {k: v for k, v in sizes.items() if k not in fixed}
    for name, v in fixed.items():
        if v < 0:
            raise W2SError(f"split '{name}' has a negative size ({v}); use a count >= 0")
    for name, v in fractions.items():
        if not isinstance(v, float) or not 0.0 <= v <= 1.0:
            raise W2SError(f"split '{name}' size {v!r} is neither a row count nor a fraction in "
                           "[0, 1]; use e.g. 500 or 0.2")
    total_fraction = sum(fractions.values())
    if total_fraction > 1.0 + 1e-9:
        raise W2SError(f"split fractions add up to {total_fraction:g} > 1; make them sum to 1 "
                       "or less")
    left = n - sum(fixed.values())
    if left < 0:
        raise W2SError(f"splits ask for {sum(fixed.values())} rows but there are only {n}; "
                       "ask for fewer")
    counts, cum, end_prev = {}, 0.0, 0
    for name in sizes:
        if name in fixed:
            counts[name] = fixed[name]
            continue
        cum += fractions[name]
        end = left if abs(cum - 1.0) < 1e-9 else math.floor(cum * left + 0.5)
        counts[name] = end - end_prev
        end_prev = end
    return counts


def halves(rows: list, seed: int, group: str | Callable | None = None) -> tuple[list, list]:
    """Two disjoint halves (A, B) of ``rows`` (A gets the extra row when the count is odd):
    the weak model trains on A and labels B for the strong model (W2S generalization)."""
    parts = split_rows(rows, {"a": 0.5, "b": 0.5}, seed, group=group)
    return parts["a"], parts["b"]


def folds(rows: list, k: int, seed: int, group: str | Callable | None = None) -> list[list]:
    """``k`` disjoint parts of ``rows`` that together hold every row (sizes differ by at most one
    unit): the folds of a cross-fit, or the disjoint parts of a bootstrapping chain."""
    parts = split_rows(rows, {str(i): 1.0 / k for i in range(k)}, seed, group=group)
    return [parts[str(i)] for i in range(k)]


def pooled_split(train: list, test: list, *, n_train: int, n_test: int, seed: int,
                 group: str | Callable | None = None) -> dict[str, list]:
    """A train/test split drawn from both splits pooled (W2S deception's authors draw their
    4,000 test pairs and the training pairs from one pool): ``n_test`` test rows with the fixed
    :data:`SPLIT_SEED` (so every experiment seed tests on the same rows), then ``n_train``
    training rows from the rest with ``seed``. ``group`` keeps identical rows on one side; sizes
    count groups, and ask for more than there are and you get what there is (the test side at
    most half). Warns when the test side is small."""
    rows = list(train) + list(test)
    units = len(_groups(rows, group))
    if units < 4:
        raise W2SError(f"the pooled data has {units} distinct rows; a train/test split needs at "
                       "least 4")
    parts = split_rows(rows, {"test": min(n_test, units // 2), "rest": 1.0}, SPLIT_SEED,
                       group=group)
    rest = parts["rest"]
    picked = split_rows(rest, {"train": min(n_train, len(_groups(rest, group)))}, seed,
                        group=group)["train"]
    warn_if_small(len(parts["test"]), what="pooled test set", stacklevel=3)
    return {"train": picked, "test": parts["test"]}


def warn_if_small(n_rows: int, what: str = "test split", minimum: int = MIN_TEST_ROWS,
                  stacklevel: int = 2) -> str | None:
    """Warn (and return the message) when a test set has fewer than ``minimum`` rows, else None.

    With a few hundred examples the accuracy's standard error is ~2 points, as large as many
    weak-to-strong gaps (openai/weak-to-strong#3).
    """
    if n_rows >= minimum:
        return None
    msg = (f"{what} has only {n_rows} rows (< {minimum}): accuracy differences of a few points "
           "are noise at this size; use more test rows where the data allows")
    warnings.warn(msg, SmallTestSetWarning, stacklevel=stacklevel)
    return msg
