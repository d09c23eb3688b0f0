"""Batched text generation for every method: evaluation answers, MACPO agents, search baselines.

One call, :func:`generate`, with every sampling parameter explicit and recorded
(:class:`SamplingConfig`): temperature, top-k, top-p and max new tokens never come silently from a
model's ``generation_config`` (the W2S search reference code inherited ``top_k=50`` that way).

Backends:

- ``hf`` (default): transformers ``generate`` with a KV cache, prompts batched and LEFT-padded so
  every sequence's next token sits in the last column; batches sorted by length to waste little
  padding; original order restored.
- ``vllm``: when the optional extra is installed and a GPU is visible; otherwise the call says
  why and falls back to ``hf`` (or refuses, with ``fallback=False``). LoRA agents (MACPO)
  generate through one LoRA-enabled engine per base model (:class:`VLLMAdapter`).

Prompts are formatted with the model's chat template when it has one (``chat=True``, see
:func:`w2s.models.format_chat`), else used as plain text.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from w2s import compute
from w2s.errors import W2SError, did_you_mean
from w2s.models.batching import pad_left
from w2s.models.loading import format_chat
from w2s.models.loading import pad_id as _pad_id
from w2s.progress import Bar, progress_enabled
from w2s.runs import is_main_process

BACKENDS = ("hf", "vllm")


@dataclass
class SamplingConfig:
    """How to sample. Every field is explicit so a run records exactly what produced its text."""

    max_new_tokens: int = field(default=128, metadata={"help": "tokens generated per prompt"})
    temperature: float = field(default=1.0, metadata={
        "help": "softmax temperature; 0 = greedy decoding"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely tokens; 0 = off"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass; 1.0 = off"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generate call"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    def validate(self) -> SamplingConfig:
        if self.max_new_tokens < 1:
            raise W2SError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise W2SError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise W2SError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise W2SError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise W2SError(f"batch_size must be >= 1, got {self.batch_size}")
        return self


def vllm_available() -> tuple[bool, str]:
    """(True, "") when the vllm backend can run here, else (False, why)."""
    if importlib.util.find_spec("vllm") is None:
        return False, "vllm is not installed (pip install 'w2s[vllm]' on a GPU machine)"
    if not torch.cuda.is_available():
        return False, "vllm needs a CUDA GPU and none is visible"
    return True, ""


def pick_backend(backend: str, fallback: bool = True, *, unfit: str = "") -> str:
    """The generation backend that runs: the one asked for, validated, except that ``vllm``
    falls back to ``hf`` with a warning saying why when it cannot run here (not installed, no
    GPU) or ``unfit`` says why the caller's models cannot use it (e.g. an in-process tiny model,
    a quantized one). The one rule every method follows; ``fallback=False`` raises instead."""
    if backend not in BACKENDS:
        raise W2SError(f"unknown generation backend '{backend}'{did_you_mean(backend, BACKENDS)};"
                       f" choose one of {list(BACKENDS)}")
    if backend == "vllm":
        why = vllm_available()[1] or unfit
        if why:
            if not fallback:
                raise W2SError(f"generation backend vllm cannot run: {why}")
            warnings.warn(f"{why}; generating with the hf backend instead", stacklevel=2)
            return "hf"
    return backend


def _templated(tokenizer, chat: bool) -> bool:
    """True when prompts are wrapped in the tokenizer's chat template (``chat`` and it has one)."""
    return bool(chat and getattr(tokenizer, "chat_template", None))


def _format(tokenizer, prompts: Sequence[str | Sequence[dict]], chat: bool,
            system: str | None = None) -> list[str]:
    templated = _templated(tokenizer, chat)
    return [format_chat(tokenizer, p, system=system, template=templated) for p in prompts]


