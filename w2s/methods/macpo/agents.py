"""MACPO's agents: each base model loaded ONCE (:class:`Base`), its positive and negative agents
two named LoRA adapters on it (peft multi-adapter: ``add_adapter`` / ``set_adapter``), so K
teachers and a student take the memory of their K + 1 base models plus adapters, not of 2K + 2
models.

Each base formats prompts its own way (:class:`Format`): by default its chat template when its
tokenizer has one, else the task's plain transcript (Anthropic HH) or the vicuna ``USER: ...
ASSISTANT:`` form; with ``prompt_format: vicuna`` every base reads LLaMA-Factory's vicuna template,
as in the authors' scripts. Answers travel between agents as text.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch

import w2s.tiny  # noqa: F401  (registers the builder of tiny:...+<stage> model names)
from w2s.errors import W2SError
from w2s.methods.macpo.config import MACPOConfig
from w2s.models.prompts import NEXT_TURN, vicuna_prompt


@dataclasses.dataclass(frozen=True)
class Format:
    """How one base model sees a prompt and where its answer ends.

    ``style`` ``chat_template`` (the default): ``templated`` (its tokenizer has a chat template)
    wraps the prompt as one user turn. Without one, an Anthropic-HH transcript
    (``prompt_format == "hh"``) is used as it is and the answer follows after a space; a plain
    prompt is written ``USER: <prompt> ASSISTANT:``.

    ``style`` ``vicuna``: every model, templated or not, reads LLaMA-Factory's vicuna template
    (:func:`w2s.models.prompts.vicuna_prompt`): its system line, an HH transcript flattened turn
    by turn with each earlier answer closed by ``eos`` (the model's end-of-sequence token), the
    answer after a space, and no BOS before it (LLaMA-Factory adds none).

    Generated answers are cut where the format's next user turn would begin.
    """

    templated: bool
    prompt_format: str = "plain"
    style: str = "chat_template"
    eos: str = "</s>"

    @property
    def chat(self) -> bool:
        return self.templated and self.style == "chat_template"

    @property
    def sep(self) -> str:
        return "" if self.chat else " "

    @property
    def bos(self) -> bool:
        """Whether a plain prompt starts with the tokenizer's special tokens (its BOS): not in
        the vicuna style, where LLaMA-Factory encodes every slot without them."""
        return self.style != "vicuna"

    def text(self, prompt: str) -> str:
        if self.style == "vicuna":
            return vicuna_prompt(prompt, hh=self.prompt_format == "hh", eos=self.eos)
        if self.templated or self.prompt_format == "hh":
            return prompt
        return f"USER: {prompt} ASSISTANT:"

    def clean(self, answer: str) -> str:
        """The generated text as an answer: cut at a next user turn, whitespace stripped."""
        if not self.chat:
            hh = self.prompt_format == "hh" and self.style != "vicuna"
            answer = answer.split(NEXT_TURN["hh" if hh else "vicuna"], 1)[0]
        return answer.strip()

    def describe(self) -> str:
        if self.style == "vicuna":
            return f"vicuna template (system line, USER: ... ASSISTANT: ...{self.eos}; no BOS)"
        if self.templated:
            return "chat template"
        return "HH transcript" if self.prompt_format == "hh" else "vicuna (USER: ... ASSISTANT:)"


def qv_targets(model) -> list[str] | str:
    """The query and value projections of ``model`` (MACPO's LoRA targets): ``q_proj, v_proj``
    (Llama, Mistral, Qwen, OPT, ...), GPT-2's fused ``c_attn`` (query, key and value in one
    matrix), else every linear layer."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if {"q_proj", "v_proj"} <= leaves:
        return ["q_proj", "v_proj"]
    if "c_attn" in leaves:
        return ["c_attn"]
    if {"query", "value"} <= leaves:
        return ["query", "value"]
    return "all-linear"


class Base:
    """One loaded copy of a base model; its agents are named LoRA adapters on it.

    ``use(agent)`` makes an agent active (generation, scoring and training go through it; only
    its adapter requires grad). Adapters are saved and loaded as safetensors of the adapter's own
    weights (peft's ``get/set_peft_model_state_dict``).
    """

    def __init__(self, name: str, cfg: MACPOConfig, device, prompt_format: str):
        from w2s.models import LoraSettings, apply_lora, load_causal_lm, resolve_model

        self.name = name
        resolved = resolve_model(name)
        # what vLLM can load: a hub id or a folder (not a tiny or packaged offline model)
        self.location = (resolved.location if resolved.source in ("alias", "hub", "local")
                         else None)
        quantize = None if cfg.quantize == "none" else cfg.quantize
        model, self.tokenizer = load_causal_lm(name, dtype=cfg.dtype, device=device,
                                               quantize=quantize, seed=cfg.seed)
        if quantize:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=cfg.sft.gradient_checkpointing)
        targets: list[str] | str = qv_targets(model)
        if cfg.lora_targets.strip().lower() not in ("auto", ""):
            text = cfg.lora_targets.strip()
            targets = text if text == "all-linear" else [t.strip() for t in text.split(",")]
        self.lora = LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, targets=targets)
        self.model = apply_lora(model, self.lora, seed=cfg.seed)  # adapter "default", replaced
        self.format = Format(bool(getattr(self.tokenizer, "chat_template", None)), prompt_format,
                             style=cfg.prompt_format, eos=self.tokenizer.eos_token or "")
        self.agents: list[str] = []

    def add(self, agent: str, seed: int) -> None:
        """A new adapter ``agent`` (LoRA A drawn from ``seed``, B zero: it starts as the base)."""
        config = copy.deepcopy(self.model.peft_config[self.agents[0] if self.agents
                                                      else "default"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model.add_adapter(agent, config)
        if not self.agents:
            self.model.set_adapter(agent)
            self.model.delete_adapter("default")
        self.agents.append(agent)

    def use(self, agent: str) -> None:
        self.model.set_adapter(agent)

    def state(self, agent: str) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().cpu().contiguous().clone()
                for k, v in get_peft_model_state_dict(self.model, adapter_name=agent).items()}

    def set_state(self, agent: str, state: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, state, adapter_name=agent)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise W2SError(f"adapter weights do not fit {self.name}'s agent {agent} "
                           f"({unexpected[0]}); they were made with other LoRA settings")

    def save(self, agent: str, path: Path) -> None:
        """Write the agent's adapter weights atomically (temp file + rename)."""
        import os

        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(self.state(agent), str(tmp))
        os.replace(tmp, path)

    def load(self, agent: str, path: Path) -> None:
        from safetensors.torch import load_file

        self.set_state(agent, load_file(str(path)))

    def export(self, agent: str, folder: Path) -> Path:
        """The agent's adapter as a peft folder (``adapter_config.json`` and weights), what
        vLLM loads a LoRA adapter from; returns that folder."""
        self.model.save_pretrained(str(folder), selected_adapters=[agent])
        found = [p.parent for p in folder.rglob("adapter_config.json")]
        if len(found) != 1:
            raise W2SError(f"exporting agent {agent} for vllm wrote {len(found)} adapter "
                           f"folders under {folder}")
        return found[0]

    def copy(self, source: str, target: str) -> None:
        """``target`` becomes an exact copy of ``source`` (the strong negative agent starts as
        the strong positive one)."""
        self.set_state(target, self.state(source))


def base_parameters(model) -> int:
    """Parameters of a model that are not LoRA adapter weights (its base, counted once)."""
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)

