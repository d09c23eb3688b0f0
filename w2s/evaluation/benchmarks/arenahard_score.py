"""Arena-Hard-Auto's scoring: judgments -> battles -> Bradley-Terry -> win rate vs the baseline.

Pure functions (numpy only), each the computation of Arena-Hard-Auto's code for a setting (see
:mod:`.arenahard` for which files):

- :func:`game_scores`, :func:`battles_from_games`: the two games of a question as battles, the
  model's score per battle (1 win, 0.5 tie, 0 loss), a strong verdict ``>>`` as ``weight`` (3)
  battles;
- :func:`fit_logistic`: the weighted logistic regression with soft targets their BT fits are
  (no intercept; v0.1 plain ``penalty=None``, v0.1 style control scikit-learn's default L2 with
  C = 1, v2 unpenalised BCE), solved to its optimum by Newton's method;
- :func:`compute_mle_elo`: v0.1's BT ratings (400 per log10-odds, the baseline anchored at 1000);
- :func:`style_features`, :func:`standardise`: the style-control covariates;
- :func:`arena_score`: the score and interval of a setting, with or without style control.

Where their code leaves a case undefined this says what it does instead: a style feature that
is constant over the battles (their standardisation divides by zero and asserts) is left out of
the fit and named; a v2 label outside their table (their lookup raises) drops the question as an
unparsed one does. Their v2 fit is L-BFGS stopped after 50 iterations at step size 0.1; this
solves the same problem to convergence, so figures can differ in the last digits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from w2s.errors import W2SError

WEIGHT = 3
"""A strong verdict (``A>>B``) is worth this many battles (``--weight`` of v0.1, ``weight`` of
v2's ``load_judgments``)."""

V2_LABELS = {"A>B": (1.0, False), "A>>B": (1.0, True), "A=B": (0.5, False),
             "A<<B": (0.0, True), "A<B": (0.0, False), "B>A": (0.0, False),
             "B>>A": (0.0, True), "B=A": (0.5, False), "B<<A": (1.0, True),
             "B<A": (1.0, False)}
"""v2's ``label_to_score``: assistant A's score for each label and whether it is strong."""
V01_LABELS = ("A>B", "A>>B", "A=B", "B>A", "B>>A")
"""The labels v0.1's ``get_battles_from_row`` knows; any other is no battle."""

SCALE, BASE, INIT_RATING, ANCHOR = 400.0, 10.0, 1000.0, 1000.0
STYLE_NAMES = ("length", "header", "list", "bold")


def game_scores(label: str | None, model_is_a: bool, setting: str,
                weight: int = WEIGHT) -> list[float] | None:
    """The model's battle scores from one game's verdict, or None when the label is no verdict
    for ``setting`` (None, or outside its table)."""
    table = ({k: v for k, v in V2_LABELS.items() if k in V01_LABELS} if setting == "v0.1"
             else V2_LABELS)
    if label not in table:
        return None
    a_score, strong = table[label]
    score = a_score if model_is_a else 1.0 - a_score
    return [score] * (weight if strong else 1)


def battles_from_games(games: Sequence[tuple[Any, str | None, str | None]], setting: str,
                       weight: int = WEIGHT) -> dict[str, Any]:
    """Each ``(question_id, label_game_1, label_game_2)`` (game 1: the baseline is A, game 2:
    the model is A) -> the battles, in their code's order.

    v0.1: game 1's battles then game 2's; a game without a verdict gives none.
    v2: game 2's then game 1's; a question with a game without a verdict gives none.

    Returns ``{"scores", "question_ids", "n_games", "n_unparsed", "n_questions_dropped"}``
    (``scores`` the model's, one per battle; ``question_ids`` parallel to it).
    """
    scores: list[float] = []
    qids: list[Any] = []
    unparsed = dropped = 0
    for qid, first, second in games:
        s1 = game_scores(first, False, setting, weight)
        s2 = game_scores(second, True, setting, weight)
        unparsed += (s1 is None) + (s2 is None)
        if setting == "v2":
            if s1 is None or s2 is None:
                dropped += 1
                continue
            got = s2 + s1
        else:
            got = (s1 or []) + (s2 or [])
            dropped += not got
        scores += got
        qids += [qid] * len(got)
    return {"scores": scores, "question_ids": qids, "n_games": 2 * len(games),
            "n_unparsed": unparsed, "n_questions_dropped": dropped}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(X: Any, y: Any, weights: Any = None, l2: float = 0.0,
                 max_iter: int = 100) -> np.ndarray:
    """argmin_b  sum_i w_i [log(1 + e^{x_i b}) - y_i x_i b] + l2 / 2 |b|^2  (no intercept;
    ``y`` in [0, 1], a tie 0.5). Newton's method with a backtracking line search; on separable
    data (a model winning every battle) the coefficients grow until ``max_iter``."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    beta = np.zeros(X.shape[1])

    def loss(b: np.ndarray) -> float:
        z = X @ b
        return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * l2 * b @ b)

    f, tol = loss(beta), 1e-10 * max(1.0, float(w.sum()))
    for _ in range(max_iter):
        p = _sigmoid(X @ beta)
        grad = X.T @ (w * (p - y)) + l2 * beta
        if np.max(np.abs(grad)) < tol:
            break
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + l2 * np.eye(len(beta))
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t = 1.0
        while t > 1e-12:
            new = beta - t * step
            fn = loss(new)
            if fn <= f:
                break
            t *= 0.5
        else:
            break
        if np.max(np.abs(new - beta)) < 1e-13:
            beta = new
            break
        beta, f = new, fn
    return beta


def compute_mle_elo(model_a: Sequence[str], model_b: Sequence[str], winner: Sequence[str],
                    baseline: str, scale: float = SCALE, base: float = BASE,
                    init: float = INIT_RATING) -> dict[str, float]:
    """v0.1's BT ratings: ``winner`` per battle is ``model_a``, ``model_b`` or ``tie``
    (half a win each); the logistic regression of "A wins" on +ln(base) for A, -ln(base) for B,
    unpenalised; ratings ``init + scale * coef``, shifted so ``baseline`` is at 1000."""
    names = list(dict.fromkeys([*model_a, *model_b]))
    if baseline not in names:
        raise W2SError(f"baseline {baseline!r} is in no battle")
    free = [m for m in names if m != baseline]  # the baseline's coefficient is fixed at 0
    col = {m: i for i, m in enumerate(free)}
    X = np.zeros((len(winner), len(free)))
    for i, (a, b) in enumerate(zip(model_a, model_b, strict=True)):
        if a in col:
            X[i, col[a]] += math.log(base)
        if b in col:
            X[i, col[b]] -= math.log(base)
    y = np.array([{"model_a": 1.0, "model_b": 0.0, "tie": 0.5}[w] for w in winner])
    coef = fit_logistic(X, y)
    ratings = {m: init + scale * coef[col[m]] for m in free}
    ratings[baseline] = init
    shift = ANCHOR - ratings[baseline]
    return {m: r + shift for m, r in ratings.items()}


def predict_win_rate(rating: float, baseline_rating: float = ANCHOR, scale: float = SCALE,
                     base: float = BASE) -> float:
    """P(model beats baseline) from BT ratings: 1 / (1 + base^((R_b - R_m) / scale))."""
    return 1.0 / (1.0 + base ** ((baseline_rating - rating) / scale))


def style_features(model_meta: Any, baseline_meta: Any, setting: str) -> np.ndarray:
    """Per battle, the raw style covariates from the two answers' ``[tokens, headers, lists,
    bold]`` (rows of ``model_meta`` / ``baseline_meta``).

    v0.1 (``construct_style_matrices``): (baseline - model) / (baseline + model + 1), all four.
    v2 (``print_leaderboard_with_style_features``): length (model - baseline) / (model +
    baseline); each markdown count as a density count / (tokens + 1), then (model - baseline) /
    (model + baseline + 1). A 0/0 length ratio (two empty answers) is 0.
    """
    m = np.asarray(model_meta, dtype=float).reshape(-1, 4)
    b = np.asarray(baseline_meta, dtype=float).reshape(-1, 4)
    if setting == "v0.1":
        return (b - m) / (b + m + 1.0)
    out = np.zeros_like(m)
    total = m[:, 0] + b[:, 0]
    out[:, 0] = np.divide(m[:, 0] - b[:, 0], total, out=np.zeros(len(m)), where=total != 0)
    dm, db = m[:, 1:] / (m[:, :1] + 1.0), b[:, 1:] / (b[:, :1] + 1.0)
    out[:, 1:] = (dm - db) / (dm + db + 1.0)
    return out


def standardise(features: Any, setting: str) -> tuple[np.ndarray, list[str]]:
    """(x - mean) / std per column over the battles (v0.1 ``np.std``, v2 ``torch.std``: the
    sample std); a constant column is left out. Returns (columns kept, their names)."""
    F = np.asarray(features, dtype=float)
    ddof = 0 if setting == "v0.1" else 1
    if len(F) <= ddof:
        return F[:, :0], []
    std = F.std(axis=0, ddof=ddof)
    keep = [j for j in range(F.shape[1]) if std[j] > 1e-12]
    Z = (F[:, keep] - F[:, keep].mean(axis=0)) / std[keep]
    return Z, [STYLE_NAMES[j] for j in keep]


def _v01_rating(scores: np.ndarray) -> float:
    n = len(scores)
    winner = ["model_b" if s == 1 else "model_a" if s == 0 else "tie" for s in scores]
    return compute_mle_elo(["baseline"] * n, ["model"] * n, winner, "baseline")["model"]


def _v01_style_diff(scores: np.ndarray, Z: np.ndarray) -> tuple[float, np.ndarray]:
    """v0.1 ``fit_bt``: rating of the model minus the baseline's, and the style coefficients.
    Each battle is two rows in their matrix (a tie one A win and one B win): weight 2."""
    n = len(scores)
    X = np.column_stack([np.full(n, math.log(BASE)), np.full(n, -math.log(BASE)), Z])
    coef = fit_logistic(X, 1.0 - scores, weights=np.full(n, 2.0), l2=1.0)
    return SCALE * (coef[1] - coef[0]), coef[2:]


def _v2_style_fit(scores: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """v2 ``fit_pairwise_model`` (bt): the model's one-hot +1 (the baseline's -1 column is
    fixed at 0: only the difference is identified) and the style columns; unpenalised."""
    return fit_logistic(np.column_stack([np.ones(len(scores)), Z]), scores)


def arena_score(scores: Sequence[float], setting: str, *, features: Any = None,
                n_boot: int = 100, seed: int = 42) -> dict[str, Any]:
    """The model's Arena-Hard score against the baseline, in percent, from its battle scores.

    ``features``: the raw style covariates per battle (:func:`style_features`) for the
    style-controlled score; None for the plain one. The bootstrap resamples battles with
    ``numpy.random.RandomState(seed)`` (v0.1 seeds numpy with 42; v2 does not seed).

    Returns ``{"score", "ci_low", "ci_high", "ci_level", "method"}`` (+ ``style_coefficients``
    and ``style_features`` with features).
    """
    s = np.asarray(scores, dtype=float)
    if not len(s):
        raise W2SError("Arena-Hard: no battles to score (every game was unparsed or dropped)")
    if n_boot < 1:
        raise W2SError(f"--n-boot must be at least 1, got {n_boot}")
    rng = np.random.RandomState(seed)
    n = len(s)
    style = features is not None
    if style:
        Z, names = standardise(features, setting)
    if setting == "v0.1":
        lo_q, hi_q = 2.5, 97.5
        if style:
            diff, coefs = _v01_style_diff(s, Z)
            boot = [_v01_style_diff(s[idx], Z[idx])[0]
                    for idx in (rng.randint(0, n, n) for _ in range(n_boot))]
            method = "v0.1 fit_bt: L2 (C=1) BT + style, rating percentiles 2.5/97.5"
        else:
            diff, coefs = _v01_rating(s) - ANCHOR, None
            boot = [_v01_rating(s[rng.randint(0, n, n)]) - ANCHOR for _ in range(n_boot)]
            method = "v0.1 compute_mle_elo: BT MLE, rating percentiles 2.5/97.5"
        score = predict_win_rate(ANCHOR + diff)
        low, high = (predict_win_rate(ANCHOR + np.percentile(boot, q)) for q in (lo_q, hi_q))
    else:
        lo_q, hi_q = 5.0, 95.0
        if style:
            idxs = rng.randint(0, n, size=(n_boot, n))
            fits = np.array([_v2_style_fit(s[idx], Z[idx]) for idx in idxs])
            rates = _sigmoid(fits[:, 0])
            score = float(np.quantile(rates, 0.5))
            coefs = np.quantile(fits[:, 1:], 0.5, axis=0) if fits.shape[1] > 1 else np.zeros(0)
            method = "v2 bootstrap BT + style: median, quantiles 0.05/0.95"
        else:
            rates = np.array([s[rng.randint(0, n, n)].mean() for _ in range(n_boot)])
            score, coefs = float(rates.mean()), None
            method = "v2 bootstrap mean score: mean, quantiles 0.05/0.95"
        low, high = (float(np.quantile(rates, q / 100)) for q in (lo_q, hi_q))
    out = {"score": 100 * float(score), "ci_low": 100 * float(low), "ci_high": 100 * float(high),
           "ci_level": (hi_q - lo_q) / 100, "method": method}
    if style:
        out["style_coefficients"] = {k: float(c) for k, c in zip(names, coefs, strict=True)}
        out["style_features"] = names
    return out
