"""``api:URL[#MODEL]``: an OpenAI-compatible chat-completions server as a judge: pairwise, and
writing judgments.

Works with anything that speaks ``POST /v1/chat/completions`` (vLLM, llama.cpp's server, Ollama,
hosted APIs), through the shared client :class:`w2s.api.ApiClient`. Every request, pairwise or
written, is one call of :meth:`ApiJudge.chat` (a conversation in, the reply text out) through
that one client, so ``requests`` counts them all.

- URL: ``http://host:8000`` or ``.../v1`` or the full ``.../v1/chat/completions``. MODEL after
  ``#`` (else ``$W2S_JUDGE_MODEL``, else the first model the server lists at ``/v1/models``;
  pass it to pin the model, since it is part of the cache key as given).
- Key: ``$W2S_JUDGE_API_KEY``, else ``$W2S_API_KEY``, else ``$OPENAI_API_KEY``, sent as
  ``Authorization: Bearer``; none for local servers that need none. The key is never recorded.
- Pairwise (``compare``): temperature 0, a few tokens, the pairwise prompt of :mod:`.base`; the
  reply is parsed by :func:`~w2s.evaluation.judges.base.parse_verdict` (an unparsable reply
  counts as no preference for that order and is flagged ``unparsed``).
- Written judgments (:class:`~.base.JudgmentWriter`: ``reply`` for a whole conversation,
  Arena-Hard; ``write_judgments`` for a batch of (system, user) prompts, MT-Bench):
  temperature 0, the caller's token budget (MT-Bench: FastChat's 2048); the reply text is the
  judgment. A batch is asked on ``workers`` threads.
- Robustness: a timeout per request; retries with exponential backoff (``backoff * 2**attempt``
  seconds, or the server's ``Retry-After``) on timeouts, connection errors, 408/409/429/5xx; an
  optional rate limit (requests per second, across worker threads); other HTTP errors (401, 403,
  404, 400) fail at once. When the server keeps refusing, the run stops with ONE line naming the
  server and the status, and the judgment cache keeps everything judged so far.
- Cache: every verdict and every written judgment goes to a :class:`~.base.JudgmentCache` as it
  arrives, so a rerun (or a resumed run) asks the server only for what it has not judged: a
  complete rerun makes no requests at all. Both live in one folder, a file each (the pairwise
  file's identity carries the pairwise template and token budget; a written judgment's key
  carries its template, conversation and budget).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from w2s.api import ApiClient, RateLimiter, endpoint_url, one_line
from w2s.errors import W2SError
from w2s.evaluation.judges.base import (
    PAIRWISE_SYSTEM,
    PAIRWISE_TEMPLATE_VERSION,
    JudgmentCache,
    JudgmentWriter,
    Messages,
    PairwiseJudge,
    conversation,
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
    """A judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint: pairwise
    (:meth:`compare`) and writing (:meth:`reply`, :meth:`write_judgments`), one client, one
    cache folder. ``max_tokens`` is the pairwise reply's budget; a written judgment's is the
    caller's. Not deterministic (a served model can answer the same prompt differently):
    ``repeat`` > 0 is a repeat of the judging with cache entries of its own."""

    deterministic = False

    def __init__(self, spec: str, url: str, model: str | None = None, *,
                 cache: bool | str | os.PathLike = True, timeout: float = 60.0,
                 max_retries: int = 3, backoff: float = 1.0, rate_limit: float | None = None,
                 workers: int = 1, max_tokens: int = 8, repeat: int = 0):
        super().__init__(spec)
        self.repeat = int(repeat)  # > 0: a repeat of the judging (--judge-repeats), cached apart
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
                "max_tokens": self.max_tokens, **self._repeat()}

    def _writer_cache_identity(self) -> dict[str, Any]:
        return {"judge": "api", "url": self.url, "model": self.model, "writes": "judgments",
                "temperature": 0, **self._repeat()}

    def _repeat(self) -> dict[str, int]:
        return {"repeat": self.repeat} if self.repeat else {}

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
        return self.chat(conversation(PAIRWISE_SYSTEM, pairwise_prompt(instruction, first, second)),
                         self.max_tokens)

    def chat(self, messages: Sequence[Mapping[str, str]], max_tokens: int) -> str:
        """The server's reply to a conversation, temperature 0: the one request every judgment
        (pairwise or written) is made of."""
        payload = {"model": self._model_for_requests(),
                   "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
                   "temperature": 0, "max_tokens": int(max_tokens)}
        data = self.client.request(self.url, payload)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise W2SError(f"api judge: {self.url} answered without choices[0].message.content "
                           f"({one_line(json.dumps(data)[:120])})") from None
        return content or ""

    # -- judging -------------------------------------------------------------------------------
    def compare(self, items: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        results: list[dict | None] = [None] * len(items)
        jobs = []
        for i, item in enumerate(items):
            key = self.cache.key(*item) if self.cache is not None else None
            hit = self.cache.get(key) if key is not None else None
            if hit is not None:
                results[i] = {"verdict": hit["verdict"], "raw": hit.get("raw"),
                              "unparsed": bool(hit.get("unparsed")), "cached": True}
            else:
                jobs.append(lambda i=i, item=item, key=key: self._judge_one(i, item, key, results))
        self._run(jobs, self.cache)
        return results  # type: ignore[return-value]

    def _judge_one(self, i: int, item: tuple[str, str, str], key: str | None,
                   results: list) -> None:
        raw = self.ask(*item)
        parsed = parse_verdict(raw)
        record = {"verdict": parsed if parsed is not None else 1.5, "raw": raw,
                  "unparsed": parsed is None}
        if self.cache is not None and key is not None:
            self.cache.put(key, record)
        results[i] = {**record, "cached": False}

    def _write(self, conversations: list[Messages], max_tokens: int,
               keep: Callable[[int, str], None]) -> None:
        self._run([lambda j=j, m=m: keep(j, self.chat(m, max_tokens))
                   for j, m in enumerate(conversations)], self.writing_cache)

    def _logprobs(self, conversations: list[Messages], tokens: list[str],
                  keep: Callable[[int, dict[str, float]], None]) -> None:
        self._run([lambda j=j, m=m: keep(j, self._top_logprobs(m, tokens))
                   for j, m in enumerate(conversations)], self.writing_cache)

    def _top_logprobs(self, messages: Messages, tokens: list[str]) -> dict[str, float]:
        """One token with its top-5 log-probs (AlpacaEval's request: max_tokens 1, temperature
        1, logprobs, top_logprobs 5); the log-probs of ``tokens`` among them."""
        payload = {"model": self._model_for_requests(), "messages": messages, "max_tokens": 1,
                   "temperature": 1, "logprobs": True, "top_logprobs": 5}
        data = self.client.request(self.url, payload)
        try:
            top = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            found = {t["token"]: float(t["logprob"]) for t in top}
        except (KeyError, IndexError, TypeError):
            raise W2SError(f"api judge: {self.url} answered without logprobs (choices[0]."
                           "logprobs.content[0].top_logprobs); this judging reads the log-probs "
                           "of the first reply token: use a server that returns them (OpenAI, "
                           "vLLM) or an llm: judge") from None
        return {t: found[t] for t in tokens if t in found}

    def _run(self, jobs: list[Callable[[], None]], cache: JudgmentCache | None) -> None:
        """Every job, on ``workers`` threads; the first failure stops the rest and says what
        the cache keeps."""
        try:
            if self.workers == 1 or len(jobs) <= 1:
                for job in jobs:
                    job()
            else:
                with ThreadPoolExecutor(self.workers) as pool:
                    futures = [pool.submit(job) for job in jobs]
                    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                    for f in pending:
                        f.cancel()
                    for f in done:
                        if f.exception() is not None:
                            raise f.exception()
        except W2SError as e:
            kept = (f"; {len(cache)} judgments kept in {cache.path}, rerun to continue"
                    if cache is not None and len(cache) else "")
            raise W2SError(f"{e}{kept}") from None
