"""The model registry: short aliases for the checkpoints the W2S papers use.

Recipes and the CLI name models by alias (``gpt2-large``, ``qwen2-7b-instruct``), never by a
machine-specific path. Each alias carries what the methods need to know about the model without
loading it: hub id, family (which decides the LoRA target modules), size in billions of
parameters (orders weak < strong, picks the default learning rate) and whether it is a chat model.

Default learning rates follow Burns et al. (openai/weak-to-strong): 5e-5 below 0.7B parameters
(gpt2, gpt2-medium), 1e-5 from 0.7B up (gpt2-large and bigger).
"""

from __future__ import annotations

from dataclasses import dataclass, field

FAMILY_LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
"""LoRA target modules per family: the attention projections (GPT-2 fuses q, k, v into ``c_attn``;
``c_proj`` matches its attention and MLP output projections; OPT calls the attention output
``out_proj``)."""


def default_lr(size_b: float | None) -> float:
    """5e-5 below 0.7B parameters, 1e-5 from 0.7B (Burns et al.); 5e-5 when the size is unknown."""
    return 1e-5 if size_b is not None and size_b >= 0.7 else 5e-5


@dataclass
class ModelSpec:
    """One registry entry.

    alias: the short name (``gpt2-large``); hub_id: the Hugging Face repository; family: the
    architecture family (decides ``lora_targets``); size_b: parameters in billions; default_lr:
    fine-tuning learning rate; lora_targets: module names LoRA adapts; chat: an instruction/chat
    model that wants its chat template; offline: the name of a packaged offline copy
    (:mod:`w2s.models.offline`) or None.
    """

    alias: str
    hub_id: str
    family: str
    size_b: float
    default_lr: float = 0.0
    lora_targets: list[str] = field(default_factory=list)
    chat: bool = False
    offline: str | None = None

    def __post_init__(self):
        if not self.default_lr:
            self.default_lr = default_lr(self.size_b)
        if not self.lora_targets:
            self.lora_targets = list(FAMILY_LORA_TARGETS[self.family])


def _specs() -> list[ModelSpec]:
    S = ModelSpec
    specs = [
        S("gpt2", "openai-community/gpt2", "gpt2", 0.124),
        S("gpt2-medium", "openai-community/gpt2-medium", "gpt2", 0.355),
        S("gpt2-large", "openai-community/gpt2-large", "gpt2", 0.774),
        S("gpt2-xl", "openai-community/gpt2-xl", "gpt2", 1.56),
        S("opt-125m", "facebook/opt-125m", "opt", 0.125),
        S("opt-350m", "facebook/opt-350m", "opt", 0.331),
        S("opt-1.3b", "facebook/opt-1.3b", "opt", 1.3),
        S("opt-2.7b", "facebook/opt-2.7b", "opt", 2.7),
        S("opt-6.7b", "facebook/opt-6.7b", "opt", 6.7),
    ]
    for size, b in [("0.5b", 0.494), ("1.5b", 1.54), ("7b", 7.62), ("72b", 72.7)]:
        hub = f"Qwen/Qwen2-{size.upper()}"
        specs += [S(f"qwen2-{size}", hub, "qwen2", b),
                  S(f"qwen2-{size}-instruct", f"{hub}-Instruct", "qwen2", b, chat=True)]
    for size, b in [("0.5b", 0.494), ("1.5b", 1.54), ("3b", 3.09), ("7b", 7.62), ("14b", 14.8),
                    ("32b", 32.8), ("72b", 72.7)]:
        hub = f"Qwen/Qwen2.5-{size.upper()}"
        specs += [S(f"qwen2.5-{size}", hub, "qwen2", b),
                  S(f"qwen2.5-{size}-instruct", f"{hub}-Instruct", "qwen2", b, chat=True)]
    specs += [
        S("llama-3-8b", "meta-llama/Meta-Llama-3-8B", "llama", 8.03),
        S("llama-3-8b-instruct", "meta-llama/Meta-Llama-3-8B-Instruct", "llama", 8.03, chat=True),
        S("llama-3-70b-instruct", "meta-llama/Meta-Llama-3-70B-Instruct", "llama", 70.6,
          chat=True),
        S("llama-2-7b", "meta-llama/Llama-2-7b-hf", "llama", 6.74),
        S("llama-2-7b-chat", "meta-llama/Llama-2-7b-chat-hf", "llama", 6.74, chat=True),
        S("llama-2-13b", "meta-llama/Llama-2-13b-hf", "llama", 13.0),
        S("llama-2-70b", "meta-llama/Llama-2-70b-hf", "llama", 69.0),
        S("mistral-7b", "mistralai/Mistral-7B-v0.1", "mistral", 7.24),
        S("mistral-7b-instruct", "mistralai/Mistral-7B-Instruct-v0.2", "mistral", 7.24, chat=True),
        S("mistral-7b-sft-beta", "HuggingFaceH4/mistral-7b-sft-beta", "mistral", 7.24, chat=True),
        S("zephyr-7b-beta", "HuggingFaceH4/zephyr-7b-beta", "mistral", 7.24, chat=True),
        S("tulu-2-7b", "allenai/tulu-2-7b", "llama", 6.74, chat=True),
        S("tulu-2-dpo-7b", "allenai/tulu-2-dpo-7b", "llama", 6.74, chat=True),
        S("smollm2-135m", "HuggingFaceTB/SmolLM2-135M", "llama", 0.135),
        S("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "llama", 0.135,
          chat=True, offline="smollm2-135m-instruct"),
        S("gemma-3-270m", "google/gemma-3-270m", "gemma", 0.268, offline="gemma-3-270m"),
    ]
    return specs


REGISTRY: dict[str, ModelSpec] = {s.alias: s for s in _specs()}
"""alias -> ModelSpec, in the order ``w2s models`` lists them."""


def get_spec(name: str) -> ModelSpec | None:
    """The spec for an alias or for a registered hub id (case-insensitive), else None."""
    key = name.strip().lower()
    if key in REGISTRY:
        return REGISTRY[key]
    for spec in REGISTRY.values():
        if spec.hub_id.lower() == key:
            return spec
    return None
