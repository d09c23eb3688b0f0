"""The figures of ``w2s reason``: per-problem correctness, the stage-II pairs over train_2, and
accuracy with a bootstrap CI and PGR of every model (torch-free)."""

from __future__ import annotations

import random
from typing import Any

from w2s.evaluation.checking import extract_answer, is_correct
from w2s.methods.reason.config import ReasonConfig
from w2s.methods.reason.selection import contrast_pairs


def final_answer(text: str) -> str | None:
    """A solution's final answer as the method reads it: a marked one only (``####``,
    ``\\boxed{}``, "the answer is"), never the last number of a solution that states none (the
    authors' extraction gives '' then, which agrees with nothing and is never correct)."""
    return extract_answer(text, fallback=False)


def answers(texts: list[str]) -> list[str | None]:
    return [final_answer(t) for t in texts]


def correctness(texts: list[str], rows: list[dict]) -> list[bool]:
    """Per problem: does the solution's final answer equal the gold one."""
    return [is_correct(final_answer(t), r["answer"]) for t, r in zip(texts, rows, strict=True)]


def build_pairs(cfg: ReasonConfig, problems: list[dict], weak_w2s: list[str],
                samples: list[list[str]]) -> list[dict]:
    """Stage II's pairs over train_2 (:func:`contrast_pairs` per problem, one seeded rng), with
    the problem's id and each side's correctness against gold (recorded, never used)."""
    rng = random.Random(f"reason-pairs-{cfg.seed}")
    pairs = []
    for row, weak, outs in zip(problems, weak_w2s, samples, strict=True):
        for p in contrast_pairs(row["prompt"], weak, final_answer(weak), outs, answers(outs),
                                mode=cfg.pairs, min_confidence=cfg.min_confidence,
                                flip_confidence=cfg.flip_confidence, max_pairs=cfg.max_pairs,
                                rng=rng):
            pairs.append({"id": row["id"], **p,
                          "chosen_correct": is_correct(final_answer(p["chosen"]), row["answer"]),
                          "rejected_correct": is_correct(final_answer(p["rejected"]),
                                                         row["answer"])})
    return pairs


def pair_summary(pairs: list[dict]) -> dict[str, Any]:
    """How many pairs of each kind, and how often the chosen side is right and the rejected
    side wrong (against gold, which the method never saw)."""
    n = len(pairs)
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
    return {"n_pairs": n, "pair_kinds": kinds,
            "pairs_chosen_correct": mean([p["chosen_correct"] for p in pairs]),
            "pairs_rejected_wrong": mean([not p["rejected_correct"] for p in pairs]),
            "pairs_ordered_right": mean([p["chosen_correct"] and not p["rejected_correct"]
                                          for p in pairs])}


def mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def figures(test_rows: list[dict], tested: dict[str, list[str]], weak_test: list[str],
            ceiling_test: list[str], final_name: str, n_boot: int, seed: int
            ) -> tuple[dict[str, Any], list[dict]]:
    """Accuracy (bootstrap CI) of every model on the test problems, PGR of every strong model
    against the weak supervisor and the gold ceiling (:func:`w2s.evaluation.bootstrap_pgr`),
    the headline ``pgr`` of ``final_name``; and the predictions rows ``w2s eval pgr`` reads."""
    from w2s.evaluation import ROLE_CEILING, ROLE_W2S, ROLE_WEAK, bootstrap_accuracy, bootstrap_pgr

    test = test_rows
    weak_c, ceil_c = correctness(weak_test, test), correctness(ceiling_test, test)
    accuracy = {"weak": bootstrap_accuracy(weak_c, n_boot=n_boot, seed=seed),
                "strong_ceiling": bootstrap_accuracy(ceil_c, n_boot=n_boot, seed=seed)}
    pgrs: dict[str, dict] = {}
    rows: list[dict] = []
    for name, texts in tested.items():
        c = correctness(texts, test)
        accuracy[name] = bootstrap_accuracy(c, n_boot=n_boot, seed=seed)
        pgrs[name] = bootstrap_pgr(weak_c, c, ceil_c, n_boot=n_boot, seed=seed)
        for role, cs in ((ROLE_WEAK, weak_c), (ROLE_CEILING, ceil_c), (ROLE_W2S, c)):
            rows += [{"id": r["id"], "pair": name, "role": role, "correct": bool(x)}
                     for r, x in zip(test, cs, strict=True)]
    head = pgrs[final_name]
    out = {"weak_acc": accuracy["weak"]["acc"],
           "strong_ceiling_acc": accuracy["strong_ceiling"]["acc"],
           "w2s_acc": accuracy[final_name]["acc"], "final_model": final_name,
           "pgr": head["pgr"], "pgr_reason": head["reason"], "pgr_ci_low": head["ci_low"],
           "pgr_ci_high": head["ci_high"], "accuracy": accuracy,
           "pgr_by_stage": {k: {f: v[f] for f in ("pgr", "reason", "ci_low", "ci_high",
                                                  "w2s_acc")} for k, v in pgrs.items()}}
    return out, rows
