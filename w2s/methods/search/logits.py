"""The logit-arithmetic engine: sample from a weighted sum of several models' next-token
log-probs, token by token.

Given terms (model_i, weight w_i) over ONE vocabulary, every step samples the next token from

    score(v) = sum_i w_i * log_softmax(logits_i)(v)          (fp32, the [rows, vocab] step only)

then temperature, top-k and top-p on the combined score
(:func:`~w2s.methods.search.text.sample_next`). Because ``log_softmax(l) = l - logsumexp(l)``,
combining log-probs or raw logits, and dividing each model's logits by the temperature before or
the sum after, give the same distribution (they differ by a per-row constant): the papers below
write it in each of these ways and all are this one.

- Each model keeps ONE KV cache (:class:`~w2s.methods.search.cache.CachedLM`); terms that name
  the same model with the same prompt encoding share it, their weights summed. Prompts are
  decoded as a batch; every sampled token is appended to every cache.
- Each model reads the prompt in its own chat template (``chat``) around its own template
  (``Term.template``: the base reads ``--base-prompt``); the tokenizers must agree on every
  token (:func:`~w2s.methods.search.guide.same_tokenizer`), else one-line :class:`W2SError`.
- Per step each model's logits are sliced to the shared vocabulary (embedding tables padded
  past it are cut), turned to fp32 log-probs one model at a time and added into one
  ``[rows, vocab]`` accumulator: no fp32 copy of a whole sequence's logits ever exists.

The presets (``--decoder``) are terms over the run's models (:func:`w2s.methods.search.config.
preset_weights`): ``eft``, ``proxy``, ``genarm``, ``ed``, ``jailbreak``; see the README's
logit-arithmetic section for the formulas and sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from w2s.errors import W2SError
from w2s.methods.search.base import base_text
from w2s.methods.search.cache import CachedLM
from w2s.methods.search.guide import same_tokenizer
from w2s.methods.search.meter import Clock, Compute
from w2s.methods.search.text import encode_prompt, eos_ids, sample_next
from w2s.models.generate import SamplingConfig
from w2s.models.loading import pad_id


@dataclass
class Term:
    """One model of a logit sum: its role (``base``, ``tuned``, ...), the model and its tokenizer,
    its weight, and what it reads of each prompt (a template with ``{prompt}``)."""

    role: str
    model: Any
    tokenizer: Any
    weight: float
    template: str = "{prompt}"
    name: str = ""   # what the model is called (recorded), e.g. its hub id


def check_vocabularies(terms: list[Term]) -> None:
    """One-line :class:`W2SError` unless every term's tokenizer maps every token to the same id
    as the first term's (and agrees on EOS)."""
    first = terms[0]
    for t in terms[1:]:
        if not same_tokenizer(first.tokenizer, t.tokenizer):
            raise W2SError(f"logit arithmetic adds token log-probs, so it needs one vocabulary, "
                           f"but the {first.role} model {first.name or ''} and the {t.role} "
                           f"model {t.name or ''} have different tokenizers".replace("  ", " "))


