"""The base model: the frozen large model that writes every candidate, a chunk at a time.

Two kinds, one interface (``start``, ``sample``, ``select``, ``texts``, ``finished``):

- :class:`HFBase`: a local causal LM. Rows of several prompts are sampled together, one token per
  step, from one KV cache (:class:`~w2s.methods.search.cache.CachedLM`); ``select`` reorders that cache
  by index, so the K successors of a beam continue from its cache instead of re-reading the
  prompt and the text so far. Sampling parameters are explicit (:func:`~w2s.methods.search.text.
  sample_next`); a row stops at any of the model's end-of-sequence tokens.
- :class:`ApiBase`: an OpenAI-compatible ``/v1/completions`` endpoint (vLLM, llama.cpp, hosted
  instruct models), as in the paper's gpt-3.5-turbo-instruct experiment. Each chunk is one request
  per distinct text so far (``n`` = the candidates that share it), ``max_tokens`` = the chunk
  length; ``finish_reason == "stop"`` means the candidate finished. Timeouts and 408/429/5xx are
  retried with exponential backoff; a server that cannot be reached is one line.
"""

from __future__ import annotations

import json

import torch

from w2s.api import ApiClient, endpoint_url, one_line
from w2s.errors import W2SError
from w2s.methods.search.cache import CachedLM
from w2s.methods.search.text import encode_prompt, eos_ids, sample_next
from w2s.models.generate import SamplingConfig
from w2s.models.loading import pad_id


def base_text(template: str, prompt: str) -> str:
    """What the base model reads of ``prompt``: ``template`` with ``{prompt}`` replaced (the
    guides read the raw prompt). The W2S search authors' IMDB base reads
    ``Here is a movie review from imdb: {prompt}``."""
    return template.replace("{prompt}", prompt)


class HFBase:
    """A local causal LM sampling rows chunk by chunk from one reorderable KV cache."""

    kind = "hf"

    def __init__(self, model, tokenizer, *, chat: bool, template: str = "{prompt}"):
        self.model = model
        self.tokenizer = tokenizer
        self.chat = chat
        self.template = template  # what the base reads of each prompt (see base_prompt)
        self.stop = eos_ids(model, tokenizer)
        pad = pad_id(tokenizer)
        self.lm = CachedLM(model, pad)
        self.device = self.lm.device
        self.tokens_sampled = 0

    def start(self, prompts: list[str], rows: list[int]) -> None:
        """One row per entry of ``rows`` (a prompt index); each prompt is read once."""
        self.tokens_sampled = 0
        self.prompts = prompts
        self.row_prompt = list(rows)
        self.lm.start([encode_prompt(self.tokenizer, base_text(self.template, p), self.chat)
                       for p in prompts])
        self.lm.select(rows)
        self.response: list[list[int]] = [[] for _ in rows]
        self.finished = [False] * len(rows)

    def select(self, index: list[int]) -> None:
        self.lm.select(index)
        self.row_prompt = [self.row_prompt[i] for i in index]
        self.response = [list(self.response[i]) for i in index]
        self.finished = [self.finished[i] for i in index]

    def sample(self, n_tokens: int, sampling: SamplingConfig, generator: torch.Generator | None,
               suppress_eos: bool = False) -> int:
        """Up to ``n_tokens`` more tokens for every unfinished row; returns the steps taken
        (fewer when every row finished). ``suppress_eos`` (benchmarks) never ends a row."""
        steps = 0
        for _ in range(n_tokens):
            if all(self.finished):
                break
            logits, fed = self.lm.feed(leave_last=False)
            if logits is None:
                break
            last = logits[:, 0].float()
            if suppress_eos:
                last[:, sorted(self.stop)] = float("-inf")
            tokens = sample_next(last, sampling.temperature, sampling.top_k, sampling.top_p,
                                 generator).tolist()
            steps += 1
            for r, tok in enumerate(tokens):
                if self.finished[r]:
                    continue
                self.tokens_sampled += 1
                if tok in self.stop:
                    self.finished[r] = True
                else:
                    self.response[r].append(tok)
                    self.lm.push(r, [tok])
        return steps

    def texts(self) -> list[str]:
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in self.response]

    def lengths(self) -> list[int]:
        """Tokens written per row (the end-of-sequence token not counted)."""
        return [len(ids) for ids in self.response]


# --------------------------------------------------------------------------------------------
# OpenAI-compatible completions endpoint

def completions_url(url: str) -> str:
    """``http://h:8000``, ``.../v1`` or ``.../v1/completions`` -> the completions endpoint."""
    return endpoint_url(url, "completions", "api base")


def parse_api_base(spec: str) -> tuple[str, str | None]:
    """``api:URL[#MODEL]`` -> (completions URL, model or None)."""
    rest = spec.split(":", 1)[1] if spec.startswith("api:") else spec
    url, _, model = rest.partition("#")
    if not url.strip():
        raise W2SError("api base: write --base api:http://HOST:PORT/v1#MODEL")
    return completions_url(url.strip()), (model.strip() or None)


