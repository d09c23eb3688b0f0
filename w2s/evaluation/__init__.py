"""The shared evaluation layer: PGR (weak-to-strong generalization) and win rates with pluggable
judges; the deception score of weak-to-strong deception. Every headline figure is computed here, in
code, and can be recomputed from a run's stored per-example outputs (``w2s eval ...``)."""

from w2s.evaluation.deception import (
    AREAS,
    deception_from_predictions,
    deception_score,
)
from w2s.evaluation.generations import (
    pair_generations,
    read_generations,
    write_generations,
)
from w2s.evaluation.judges import build_judge, parse_judge, register_reward
from w2s.evaluation.pgr import (
    ROLE_CEILING,
    ROLE_W2S,
    ROLE_WEAK,
    ROLES,
    bootstrap_accuracy,
    bootstrap_pgr,
    pgr,
    pgr_from_predictions,
    pgr_with_reason,
)
from w2s.evaluation.winrate import (
    evaluate_winrate,
    fit_length_glm,
    length_controlled_win_rate,
    preference_from_scores,
    preference_from_verdicts,
    win_rate,
)

__all__ = ["pgr", "pgr_with_reason", "bootstrap_pgr", "bootstrap_accuracy", "pgr_from_predictions", "ROLES",
           "ROLE_WEAK", "ROLE_CEILING", "ROLE_W2S",
           "win_rate", "length_controlled_win_rate", "fit_length_glm", "evaluate_winrate",
           "preference_from_verdicts", "preference_from_scores", "build_judge", "parse_judge",
           "register_reward", "read_generations", "write_generations", "pair_generations",
           "deception_score", "deception_from_predictions", "AREAS"]
