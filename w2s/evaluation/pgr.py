"""Performance gap recovered (PGR), the headline figure of weak-to-strong generalization.

    PGR = (acc_w2s - acc_weak) / (acc_ceiling - acc_weak)

PGR = 1: the strong student trained on weak labels is as good as the strong model trained on
ground truth (the whole gap recovered); PGR = 0: no better than its weak supervisor. It is
undefined when the ceiling does not beat the weak model (acc_ceiling <= acc_weak): the gap it
would measure does not exist, so we return None with the reason instead of a huge or negative
number.

All three models are evaluated on the SAME test examples, so the confidence interval is a paired
bootstrap: resample example indices once and recompute all three accuracies on the resample.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from w2s.errors import W2SError
from w2s.runs import read_jsonl

ROLE_WEAK = "weak"
ROLE_CEILING = "strong_ceiling"
ROLE_W2S = "w2s"
ROLES = (ROLE_WEAK, ROLE_CEILING, ROLE_W2S)
"""The ``role`` values in a run's predictions.jsonl that PGR reads."""


def pgr(weak_acc: float, w2s_acc: float, ceiling_acc: float) -> float | None:
    """PGR from three accuracies; None when the ceiling does not beat the weak model.

    >>> pgr(0.5, 0.75, 1.0)
    0.5
    >>> pgr(0.8, 0.7, 0.8) is None
    True
    """
    return pgr_with_reason(weak_acc, w2s_acc, ceiling_acc)[0]


def pgr_with_reason(weak_acc: float, w2s_acc: float, ceiling_acc: float
                    ) -> tuple[float | None, str | None]:
    """(PGR, None), or (None, reason) when PGR is undefined."""
    for name, v in (("weak", weak_acc), ("w2s", w2s_acc), ("ceiling", ceiling_acc)):
        if v is None or not (0.0 <= float(v) <= 1.0):
            raise W2SError(f"{name} accuracy must be a number in [0, 1], got {v!r}")
    gap = float(ceiling_acc) - float(weak_acc)
    if gap <= 0:
        return None, (f"undefined: the strong ceiling ({ceiling_acc:.4f}) does not beat the weak "
                      f"model ({weak_acc:.4f}), so there is no gap to recover")
    return (float(w2s_acc) - float(weak_acc)) / gap, None


def _as_bool_array(name: str, values: Sequence) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise W2SError(f"{name} correctness must be a non-empty 1-D sequence")
    return arr.astype(bool)


def bootstrap_pgr(weak_correct: Sequence, w2s_correct: Sequence, ceiling_correct: Sequence, *,
                  n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """PGR with a paired bootstrap confidence interval from per-example correctness.

    Returns ``{"pgr", "reason", "ci_low", "ci_high", "ci", "ci_conditional", "n", "n_boot",
    "n_boot_undefined", "weak_acc", "w2s_acc", "strong_ceiling_acc"}``. Resamples where PGR is
    undefined (the strong ceiling not above the weak model) cannot enter the interval: they are
    counted in ``n_boot_undefined``, and ``ci_conditional`` is then True: the interval is that of
    PGR GIVEN a positive gap, narrower than the truth where the gap itself is uncertain.
    """
    w = _as_bool_array("weak", weak_correct)
    s = _as_bool_array("w2s", w2s_correct)
    c = _as_bool_array("ceiling", ceiling_correct)
    if not (len(w) == len(s) == len(c)):
        raise W2SError(f"per-example predictions differ in length (weak {len(w)}, w2s {len(s)}, "
                       f"ceiling {len(c)}); all three models must be scored on the same examples")
    n = len(w)
    value, reason = pgr_with_reason(w.mean(), s.mean(), c.mean())
    out: dict[str, Any] = {"pgr": value, "reason": reason, "ci_low": None, "ci_high": None,
                           "ci": ci, "ci_conditional": False, "n": n, "n_boot": n_boot,
                           "n_boot_undefined": 0,
                           "weak_acc": float(w.mean()), "w2s_acc": float(s.mean()),
                           "strong_ceiling_acc": float(c.mean())}
    if value is None or n_boot <= 0:
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    wa, sa, ca = w[idx].mean(1), s[idx].mean(1), c[idx].mean(1)
    gap = ca - wa
    ok = gap > 0
    boot = (sa[ok] - wa[ok]) / gap[ok]
    out["n_boot_undefined"] = int((~ok).sum())
    out["ci_conditional"] = out["n_boot_undefined"] > 0
    if boot.size:
        alpha = (1.0 - ci) / 2
        out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(boot, [alpha, 1 - alpha]))
    return out


def bootstrap_accuracy(correct: Sequence, *, n_boot: int = 1000, seed: int = 0,
                       ci: float = 0.95) -> dict[str, Any]:
    """Accuracy of per-example correctness with a bootstrap percentile interval.

    Returns ``{"acc", "ci_low", "ci_high", "ci", "n", "n_boot"}``; the resamples are of example
    indices, drawn from ``seed`` (the same seed as :func:`bootstrap_pgr` draws the same indices).

    >>> bootstrap_accuracy([True, True, False, True], n_boot=0)["acc"]
    0.75
    """
    c = _as_bool_array("correctness", correct)
    out: dict[str, Any] = {"acc": float(c.mean()), "ci_low": None, "ci_high": None, "ci": ci,
                           "n": int(c.size), "n_boot": n_boot}
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, c.size, size=(n_boot, c.size))
        boot = c[idx].mean(axis=1)
        alpha = (1 - ci) / 2
        out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(boot, [alpha, 1 - alpha]))
    return out