class ApiBase:
    """A black-box base model behind ``POST /v1/completions``, sampled chunk by chunk.

    The API key, if the server needs one, comes from ``$W2S_API_KEY`` or ``$OPENAI_API_KEY``
    (never recorded). ``model`` none: the first model ``/v1/models`` lists. The prompt is sent
    as plain text: a completions endpoint applies no chat template (format it in the prompts if
    the served model needs one).
    """

    kind = "api"
    KEY_ENV_VARS = ("W2S_API_KEY", "OPENAI_API_KEY")

    def __init__(self, spec: str, *, timeout: float = 60.0, max_retries: int = 3,
                 backoff: float = 1.0, template: str = "{prompt}", workers: int = 4,
                 rate_limit: float | None = None):
        self.template = template  # what the base reads of each prompt (see base_prompt)
        self.url, self.model = parse_api_base(spec)
        self.client = ApiClient(self.url, what="api base", key_env_vars=self.KEY_ENV_VARS,
                                timeout=timeout, max_retries=max_retries, backoff=backoff,
                                rate_limit=rate_limit)
        self.workers = max(1, int(workers))
        self.tokens_sampled = 0
        self.fallback_requests = 0  # extra requests because the server returned fewer than n

    @property
    def requests(self) -> int:
        """HTTP requests made, for the run record."""
        return self.client.requests

    def check(self) -> str:
        """Make sure the server answers (and learn the model name if none was given); call it
        before a run starts. Returns the model name."""
        try:
            listed = self.client.listed_model(retries=0)
        except W2SError as e:
            if "HTTP 404" in str(e) and self.model:  # a server without a listing: fine
                return self.model
            raise
        self.model = self.model or listed
        return self.model

    def _request(self, prompt: str, max_tokens: int, n: int, sampling: SamplingConfig,
                 seed: int) -> tuple[list[tuple[str, str]], int | None]:
        """One request for ``n`` continuations; what came back (maybe fewer) and its tokens."""
        payload = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "n": n,
                   "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": seed}
        if sampling.top_k > 0:  # not in OpenAI's API; vLLM and llama.cpp read it
            payload["top_k"] = sampling.top_k
        data = self.client.request(self.url, payload)
        try:
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            out = [(str(c.get("text") or ""), str(c.get("finish_reason") or "length"))
                   for c in choices]
        except (KeyError, TypeError, AttributeError):
            raise W2SError(f"api base: {self.url} answered without choices[].text "
                           f"({one_line(json.dumps(data)[:120])})") from None
        if not out:
            raise W2SError(f"api base: {self.url} answered with no completion at all")
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens")
        return out[:n], int(tokens) if isinstance(tokens, int) else None

    def complete(self, prompt: str, max_tokens: int, n: int, sampling: SamplingConfig,
                 seed: int) -> tuple[list[tuple[str, str]], int | None]:
        """``n`` continuations of ``prompt``: ``([(text, finish_reason), ...], tokens or None)``.

        Many servers (``transformers serve`` among them) ignore ``n`` and return one completion:
        the rest are then asked for one request each, ``workers`` at a time (within the rate
        limit), each with its own seed so they are distinct draws; ``fallback_requests``
        counts them for the run record.
        """
        out, tokens = self._request(prompt, max_tokens, n, sampling, seed)
        missing = n - len(out)
        if missing <= 0:
            return out, tokens
        from concurrent.futures import ThreadPoolExecutor

        seeds = [(seed + 7919 * (i + 1)) % (2**31 - 1) for i in range(missing)]
        with ThreadPoolExecutor(max_workers=min(self.workers, missing)) as pool:
            more = list(pool.map(lambda s: self._request(prompt, max_tokens, 1, sampling, s),
                                 seeds))
        self.fallback_requests += missing
        for choices, used in more:
            out.append(choices[0])
            tokens = None if tokens is None or used is None else tokens + used
        return out, tokens

    # -- the base-model interface --------------------------------------------------------------
    def start(self, prompts: list[str], rows: list[int]) -> None:
        self.tokens_sampled = 0
        self.prompts = [base_text(self.template, p) for p in prompts]
        self.row_prompt = list(rows)
        self.text = ["" for _ in rows]
        self.written = [0] * len(rows)
        self.finished = [False] * len(rows)

    def select(self, index: list[int]) -> None:
        self.row_prompt = [self.row_prompt[i] for i in index]
        self.text = [self.text[i] for i in index]
        self.written = [self.written[i] for i in index]
        self.finished = [self.finished[i] for i in index]

    def sample(self, n_tokens: int, sampling: SamplingConfig, generator: torch.Generator | None,
               suppress_eos: bool = False) -> int:
        """One chunk of up to ``n_tokens`` for every unfinished row: one request per distinct
        (prompt, text so far), ``n`` = the rows sharing it. Returns ``n_tokens``."""
        groups: dict[tuple[int, str], list[int]] = {}
        for r in range(len(self.text)):
            if not self.finished[r]:
                groups.setdefault((self.row_prompt[r], self.text[r]), []).append(r)
        for (p, text), rows in groups.items():
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            choices, used = self.complete(self.prompts[p] + text, n_tokens, len(rows),
                                          sampling, seed)
            for r, (chunk, reason) in zip(rows, choices, strict=True):
                self.text[r] += chunk
                self.written[r] += n_tokens if reason == "length" else 0
                self.finished[r] = reason != "length"
            self.tokens_sampled += used if used is not None else n_tokens * len(rows)
        return n_tokens

    def texts(self) -> list[str]:
        return list(self.text)

    def lengths(self) -> list[int]:
        """Tokens written per row: every chunk that ran to ``max_tokens``; a last chunk that
        stopped early is not counted (the server reports tokens per request, not per choice)."""
        return list(self.written)

