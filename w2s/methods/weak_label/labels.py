"""The pure arithmetic of ``w2s weak-label`` (torch-free, hand-checked in the tests): the
labelling rule, the agreement-by-confidence table and the gap-recovered figure.

The labelling rule (Tao & Li, arXiv 2409.08813, section 3): the weak model pi_w after DPO on the
labelled split scores each response of an unlabelled pair (x, y_1, y_2) with its implicit reward

    r(x, y) = beta * (log pi_w(y|x) - log pi_w_ref(y|x))

and the response with the higher reward is "chosen". The weak annotator's confidence is its
Bradley-Terry probability of that choice, ``p = sigmoid(margin)`` with ``margin = |r_1 - r_2|``
(so p is in [0.5, 1)); both are recorded. A tie (equal rewards) picks y_1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def sigmoid(z: float) -> float:
    """The logistic function, without overflow for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def implicit_reward(logp_policy: float, logp_ref: float, beta: float) -> float:
    """DPO's implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` of one response."""
    return beta * (float(logp_policy) - float(logp_ref))


def label_pair(r1: float, r2: float) -> dict[str, Any]:
    """The weak label of one pair from the implicit rewards of its two responses:
    ``{"choice": 1 or 2, "margin": |r1 - r2|, "p": sigmoid(margin)}`` (a tie picks 1).

    >>> label_pair(0.3, -0.2)["choice"], round(label_pair(0.3, -0.2)["margin"], 6)
    (1, 0.5)
    """
    r1, r2 = float(r1), float(r2)
    if not (math.isfinite(r1) and math.isfinite(r2)):
        raise ValueError(f"implicit rewards must be finite, got {r1} and {r2}")
    margin = abs(r1 - r2)
    return {"choice": 1 if r1 >= r2 else 2, "margin": margin, "p": sigmoid(margin)}


def label_pairs(rewards_1: Sequence[float], rewards_2: Sequence[float]) -> list[dict[str, Any]]:
    """:func:`label_pair` of every pair, in order."""
    if len(rewards_1) != len(rewards_2):
        raise ValueError(f"{len(rewards_1)} and {len(rewards_2)} rewards: one per response")
    return [label_pair(a, b) for a, b in zip(rewards_1, rewards_2, strict=True)]


def agreement_by_bin(p: Sequence[float], agree: Sequence[bool], n_bins: int = 5
                     ) -> list[dict[str, Any]]:
    """Agreement of the weak labels with the gold labels by confidence bin: the pairs sorted by
    ``p`` (ties in input order) and cut into ``n_bins`` consecutive groups of sizes as equal as
    can be (the first ``len % n_bins`` groups one larger: quantiles of p). Each bin:
    ``{"bin", "n", "p_min", "p_max", "agreement"}``; fewer pairs than bins gives one bin per pair.

    >>> [b["agreement"] for b in agreement_by_bin([0.9, 0.6, 0.8, 0.7], [1, 0, 1, 1], 2)]
    [0.5, 1.0]
    """
    if len(p) != len(agree):
        raise ValueError(f"{len(p)} confidences and {len(agree)} agreements")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    order = sorted(range(len(p)), key=lambda i: (float(p[i]), i))
    k = min(n_bins, len(order))
    bins, start = [], 0
    for b in range(k):
        size = len(order) // k + (1 if b < len(order) % k else 0)
        idx = order[start:start + size]
        start += size
        bins.append({"bin": b, "n": len(idx), "p_min": float(p[idx[0]]),
                     "p_max": float(p[idx[-1]]),
                     "agreement": sum(bool(agree[i]) for i in idx) / len(idx)})
    return bins


def agreement(agree: Sequence[bool]) -> float | None:
    """The fraction of pairs whose weak label is the gold label; None for no pairs."""
    return sum(bool(a) for a in agree) / len(agree) if len(agree) else None


def gap_recovered(start: float | None, weak_labelled: float | None, gold_labelled: float | None
                  ) -> tuple[float | None, str | None]:
    """``(weak_labelled - start) / (gold_labelled - start)``, or ``(None, reason)`` where it is
    undefined: a figure missing, or the ceiling (the strong model trained on gold labels) not
    beating its start, so there is no gap to recover.

    >>> gap_recovered(0.0, 0.25, 0.5)[0]
    0.5
    """
    named = (("start", start), ("weak-labelled", weak_labelled), ("gold-labelled", gold_labelled))
    for name, v in named:
        if v is None or not math.isfinite(float(v)):
            return None, f"undefined: the {name} figure is missing ({v!r})"
    gap = float(gold_labelled) - float(start)
    if gap <= 0:
        return None, (f"undefined: the strong model trained on gold labels ({gold_labelled:.4f}) "
                      f"does not beat its start ({start:.4f}), so there is no gap to recover")
    return (float(weak_labelled) - float(start)) / gap, None
