"""Reward judges: a score per (prompt, response); the higher score wins.

- ``vader`` (= ``reward:vader``): VADER's compound sentiment of the response, in [-1, 1]. The gold
  reward of the sentiment-steering experiments (controlled-sentiment generation on IMDB).
- ``reward:NAME``: any Python function registered with :func:`register_reward`.
- ``rm:MODEL``: a sequence-classification reward model's scalar head.
- ``cls:MODEL:LABEL``: a classifier's log-odds of LABEL on the response text,
  ``log p(LABEL) - log(1 - p(LABEL))``. For a two-label classifier that is exactly
  ``log p(pos) - log p(neg)``, the sentiment gold reward of the W2S search paper (Zhou et al.).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from w2s.errors import W2SError, did_you_mean
from w2s.evaluation.judges.base import RewardJudge

RewardFn = Callable[[str, str], float]
REWARDS: dict[str, RewardFn] = {}
"""Registered reward functions: name -> ``fn(prompt, response) -> float``."""


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make ``fn(prompt, response) -> float`` available as the judge ``reward:NAME``.

    ::

        @register_reward("mentions_paris")
        def mentions_paris(prompt, response):
            return float("paris" in response.lower())
    """
    if not name or ":" in name:
        raise ValueError(f"reward name must be non-empty and contain no ':', got {name!r}")

    def decorate(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return decorate


@register_reward("length")
def length_reward(prompt: str, response: str) -> float:
    """The response's length in characters (a deliberately dumb reward: a length-bias probe)."""
    return float(len(response))


_VADER = None


def vader_analyzer():
    """The VADER analyzer (vaderSentiment), built once; W2SError naming the pip command if the
    package is missing."""
    global _VADER
    if _VADER is None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise W2SError("the vader judge needs vaderSentiment: `pip install vaderSentiment` "
                           "(or `pip install -e .[offline]`)") from None
        _VADER = SentimentIntensityAnalyzer()
    return _VADER


@register_reward("vader")
def vader_reward(prompt: str, response: str) -> float:
    """VADER compound sentiment of the response alone, in [-1, 1] (positive = more positive)."""
    return float(vader_analyzer().polarity_scores(response)["compound"])


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class FunctionRewardJudge(RewardJudge):
    """``reward:NAME`` / ``vader``: a registered Python reward function."""

    def __init__(self, spec: str, name: str):
        super().__init__(spec)
        if name not in REWARDS:
            raise W2SError(f"unknown reward function '{name}'{did_you_mean(name, REWARDS)}; "
                           f"registered: {', '.join(sorted(REWARDS))} (add one with "
                           "w2s.evaluation.register_reward)")
        self.name = name
        self.fn = REWARDS[name]
        if name == "vader":
            vader_analyzer()  # fail now, in one line, if vaderSentiment is missing

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        texts = self.read(prompts, responses)
        return [float(self.fn(p, r)) for p, r in zip(prompts, texts, strict=True)]

    def identity(self) -> dict[str, Any]:
        ident = {**super().identity(), "reward": self.name,
                 "function": f"{self.fn.__module__}.{self.fn.__qualname__}"}
        if self.name == "vader":
            ident["version"] = f"vaderSentiment {_version('vaderSentiment')}"
        return ident


class _ModelJudge(RewardJudge):
    """Shared by ``rm:`` and ``cls:``: a sequence-classification model, loaded on first use."""

    scalar = True

    def __init__(self, spec: str, model: str, *, batch_size: int = 16, device: str = "auto",
                 dtype: str = "auto"):
        super().__init__(spec)
        from w2s.models.reward import load_reward_model

        self.model_name = model
        self.batch_size = batch_size
        self.model, self.tokenizer = load_reward_model(
            model, scalar=self.scalar, device=device, dtype=dtype,
            tiny_labels=1 if self.scalar else 2)

    def identity(self) -> dict[str, Any]:
        cfg = self.model.config
        return {**super().identity(), "model": self.model_name,
                "name_or_path": getattr(cfg, "_name_or_path", None) or None,
                "model_type": getattr(cfg, "model_type", None),
                "num_labels": int(cfg.num_labels),
                "version": f"transformers {_version('transformers')}"}


class RewardModelJudge(_ModelJudge):
    """``rm:MODEL``: the scalar head of a reward model on (prompt, response)."""

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        from w2s.models.reward import score_texts

        logits = score_texts(self.model, self.tokenizer, prompts, responses,
                             batch_size=self.batch_size)
        return [float(v) for v in logits[:, 0]]


class ClassifierJudge(_ModelJudge):
    """``cls:MODEL:LABEL``: log-odds of LABEL under a classifier of the response text."""

    scalar = False

    def __init__(self, spec: str, model: str, label: str, **kwargs: Any):
        super().__init__(spec, model, **kwargs)
        self.label = label
        self.label_index = label_index(self.model.config, label, model)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        from w2s.models.reward import score_texts

        logits = score_texts(self.model, self.tokenizer, None, self.read(prompts, responses),
                             batch_size=self.batch_size)
        return [float(v) for v in log_odds(logits, self.label_index)]

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "label": self.label, "label_index": self.label_index}


def label_index(config, label: str, model: str) -> int:
    """A label name (``POSITIVE``, case-insensitive, from ``config.id2label``) or index -> index."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    by_name = {v.lower(): k for k, v in id2label.items()}
    if label.lower() in by_name:
        return by_name[label.lower()]
    if label.isdigit() and int(label) < int(config.num_labels):
        return int(label)
    names = [id2label.get(i, str(i)) for i in range(int(config.num_labels))]
    raise W2SError(f"classifier '{model}' has no label '{label}'{did_you_mean(label, names)}; "
                   f"its labels are {', '.join(names)} (or an index 0..{config.num_labels - 1})")


def log_odds(logits, index: int):
    """``log p(y) - log(1 - p(y))`` for label ``index`` from logits ``[N, C]``, computed stably as
    ``logit_y - logsumexp(other logits)`` (the normaliser cancels). Two labels: ``logit_pos -
    logit_neg``, i.e. ``log p(pos) - log p(neg)``."""
    import torch

    logits = logits.float()
    others = torch.cat([logits[:, :index], logits[:, index + 1:]], 1)
    return logits[:, index] - torch.logsumexp(others, 1)
