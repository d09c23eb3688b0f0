"""Generative judges: the judges that WRITE their judgment (a benchmark then parses the text).

There is no separate kind of judge for this: the ``api:URL[#MODEL]`` and ``llm:MODEL`` judges
that :func:`~w2s.evaluation.judges.build_judge` makes are :class:`~.base.JudgmentWriter` s
(:meth:`~.base.JudgmentWriter.reply` for a conversation, ``write_judgments`` for a batch of
(system, user) prompts, both cached). This module is the small front door benchmarks use
(Arena-Hard-Auto): build a judge and insist that it writes, and ask it for one text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from w2s.errors import W2SError
from w2s.evaluation.judges.base import Judge, JudgmentWriter, conversation, writes_judgments

GENERATIVE_KINDS = ("api", "llm")
"""The judge kinds that write judgments."""
TEMPLATE = "w2s-generative-v1"
"""The template name :func:`generate_reply` caches under when the caller names none."""


def _refuse(spec: Any, what: str) -> W2SError:
    return W2SError(f"judge '{spec}' does not write a judgment; {what} is judged by a "
                    "generative judge whose text it parses: api:URL[#MODEL] or llm:MODEL")


def build_generative_judge(spec: str | Judge, *, what: str = "this benchmark",
                           **options: Any) -> JudgmentWriter:
    """:func:`~w2s.evaluation.judges.build_judge` (same options; None values are ignored), for
    a judge that writes: any other judge string (or built judge) is a one-line W2SError saying
    why, raised before a model is loaded."""
    from w2s.evaluation.judges import build_judge, parse_judge

    if isinstance(spec, str) and parse_judge(spec)[0] not in GENERATIVE_KINDS:
        raise _refuse(spec, what)
    judge = build_judge(spec, **{k: v for k, v in options.items() if v is not None})
    if not writes_judgments(judge):
        raise _refuse(getattr(judge, "spec", judge), what)
    return judge  # type: ignore[return-value]


def generate_reply(judge: str | Judge, messages: Sequence[Mapping[str, str]], *,
                   template: str = TEMPLATE, max_tokens: int = 2048) -> str:
    """The judge's reply to a conversation (``{"role", "content"}`` dicts), cached."""
    return build_generative_judge(judge).reply(messages, template=template,
                                               max_tokens=max_tokens)[0]


def generate_judgment(judge: str | Judge, system: str, user: str, *, template: str = TEMPLATE,
                      max_tokens: int = 2048) -> str:
    """The judge's written judgment of one (system, user) prompt, cached."""
    return generate_reply(judge, conversation(system, user), template=template,
                          max_tokens=max_tokens)


__all__ = ["GENERATIVE_KINDS", "TEMPLATE", "build_generative_judge", "generate_reply",
           "generate_judgment"]
