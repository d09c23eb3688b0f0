"""Win rate: how often a candidate model's output beats a baseline's, as judged.

Encoding (AlpacaEval's): every matched prompt gets a preference

    1   = the baseline wins,    2 = the candidate wins,    1.5 = a tie

and the win rate is the mean of ``(preference - 1) * 100``: 0 (always loses) .. 100 (always
wins), ties counting half. Its standard error is that of a mean, ``std / sqrt(n)`` with the sample
standard deviation (ddof = 1, as pandas' ``sem`` and AlpacaEval's ``standard_error``).

Where the preferences come from (:mod:`w2s.evaluation.judges`):

- a PAIRWISE judge (an LLM) sees each pair twice, candidate first and baseline first. It must
  prefer the candidate in both orders for a 2, the baseline in both for a 1; any disagreement is a
  tie (1.5). A judge that always picks the first position therefore scores all ties, not a win.
- a REWARD judge scores each output on its own; the higher score wins, equal scores tie.

Length-controlled win rate (AlpacaEval 2, Dubois et al. 2024): LLM judges like long answers. Fit a
logistic regression of the preference on the length difference and the instruction, then ask
"what if both outputs had the same length?": predict with the length term set to zero and average.
See :func:`fit_length_glm`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from w2s.errors import W2SError
from w2s.evaluation.generations import pair_generations, read_generations
from w2s.evaluation.judges import build_judge, parse_judge
from w2s.runs import Run, file_hash

BASELINE_WINS, TIE, CANDIDATE_WINS = 1.0, 1.5, 2.0
PREFERENCES = (BASELINE_WINS, TIE, CANDIDATE_WINS)

LC_MIN_ROWS = 20
"""Fewer matched rows than this and the length-controlled win rate is not reported."""


# --------------------------------------------------------------------------------------------
# preferences


def _preferences(preferences: Sequence[float]) -> np.ndarray:
    arr = np.asarray(list(preferences), dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise W2SError("win rate needs at least one preference (1 = baseline wins, 1.5 = tie, "
                       "2 = candidate wins)")
    bad = ~np.isin(arr, PREFERENCES)
    if bad.any():
        raise W2SError(f"preferences must be 1 (baseline wins), 1.5 (tie) or 2 (candidate "
                       f"wins); got {arr[bad][0]!r} at position {int(np.argmax(bad))}")
    return arr


LC_METHOD = ("minimal length GLM: preference ~ standardised length difference + instruction, "
             "predicted without the length term; NOT AlpacaEval 2's LC win rate (no "
             "instruction-difficulty covariate, no gamed-baseline regularisation)")
"""What metrics.json's ``lc_win_rate`` is (``lc_win_rate_method``), so no one reads it as
AlpacaEval 2's figure."""


