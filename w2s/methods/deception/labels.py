"""The labels W2S deception trains on, as pure functions (torch-free): a supervisor's
preferences turned into ordered pairs with soft labels and the confidence filter
(:func:`oriented`), the helpfulness pairs that filter keeps (:func:`kept_helpful`), and the
ground-truth order (:func:`ground_truth`)."""

from __future__ import annotations

from w2s.errors import W2SError


def oriented(rows: list[dict], probs: list[float], threshold: float | None = None
             ) -> tuple[list[dict], dict]:
    """Labels from a supervisor's preferences ``probs`` (of the ground-truth chosen response):
    each pair ordered by the supervisor (swapped where it prefers the rejected one, ``truth`` 0
    there), ``label_prob`` its probability for the pair's (new) chosen response (the soft label,
    ``max(s, 1 - s)``), keeping only pairs with ``max(s, 1 - s) >= threshold`` when given.
    Returns (rows, stats); the stats' accuracies use the ground truth for REPORTING only."""
    out = []
    for r, s in zip(rows, probs, strict=True):
        if threshold is not None and max(s, 1.0 - s) < threshold:
            continue
        agree = s >= 0.5
        out.append({"id": r["id"], "prompt": r["prompt"],
                    "chosen": r["chosen"] if agree else r["rejected"],
                    "rejected": r["rejected"] if agree else r["chosen"],
                    "truth": 1.0 if agree else 0.0, "explicit": 0.0,
                    "label_prob": s if agree else 1.0 - s})
    stats = {"n_half": len(rows), "n_kept": len(out),
             "label_acc": sum(s >= 0.5 for s in probs) / len(probs),
             "label_acc_kept": (sum(r["truth"] for r in out) / len(out)) if out else None}
    if not out:
        raise W2SError(f"no weak label reaches conf_threshold {threshold}: every pair was "
                       "filtered out; lower --conf-threshold")
    return out, stats


def kept_helpful(helpful: list[dict], kept: list[bool]) -> list[dict]:
    """The implicit conflict's helpfulness pairs after the confidence filter kept ``kept`` of the
    weak-labeled half B, as the authors subsample them: position by position when the two sets
    have one size (the default, ``n_helpful`` none), else the same fraction, from the front."""
    if len(helpful) == len(kept):
        return [h for h, k in zip(helpful, kept, strict=True) if k]
    return helpful[:round(len(helpful) * sum(kept) / len(kept))]


def ground_truth(rows: list[dict]) -> list[dict]:
    """Training rows in ground-truth order (``truth`` 1, no explicit term)."""
    return [{"id": r["id"], "prompt": r["prompt"], "chosen": r["chosen"],
             "rejected": r["rejected"], "truth": 1.0, "explicit": 0.0, "label_prob": 1.0}
            for r in rows]