class LogitEngine:
    """A batch of prompts decoded by several models at once, one KV cache each.

    ::

        engine = LogitEngine(terms, chat=False)
        engine.start(["The hotel was", "I tried"])
        score = engine.scores()          # [2, vocab] fp32: sum_i w_i log_softmax(logits_i)
        engine.push(0, token)            # row 0 continues with token (every model reads it)
    """

    def __init__(self, terms: list[Term], *, chat: bool, compute: Compute | None = None):
        if not terms:
            raise W2SError("logit arithmetic needs at least one (model, weight) term")
        check_vocabularies(terms)
        self.chat = chat
        self.compute = compute or Compute()
        first = terms[0]
        self.vocab = len(first.tokenizer)
        self.stop = eos_ids(first.model, first.tokenizer)
        self.device = next(first.model.parameters()).device
        self.clock = Clock(self.compute, self.device)
        groups: dict[tuple, dict] = {}
        for t in terms:   # one cache per model (and prompt encoding); weights summed
            key = (id(t.model), t.template, t.tokenizer.chat_template if chat else None)
            g = groups.setdefault(key, {"roles": [], "weight": 0.0, "term": t})
            g["roles"].append(t.role)
            g["weight"] += float(t.weight)
        self.groups = [{"name": "+".join(g["roles"]), "weight": g["weight"], "term": g["term"],
                        "lm": CachedLM(g["term"].model, pad_id(g["term"].tokenizer)),
                        "base": i == 0} for i, g in enumerate(groups.values())]

    def _clock(self, group: dict):
        return self.clock("base" if group["base"] else "guide", group["name"])

    def start(self, prompts: list[str]) -> None:
        """One row per prompt; each model reads its own encoding of it."""
        for g in self.groups:
            t = g["term"]
            with self._clock(g):
                g["lm"].start([encode_prompt(t.tokenizer, base_text(t.template, p), self.chat)
                               for p in prompts])

    def scores(self) -> torch.Tensor:
        """The combined next-token score of every row, ``[rows, vocab]`` fp32 on the first
        model's device (each model reads the tokens pushed since the last call)."""
        total = None
        for g in self.groups:
            with self._clock(g):
                logits, _ = g["lm"].feed(leave_last=False)
                if logits.shape[-1] < self.vocab:
                    raise W2SError(f"the {g['name']} model predicts {logits.shape[-1]} tokens, "
                                   f"fewer than its tokenizer's {self.vocab}")
                step = logits[:, 0, :self.vocab].to(self.device).float().log_softmax(-1)
                if total is None:
                    total = step.mul_(g["weight"])
                else:
                    total.add_(step, alpha=g["weight"])
        return total

    def push(self, row: int, token: int) -> None:
        for g in self.groups:
            g["lm"].push(row, [token])

    def tokens_read(self) -> dict[str, int]:
        return {g["name"]: g["lm"].tokens_read for g in self.groups}


def logit_decode(terms: list[Term], prompts: list[str], *, max_new_tokens: int,
                 sampling: SamplingConfig, generator: torch.Generator | None, chat: bool,
                 compute: Compute | None = None, suppress_eos: bool = False
                 ) -> tuple[list[dict], list[list[list[dict]]]]:
    """Sample one response per prompt from ``sum_i w_i log p_i`` (then temperature, top-k,
    top-p), stopping a row at the FIRST term's end-of-sequence tokens (``suppress_eos``,
    for benchmarks: never).

    ``compute``: base tokens sampled, the other models' tokens scored (every sampled token, per
    model) and read, time in the first model's group (``base_s``) and the others' (``guide_s``),
    and per group (``models_s``, ``models_tokens_read``). Returns ``(results, traces)`` in the
    form of the other decoders (no guide score: V is scored on text afterwards; traces empty).
    """
    compute = compute or Compute()
    engine = LogitEngine(terms, chat=chat, compute=compute)
    tokenizer = terms[0].tokenizer
    engine.start(prompts)
    response: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    sampled = 0  # base tokens of this call (compute's counters run over every call)
    for _ in range(max_new_tokens):
        if all(finished):
            break
        score = engine.scores()
        if suppress_eos:
            score[:, sorted(engine.stop)] = float("-inf")
        tokens = sample_next(score, sampling.temperature, sampling.top_k, sampling.top_p,
                             generator)
        for r, tok in enumerate(tokens.tolist()):
            if finished[r]:
                continue
            compute.base_tokens += 1
            sampled += 1
            if tok in engine.stop:
                finished[r] = True
                continue
            response[r].append(tok)
            engine.push(r, tok)
    others = [g for g in engine.groups if not g["base"]]
    compute.guide_tokens_scored += sampled * len(others)  # each other model scored each token
    compute.guide_tokens_read += sum(g["lm"].tokens_read for g in others)
    for name, n in engine.tokens_read().items():
        compute.models_tokens_read[name] = compute.models_tokens_read.get(name, 0) + n
    compute.rounds += 1
    results = [{"response": tokenizer.decode(ids, skip_special_tokens=True),
                "finished": done, "tokens": len(ids), "score": None, "logp_tuned": None,
                "logp_untuned": None, "score_trace": [], "beam": "0.0"}
               for ids, done in zip(response, finished, strict=True)]
    return results, [[] for _ in prompts]
