"""Text <-> tokens for search: prompts, responses, end-of-sequence ids, next-token sampling.

Search moves TEXT between models: the base model's tokens are decoded to text, and each guide
re-encodes that text with its own tokenizer and chat template. These helpers fix one convention
that every scorer (incremental or from scratch) shares, so scores computed either way agree:

- the prompt is the model's chat template around the user prompt (``chat=True`` and the tokenizer
  has one; encoded without extra special tokens, the template writes its own) or the plain prompt
  (encoded with the tokenizer's usual special tokens, e.g. a BOS);
- the response tokens are those of ``prompt text + response text`` after the prompt's tokens,
  which is how a model reads a response that follows its prompt (sentencepiece tokenizers would
  add a word-start marker to a response encoded on its own). Where the joint encoding changes the
  prompt's own tokens (a merge across the boundary), the response is encoded on its own instead;
- a finished response ends with the end-of-sequence token, which is scored too.
"""

from __future__ import annotations

import torch

from w2s.models.generate import eos_ids  # noqa: F401  (re-exported: search's stop tokens)
from w2s.models.loading import format_chat


def uses_template(tokenizer, chat: bool) -> bool:
    """True when prompts are wrapped in this tokenizer's chat template."""
    return bool(chat and getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer, prompt: str, chat: bool) -> str:
    """The text the model sees before its response."""
    return format_chat(tokenizer, prompt) if uses_template(tokenizer, chat) else prompt


def encode_prompt(tokenizer, prompt: str, chat: bool) -> list[int]:
    """Token ids of the prompt (see the module docstring); never empty."""
    special = not uses_template(tokenizer, chat)
    ids = tokenizer(prompt_text(tokenizer, prompt, chat), add_special_tokens=special).input_ids
    if not ids:  # an empty prompt in a tokenizer without BOS: start from the EOS token
        ids = [tokenizer.eos_token_id]
    return list(ids)


def encode_response(tokenizer, prompt: str, prompt_ids: list[int], response: str, chat: bool,
                    finished: bool) -> list[int]:
    """Token ids of ``response`` after ``prompt`` (+ EOS when ``finished``)."""
    ids: list[int] = []
    if response:
        special = not uses_template(tokenizer, chat)
        joint = tokenizer(prompt_text(tokenizer, prompt, chat) + response,
                          add_special_tokens=special).input_ids
        if joint[:len(prompt_ids)] == prompt_ids:
            ids = list(joint[len(prompt_ids):])
        else:
            ids = list(tokenizer(response, add_special_tokens=False).input_ids)
    if finished:
        ids.append(tokenizer.eos_token_id)
    return ids


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float
                  ) -> torch.Tensor:
    """Next-token logits ``[rows, vocab]`` (fp32) as sampling sees them (temperature > 0): divided
    by the temperature, then all but the ``top_k`` largest set to -inf (0 = all), then all but the
    smallest set of tokens whose probability reaches ``top_p`` (1.0 = all; the most likely token
    is always kept). Their softmax is the distribution :func:`sample_next` draws from."""
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ascending, order = torch.sort(logits, dim=-1)
        tail = ascending.softmax(-1).cumsum(-1) <= 1.0 - top_p   # the unlikely tail, mass <= 1-p
        tail[..., -1] = False
        logits = logits.masked_fill(tail.scatter(-1, order, tail), float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from next-token logits ``[rows, vocab]`` (fp32).

    temperature 0 is greedy. Otherwise, in this order: divide by the temperature; keep the
    ``top_k`` largest logits (0 = all); keep the smallest set of tokens whose probability reaches
    ``top_p`` (1.0 = all; the most likely token is always kept); draw from the softmax with
    ``generator`` (:func:`filter_logits`). Nothing comes from a model's ``generation_config``.
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
