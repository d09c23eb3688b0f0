"""One padded batch for every method: token-id lists -> right-padded ids and attention mask
(:func:`pad_right`; :func:`pad_left` for generation; :func:`spans_mask` marks the responses).

Every forward pass over examples of different lengths (training, scoring, generation's prompt
encoding, judges) pads the same way: on the right with the tokenizer's pad id, with a mask of 1
on real tokens. Models read position from the mask (or the real tokens come first), so right
padding changes no logit of a real token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int, *, width: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both [B, T] long, T = the longest sequence (or
    ``width``); row b holds ``sequences[b]`` then ``pad_id``; the mask is 1 on real tokens."""
    width = max((len(s) for s in sequences), default=0) if width is None else width
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        ids[row, :n] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, :n] = 1
    return ids, mask


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pad_right` mirrored, for generation: the padding comes first, so the last column is
    every row's last real token (where ``generate`` continues)."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        ids[row, width - n:] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, width - n:] = 1
    return ids, mask


def spans_mask(starts: Sequence[int], lengths: Sequence[int], width: int) -> torch.Tensor:
    """[B, T] long mask of 1 on positions ``starts[b] <= t < lengths[b]`` (e.g. the response
    tokens of prompt + response rows)."""
    positions = torch.arange(width).unsqueeze(0)
    start = torch.as_tensor(list(starts)).unsqueeze(1)
    end = torch.as_tensor(list(lengths)).unsqueeze(1)
    return ((positions >= start) & (positions < end)).long()
