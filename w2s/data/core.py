"""Rows, kinds and :class:`TaskData`: the one shape every data source produces.

A task is a list of plain dicts ("rows") of one of four kinds:

=================  =============================================  ================================
kind               required fields                                used by
=================  =============================================  ================================
``classification`` ``id: str, text: str, label: int`` (0..C-1)    W2S generalization (binary)
``preference``     ``id: str, prompt: str, chosen: str,           WSPO, MACPO, W2S deception
                   rejected: str``
``prompts``        ``id: str, prompt: str, reference: str|None``  W2S search, win-rate evaluation
``reasoning``      ``id: str, prompt: str, solution: str,         W2S reasoning (checkable answers:
                   answer: str``                                  GSM8K, MATH, arithmetic)
=================  =============================================  ================================

Rows may carry extra fields (an IMDB prompt keeps its ``label``); consumers ignore what they do
not know. Strings are the source's text: no chat template is applied here. ``meta["prompt_format"]``
says how a preference/prompts row's prompt is written: ``"plain"`` (the user's message) or
``"hh"`` (an Anthropic HH transcript ``"Human: ...\\n\\nAssistant:"``; the response follows
after one space, so ``prompt + " " + chosen`` is the original transcript).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from w2s.data.splits import permutation
from w2s.errors import W2SError
from w2s.runs import content_hash

KINDS = ("classification", "preference", "prompts", "reasoning")
"""The four kinds of task."""

KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "classification": ("text", "label"),
    "preference": ("prompt", "chosen", "rejected"),
    "prompts": ("prompt",),
    "reasoning": ("prompt", "solution", "answer"),
}
"""Required non-empty fields per kind, besides ``id`` (``prompts`` also has optional ``reference``)."""

INPUT_FIELD = {"classification": "text", "preference": "prompt", "prompts": "prompt",
               "reasoning": "prompt"}
"""The field that is the model's input: splits keep rows sharing it together (no leakage)."""


def fingerprint(rows: list[dict]) -> str:
    """A content hash of the rows (16 hex chars): the same rows give the same fingerprint on any
    machine. Use it in cache keys and record it in env.json as the data's identity."""
    return content_hash(rows, 16)


def row_problem(row: Any, kind: str) -> str | None:
    """What is wrong with one row of ``kind``, as a short phrase naming the field, or None.

    Strict: ids and texts are non-empty strings, ``label`` is an int >= 0 (not a bool),
    ``reference`` is a string or None. Loaders that accept looser input (a CSV's ``"1"``) coerce
    before calling this.
    """
    if not isinstance(row, dict):
        return f"is a {type(row).__name__}, not an object"
    for name in ("id", *KIND_FIELDS[kind]):
        if name not in row or row[name] is None:
            return f"missing field '{name}'"
        value = row[name]
        if name == "label":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return f"field 'label' must be an integer class 0, 1, ... (got {value!r})"
        elif not isinstance(value, str):
            return f"field '{name}' must be a string (got {type(value).__name__})"
        elif not value.strip():
            return f"field '{name}' is empty"
    if kind == "prompts" and row.get("reference") is not None and not isinstance(row["reference"], str):
        return f"field 'reference' must be a string or null (got {type(row['reference']).__name__})"
    return None