def win_rate(preferences: Sequence[float], clusters: Sequence[Any] | None = None
             ) -> tuple[float, float]:
    """``(win rate, standard error)``, both in percentage points.

    win rate = mean((p - 1) * 100); standard error = sample std (ddof=1) / sqrt(n), NaN for n = 1
    (one judgment says nothing about its spread).

    ``clusters`` (e.g. each judgment's prompt): judgments of one cluster are not independent
    (several samples answer one prompt), so the standard error is the cluster-robust one,
    ``sqrt(G / (G - 1) * sum_c (sum_{i in c} (x_i - mean))^2) / n`` over G clusters: with one
    judgment per cluster it is exactly the plain one; NaN for one cluster.

    >>> win_rate([2, 2, 1, 1.5])[0]
    62.5
    """
    scores = (_preferences(preferences) - 1.0) * 100.0
    n = scores.size
    if clusters is None:
        se = float(scores.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        return float(scores.mean()), se
    if len(clusters) != n:
        raise W2SError(f"{len(clusters)} clusters for {n} preferences; give one per judgment")
    _, group = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    sums = np.bincount(group, weights=scores - scores.mean())
    g = sums.size
    se = float(math.sqrt(g / (g - 1) * float((sums ** 2).sum())) / n) if g > 1 else float("nan")
    return float(scores.mean()), se


def outcome_counts(preferences: Sequence[float]) -> dict[str, int]:
    """``{"wins", "ties", "losses", "n"}`` from the candidate's point of view."""
    arr = _preferences(preferences)
    return {"wins": int((arr == CANDIDATE_WINS).sum()), "ties": int((arr == TIE).sum()),
            "losses": int((arr == BASELINE_WINS).sum()), "n": int(arr.size)}


def preference_from_verdicts(candidate_first: float, baseline_first: float) -> float:
    """The preference from one pairwise judgment in each order.

    Each verdict names the POSITION the judge preferred: 1 (first shown), 2 (second shown) or 1.5
    (no preference). With the candidate first, verdict 1 is a candidate win; with the baseline
    first, verdict 2 is. Both orders must agree for a win or a loss; anything else is a tie.

    >>> preference_from_verdicts(1, 2)    # candidate preferred in both orders
    2.0
    >>> preference_from_verdicts(1, 1)    # always the first position: position bias, a tie
    1.5
    """
    for v in (candidate_first, baseline_first):
        if v not in PREFERENCES:
            raise ValueError(f"a verdict is 1, 1.5 or 2, got {v!r}")
    cand_says = {1: CANDIDATE_WINS, 2: BASELINE_WINS}.get(candidate_first, TIE)
    base_says = {2: CANDIDATE_WINS, 1: BASELINE_WINS}.get(baseline_first, TIE)
    return cand_says if cand_says == base_says else TIE


def preference_from_scores(candidate_score: float, baseline_score: float) -> float:
    """Reward judges: the higher score wins, equal scores tie.

    >>> preference_from_scores(0.8, 0.1), preference_from_scores(0.3, 0.3)
    (2.0, 1.5)
    """
    if candidate_score > baseline_score:
        return CANDIDATE_WINS
    if candidate_score < baseline_score:
        return BASELINE_WINS
    return TIE


# --------------------------------------------------------------------------------------------
# length-controlled win rate


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def fit_length_glm(preferences: Sequence[float], candidate_lengths: Sequence[float],
                   baseline_lengths: Sequence[float], instruction_ids: Sequence[Any], *,
                   instruction_difficulty: Mapping[Any, float] | None = None,
                   instruction_prior: float = 1.0, weak_prior: float = 1e-3,
                   max_iter: int = 100, tol: float = 1e-10) -> dict[str, Any]:
    """Fit AlpacaEval 2's length GLM and predict the length-controlled win rate.

    The model, for row i (instruction j(i)), with y_i = preference_i - 1 in {0, 0.5, 1} (a tie is
    a soft label of one half, as AlpacaEval does)::

        logit P(candidate wins) = psi + theta * tanh(delta_i / sd(delta)) + d_j(i)

    - ``delta = candidate length - baseline length``, divided by its standard deviation but NOT
      centred, so delta = 0 still means "same length"; tanh bounds the effect of a huge gap.
    - ``psi``: the candidate's quality against the baseline, all else equal.
    - ``d_j``, the instruction's difficulty: by default one effect per distinct instruction id
      with a N(0, 1/instruction_prior) prior (ridge penalty ``instruction_prior / 2 * d_j^2``).
      With a single comparison per instruction these are identified only through that prior (they
      soak up little); they matter when instructions repeat. With ``instruction_difficulty``
      (id -> number, e.g. AlpacaEval's precomputed difficulties) the term is ``phi * difficulty``
      with phi fitted instead.
    - psi, theta (and phi) get a tiny ridge ``weak_prior`` so perfectly separable data (every
      longer answer won) still gives finite coefficients.

    The length-controlled win rate is ``100 * mean_i sigmoid(psi + d_j(i))``: the prediction with
    the length term at zero, averaged over the same rows. Fitted by Newton's method on the
    penalised log-likelihood (strictly convex: one optimum). The Hessian's instruction block is
    diagonal (each row has one instruction), so a step costs O(rows + instructions) via the Schur
    complement, not a dense (instructions x instructions) solve.

    Returns ``{"lc_win_rate", "intercept", "length_coef", "difficulty_coef", "n",
    "n_instructions", "delta_sd", "iterations", "converged"}``.
    """
    y = _preferences(preferences) - 1.0
    n = y.size
    c = np.asarray(candidate_lengths, dtype=float)
    b = np.asarray(baseline_lengths, dtype=float)
    if c.shape != (n,) or b.shape != (n,) or len(instruction_ids) != n:
        raise W2SError(f"length-controlled win rate needs one candidate length, baseline length "
                       f"and instruction id per preference ({n}); got {c.size}, {b.size}, "
                       f"{len(instruction_ids)}")
    delta = c - b
    sd = float(delta.std(ddof=1)) if n > 1 else 0.0
    if not sd > 0:
        raise W2SError("length-controlled win rate needs length differences that vary; all "
                       f"{n} rows have the same one")
    length = np.tanh(delta / sd)
    if instruction_difficulty is not None:
        missing = [i for i in instruction_ids if i not in instruction_difficulty]
        if missing:
            raise W2SError(f"instruction_difficulty has no value for instruction {missing[0]!r}")
        diff = np.asarray([float(instruction_difficulty[i]) for i in instruction_ids])
        dense = np.stack([np.ones(n), length, diff], 1)
        groups, n_groups = np.zeros(n, dtype=int), 0
    else:
        dense = np.stack([np.ones(n), length], 1)
        _, groups = np.unique(np.asarray([str(i) for i in instruction_ids]), return_inverse=True)
        n_groups = int(groups.max()) + 1
    k = dense.shape[1]
    u = np.zeros(k)                # psi, theta (, phi)
    d = np.zeros(n_groups)         # per-instruction effects

    def logits(u, d):
        z = dense @ u
        return z + d[groups] if n_groups else z

    def objective(u, d):
        z = logits(u, d)
        nll = np.sum(np.logaddexp(0.0, z) - y * z)
        return nll + 0.5 * weak_prior * u @ u + 0.5 * instruction_prior * d @ d

    obj = objective(u, d)
    converged, iterations = False, 0
    for step in range(1, max_iter + 1):
        iterations = step
        p = _sigmoid(logits(u, d))
        r = p - y
        s = p * (1.0 - p)
        g_u = dense.T @ r + weak_prior * u
        A = (dense * s[:, None]).T @ dense + weak_prior * np.eye(k)
        if n_groups:
            g_d = np.bincount(groups, r, n_groups) + instruction_prior * d
            D = np.bincount(groups, s, n_groups) + instruction_prior           # diagonal block
            B = np.stack([np.bincount(groups, s * dense[:, m], n_groups) for m in range(k)])
            step_u = np.linalg.solve(A - (B / D) @ B.T, g_u - B @ (g_d / D))
            step_d = (g_d - B.T @ step_u) / D
        else:
            step_u, step_d = np.linalg.solve(A, g_u), np.zeros(0)
        t = 1.0
        while True:  # backtracking: Newton with a step the objective accepts
            new_obj = objective(u - t * step_u, d - t * step_d)
            if new_obj <= obj + 1e-12 or t < 1e-8:
                break
            t *= 0.5
        u, d = u - t * step_u, d - t * step_d
        decrease, obj = obj - new_obj, new_obj
        if decrease < tol * max(1.0, abs(obj)):
            converged = True
            break
    z0 = u[0] + (u[2] * dense[:, 2] if instruction_difficulty is not None else d[groups])
    return {"lc_win_rate": float(100.0 * _sigmoid(z0).mean()), "intercept": float(u[0]),
            "length_coef": float(u[1]),
            "difficulty_coef": float(u[2]) if instruction_difficulty is not None else None,
            "n": int(n), "n_instructions": n_groups or len(set(map(str, instruction_ids))),
            "delta_sd": sd, "iterations": iterations, "converged": converged}


def length_controlled_win_rate(preferences: Sequence[float], candidate_lengths: Sequence[float],
                               baseline_lengths: Sequence[float],
                               instruction_ids: Sequence[Any], **kwargs: Any) -> float:
    """The AlpacaEval-2-style length-controlled win rate in [0, 100] (see :func:`fit_length_glm`).

    Lengths are whatever unit you choose (AlpacaEval uses characters); only their standardised
    difference enters. W2SError when the lengths do not vary. Keyword arguments go to
    :func:`fit_length_glm` (``instruction_difficulty``, ``instruction_prior``).
    """
    return fit_length_glm(preferences, candidate_lengths, baseline_lengths, instruction_ids,
                          **kwargs)["lc_win_rate"]


def lc_win_rate_with_reason(preferences: Sequence[float], candidate_lengths: Sequence[float],
                            baseline_lengths: Sequence[float], instruction_ids: Sequence[Any],
                            *, min_rows: int = LC_MIN_ROWS) -> tuple[dict | None, str | None]:
    """``(fit, None)`` or ``(None, reason)`` when there is too little to fit: fewer than
    ``min_rows`` rows, or fewer than two distinct length differences."""
    n = len(preferences)
    if n < min_rows:
        return None, f"needs at least {min_rows} matched rows, have {n}"
    deltas = {float(c) - float(b) for c, b in zip(candidate_lengths, baseline_lengths, strict=True)}
    if len(deltas) < 2:
        return None, "needs at least two distinct length differences"
    return fit_length_glm(preferences, candidate_lengths, baseline_lengths, instruction_ids), None


# --------------------------------------------------------------------------------------------
# judging generations


def judge_pairs(judge, pairs: list[tuple[str, dict, dict]]) -> tuple[list[float], list[dict]]:
    """Preferences and per-row judgment records for matched (key, candidate, baseline) rows."""
    prompts = [c["prompt"] for _, c, _ in pairs]
    cand = [c["response"] for _, c, _ in pairs]
    base = [b["response"] for _, _, b in pairs]
    rows = [{"id": key, "prompt": p, "candidate_length": len(c), "baseline_length": len(b)}
            for (key, _, _), p, c, b in zip(pairs, prompts, cand, base, strict=True)]
    prefs: list[float] = []
    if judge.kind == "reward":
        scores = judge.score(prompts + prompts, cand + base)
        n = len(pairs)
        for row, cs, bs in zip(rows, scores[:n], scores[n:], strict=True):
            pref = preference_from_scores(cs, bs)
            row.update(candidate_score=cs, baseline_score=bs, preference=pref)
            prefs.append(pref)
        return prefs, rows
    items = ([(p, c, b) for p, c, b in zip(prompts, cand, base, strict=True)]
             + [(p, b, c) for p, c, b in zip(prompts, cand, base, strict=True)])
    verdicts = judge.compare(items)
    n = len(pairs)
    for row, first, second in zip(rows, verdicts[:n], verdicts[n:], strict=True):
        pref = preference_from_verdicts(first["verdict"], second["verdict"])
        row.update(verdict_candidate_first=first["verdict"],
                   verdict_baseline_first=second["verdict"], preference=pref)
        for name, v in (("candidate_first", first), ("baseline_first", second)):
            for field_ in ("margin", "raw", "unparsed", "cached"):
                if field_ in v:
                    row[f"{field_}_{name}"] = v[field_]
        prefs.append(pref)
    return prefs, rows


def evaluate_winrate(candidate_rows, baseline_rows, judge, *, run=None, cache: Any = True,
                     judgments: str = "judgments.jsonl", log: dict | None = None,
                     **judge_options: Any) -> dict[str, Any]:
    """Judge candidate outputs against baseline outputs; the win-rate figures as a dict.

    The library entry point methods call (search, WSPO, MACPO) and ``w2s eval winrate`` uses.

    Args:
        candidate_rows, baseline_rows: ``{id, prompt, response}`` rows (or AlpacaEval records),
            paired by id, else by prompt (:func:`~w2s.evaluation.generations.pair_generations`).
        judge: a judge string (``vader``, ``rm:MODEL``, ``llm:MODEL``, ``api:URL#MODEL``, ...)
            or a built :class:`~w2s.evaluation.judges.Judge` (build it once to reuse a model).
        run: a :class:`w2s.runs.Run`; when given, the judgments (one row per pair: id, both
            verdicts or both scores, the preference, lengths) are written to it as the file
            ``judgments`` (default ``judgments.jsonl``; e.g. ``judgments-cbs.jsonl`` for one of
            several candidates) and the stage logged with the extra fields ``log``. The caller
            still calls ``run.finish``.
        cache: the judgment cache of API judges: True (the w2s cache), False, or a folder.
        judge_options: passed to :func:`~w2s.evaluation.judges.build_judge`.

    Returns ``{"win_rate", "win_rate_se", "wins", "ties", "losses", "n", "unmatched",
    "lc_win_rate", "lc_win_rate_reason", "lc_length_coef", "judge", "judge_kind",
    "candidate_reward_mean", "baseline_reward_mean"}`` (reward means only for reward judges;
    pairwise judges add ``order_disagreements``, and API judges ``unparsed`` and ``cached``).
    """
    pairing = pair_generations(candidate_rows, baseline_rows)
    judge = build_judge(judge, cache=cache, **judge_options)
    prefs, rows = judge_pairs(judge, pairing.pairs)
    # several answers to one prompt are not independent: the standard error is clustered by
    # prompt, and the length-controlled fit's instruction effects are keyed by prompt
    prompts = [r["prompt"] for r in rows]
    value, se = win_rate(prefs, clusters=prompts)
    metrics: dict[str, Any] = {"win_rate": value, "win_rate_se": se if se == se else None,
                               "n_prompts": len(set(prompts)),
                               **outcome_counts(prefs), "unmatched": pairing.report()}
    fit, reason = lc_win_rate_with_reason(prefs, [r["candidate_length"] for r in rows],
                                          [r["baseline_length"] for r in rows], prompts)
    metrics["lc_win_rate"] = fit["lc_win_rate"] if fit else None
    metrics["lc_win_rate_method"] = LC_METHOD
    metrics["lc_win_rate_reason"] = reason
    metrics["lc_length_coef"] = fit["length_coef"] if fit else None
    metrics["judge"] = judge.identity()
    metrics["judge_kind"] = judge.kind
    if judge.kind == "reward":
        metrics["candidate_reward_mean"] = float(np.mean([r["candidate_score"] for r in rows]))
        metrics["baseline_reward_mean"] = float(np.mean([r["baseline_score"] for r in rows]))
    else:
        metrics["order_disagreements"] = sum(  # ties made by the two orders disagreeing
            r["preference"] == TIE and not (r["verdict_candidate_first"] == TIE
                                            == r["verdict_baseline_first"]) for r in rows)
        if any("unparsed_candidate_first" in r for r in rows):
            metrics["unparsed"] = sum(bool(r.get(f"unparsed_{o}")) for r in rows
                                      for o in ("candidate_first", "baseline_first"))
        if any("cached_candidate_first" in r for r in rows):
            metrics["cached"] = sum(bool(r.get(f"cached_{o}")) for r in rows
                                    for o in ("candidate_first", "baseline_first"))
    if run is not None:
        run.write_rows(judgments, rows)
        run.log({"stage": "winrate", "judge": judge.spec, "n": len(rows),
                 "win_rate": value, "unmatched": pairing.report(), "file": judgments,
                 **(log or {})})
    return metrics


def eval_winrate(candidate: str | Path, baseline: str | Path, judge: str, *,
                 run_dir: str | Path | None = None, cache: Any = True,
                 judges: Sequence[str] = (), repeats: int = 1,
                 **judge_options: Any) -> tuple[dict[str, Any], Path]:
    """What ``w2s eval winrate`` does: read both files, judge, write a ``winrate`` run directory.

    ``judges``: more judges, each judging the same pairs (their agreement with ``judge`` goes
    to ``judge_robustness``); ``repeats``: how many times each non-deterministic judge judges
    everything (the win rate is then the median; :mod:`w2s.evaluation.robust`).

    Input problems (files, judge string, model loading, a refusing API server) are W2SErrors
    raised before anything is kept: the run directory this call created is removed (API
    judgments already made stay in the judgment cache). Returns ``(metrics, run path)``.
    """
    from w2s.evaluation.robust import run_judges
    from w2s.runs import read_jsonl

    specs = list(dict.fromkeys([judge, *judges]))
    for spec in specs:
        parse_judge(spec)
    cand_rows, base_rows = read_generations(candidate), read_generations(baseline)
    built = build_judge(judge, cache=cache, **judge_options)
    config = {"candidate": str(candidate), "baseline": str(baseline), "judge": judge,
              "judges": specs[1:], "judge_repeats": repeats,
              "judge_options": {k: v for k, v in judge_options.items() if v is not None},
              "cache": str(cache) if not isinstance(cache, bool) else cache}
    data = {"candidate": file_hash(candidate), "baseline": file_hash(baseline)}
    with Run.start("winrate", config, run_dir=run_dir, headline=("win_rate",),
                   env_extra={"judge": built.identity(), "data_hashes": data}) as run:
        def build(spec: str, repeat: int):
            if spec == judge and repeat == 0:
                return built
            return build_judge(spec, cache=cache, repeat=repeat, **judge_options)

        def once(j, name: str) -> tuple[dict, dict]:
            metrics = evaluate_winrate(cand_rows, base_rows, j, run=run, judgments=name)
            rows = read_jsonl(run.path / name)
            return metrics, {r["id"]: r["preference"] for r in rows}

        metrics = run_judges(specs, repeats, build, once, figure="win_rate")
        full = run.finish({**metrics, "gold_reward": metrics.get("candidate_reward_mean"),
                           "baseline_gold_reward": metrics.get("baseline_reward_mean")})
    return full, run.path
