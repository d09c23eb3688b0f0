"""Generative judges: a judge that WRITES its judgment (a benchmark then parses the text).

The pairwise judges of :mod:`.api` and :mod:`.llm` answer one token ("1" / "2"). Benchmarks such
as Arena-Hard-Auto instead ask the judge for a written evaluation ending in a verdict label, with
their own system prompt, and parse the text themselves. This module gives them that, for the two
judges that can write:

- ``api:URL[#MODEL]``: chat completions through the shared :class:`w2s.api.ApiClient` (the same
  address forms, key variables, retries, rate limit and model listing as the ``api:`` judge);
- ``llm:MODEL``: greedy decoding of a local causal LM through the shared
  :func:`w2s.models.generate` (the conversation in the model's chat template; a template that
  refuses a system turn gets the system prompt at the head of the first user turn).

Every reply goes to a :class:`~.base.JudgmentCache` keyed by the judge's identity (address or
model, max tokens, temperature) and the whole conversation, as it arrives: a rerun asks nothing.

The interface is two functions, :func:`generate_judgment` (system + user -> text) and
:func:`generate_reply` (any conversation -> text), over a :class:`GenerativeJudge`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from w2s.errors import W2SError
from w2s.evaluation.judges.base import JudgmentCache
from w2s.runs import content_hash

GENERATIVE_KINDS = ("api", "llm")
TEMPLATE = "w2s-generative-v1"
"""Part of every cached reply's key: bump it if the way a conversation is sent ever changes."""


class GenerativeJudge:
    """A judge that writes: :meth:`reply` (a conversation -> text, cached), :meth:`identity`,
    ``requests`` (replies actually generated or requested, i.e. cache misses)."""

    kind = "generative"

    def __init__(self, spec: str, *, cache: bool | str | os.PathLike = True,
                 max_tokens: int = 4096, temperature: float = 0.0):
        self.spec = spec
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.requests = 0
        self._count = threading.Lock()
        self.cache = (JudgmentCache(self._cache_identity(), None if cache is True else cache)
                      if cache else None)

    def _cache_identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        return {**self._cache_identity(), "judge": self.spec, "kind": self.kind,
                "cache": str(self.cache.path) if self.cache else None}

    def _generate(self, messages: list[dict[str, str]]) -> str:
        raise NotImplementedError

    def reply(self, messages: Sequence[dict[str, str]]) -> tuple[str, bool]:
        """The judge's reply to ``messages`` (``{"role", "content"}`` dicts) and whether it came
        from the cache."""
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        key = (content_hash({"template": TEMPLATE, "messages": messages}, 32)
               if self.cache is not None else None)
        hit = self.cache.get(key) if key is not None else None
        if hit is not None:
            return hit["text"], True
        text = self._generate(messages)
        with self._count:
            self.requests += 1
        if key is not None:
            self.cache.put(key, {"text": text})
        return text, False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


class ApiGenerativeJudge(GenerativeJudge):
    """``api:URL[#MODEL]`` writing its judgment (chat completions, temperature 0 by default)."""

    def __init__(self, spec: str, url: str, model: str | None = None, *, timeout: float = 60.0,
                 max_retries: int = 3, backoff: float = 1.0, rate_limit: float | None = None,
                 **kwargs: Any):
        from w2s.api import ApiClient
        from w2s.evaluation.judges.api import KEY_ENV_VARS, MODEL_ENV_VAR, chat_url

        self.url = chat_url(url)
        self.model = model or os.environ.get(MODEL_ENV_VAR) or None
        self.served_model = self.model
        self.client = ApiClient(self.url, what="api judge", key_env_vars=KEY_ENV_VARS,
                                timeout=timeout, max_retries=max_retries, backoff=backoff,
                                rate_limit=rate_limit)
        self._model_lock = threading.Lock()
        super().__init__(spec, **kwargs)

    def _cache_identity(self) -> dict[str, Any]:
        return {"judge": "api", "url": self.url, "model": self.model,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "served_model": self.served_model}

    def _generate(self, messages: list[dict[str, str]]) -> str:
        from w2s.api import one_line

        with self._model_lock:
            if not self.served_model:
                self.served_model = self.client.listed_model()
        payload = {"model": self.served_model, "messages": messages,
                   "temperature": self.temperature, "max_tokens": self.max_tokens}
        data = self.client.request(self.url, payload)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise W2SError(f"api judge: {self.url} answered without choices[0].message.content "
                           f"({one_line(json.dumps(data)[:120])})") from None
        return content or ""