@dataclass
class TaskData:
    """The rows of one task split, with where they came from.

    name: the task name as loaded (``sciq``, ``local:data.jsonl``, ``bigbench:strategyqa``);
    kind: one of :data:`KINDS`; rows: list of dicts (see the module docstring); meta: facts about
    the data (source, hub id, split, label names, prompt format, rows dropped and why, ...).
    """

    name: str
    kind: str
    rows: list[dict]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def fingerprint(self) -> str:
        """Content hash of the rows (see :func:`fingerprint`)."""
        return fingerprint(self.rows)

    @property
    def num_classes(self) -> int | None:
        """Classification only: the number of classes (label names if known, else max label + 1)."""
        if self.kind != "classification":
            return None
        if self.meta.get("label_names"):
            return len(self.meta["label_names"])
        return max((r["label"] for r in self.rows), default=-1) + 1

    def subset(self, n: int | None, seed: int = 0) -> TaskData:
        """A seeded sample of ``n`` rows, kept in their original order.

        The sample is the first ``n`` of a seeded permutation, so with one seed a smaller subset
        is contained in a larger one. ``n`` None or >= len returns all rows.
        """
        if n is None or n >= len(self.rows):
            return dataclasses.replace(self, rows=list(self.rows), meta=dict(self.meta))
        if n < 0:
            raise W2SError(f"n must be >= 0 (got {n}); pass the number of rows to use")
        keep = sorted(permutation(len(self.rows), seed)[:n])
        meta = {**self.meta, "subset": {"n": n, "seed": seed, "of": len(self.rows)}}
        return dataclasses.replace(self, rows=[self.rows[i] for i in keep], meta=meta)

    def validate(self) -> TaskData:
        """Check every row has the kind's fields with the right types and ids are unique.

        Raises a one-line :class:`W2SError` naming the task, the row (index and id) and the
        field. Returns self, so ``load(...).validate()`` chains.
        """
        if self.kind not in KINDS:
            raise W2SError(f"task '{self.name}': unknown kind '{self.kind}'; use one of "
                           f"{', '.join(KINDS)}")
        seen: dict[str, int] = {}
        for i, row in enumerate(self.rows):
            problem = row_problem(row, self.kind)
            rid = row.get("id") if isinstance(row, dict) else None
            if problem:
                raise W2SError(f"task '{self.name}' row {i} (id {rid!r}): {problem}; "
                               f"a {self.kind} row needs {_needs(self.kind)}")
            if rid in seen:
                raise W2SError(f"task '{self.name}' row {i}: duplicate id {rid!r} (first at row "
                               f"{seen[rid]}); ids must be unique")
            seen[rid] = i
        return self


def _needs(kind: str) -> str:
    fields = ", ".join(("id", *KIND_FIELDS[kind]))
    return fields + (" (and optional reference)" if kind == "prompts" else "")


def pick(rng, seq):
    """``rng.choice(seq)`` built on ``rng.random()``, whose sequence Python guarantees across
    versions (``choice`` is not), so seeded formatting is identical everywhere."""
    return seq[min(int(rng.random() * len(seq)), len(seq) - 1)]


def first_words(text: str, n_words: int) -> str:
    """The first ``n_words`` whitespace-separated words of ``text``, joined by single spaces."""
    return " ".join(text.split()[:n_words])


def as_prompts(data: TaskData, prefix_words: int = 8) -> TaskData:
    """A ``prompts`` view of any task, for generation demos.

    classification: prompt = the first ``prefix_words`` words of the text, reference = the whole
    text, ``label`` kept (e.g. steer a review's sentiment from its opening words);
    preference: prompt kept, reference = the chosen response; prompts: unchanged.
    """
    if data.kind == "prompts":
        return data
    if isinstance(prefix_words, bool) or not isinstance(prefix_words, int) or prefix_words < 1:
        raise W2SError(f"prefix_words must be a positive integer (got {prefix_words!r})")
    rows, seen = [], set()
    for row in data.rows:
        if data.kind == "classification":
            prompt = first_words(row["text"], prefix_words)
            new = {"id": row["id"], "prompt": prompt, "reference": row["text"], "label": row["label"]}
        else:
            new = {"id": row["id"], "prompt": row["prompt"], "reference": row["chosen"]}
            if row["prompt"] in seen:  # one prompt per conversation, not one per pair
                continue
            seen.add(row["prompt"])
        rows.append(new)
    meta = {**data.meta, "view": "prompts", "view_of": data.kind}
    if data.kind == "classification":
        meta["prefix_words"] = prefix_words
    return TaskData(data.name, "prompts", rows, meta)


def sample_rows(rows: list[dict], k: int) -> list[dict]:
    """``{id, prompt}`` rows answering each prompt ``k`` times: ids ``<id>#0 .. <id>#k-1`` (the
    plain id when ``k`` is 1), so several samples of one prompt pair with their judgments and
    cluster by prompt."""
    return [{"id": r["id"] if k == 1 else f"{r['id']}#{s}", "prompt": r["prompt"]}
            for r in rows for s in range(k)]
