"""How a model reads a prompt, and where its reply ends: one :class:`PromptFormat` for every
method.

A prompt reaches a model in one of four forms:

- ``chat``: the tokenizer's chat template around ONE user turn (:func:`~w2s.models.loading.format_chat`);
- ``hh``: an Anthropic-HH transcript used as it is (``"\\n\\nHuman: ...\\n\\nAssistant:"``), the
  reply after a space;
- ``vicuna``: ``USER: <prompt> ASSISTANT:`` (the user turn of LLaMA-Factory's vicuna template,
  without its system line), the reply after a space;
- ``plain``: the prompt as it is, the reply right after it (plain continuation: IMDB, reviews).

A generated reply is cleaned the same way everywhere (:meth:`PromptFormat.clean`): cut where the
format's next user turn would begin, whitespace stripped. :func:`prompt_format` picks the form
for a tokenizer: its chat template when it has one and ``chat`` is on, else the task's form.

The whole vicuna template, as LLaMA-Factory applies it to every model it trains with
``template: vicuna`` (the MACPO authors' scripts), is :func:`vicuna_prompt`: the system line
:data:`VICUNA_SYSTEM`, then the conversation turn by turn (an HH transcript is split into its turns
by :func:`hh_turns`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from w2s.errors import W2SError

KINDS = ("chat", "hh", "vicuna", "plain")
NEXT_TURN = {"hh": "\n\nHuman:", "vicuna": "USER:"}
"""Where a reply ends in an untemplated format: the next user turn."""
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The "
                 "assistant gives helpful, detailed, and polite answers to the user's questions.")
"""The default system line of LLaMA-Factory's (and FastChat's) vicuna template."""
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


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


def hh_turns(transcript: str) -> list[tuple[str, str]]:
    """An Anthropic-HH transcript as ``(role, text)`` turns, role ``user`` or ``assistant``.

    ``"Human: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"`` gives
    ``[("user", "a"), ("assistant", "b"), ("user", "c")]``: the texts stripped, the empty
    assistant turn at the end (where the reply goes) dropped. A text without a ``Human:`` or
    ``Assistant:`` turn marker is one user turn.
    """
    parts = HH_TURN.split(transcript.strip())
    if len(parts) == 1:
        return [("user", transcript.strip())]
    turns = [] if not parts[0].strip() else [("user", parts[0].strip())]
    for role, text in zip(parts[1::2], parts[2::2], strict=True):
        turns.append(("user" if role == "Human" else "assistant", text.strip()))
    if turns and turns[-1] == ("assistant", ""):
        turns.pop()
    return turns


def vicuna_prompt(prompt: str, *, hh: bool = False, system: str = VICUNA_SYSTEM,
                  eos: str = "</s>") -> str:
    """``prompt`` in LLaMA-Factory's vicuna template, ready for the reply (after a space).

    One user turn: ``"<system> USER: <prompt> ASSISTANT:"``. With ``hh``, an HH transcript is
    flattened turn by turn (:func:`hh_turns`): every earlier assistant turn closes with ``eos``
    (the model's end-of-sequence token, as the template's assistant slot), so two turns read
    ``"<system> USER: u1 ASSISTANT: a1</s>USER: u2 ASSISTANT:"`` (two turns of one side in a row
    are joined by a blank line, as the template alternates them).

    LLaMA-Factory writes its slots (the system line; ``USER: {u} ASSISTANT:``; ``{a}`` + EOS)
    with no text between them and encodes each one on its own; a SentencePiece tokenizer (Llama-2,
    Mistral) then starts each slot at a word boundary, which is the single space written here
    after the system line and after ``ASSISTANT:`` (FastChat's vicuna v1.1 text is the same).
    """
    turns: list[tuple[str, str]] = []
    for role, content in hh_turns(prompt) if hh else [("user", prompt.strip())]:
        if turns and turns[-1][0] == role:  # two turns of one side in a row: one turn
            turns[-1] = (role, f"{turns[-1][1]}\n\n{content}")
        else:
            turns.append((role, content))
    if not turns or turns[-1][0] != "user":
        raise W2SError(f"a vicuna prompt must end with a user turn; got {prompt[-80:]!r}")
    text = system + " " if system else ""
    for role, content in turns:
        text += f"USER: {content} ASSISTANT:" if role == "user" else f" {content}{eos}"
    return text
