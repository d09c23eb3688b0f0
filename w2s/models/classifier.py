"""A sequence classifier on top of a causal LM (the W2S generalization model).

Burns et al. put a linear head on the language model's last hidden state at the last real token:

    logits = W h_last,    W: [num_labels, hidden], no bias, initialised to ZERO

Zero init means every example starts at p = 0.5 (logits 0) and the first gradient steps move
only the head, so early training does not wreck the pretrained features. The head runs in fp32
even when the backbone is bf16, since it is tiny and its logits feed the losses directly.

"Last real token" is found from the attention mask (the last position where mask == 1), never by
comparing ids with the pad id: GPT-2-style tokenizers use EOS as pad, so a text that ends in EOS
would otherwise be pooled at the wrong place. Positions are computed from the mask as well, so
left- and right-padded batches give the same logits for the same text.
"""

from __future__ import annotations

import torch
from torch import nn

from w2s.errors import W2SError
from w2s.models.logprobs import position_ids_from_mask


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with mask == 1 in each row (0 for an all-zero row).

    Works for right padding (1 1 1 0 0 -> 2) and left padding (0 0 1 1 1 -> 4) alike.
    """
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


class Classifier(nn.Module):
    """``backbone`` (a transformer body returning ``last_hidden_state``) + a zero-init linear head.

    ``forward(input_ids, attention_mask) -> logits [B, num_labels]`` (fp32);
    ``features(input_ids, attention_mask) -> [B, hidden]``: the pooled hidden state the head reads,
    for linear probes on frozen features.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int, num_labels: int = 2):
        super().__init__()
        if num_labels < 1:
            raise W2SError(f"num_labels must be >= 1, got {num_labels}")
        self.backbone = backbone
        self.num_labels = num_labels
        device = next(backbone.parameters()).device
        self.head = nn.Linear(hidden_size, num_labels, bias=False, dtype=torch.float32,
                              device=device)
        nn.init.zeros_(self.head.weight)

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The backbone's transformer block classes: what FSDP's transformer-based auto-wrap
        shards one by one (accelerate reads this attribute, as on a transformers model)."""
        return getattr(self.backbone, "_no_split_modules", None)

    @classmethod
    def from_causal_lm(cls, lm: nn.Module, num_labels: int = 2) -> Classifier:
        """Take the body of a causal LM (``lm.base_model``: GPT2Model, LlamaModel, OPTModel, ...)
        and drop its LM head. Apply LoRA to the classifier's backbone afterwards, not before."""
        if hasattr(lm, "peft_config"):
            raise W2SError("build the classifier from the plain causal LM, then apply LoRA to "
                           "clf.backbone (load_classifier(..., lora=...) does this)")
        body = getattr(lm, "base_model", lm)
        if body is lm:
            raise W2SError(f"{type(lm).__name__} has no separate transformer body to read hidden "
                           "states from; use a causal LM from transformers")
        out_head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
        # The head input width is what the body outputs (OPT-350m projects 1024 -> 512).
        hidden = out_head.weight.shape[1] if out_head is not None else body.config.hidden_size
        return cls(body, hidden, num_labels)

    @property
    def config(self):
        """The backbone's transformers config."""
        return self.backbone.config

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last real token's final hidden state, [B, hidden] in the backbone's dtype."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids_from_mask(attention_mask), use_cache=False)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            raise W2SError(f"backbone {type(self.backbone).__name__} returns no hidden states; "
                           "use a transformers causal LM")
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(attention_mask).to(hidden.device)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.features(input_ids, attention_mask)
        return self.head(pooled.to(self.head.weight.dtype))