def pgr_from_predictions(rows: Sequence[dict], *, n_boot: int = 1000, seed: int = 0
                         ) -> dict[str, dict[str, Any]]:
    """PGR for every (weak, strong) pair found in per-example prediction rows.

    Each row has ``id``, ``role`` (one of :data:`ROLES`), ``correct`` (bool), and optionally
    ``pair`` (e.g. ``"gpt2->gpt2-xl/seed0"``) when one run holds several pairs. Returns
    ``{pair: bootstrap_pgr(...)}`` with ``""`` as the pair of single-pair runs.
    """
    table: dict[str, dict[str, dict[str, bool]]] = defaultdict(lambda: defaultdict(dict))
    for i, r in enumerate(rows):
        for key in ("id", "role", "correct"):
            if key not in r:
                raise W2SError(f"prediction row {i + 1} has no '{key}'; rows need id, role, correct")
        if r["role"] not in ROLES:
            continue
        table[str(r.get("pair", ""))][r["role"]][str(r["id"])] = bool(r["correct"])
    if not table:
        raise W2SError(f"no prediction rows with role in {list(ROLES)}")
    results = {}
    for pair, by_role in table.items():
        missing = [role for role in ROLES if role not in by_role]
        if missing:
            raise W2SError(f"predictions for pair '{pair or 'default'}' lack role(s) {missing}")
        ids = sorted(by_role[ROLE_WEAK])
        for role in (ROLE_CEILING, ROLE_W2S):
            if sorted(by_role[role]) != ids:
                raise W2SError(f"pair '{pair or 'default'}': the {role} predictions cover other "
                               f"example ids than the weak ones; PGR needs the same test examples")
        results[pair] = bootstrap_pgr([by_role[ROLE_WEAK][i] for i in ids],
                                      [by_role[ROLE_W2S][i] for i in ids],
                                      [by_role[ROLE_CEILING][i] for i in ids],
                                      n_boot=n_boot, seed=seed)
    return results


def _accuracy_or_rows(name: str, value: str) -> float | dict[str, bool]:
    """``"0.71"`` -> 0.71; a JSONL path -> {id: correct}."""
    try:
        return float(value)
    except ValueError:
        pass
    path = Path(value)
    if not path.is_file():
        raise W2SError(f"--{name} must be an accuracy in [0, 1] or a predictions JSONL file; "
                       f"{value!r} is neither")
    out = {}
    for i, row in enumerate(read_jsonl(path)):
        if "correct" not in row:
            raise W2SError(f"{path}:{i + 1}: row has no 'correct' field")
        out[str(row.get("id", i))] = bool(row["correct"])
    if not out:
        raise W2SError(f"{path} holds no predictions")
    return out


def eval_pgr(run_dir=None, weak: str | None = None, w2s: str | None = None,
             ceiling: str | None = None, *, n_boot: int = 1000, seed: int = 0
             ) -> dict[str, dict[str, Any]]:
    """What ``w2s eval pgr`` computes: from a run directory's predictions.jsonl, or from three
    accuracies, or from three predictions files (paired by id, with a bootstrap CI)."""
    given = [v is not None for v in (weak, w2s, ceiling)]
    if run_dir is not None:
        if any(given):
            raise W2SError("give either RUN_DIR or --weak/--w2s/--ceiling, not both")
        path = Path(run_dir) / "predictions.jsonl"
        if not Path(run_dir).is_dir():
            raise W2SError(f"run directory {run_dir} does not exist")
        if not path.is_file():
            raise W2SError(f"{run_dir} has no predictions.jsonl; PGR needs a generalize or reason run")
        return pgr_from_predictions(read_jsonl(path), n_boot=n_boot, seed=seed)
    if not all(given):
        raise W2SError("give a RUN_DIR, or all three of --weak, --w2s and --ceiling")
    values = {k: _accuracy_or_rows(k, v) for k, v in
              (("weak", weak), ("w2s", w2s), ("ceiling", ceiling))}
    kinds = {isinstance(v, float) for v in values.values()}
    if kinds == {True}:
        value, reason = pgr_with_reason(values["weak"], values["w2s"], values["ceiling"])
        return {"": {"pgr": value, "reason": reason, "ci_low": None, "ci_high": None,
                     "weak_acc": values["weak"], "w2s_acc": values["w2s"],
                     "strong_ceiling_acc": values["ceiling"], "n": None}}
    if kinds != {False}:
        raise W2SError("--weak, --w2s and --ceiling must all be accuracies or all be files")
    ids = sorted(values["weak"])
    for k in ("w2s", "ceiling"):
        if sorted(values[k]) != ids:
            raise W2SError(f"--{k} covers other example ids than --weak; PGR needs the same "
                           "test examples for all three models")
    return {"": bootstrap_pgr([values["weak"][i] for i in ids], [values["w2s"][i] for i in ids],
                              [values["ceiling"][i] for i in ids], n_boot=n_boot, seed=seed)}
