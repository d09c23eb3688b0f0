"""What every judge is, the pairwise prompt, and the on-disk judgment cache.

Two kinds of judge:

- :class:`RewardJudge`: scores each (prompt, response) on its own (``score``); the higher score
  wins. The scores are gold rewards in their own right (their means are reported).
- :class:`PairwiseJudge`: sees an instruction and two outputs and names the better POSITION
  (``compare``: 1 = first shown, 2 = second shown, 1.5 = no preference). The win-rate layer
  shows every pair in both orders (see :func:`w2s.evaluation.winrate.preference_from_verdicts`).

Judges that can also WRITE (``api:``, ``llm:``) are :class:`JudgmentWriter` s: given a whole
conversation they return the text they generate (greedy / temperature 0), for benchmarks that
parse a verdict or rating out of it (MT-Bench's ``[[rating]]``, Arena-Hard's ``[[A>B]]``).
The mixin holds the one written-judgment path (cache lookup, generate what is missing, cache
each text as it arrives); a judge supplies only how it generates (:meth:`JudgmentWriter._write`).

Every judge has an :meth:`~Judge.identity`: what it is and which version, written to the run's
env.json and metrics so a win rate always says who judged it (AlpacaEval results moved between
judge versions; alpaca_eval #325/#382); a writer's :meth:`~JudgmentWriter.writer_identity` says
who wrote its judgments.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from w2s.runs import cache_root, content_hash

PAIRWISE_TEMPLATE_VERSION = "w2s-pairwise-v1"
PAIRWISE_SYSTEM = ("You are a careful, impartial judge of the answers AI assistants give to "
                   "instructions.")
PAIRWISE_TEMPLATE = """\
Which of the two outputs below follows the instruction better? Judge helpfulness, accuracy and \
level of detail. Do not let the order in which the outputs are shown, or their length, decide.

# Instruction
{instruction}

# Output 1
{output_1}

# Output 2
{output_2}

