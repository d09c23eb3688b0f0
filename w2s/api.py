"""One small client for OpenAI-compatible HTTP servers (vLLM, llama.cpp, Ollama, hosted APIs).

Two parts of w2s talk to such servers: the ``api:`` judge (``/v1/chat/completions``) and the
``api:`` base model of W2S search (``/v1/completions``). Both go through :class:`ApiClient`, so
both behave the same way:

- addresses: ``http://host:8000``, ``.../v1`` or the full endpoint URL (:func:`endpoint_url`);
- the key from the first set environment variable of the caller's list (never recorded), sent as
  ``Authorization: Bearer``; none for local servers that need none;
- a timeout per request; retries with exponential backoff (``backoff * 2**attempt`` seconds, or
  the server's ``Retry-After``) on timeouts, connection errors and 408/409/429/5xx; other HTTP
  errors (400, 401, 403, 404) fail at once; an optional rate limit shared by threads;
- every failure the user can fix is ONE line (:class:`~w2s.errors.W2SError`) naming the server.

Standard library only (urllib).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from w2s.errors import W2SError

RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)


def one_line(text: Any, limit: int = 160) -> str:
    """``text`` on one line, cut to ``limit`` characters (bytes are decoded)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def endpoint_url(url: str, endpoint: str, what: str = "api") -> str:
    """A server address -> the URL of ``endpoint`` (``chat/completions``, ``completions``).

    >>> endpoint_url("http://127.0.0.1:8000", "chat/completions")
    'http://127.0.0.1:8000/v1/chat/completions'
    >>> endpoint_url("http://h/v1/", "completions")
    'http://h/v1/completions'
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise W2SError(f"{what}: '{url}' is not an http(s) URL; write api:http://HOST:PORT/v1#MODEL")
    path = parsed.path.rstrip("/")
    if not path.endswith("/" + endpoint):
        path = path + (f"/{endpoint}" if path.endswith("/v1") else f"/v1/{endpoint}")
    return urllib.parse.urlunparse(parsed._replace(path=path))


class RateLimiter:
    """At most ``rate`` request starts per second, shared by threads (None: no limit)."""

    def __init__(self, rate: float | None):
        if rate is not None and rate <= 0:
            raise W2SError(f"rate limit must be a positive number of requests per second, got "
                           f"{rate}")
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class ApiClient:
    """JSON requests to one OpenAI-compatible server, with the behaviour in the module docstring.

    ``url``: the endpoint URL (see :func:`endpoint_url`); ``what``: how errors name the caller
    (``"api judge"``, ``"api base"``); ``key_env_vars``: where the key may be, in order.
    ``requests`` counts HTTP requests made (thread-safe), for the run record.
    """

    def __init__(self, url: str, *, what: str, key_env_vars: tuple[str, ...],
                 timeout: float = 60.0, max_retries: int = 3, backoff: float = 1.0,
                 rate_limit: float | None = None):
        self.url = url
        self.what = what
        self.key_env_vars = key_env_vars
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.limiter = RateLimiter(rate_limit)
        self.requests = 0
        self._count_lock = threading.Lock()

    @property
    def models_url(self) -> str:
        """``.../v1/models`` of the same server."""
        return self.url.rsplit("/v1/", 1)[0] + "/v1/models"

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        for var in self.key_env_vars:
            if os.environ.get(var):
                headers["Authorization"] = f"Bearer {os.environ[var]}"
                break
        return headers

    def request(self, url: str | None = None, payload: dict | None = None,
                retries: int | None = None) -> dict:
        """GET (no payload) or POST ``payload`` as JSON to ``url`` (default: the endpoint) and
        return the parsed JSON answer, retrying as the module docstring says."""
        url = url or self.url
        data = None if payload is None else json.dumps(payload).encode()
        retries = self.max_retries if retries is None else max(0, int(retries))
        last = ""
        for attempt in range(retries + 1):
            self.limiter.wait()
            with self._count_lock:
                self.requests += 1
            req = urllib.request.Request(url, data=data, headers=self.headers(),
                                         method="GET" if data is None else "POST")
            delay = self.backoff * (2 ** attempt)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    body = resp.read()
            except urllib.error.HTTPError as e:
                detail = one_line(e.read() or e.reason)
                last = f"HTTP {e.code}" + (f": {detail}" if detail else "")
                if e.code in (401, 403):
                    keys = " or ".join(f"${v}" for v in self.key_env_vars)
                    raise W2SError(f"{self.what}: {url} refused the request ({last}); set the "
                                   f"key in {keys}") from None
                if e.code not in RETRY_STATUS:
                    raise W2SError(f"{self.what}: {url} refused the request ({last})") from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.strip().isdigit():
                    delay = float(retry_after)
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets,
                # and a server that does not speak HTTP (BadStatusLine, IncompleteRead)
                reason = getattr(e, "reason", e)
                if isinstance(e, http.client.HTTPException):
                    reason = f"not an HTTP answer ({type(e).__name__}: {one_line(str(e))})"
                    reason = reason.replace(" ()", "")
                kind = (f"timed out after {self.timeout:g}s" if isinstance(reason, TimeoutError)
                        else one_line(reason))
                last = f"no answer: {kind}"
            else:
                try:
                    return json.loads(body)
                except json.JSONDecodeError:
                    raise W2SError(f"{self.what}: {url} answered with something that is not JSON "
                                   f"({one_line(body[:120])}); is it an OpenAI-compatible "
                                   "server?") from None
            if attempt < retries:
                time.sleep(delay)
        tries = f"{retries + 1} attempt{'s' if retries else ''}"
        if last.startswith("no answer: "):
            raise W2SError(f"{self.what}: {url} cannot be reached ({last[11:]}) after {tries}; "
                           "is the server running?")
        raise W2SError(f"{self.what}: {url} failed ({last}) after {tries}")

    def listed_model(self, retries: int | None = None) -> str:
        """The first model the server lists at ``/v1/models``."""
        data = self.request(self.models_url, retries=retries)
        try:
            return str(data["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise W2SError(f"{self.what}: could not read a model name from {self.models_url}; "
                           "pass one as api:URL#MODEL") from None
