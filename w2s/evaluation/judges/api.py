"""``api:URL[#MODEL]``: an OpenAI-compatible chat-completions server as a pairwise judge.

Works with anything that speaks ``POST /v1/chat/completions`` (vLLM, llama.cpp's server, Ollama,
hosted APIs), through the shared client :class:`w2s.api.ApiClient`.

- URL: ``http://host:8000`` or ``.../v1`` or the full ``.../v1/chat/completions``. MODEL after
  ``#`` (else ``$W2S_JUDGE_MODEL``, else the first model the server lists at ``/v1/models``;
  pass it to pin the model, since it is part of the cache key as given).
- Key: ``$W2S_JUDGE_API_KEY``, else ``$W2S_API_KEY``, else ``$OPENAI_API_KEY``, sent as
  ``Authorization: Bearer``; none for local servers that need none. The key is never recorded.
- Requests: temperature 0, a few tokens, the pairwise prompt of :mod:`.base`; the reply is parsed
  by :func:`~w2s.evaluation.judges.base.parse_verdict` (an unparsable reply counts as no
  preference for that order and is flagged ``unparsed``).
- Robustness: a timeout per request; retries with exponential backoff (``backoff * 2**attempt``
  seconds, or the server's ``Retry-After``) on timeouts, connection errors, 408/409/429/5xx; an
  optional rate limit (requests per second, across worker threads); other HTTP errors (401, 403,
  404, 400) fail at once. When the server keeps refusing, the run stops with ONE line naming the
  server and the status, and the judgment cache keeps everything judged so far.
- Cache: every judgment goes to a :class:`~.base.JudgmentCache` as it arrives, so a rerun (or a
  resumed run) asks the server only for what it has not judged: a complete rerun makes no
  requests at all.
- Written judgments (:class:`~.base.JudgmentWriter`, MT-Bench): a (system, user) prompt, temperature
  0, up to 2048 tokens (FastChat's llm_judge settings); the reply text is the judgment. They
  have a cache file of their own (their identity has no pairwise template), keyed by the
  template's name and hash and the whole prompt.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from w2s.api import ApiClient, RateLimiter, endpoint_url, one_line
from w2s.errors import W2SError
from w2s.evaluation.judges.base import (
    PAIRWISE_SYSTEM,
    PAIRWISE_TEMPLATE_VERSION,
    JudgmentCache,
    JudgmentWriter,
    PairwiseJudge,
    pairwise_prompt,
    parse_verdict,
)

__all__ = ["ApiJudge", "RateLimiter", "chat_url", "KEY_ENV_VARS", "MODEL_ENV_VAR"]

KEY_ENV_VARS = ("W2S_JUDGE_API_KEY", "W2S_API_KEY", "OPENAI_API_KEY")
MODEL_ENV_VAR = "W2S_JUDGE_MODEL"


def chat_url(url: str) -> str:
    """A server address -> its chat-completions endpoint.

    >>> chat_url("http://127.0.0.1:8000"), chat_url("http://h/v1/")
    ('http://127.0.0.1:8000/v1/chat/completions', 'http://h/v1/chat/completions')
    """
    return endpoint_url(url, "chat/completions", "api judge")


class ApiJudge(PairwiseJudge, JudgmentWriter):
    """A pairwise judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint; it also
    writes judgments (:meth:`write_judgments`)."""

    def __init__(self, spec: str, url: str, model: str | None = None, *,
                 cache: bool | str | os.PathLike = True, timeout: float = 60.0,
                 max_retries: int = 3, backoff: float = 1.0, rate_limit: float | None = None,
                 workers: int = 1, max_tokens: int = 8):
        super().__init__(spec)
        self.url = chat_url(url)
        self.model = model or os.environ.get(MODEL_ENV_VAR) or None
        self.served_model: str | None = self.model
        self.client = ApiClient(self.url, what="api judge", key_env_vars=KEY_ENV_VARS,
                                timeout=timeout, max_retries=max_retries, backoff=backoff,
                                rate_limit=rate_limit)
        self.workers = max(1, int(workers))
        self.max_tokens = int(max_tokens)
        self._model_lock = threading.Lock()
        self._cache_folder = None if cache is True else cache
        self.cache = (JudgmentCache(self._cache_identity(), self._cache_folder)
                      if cache else None)
        self.writing_cache = (JudgmentCache(self._writer_cache_identity(), self._cache_folder)
                              if cache else None)

    def _cache_identity(self) -> dict[str, Any]:
        """Everything that decides a verdict: where, which model, which prompt, how sampled."""
        return {"judge": "api", "url": self.url, "model": self.model,
                "template": PAIRWISE_TEMPLATE_VERSION, "temperature": 0,
                "max_tokens": self.max_tokens}

    def _writer_cache_identity(self) -> dict[str, Any]:
        return {"judge": "api", "url": self.url, "model": self.model, "writes": "judgments",
                "temperature": 0}

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), **self._cache_identity(),
                "served_model": self.served_model,
                "cache": str(self.cache.path) if self.cache is not None else None}

    def writer_identity(self) -> dict[str, Any]:
        """Who wrote the judgments: server, model (as asked and as served), sampling, cache."""
        return {**self._writer_cache_identity(), "judge": self.spec, "kind": "api",
                "served_model": self.served_model,
                "cache": (str(self.writing_cache.path) if self.writing_cache is not None
                          else None)}

    @property
    def requests(self) -> int:
        """HTTP requests made (chat and model listing), for the record."""
        return self.client.requests

    def _model_for_requests(self) -> str:
        with self._model_lock:  # worker threads ask the listing once, not once each
            if not self.served_model:
                self.served_model = self.client.listed_model()
            return self.served_model

    def ask(self, instruction: str, first: str, second: str) -> str:
        """The server's reply text to the pairwise prompt (first shown as Output 1)."""
        return self.chat(PAIRWISE_SYSTEM, pairwise_prompt(instruction, first, second),
                         self.max_tokens)

    def chat(self, system: str, user: str, max_tokens: int) -> str:
        """The server's reply to one system + user turn, temperature 0."""
        payload = {"model": self._model_for_requests(),
                   "messages": [{"role": "system", "content": system},
                                {"role": "user", "content": user}],
                   "temperature": 0, "max_tokens": int(max_tokens)}
        data = self.client.request(self.url, payload)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise W2SError(f"api judge: {self.url} answered without choices[0].message.content "
                           f"({one_line(json.dumps(data)[:120])})") from None
        return content or ""

    # -- judging -------------------------------------------------------------------------------
    def _judge_one(self, item: tuple[str, str, str], key: str | None) -> dict[str, Any]:
        raw = self.ask(*item)
        parsed = parse_verdict(raw)
        record = {"verdict": parsed if parsed is not None else 1.5, "raw": raw,
                  "unparsed": parsed is None}
        if self.cache is not None and key is not None:
            self.cache.put(key, record)
        return {**record, "cached": False}

    def compare(self, items: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        results: list[dict | None] = [None] * len(items)
        todo = []
        for i, item in enumerate(items):
            key = self.cache.key(*item) if self.cache is not None else None
            hit = self.cache.get(key) if key is not None else None
            if hit is not None:
                results[i] = {"verdict": hit["verdict"], "raw": hit.get("raw"),
                              "unparsed": bool(hit.get("unparsed")), "cached": True}
            else:
                todo.append((i, item, key))
        self._run(todo, self._judge_one, results, self.cache)
        return results  # type: ignore[return-value]

    def write_judgments(self, prompts: list[tuple[str, str]], *, template: str,
                        max_tokens: int = 2048) -> list[dict[str, Any]]:
        cache = self.writing_cache
        results: list[dict | None] = [None] * len(prompts)
        todo = []
        for i, (system, user) in enumerate(prompts):
            key = (cache.prompt_key(template, system, user, max_tokens)
                   if cache is not None else None)
            hit = cache.get(key) if key is not None else None
            if hit is not None:
                results[i] = {"text": hit["text"], "template": template, "cached": True}
            else:
                todo.append((i, (system, user), key))

        def write_one(prompt: tuple[str, str], key: str | None) -> dict[str, Any]:
            record = {"text": self.chat(*prompt, max_tokens), "template": template}
            if cache is not None and key is not None:
                cache.put(key, record)
            return {**record, "cached": False}

        self._run(todo, write_one, results, cache)
        return results  # type: ignore[return-value]

    def _run(self, todo: list[tuple[int, Any, str | None]], work, results: list,
             cache: JudgmentCache | None) -> None:
        """``results[i] = work(item, key)`` for each ``(i, item, key)``, on ``workers``
        threads; the first failure stops the rest and says what the cache keeps."""
        try:
            if self.workers == 1 or len(todo) <= 1:
                for i, item, key in todo:
                    results[i] = work(item, key)
            else:
                with ThreadPoolExecutor(self.workers) as pool:
                    futures = {pool.submit(work, item, key): i for i, item, key in todo}
                    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                    for f in pending:
                        f.cancel()
                    for f in done:
                        if f.exception() is not None:
                            raise f.exception()
                        results[futures[f]] = f.result()
        except W2SError as e:
            kept = (f"; {len(cache)} judgments kept in {cache.path}, rerun to continue"
                    if cache is not None and len(cache) else "")
            raise W2SError(f"{e}{kept}") from None
