"""Judges for win rates, named by one string (``--judge``):

============================  =========  ===================================================
judge                         kind       what decides
============================  =========  ===================================================
``vader``                     reward     VADER compound sentiment of the response
``reward:NAME``               reward     a Python function registered with
                                         :func:`register_reward` (``length``, ``vader`` built in)
``rm:MODEL``                  reward     a sequence-classification reward model's scalar head
``cls:MODEL:LABEL``           reward     a classifier's log-odds of LABEL for the response
``llm:MODEL``                 pairwise   a local causal LM: log p("1") vs log p("2")
``api:URL[#MODEL]``           pairwise   an OpenAI-compatible chat-completions server
============================  =========  ===================================================

``llm:`` and ``api:`` judges are also the generative judges: they WRITE judgments
(:class:`JudgmentWriter`, greedy / temperature 0, cached): ``reply`` for a whole conversation
(Arena-Hard, :mod:`w2s.evaluation.benchmarks.arenahard`, through the thin
:mod:`.generate`), ``write_judgments`` for a batch of (system, user) prompts (MT-Bench's
single-answer grading, :mod:`w2s.evaluation.benchmarks.mtbench`). One judge object does all
of it, through one client (api) or one loaded model (llm), with one cache folder.

MODEL is anything :func:`w2s.models.resolve_model` takes (alias, local path, hub id,
``offline:...``, ``tiny:...``). :func:`parse_judge` splits a string into ``(kind, fields)``;
:func:`build_judge` makes the judge.
"""

from __future__ import annotations

from typing import Any

from w2s.errors import W2SError, did_you_mean
from w2s.evaluation.judges.api import ApiJudge
from w2s.evaluation.judges.base import (
    PAIRWISE_TEMPLATE,
    PAIRWISE_TEMPLATE_VERSION,
    READS,
    Judge,
    JudgmentCache,
    JudgmentWriter,
    PairwiseJudge,
    RewardJudge,
    conversation,
    pairwise_prompt,
    parse_verdict,
    writes_judgments,
)
from w2s.evaluation.judges.rewards import (
    REWARDS,
    ClassifierJudge,
    FunctionRewardJudge,
    RewardModelJudge,
    register_reward,
)

JUDGE_FORMS = ("vader", "reward:NAME", "rm:MODEL", "cls:MODEL:LABEL", "llm:MODEL",
               "api:URL[#MODEL]")
KINDS = ("vader", "reward", "rm", "cls", "llm", "api")


def _bad(spec: str, why: str) -> W2SError:
    return W2SError(f"judge '{spec}': {why}; valid forms: {', '.join(JUDGE_FORMS)}")


def parse_judge(spec: str) -> tuple[str, dict[str, str | None]]:
    """A judge string -> ``(kind, fields)``; W2SError listing the valid forms otherwise.

    >>> parse_judge("cls:tiny:llama-2x64:POSITIVE")
    ('cls', {'model': 'tiny:llama-2x64', 'label': 'POSITIVE'})
    >>> parse_judge("api:http://127.0.0.1:8000/v1#qwen")
    ('api', {'url': 'http://127.0.0.1:8000/v1', 'model': 'qwen'})
    """
    spec = (spec or "").strip()
    if spec == "vader":
        return "vader", {}
    kind, sep, rest = spec.partition(":")
    if kind not in KINDS or kind == "vader":
        hint = did_you_mean(kind, KINDS) if kind else ""
        raise _bad(spec, f"unknown judge kind '{kind}'{hint}" if spec else "empty")
    if not sep or not rest.strip():
        raise _bad(spec, f"'{kind}:' needs what follows the colon")
    if kind == "reward":
        return "reward", {"name": rest}
    if kind in ("rm", "llm"):
        return kind, {"model": rest}
    if kind == "cls":
        model, sep, label = rest.rpartition(":")
        if not sep or not model or not label:
            raise _bad(spec, "write cls:MODEL:LABEL (the label after the last colon)")
        return "cls", {"model": model, "label": label}
    url, _, model = rest.partition("#")
    return "api", {"url": url, "model": model or None}


API_OPTIONS = ("cache", "timeout", "max_retries", "backoff", "rate_limit", "workers",
               "max_tokens", "repeat")
MODEL_OPTIONS = ("batch_size", "device", "dtype")
LLM_OPTIONS = (*MODEL_OPTIONS, "cache")


def build_judge(spec: str | Judge, **options: Any) -> Judge:
    """Make the judge a string names (a Judge passes through unchanged).

    options (each used by the judges it concerns, ignored by the others): ``batch_size``,
    ``device``, ``dtype`` (model judges); ``cache`` (True / False / a folder: api judgments,
    llm written judgments); ``timeout``, ``max_retries``, ``backoff``, ``rate_limit``,
    ``workers``, ``max_tokens`` (api; ``max_tokens`` is the pairwise reply's budget, a written
    judgment's is given per call); ``reads``
    (``response`` or ``prompt+response``: what ``cls:``, ``vader`` and ``reward:`` score).
    """
    if isinstance(spec, Judge):
        return spec
    reads = options.pop("reads", None) or "response"
    if reads not in READS:
        raise W2SError(f"a judge reads one of {list(READS)}, not {reads!r}")
    judge = _build(spec, **options)
    if reads != "response" and parse_judge(spec)[0] in ("cls", "vader", "reward"):
        judge.reads = reads
    return judge


def _build(spec: str, **options: Any) -> Judge:
    kind, fields = parse_judge(spec)
    pick = lambda names: {k: options[k] for k in names if options.get(k) is not None}  # noqa: E731
    if kind == "vader":
        return FunctionRewardJudge(spec, "vader")
    if kind == "reward":
        return FunctionRewardJudge(spec, fields["name"])
    if kind == "rm":
        return RewardModelJudge(spec, fields["model"], **pick(MODEL_OPTIONS))
    if kind == "cls":
        return ClassifierJudge(spec, fields["model"], fields["label"], **pick(MODEL_OPTIONS))
    if kind == "llm":
        from w2s.evaluation.judges.llm import LocalLMJudge

        return LocalLMJudge(spec, fields["model"], **pick(LLM_OPTIONS))
    return ApiJudge(spec, fields["url"], fields["model"], **pick(API_OPTIONS))


__all__ = ["Judge", "RewardJudge", "PairwiseJudge", "JudgmentCache", "JudgmentWriter",
           "writes_judgments", "conversation", "parse_judge", "build_judge",
           "register_reward", "REWARDS", "JUDGE_FORMS", "PAIRWISE_TEMPLATE",
           "PAIRWISE_TEMPLATE_VERSION", "pairwise_prompt", "parse_verdict"]
