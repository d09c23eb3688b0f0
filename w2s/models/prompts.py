"""How a model reads a prompt, and where its reply ends: one :class:`PromptFormat` for every
method.

A prompt reaches a model in one of four forms:

- ``chat``: the tokenizer's chat template around ONE user turn (:func:`~w2s.models.loading.format_chat`);
- ``hh``: an Anthropic-HH transcript used as it is (``"\\n\\nHuman: ...\\n\\nAssistant:"``), the
  reply after a space;
- ``vicuna``: ``USER: <prompt> ASSISTANT:`` (the form of LLaMA-Factory's vicuna template, which
  the MACPO authors' scripts use for models without a chat template), the reply after a space;
- ``plain``: the prompt as it is, the reply right after it (plain continuation: IMDB, reviews).

A generated reply is cleaned the same way everywhere (:meth:`PromptFormat.clean`): cut where the
format's next user turn would begin, whitespace stripped. :func:`prompt_format` picks the form
for a tokenizer: its chat template when it has one and ``chat`` is on, else the task's form.
"""

from __future__ import annotations

from dataclasses import dataclass

from w2s.errors import W2SError

KINDS = ("chat", "hh", "vicuna", "plain")
NEXT_TURN = {"hh": "\n\nHuman:", "vicuna": "USER:"}
"""Where a reply ends in an untemplated format: the next user turn."""


@dataclass(frozen=True)
class PromptFormat:
    """One of :data:`KINDS` (see the module docstring)."""

    kind: str = "plain"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise W2SError(f"unknown prompt format {self.kind!r}; choose one of {list(KINDS)}")

    @property
    def chat(self) -> bool:
        """The tokenizer's chat template wraps the prompt."""
        return self.kind == "chat"

    @property
    def sep(self) -> str:
        """Text between the prompt and the reply when the prompt is not templated."""
        return " " if self.kind in ("hh", "vicuna") else ""

    def text(self, prompt: str, tokenizer=None) -> str:
        """The prompt as the model sees it (``tokenizer`` is needed for ``chat``)."""
        if self.kind == "chat":
            from w2s.models.loading import format_chat

            return format_chat(tokenizer, prompt)
        if self.kind == "vicuna":
            return f"USER: {prompt} ASSISTANT:"
        return prompt

    def clean(self, reply: str) -> str:
        """A generated text as a reply: cut at the next user turn, whitespace stripped."""
        marker = NEXT_TURN.get(self.kind)
        if marker is not None:
            reply = reply.split(marker, 1)[0]
        return reply.strip()

    def describe(self) -> str:
        return {"chat": "chat template", "hh": "HH transcript",
                "vicuna": "vicuna (USER: ... ASSISTANT:)", "plain": "plain text"}[self.kind]


def prompt_format(tokenizer, *, chat: bool = True, untemplated: str = "plain") -> PromptFormat:
    """The form a model reads: ``chat`` when ``chat`` is on and its tokenizer has a template,
    else ``untemplated`` (``hh`` for HH transcripts, ``vicuna`` or ``plain``)."""
    if chat and getattr(tokenizer, "chat_template", None):
        return PromptFormat("chat")
    return PromptFormat(untemplated)
