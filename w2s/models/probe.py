"""Linear probes: a frozen model's features, read by one trained linear head.

A probe leaves the model's body frozen. Its pooled features of every input are computed ONCE
(:func:`frozen_features`; the caller caches them, keyed by the model's identity, its dtype and
the inputs), then only a zero-initialised linear head without bias (:func:`linear_head`)
trains on them, through the one training loop: seconds where fine-tuning takes minutes. The
zero start makes the untrained probe say "no preference" (equal logits), whatever the seed.

W2S generalization's ``--mode probe`` reads 2 logits (the classes); the deception experiments'
probe reward model reads 1 (a score). Both are this module.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def linear_head(in_features: int, outputs: int, device) -> torch.nn.Linear:
    """A ``Linear(in_features, outputs, bias=False)`` on ``device``, its weight all zeros."""
    head = torch.nn.Linear(in_features, outputs, bias=False).to(device)
    torch.nn.init.zeros_(head.weight)
    return head


@torch.no_grad()
def frozen_features(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    device) -> torch.Tensor:
    """``[N, H]`` fp32 CPU: ``model.features(input_ids, attention_mask)`` (a
    :class:`~w2s.models.Classifier`'s pooled last hidden state) of every ``(input_ids,
    attention_mask)`` batch, in order."""
    parts = [model.features(ids.to(device), mask.to(device)).float().cpu()
             for ids, mask in batches]
    return torch.cat(parts)