def eos_ids(model, tokenizer) -> set[int]:
    """Every token that ends a response: the tokenizer's EOS and the model's generation config's
    (instruct models end a turn with another token: Llama-3-Instruct ``<|eot_id|>``, Gemma-3
    ``<end_of_turn>``)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None) if config is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(int(i) for i in extra)
    return ids


def _hf_generate(model, tokenizer, texts: list[str], cfg: SamplingConfig,
                 progress: bool | None, chat: bool, bos: bool = True) -> list[str]:
    encoded = _encode(tokenizer, texts, chat, bos)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # little padding per batch
    pad_id = _pad_id(tokenizer)
    greedy = cfg.temperature == 0
    stops = eos_ids(model, tokenizer)
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=not greedy,
                  pad_token_id=pad_id, eos_token_id=sorted(stops) or None)
    if not greedy:  # explicit: never inherit top_k=50 and friends from generation_config
        kwargs.update(temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p)
    else:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    outputs: dict[int, str] = {}
    device = next(model.parameters()).device
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    bar = Bar("generate", len(texts), on=progress_enabled(progress) and is_main_process())
    try:
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            ids, mask = pad_left([encoded[i] for i in idx], pad_id)
            width = ids.shape[1]
            with torch.no_grad():
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     **kwargs)
            compute.count(forward=int(mask.sum()),
                          generated=_generated_tokens(out[:, width:], stops | {pad_id}))
            for row, i in enumerate(idx):
                outputs[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
            bar.update(advance=len(idx))
    finally:
        bar.stop()
        torch.random.set_rng_state(generator_state)
    return [outputs[i] for i in range(len(texts))]


def _generated_tokens(new, stops: set[int]) -> int:
    """Tokens sampled in a batch of continuations [B, N]: each row up to and including its
    first stop token (what follows is padding), else all N."""
    import torch

    hit = torch.isin(new, torch.tensor(sorted(stops), device=new.device))
    first = torch.where(hit.any(1), hit.float().argmax(1) + 1, new.shape[1])
    return int(first.sum())


def _encode(tokenizer, texts: list[str], chat: bool, bos: bool = True) -> list[list[int]]:
    """Token ids of formatted prompts: a template writes its own special tokens; plain text
    gets the tokenizer's usual ones (a BOS for Llama / Mistral / Gemma), as every other w2s
    encoding of a plain prompt does, unless ``bos`` is False. Both backends generate from
    exactly these ids."""
    special = bos and not _templated(tokenizer, chat)
    return [tokenizer(t, add_special_tokens=special)["input_ids"] for t in texts]


@dataclass(frozen=True)
class VLLMAdapter:
    """A LoRA adapter for the vllm backend to generate through: ``path`` is a peft adapter
    folder (``adapter_config.json`` + weights, see ``PeftModel.save_pretrained``), ``rank``
    its LoRA rank, ``memory`` the GPU memory fraction the engine may take (it shares the GPU
    with the model being trained)."""

    name: str
    path: str
    rank: int
    memory: float = 0.4


_ENGINES: dict[tuple, object] = {}  # (model, rank, memory) -> a LoRA engine, kept for reuse
_REQUESTS = [0]                     # LoRA request ids: a new one per call, as weights change


def _vllm_generate(model_name: str, tokenizer, texts: list[str], cfg: SamplingConfig,
                   chat: bool, adapter: VLLMAdapter | None = None,
                   bos: bool = True) -> list[str]:
    """vLLM from the same token ids as the hf backend (a templated prompt's BOS is not added
    a second time) and with the same explicit sampling parameters.

    With an ``adapter``, one engine per base model is built with LoRA enabled and kept for the
    process (MACPO's agents are adapters on one base, and train between their generations);
    each call sends the adapter's folder under a new request id, so vLLM loads the weights as
    they are now instead of the ones it cached for an earlier call."""
    from vllm import LLM, SamplingParams  # optional extra

    if adapter is None:
        llm = LLM(model=model_name, seed=cfg.seed)
    else:
        key = (model_name, adapter.rank, adapter.memory)
        if key not in _ENGINES:
            _ENGINES[key] = LLM(model=model_name, seed=cfg.seed, enable_lora=True,
                                max_lora_rank=adapter.rank, max_loras=1,
                                gpu_memory_utilization=adapter.memory)
        llm = _ENGINES[key]
    params = SamplingParams(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_k=cfg.top_k if cfg.top_k > 0 else -1, top_p=cfg.top_p,
                            seed=cfg.seed, skip_special_tokens=True)
    prompts = [{"prompt_token_ids": ids} for ids in _encode(tokenizer, texts, chat, bos)]
    if adapter is None:
        results = llm.generate(prompts, params)
    else:
        from vllm.lora.request import LoRARequest

        _REQUESTS[0] += 1
        request = LoRARequest(adapter.name, _REQUESTS[0], adapter.path)
        results = llm.generate(prompts, params, lora_request=request)
    compute.count(forward=sum(len(p["prompt_token_ids"]) for p in prompts),
                  generated=sum(len(getattr(o.outputs[0], "token_ids", ())) for o in results))
    return [o.outputs[0].text for o in results]


def generate(model, tokenizer, prompts: Sequence[str | Sequence[dict]],
             sampling: SamplingConfig | None = None, *, chat: bool = True,
             backend: str = "hf", model_name: str | None = None,
             adapter: VLLMAdapter | None = None, progress: bool | None = None,
             system: str | None = None, bos: bool = True) -> list[str]:
    """Generate one response per prompt, in the prompts' order.

    Args:
        model, tokenizer: a causal LM and its tokenizer (from :func:`w2s.models.load_causal_lm`).
        prompts: raw user prompts, or whole conversations (``{"role", "content"}`` messages
            ending with the turn to answer); wrapped in the chat template when ``chat`` and the
            tokenizer has one (:func:`w2s.models.format_chat`).
        sampling: :class:`SamplingConfig` (defaults: temperature 1, top-k off, top-p off).
        backend: ``hf`` or ``vllm`` (needs ``model_name``, a path or hub id vLLM can load).
        adapter: vllm only: generate through this LoRA adapter on ``model_name`` (the hf
            backend generates with whatever adapter ``model`` has active).
        system: a system message before every prompt (see :func:`w2s.models.format_chat`;
            plain text gets it two newlines before the prompt).
        bos: False: a plain (untemplated) prompt gets no special tokens, no BOS.

    Returns the decoded continuations without the prompt and without special tokens.
    """
    cfg = (sampling or SamplingConfig()).validate()
    if not prompts:
        raise W2SError("no prompts to generate from; check the task or file")
    texts = _format(tokenizer, prompts, chat, system)
    if pick_backend(backend) == "vllm":
        if not model_name:
            raise W2SError("the vllm backend needs model_name (a path or hub id it can load)")
        return _vllm_generate(model_name, tokenizer, texts, cfg, chat, adapter, bos)
    return _hf_generate(model, tokenizer, texts, cfg, progress, chat, bos)


def sampling_record(sampling: SamplingConfig, backend: str) -> dict:
    """What a run records about how its text was sampled."""
    return {"backend": backend, **asdict(sampling)}