Answer with one character: 1 if Output 1 is better, 2 if Output 2 is better."""
"""The pairwise prompt (AlpacaEval / MT-bench style: instruction, two outputs, a one-token
verdict). Change it and change :data:`PAIRWISE_TEMPLATE_VERSION`: the version is part of every
cached judgment's key and of the run's recorded judge identity."""

VERDICT_TOKENS = ("1", "2")


def pairwise_prompt(instruction: str, first: str, second: str) -> str:
    """The judge prompt with ``first`` shown as Output 1 and ``second`` as Output 2."""
    return PAIRWISE_TEMPLATE.format(instruction=instruction, output_1=first, output_2=second)


_VERDICT_START = re.compile(r"^\W*(?:output\s*)?\(?([12])(?!\d)(?!\)?\s*(?:or|/|,|and)\s*\(?[12])",
                            re.IGNORECASE)
_VERDICT_ANY = re.compile(r"(?<!\d)([12])(?!\d)")


def parse_verdict(text: str | None) -> int | None:
    """A judge's reply -> 1 or 2, or None when it names neither (or both, ambiguously).

    Accepts ``"1"``, ``"2."``, ``"Output 2"``, ``"(1)"``, ``"Output 1 is better than Output 2"``
    (the reply's first word decides, unless it lists both: ``"1 or 2"``); otherwise a reply in
    which exactly one of the two digits appears on its own.

    >>> parse_verdict(" 2"), parse_verdict("Output (1) is better"), parse_verdict("1 or 2?")
    (2, 1, None)
    """
    if not text:
        return None
    m = _VERDICT_START.match(text.strip())
    if m:
        return int(m.group(1))
    found = set(_VERDICT_ANY.findall(text))
    return int(found.pop()) if len(found) == 1 else None


class Judge:
    """Base class: ``spec`` (the judge string), ``kind`` ("reward" or "pairwise")."""

    kind = "judge"

    deterministic = True
    """Whether the same items always get the same judgment (a model read greedily or by its
    log-probs, a reward): repeats of it are not recomputed (:mod:`w2s.evaluation.robust`)."""

    def __init__(self, spec: str):
        self.spec = spec

    def identity(self) -> dict[str, Any]:
        """What judged: the judge string, its kind, and versions (package / model / template)."""
        return {"judge": self.spec, "kind": self.kind}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


READS = ("response", "prompt+response")


class RewardJudge(Judge):
    """Scores responses one at a time; the higher score wins.

    ``reads``: what a text scorer (``cls:``, ``vader``, ``reward:``) reads: the ``response``
    (the default), or ``prompt+response`` (the W2S search authors' IMDB gold reward scores the
    whole review). A reward model (``rm:``) always reads both, as a (prompt, response) pair."""

    kind = "reward"
    reads = "response"

    def read(self, prompts: list[str], responses: list[str]) -> list[str]:
        """The texts a text scorer scores (see ``reads``)."""
        if self.reads == "response":
            return list(responses)
        return [p + r for p, r in zip(prompts, responses, strict=True)]

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        return ident if self.reads == "response" else {**ident, "reads": self.reads}

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        raise NotImplementedError


class PairwiseJudge(Judge):
    """Compares two outputs for one instruction; returns the preferred position."""

    kind = "pairwise"

    def compare(self, items: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        """For each ``(instruction, first, second)``: ``{"verdict": 1 | 2 | 1.5, ...}`` plus what
        the judge said (``margin``: log p("1") - log p("2") for LM judges; ``raw``: an API
        reply; ``cached``: whether it came from the judgment cache)."""
        raise NotImplementedError


Messages = list[dict[str, str]]
"""A conversation: ``{"role", "content"}`` dicts (system, user, assistant, ..., ending with the
turn the judge answers), as chat-completions servers and chat templates take it."""


def conversation(system: str, user: str) -> Messages:
    """The two-turn conversation of one (system, user) prompt."""
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class JudgmentWriter:
    """A judge that can also WRITE a judgment: given a conversation it returns the text it
    generates (greedy / temperature 0), for benchmarks that parse a verdict out of it.
    ``api:`` and ``llm:`` judges provide it.

    - :meth:`reply`: one whole conversation (Arena-Hard v0.1 asks again in a follow-up turn);
    - :meth:`write_judgments`: a batch of (system, user) prompts (MT-Bench), the same thing.

    Both go through one path: every text is looked up in, and written to, the judge's
    ``writing_cache`` (a :class:`JudgmentCache` keyed by :meth:`JudgmentCache.written_key`, or
    None), so a rerun generates nothing; what is missing goes to :meth:`_write`, the one method
    a judge implements. ``requests`` counts what the judge actually generated or asked for.

    ``template`` names the prompt template the conversation was made from (its name and a hash
    of its text, e.g. ``"single-v1@1a2b3c4d"``): it is part of every cached judgment's key and
    record, so a changed template is judged anew."""

    writing_cache: JudgmentCache | None = None

    def reply(self, messages: Sequence[Mapping[str, str]], *, template: str,
              max_tokens: int = 2048) -> tuple[str, bool]:
        """The judge's reply to ``messages`` (at most ``max_tokens`` tokens) and whether it
        came from the cache."""
        (out,) = self._written([messages], template, max_tokens)
        return out["text"], out["cached"]

    def write_judgments(self, prompts: list[tuple[str, str]], *, template: str,
                        max_tokens: int = 2048) -> list[dict[str, Any]]:
        """For each ``(system, user)``: ``{"text": the judgment, "template": template,
        "cached": bool}``, at most ``max_tokens`` generated tokens each."""
        return self._written([conversation(s, u) for s, u in prompts], template, max_tokens)

    def writer_identity(self) -> dict[str, Any]:
        """Who wrote the judgments: the judge string, its kind (``api`` / ``llm``), the model
        or server, the decoding, and the cache file."""
        raise NotImplementedError

    def _written(self, conversations: Sequence[Sequence[Mapping[str, str]]], template: str,
                 max_tokens: int) -> list[dict[str, Any]]:
        cache = self.writing_cache
        convs = [[{"role": m["role"], "content": m["content"]} for m in c] for c in conversations]
        results: list[dict | None] = [None] * len(convs)
        todo: list[tuple[int, str | None]] = []
        for i, messages in enumerate(convs):
            key = cache.written_key(template, messages, max_tokens) if cache is not None else None
            hit = cache.get(key) if key is not None else None
            if hit is not None:
                results[i] = {"text": hit["text"], "template": template, "cached": True}
            else:
                todo.append((i, key))

        def keep(j: int, text: str) -> None:
            i, key = todo[j]
            record = {"text": text, "template": template}
            if key is not None:
                cache.put(key, record)
            results[i] = {**record, "cached": False}

        if todo:
            self._write([convs[i] for i, _ in todo], int(max_tokens), keep)
        return results  # type: ignore[return-value]

    def _write(self, conversations: list[Messages], max_tokens: int,
               keep: Callable[[int, str], None]) -> None:
        """Generate the reply to every conversation, calling ``keep(j, text)`` for the j-th as
        soon as it is written (so a failure later keeps it in the cache)."""
        raise NotImplementedError

    def reply_logprobs(self, conversations: Sequence[Sequence[Mapping[str, str]]],
                       tokens: Sequence[str], *, template: str) -> list[dict[str, Any]]:
        """For each conversation, the log-probability of each of ``tokens`` as the judge's
        first reply token: ``{"logprobs": {token: logprob}, "cached": bool}``, a token the
        judge does not rank among its top choices left out (AlpacaEval's weighted annotator
        reads ``m`` / ``M`` this way). Cached like written judgments."""
        cache = self.writing_cache
        name = f"{template}#logprobs:{','.join(tokens)}"
        convs = [[{"role": m["role"], "content": m["content"]} for m in c] for c in conversations]
        results: list[dict | None] = [None] * len(convs)
        todo: list[tuple[int, str | None]] = []
        for i, messages in enumerate(convs):
            key = cache.written_key(name, messages, 1) if cache is not None else None
            hit = cache.get(key) if key is not None else None
            if hit is not None:
                results[i] = {"logprobs": hit["logprobs"], "cached": True}
            else:
                todo.append((i, key))

        def keep(j: int, logprobs: dict[str, float]) -> None:
            i, key = todo[j]
            if key is not None:
                cache.put(key, {"logprobs": logprobs, "template": name})
            results[i] = {"logprobs": logprobs, "cached": False}

        if todo:
            self._logprobs([convs[i] for i, _ in todo], list(tokens), keep)
        return results  # type: ignore[return-value]

    def _logprobs(self, conversations: list[Messages], tokens: list[str],
                  keep: Callable[[int, dict[str, float]], None]) -> None:
        """The first-token log-probs of ``tokens`` for every conversation, ``keep(j, {...})``
        for the j-th as soon as it is known."""
        raise NotImplementedError


def writes_judgments(judge: Judge) -> bool:
    """True when ``judge`` can write judgments (:class:`JudgmentWriter`)."""
    return isinstance(judge, JudgmentWriter)


# --------------------------------------------------------------------------------------------
# judgment cache


class JudgmentCache:
    """Judgments on disk, one JSONL file per judge identity, keyed by content hash.

    The key of a judgment hashes (judge identity, prompt-template version, instruction, the output
    shown first, the output shown second), so the order is part of it and changing any of them
    asks the judge again; a written judgment's key (:meth:`written_key`) hashes the identity, the
    template, the whole conversation and the token budget. Lines are appended (and
    flushed) as judgments arrive, under a lock, so a run stopped by a server error or killed
    keeps everything judged so far; a line torn by a kill is ignored on reading and simply
    judged again.

    Lives in ``<w2s cache>/judgments/<identity hash>.jsonl`` unless given a folder.
    """

    def __init__(self, identity: dict[str, Any], root: str | os.PathLike | None = None):
        self.identity = identity
        self.root = Path(root) if root else cache_root() / "judgments"
        self.path = self.root / f"{content_hash(identity, 20)}.jsonl"
        self._lock = threading.Lock()
        self._entries: dict[str, dict] | None = None

    def key(self, instruction: str, first: str, second: str) -> str:
        return content_hash({"judge": self.identity, "template": PAIRWISE_TEMPLATE_VERSION,
                             "instruction": instruction, "first": first, "second": second}, 32)

    def written_key(self, template: str, messages: Sequence[Mapping[str, str]],
                    max_tokens: int) -> str:
        """The key of a WRITTEN judgment (:class:`JudgmentWriter`): judge identity, template
        name and hash, the whole conversation, and the token budget."""
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        return content_hash({"judge": self.identity, "template": template, "messages": turns,
                             "max_tokens": int(max_tokens)}, 32)

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = {}
            if self.path.is_file():
                for line in self.path.read_text().splitlines():
                    try:
                        rec = json.loads(line)
                        self._entries[rec["key"]] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a torn last line from a killed run: judge it again
        return self._entries

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._load().get(key)

    def put(self, key: str, record: dict) -> None:
        rec = {"key": key, **record}
        line = json.dumps(rec) + "\n"
        with self._lock:
            self._load()[key] = rec
            self.root.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():  # a header line saying whose judgments these are
                with open(self.path, "a") as f:
                    f.write(json.dumps({"identity": self.identity}) + "\n")
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def __len__(self) -> int:
        with self._lock:
            return len(self._load())
