"""How much a judged figure moves with the judge: repeats of one judge, and several judges.

An LLM judge is not a fixed function: the same API model at temperature 0 can answer differently
from one call to the next, and two judges disagree. FastChat's MT-Bench maintainers advise
running the judge more than once. Every ``w2s eval`` benchmark therefore takes

- ``--judge-repeats N``: judge everything N times with each judge (each repeat its own entries in
  the judgment cache, so a repeat is a fresh request; a rerun of the whole run is still free).
  The figure is the MEDIAN over the repeats, with its spread (min, max).
- ``--judges a,b,c``: every judge on the same items. The headline figure is the first judge's;
  ``judge_robustness`` holds every judge's figure and the agreement of each pair of judges on
  the items (the share of items with the same outcome; for numeric outcomes, such as MT-Bench
  ratings, also the mean absolute difference and the Pearson correlation).

Deterministic judges (reward models, classifiers, ``llm:`` judges reading log-probs or decoding
greedily) give the same answer every time: they are judged once and their repeats are that
answer again (``deterministic: true`` in the record), not recomputed.

This module is the arithmetic (pure functions, unit-tested by hand); each benchmark runs its
judges and hands the figures and per-item outcomes here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"values", "median", "min", "max", "spread", "n"}`` of one figure over repeats (None
    values, a figure that was undefined in a repeat, are counted in ``undefined`` and left out).
    """
    defined = [float(v) for v in values if v is not None and not _nan(v)]
    out: dict[str, Any] = {"values": list(values), "n": len(values),
                           "undefined": len(values) - len(defined)}
    if not defined:
        return {**out, "median": None, "min": None, "max": None, "spread": None}
    lo, hi = min(defined), max(defined)
    return {**out, "median": statistics.median(defined), "min": lo, "max": hi,
            "spread": hi - lo}


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def agreement(a: Mapping[Hashable, Any], b: Mapping[Hashable, Any]) -> dict[str, Any]:
    """How two judges' per-item outcomes agree, over the items both judged.

    ``{"items", "agreement"}`` (the share of items with equal outcomes), plus for numeric
    outcomes ``mean_abs_diff`` and ``pearson`` (None when either side is constant)."""
    keys = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    if not keys:
        return {"items": 0, "agreement": None, "mean_abs_diff": None, "pearson": None}
    same = sum(a[k] == b[k] for k in keys) / len(keys)
    out: dict[str, Any] = {"items": len(keys), "agreement": same}
    if all(isinstance(a[k], (int, float)) and isinstance(b[k], (int, float)) for k in keys):
        x, y = [float(a[k]) for k in keys], [float(b[k]) for k in keys]
        out["mean_abs_diff"] = sum(abs(p - q) for p, q in zip(x, y, strict=True)) / len(keys)
        out["pearson"] = _pearson(x, y)
    else:
        out["mean_abs_diff"] = out["pearson"] = None
    return out


def _pearson(x: list[float], y: list[float]) -> float | None:
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((p - mx) * (q - my) for p, q in zip(x, y, strict=True))
    sxx, syy = sum((p - mx) ** 2 for p in x), sum((q - my) ** 2 for q in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def robustness(figures: Mapping[str, Sequence[float | None]],
               outcomes: Mapping[str, Mapping[Hashable, Any]], *, figure: str,
               deterministic: Mapping[str, bool] | None = None) -> dict[str, Any]:
    """The ``judge_robustness`` record of a benchmark run.

    Args:
        figures: per judge (in the order given), the figure of each repeat.
        outcomes: per judge, its per-item outcomes (of its first repeat) for the agreement.
        figure: the figure's name (``lc_win_rate``, ``mtbench_score``, ``score``).
        deterministic: per judge, whether its repeats are its first answer again.
    """
    judges = list(figures)
    return {"figure": figure, "judges": judges,
            "repeats": max((len(v) for v in figures.values()), default=0),
            "per_judge": {j: {**spread(figures[j]),
                              "deterministic": bool((deterministic or {}).get(j, False))}
                          for j in judges},
            "agreement": {f"{a} | {b}": agreement(outcomes[a], outcomes[b])
                          for a, b in combinations(judges, 2)} if len(judges) > 1 else {}}


def run_judges(specs: Sequence[str], repeats: int, build, once, *, figure: str
               ) -> dict[str, Any]:
    """Judge with every judge of ``specs`` (the first is the headline's), ``repeats`` times
    each where the judge is not deterministic, and return the first judge's metrics with
    ``judge_robustness`` (when there is more than one judge or repeat) and, with repeats, the
    headline ``figure`` replaced by its median over the repeats (the first repeat's value kept
    as ``<figure>_repeat0``).

    ``build(spec, repeat)`` makes a judge; ``once(judge, judgments)`` judges everything, writes
    its per-item rows to the run file named ``judgments`` (``judgments.jsonl`` for the first
    judge's first repeat, ``judgments-<j>-r<r>.jsonl`` for the others) and returns
    ``(metrics, outcomes)``, the outcomes keyed by item for the agreement.
    """
    from w2s.errors import W2SError

    if repeats < 1:
        raise W2SError(f"--judge-repeats must be at least 1, got {repeats}")
    specs = list(dict.fromkeys(specs))
    figures: dict[str, list] = {}
    outcomes: dict[str, Mapping] = {}
    deterministic: dict[str, bool] = {}
    primary: dict[str, Any] = {}
    for j, spec in enumerate(specs):
        first = build(spec, 0)
        deterministic[spec] = bool(getattr(first, "deterministic", True))
        figures[spec] = []
        for r in range(1 if deterministic[spec] else repeats):
            judge = first if r == 0 else build(spec, r)
            name = "judgments.jsonl" if j == r == 0 else f"judgments-{j}-r{r}.jsonl"
            metrics, items = once(judge, name)
            figures[spec].append(metrics.get(figure))
            if r == 0:
                outcomes[spec] = items
            if j == r == 0:
                primary = dict(metrics)
    if len(specs) == 1 and len(figures[specs[0]]) == 1:
        return primary
    record = robustness(figures, outcomes, figure=figure, deterministic=deterministic)
    record["files"] = {spec: ["judgments.jsonl" if j == r == 0 else f"judgments-{j}-r{r}.jsonl"
                              for r in range(len(figures[spec]))]
                       for j, spec in enumerate(specs)}
    primary["judge_robustness"] = record
    if len(figures[specs[0]]) > 1:
        primary[f"{figure}_repeat0"] = primary.get(figure)
        primary[figure] = record["per_judge"][specs[0]]["median"]
    return primary