class LocalGenerativeJudge(GenerativeJudge):
    """``llm:MODEL`` writing its judgment: greedy decoding with :func:`w2s.models.generate`."""

    def __init__(self, spec: str, model: str, *, device: str = "auto", dtype: str = "auto",
                 **kwargs: Any):
        from w2s.models import load_causal_lm

        self.model_name = model
        self.model, self.tokenizer = load_causal_lm(model, device=device, dtype=dtype, seed=0)
        super().__init__(spec, **kwargs)

    def _cache_identity(self) -> dict[str, Any]:
        cfg = self.model.config
        return {"judge": "llm", "model": self.model_name,
                "name_or_path": getattr(cfg, "_name_or_path", None) or None,
                "decoding": "greedy", "max_tokens": self.max_tokens}

    def _text(self, messages: list[dict[str, str]]) -> str:
        """The conversation as the model sees it, without the BOS the tokenizer adds itself."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            return "\n\n".join(m["content"] for m in messages) + "\n\n"
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # a template without a system role: system text heads the user turn
            head, *rest = messages
            merged = [{"role": "user", "content": f"{head['content']}\n\n{rest[0]['content']}"},
                      *rest[1:]] if head["role"] == "system" and rest else messages
            text = tok.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        bos = getattr(tok, "bos_token", None)
        return text[len(bos):] if bos and text.startswith(bos) else text

    def _generate(self, messages: list[dict[str, str]]) -> str:
        from w2s.models.generate import SamplingConfig, generate

        sampling = SamplingConfig(max_new_tokens=self.max_tokens, temperature=0.0, batch_size=1)
        return generate(self.model, self.tokenizer, [self._text(messages)], sampling,
                        chat=False, progress=False)[0]


def build_generative_judge(spec: str | GenerativeJudge, *, what: str = "this benchmark",
                           **options: Any) -> GenerativeJudge:
    """The writing judge a string names: ``api:URL[#MODEL]`` or ``llm:MODEL`` (a
    GenerativeJudge passes through). Any other judge is a W2SError saying why.

    options: ``cache`` (True / False / a folder), ``max_tokens``, ``temperature``; api:
    ``timeout``, ``max_retries``, ``backoff``, ``rate_limit``; llm: ``device``, ``dtype``.
    None values are ignored.
    """
    if isinstance(spec, GenerativeJudge):
        return spec
    from w2s.evaluation.judges import parse_judge

    kind, fields = parse_judge(spec)
    if kind not in GENERATIVE_KINDS:
        raise W2SError(f"judge '{spec}' does not write a judgment; {what} is judged by a "
                       "generative judge whose text it parses: api:URL[#MODEL] or llm:MODEL")
    opts = {k: v for k, v in options.items() if v is not None}
    if kind == "api":
        keep = ("cache", "max_tokens", "temperature", "timeout", "max_retries", "backoff",
                "rate_limit")
        return ApiGenerativeJudge(spec, fields["url"], fields["model"],
                                  **{k: v for k, v in opts.items() if k in keep})
    keep = ("cache", "max_tokens", "device", "dtype")
    return LocalGenerativeJudge(spec, fields["model"], **{k: v for k, v in opts.items()
                                                          if k in keep})


def generate_reply(judge: str | GenerativeJudge, messages: Sequence[dict[str, str]]) -> str:
    """The judge's reply to a conversation (``{"role", "content"}`` dicts), cached."""
    return build_generative_judge(judge).reply(messages)[0]


def generate_judgment(judge: str | GenerativeJudge, system: str, user: str) -> str:
    """The judge's written judgment of one (system, user) prompt, cached."""
    return generate_reply(judge, [{"role": "system", "content": system},
                                  {"role": "user", "content": user}])
