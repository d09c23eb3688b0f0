"""``llm:MODEL``: a local causal LM as a pairwise judge, read from its verdict log-probs.

The judge prompt (:data:`~w2s.evaluation.judges.base.PAIRWISE_TEMPLATE`) goes into the model's
chat template as one user turn; then, instead of sampling an answer, we score the two possible
answers ``"1"`` and ``"2"`` as responses with the shared log-prob helper
(:func:`w2s.models.response_logprobs`) and take the likelier one:

    margin = log p("1" | prompt) - log p("2" | prompt);   verdict 1 if margin > 0, 2 if < 0

(1.5 when exactly equal). Scoring the whole verdict string, not one next-token logit, works
whatever the tokenizer does with "1" and "2". No sampling: the same model gives the same verdicts.

Written judgments (:class:`~w2s.evaluation.judges.base.JudgmentWriter`: ``reply`` for a whole
conversation, Arena-Hard; ``write_judgments`` for a batch of (system, user) prompts, MT-Bench):
the model GENERATES the judgment, greedily, with the shared generation helper
(:func:`w2s.models.generate`), the conversation rendered by the shared
:func:`w2s.models.format_chat` (the chat template; one that refuses a system turn gets the
system prompt at the head of the first user turn). A batch is generated in batches of
``batch_size``; a conversation longer than the model's context is a one-line W2SError. Every
written judgment goes to the judgment cache (``cache``: True, False or a folder) keyed by the
model, the template, the conversation and the token budget, so a rerun generates nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from w2s.errors import W2SError
from w2s.evaluation.judges.base import (
    PAIRWISE_TEMPLATE_VERSION,
    VERDICT_TOKENS,
    JudgmentCache,
    JudgmentWriter,
    Messages,
    PairwiseJudge,
    pairwise_prompt,
)
from w2s.models import format_chat, load_causal_lm, response_logprobs
from w2s.models.batching import pad_right, spans_mask
from w2s.models.generate import SamplingConfig, generate


class LocalLMJudge(PairwiseJudge, JudgmentWriter):
    """A causal LM judging pairs by the log-probs of the verdicts "1" and "2"; it also writes
    judgments, greedily (:meth:`reply`, :meth:`write_judgments`), cached."""

    def __init__(self, spec: str, model: str, *, batch_size: int = 8, device: str = "auto",
                 dtype: str = "auto", seed: int = 0, cache: bool | str | os.PathLike = True):
        super().__init__(spec)
        self.model_name = model
        self.batch_size = max(1, batch_size)
        self.model, self.tokenizer = load_causal_lm(model, device=device, dtype=dtype, seed=seed)
        self.seed = seed
        limits = [getattr(self.tokenizer, "model_max_length", None),
                  getattr(self.model.config, "max_position_embeddings", None)]
        self.max_tokens = min([v for v in limits if v and v < 1_000_000] or [1 << 30])
        self.requests = 0  # judgments generated (cache misses)
        self._generating = threading.Lock()  # one generation at a time (judging threads)
        self.writing_cache = (JudgmentCache(self._writer_cache_identity(),
                                            None if cache is True else cache)
                              if cache else None)

    def identity(self) -> dict[str, Any]:
        from importlib import metadata

        cfg = self.model.config
        return {**super().identity(), "model": self.model_name,
                "name_or_path": getattr(cfg, "_name_or_path", None) or None,
                "model_type": getattr(cfg, "model_type", None), "seed": self.seed,
                "template": PAIRWISE_TEMPLATE_VERSION, "verdict_tokens": list(VERDICT_TOKENS),
                "version": f"transformers {metadata.version('transformers')}"}

    def _ids(self, prefix: str, reply: str) -> tuple[list[int], int]:
        """Token ids of an already formatted prompt + ``reply``, and how many are the prompt's."""
        def enc(text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=not self._templated)["input_ids"]

        ids, n_prompt = enc(prefix + reply), len(enc(prefix))
        if n_prompt >= len(ids):
            raise W2SError(f"the tokenizer of {self.model_name} merges the reply {reply!r} into "
                           "the prompt; use another judge model")
        return ids, n_prompt

    def _score(self, rows: list[tuple[list[int], int]]) -> list[float]:
        """The summed log-prob of each row's reply tokens (after its ``n_prompt`` prompt
        tokens), batched, from the shared helper."""
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        summed: list[float] = []
        for start in range(0, len(rows), 2 * self.batch_size):
            chunk = rows[start:start + 2 * self.batch_size]
            input_ids, attention = pad_right([ids for ids, _ in chunk], pad)
            response = spans_mask([n for _, n in chunk], [len(ids) for ids, _ in chunk],
                                  input_ids.shape[1])
            _, total = response_logprobs(self.model, input_ids.to(device), attention.to(device),
                                         response.to(device))
            summed.extend(total.float().cpu().tolist())
        return summed

    @torch.no_grad()
    def margins(self, items: list[tuple[str, str, str]]) -> list[float]:
        """``log p("1") - log p("2")`` for each ``(instruction, first, second)``."""
        prefixes = [format_chat(self.tokenizer, pairwise_prompt(*item)) for item in items]
        return [one - two for one, two in self._reply_logprobs(prefixes, VERDICT_TOKENS)]

    def _reply_logprobs(self, prefixes: list[str], replies: Sequence[str]) -> list[list[float]]:
        """For each formatted prompt, the summed log-prob of each of ``replies`` as the whole
        reply (the shared helper, batched); a prompt too long for the model is one line."""
        rows = []  # (ids, n_prompt) for every reply of every prompt
        for i, prefix in enumerate(prefixes):
            for reply in replies:
                ids, n_prompt = self._ids(prefix, reply)
                if len(ids) > self.max_tokens:
                    raise W2SError(f"judge prompt {i + 1} is {len(ids)} tokens, more than "
                                   f"{self.model_name} takes ({self.max_tokens}); use a judge "
                                   "with a longer context or shorter outputs")
                rows.append((ids, n_prompt))
        summed, k = self._score(rows), len(replies)
        return [summed[i * k:(i + 1) * k] for i in range(len(prefixes))]

    def compare(self, items: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        out = []
        for margin in self.margins(items):
            verdict = 1 if margin > 0 else 2 if margin < 0 else 1.5
            out.append({"verdict": verdict, "margin": margin})
        return out

    # -- written judgments ------------------------------------------------------------------
    def _writer_cache_identity(self) -> dict[str, Any]:
        cfg = self.model.config
        return {"judge": "llm", "model": self.model_name,
                "name_or_path": getattr(cfg, "_name_or_path", None) or None,
                "writes": "judgments", "decoding": "greedy", "seed": self.seed}

    def writer_identity(self) -> dict[str, Any]:
        """Who wrote the judgments: the model, its versions, greedy decoding, the cache."""
        ident = {k: v for k, v in self.identity().items()
                 if k not in ("template", "verdict_tokens")}
        return {**ident, **self._writer_cache_identity(), "judge": self.spec, "kind": "llm",
                "backend": "hf",
                "cache": (str(self.writing_cache.path) if self.writing_cache is not None
                          else None)}

    def _write(self, conversations: list[Messages], max_tokens: int,
               keep: Callable[[int, str], None]) -> None:
        longest = 0
        for j, messages in enumerate(conversations):
            ids = self.tokenizer(format_chat(self.tokenizer, messages),
                                 add_special_tokens=not self._templated)["input_ids"]
            if len(ids) >= self.max_tokens:
                raise W2SError(f"judge prompt {j + 1} is {len(ids)} tokens, more than "
                               f"{self.model_name} takes ({self.max_tokens}); use a judge "
                               "with a longer context")
            longest = max(longest, len(ids))
        budget = max(1, min(int(max_tokens), self.max_tokens - longest))
        sampling = SamplingConfig(max_new_tokens=budget, temperature=0.0,
                                  batch_size=self.batch_size, seed=self.seed)
        with self._generating:
            texts = generate(self.model, self.tokenizer, conversations, sampling, chat=True,
                             progress=False)
            self.requests += len(texts)
        for j, text in enumerate(texts):
            keep(j, text)

    @torch.no_grad()
    def _logprobs(self, conversations: list[Messages], tokens: list[str],
                  keep: Callable[[int, dict[str, float]], None]) -> None:
        """Exact: each token scored as the whole reply with the shared log-prob helper."""
        prefixes = [format_chat(self.tokenizer, messages) for messages in conversations]
        for j, lps in enumerate(self._reply_logprobs(prefixes, tokens)):
            keep(j, dict(zip(tokens, lps, strict=True)))

    @property
    def _templated(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))
