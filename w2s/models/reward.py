"""Sequence-classification models used as judges: reward models and text classifiers.

A REWARD MODEL (``AutoModelForSequenceClassification`` with ``num_labels == 1``, e.g.
``OpenAssistant/reward-model-deberta-v3-large-v2`` or Skywork's RMs) maps a (prompt, response)
to one scalar: higher is better. A CLASSIFIER (``num_labels >= 2``, e.g. a sentiment model)
gives one logit per label. Both load here, from any name :func:`~w2s.models.resolve_model`
understands (alias, local directory, hub id, ``offline:``, ``tiny:``), with the same one-line
errors as the other loaders. ``tiny:<arch>-<L>x<H>`` builds a randomly initialised (seeded)
classifier with the tiny tokenizer, for tests and dry runs.

:func:`score_texts` is the forward pass both judges share: pad on the right, run in batches,
return fp32 logits ``[N, num_labels]``.
"""

from __future__ import annotations

import torch

from w2s.errors import W2SError
from w2s.models.loading import _from_pretrained, _resolve, load_tokenizer, pick_device, pick_dtype
from w2s.models.resolve import ResolvedModel
from w2s.models.tiny import load_tiny


def load_reward_model(name: str | ResolvedModel, *, scalar: bool = True,
                      dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
                      tiny_labels: int = 1, seed: int = 0):
    """``(model, tokenizer)`` of a sequence-classification model, in eval mode.

    scalar: require a scalar head (``num_labels == 1``, a reward model); a head with more labels
    is a W2SError that points at ``cls:MODEL:LABEL``. With ``scalar=False`` any head of two or
    more labels is accepted (a classifier). ``tiny_labels``/``seed`` only shape tiny models.
    The tokenizer pads on the right and ``model.config.pad_token_id`` is set, which is how
    transformers finds each row's last real token.
    """
    resolved = _resolve(name)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    tokenizer = load_tokenizer(resolved, padding_side="right")
    if resolved.source == "tiny":
        model = load_tiny(resolved.location, seed=seed, head_labels=tiny_labels)
        model = model.to(device=dev, dtype=torch_dtype)
    else:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        config = _from_pretrained(AutoConfig, resolved, "model config")
        _check_head(resolved.name, int(getattr(config, "num_labels", 2)), scalar)
        kwargs = {"dtype": torch_dtype}
        if dev.type == "cuda":
            kwargs["device_map"] = {"": dev.index or 0}
        model = _from_pretrained(AutoModelForSequenceClassification, resolved, "reward model",
                                 **kwargs)
        if dev.type != "cuda":
            model = model.to(dev)
    _check_head(resolved.name, int(model.config.num_labels), scalar)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def _check_head(name: str, num_labels: int, scalar: bool) -> None:
    if scalar and num_labels != 1:
        raise W2SError(f"'{name}' has a {num_labels}-label head, not a scalar reward (num_labels "
                       f"must be 1); for a classifier's log-odds of a label use "
                       f"cls:{name}:LABEL")
    if not scalar and num_labels < 2:
        raise W2SError(f"'{name}' has a {num_labels}-label head; cls:MODEL:LABEL needs a "
                       f"classifier with two or more labels (for a scalar reward use rm:{name})")


def reward_model_inputs(tokenizer, prompt: str, response: str) -> tuple[str, str | None, bool]:
    """How a reward model reads one (prompt, response): ``(text, text_pair, add_special)``.

    With a chat template: the two-turn conversation (user prompt, assistant response) rendered by
    the template (the convention of chat reward models). Without one: the tokenizer's sentence-pair
    encoding ``tokenizer(prompt, response)`` (the convention of the OpenAssistant DeBERTa RMs).
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            tokenize=False)
        return text, None, False
    return prompt, response, True


@torch.no_grad()
def score_texts(model, tokenizer, prompts: list[str] | None, responses: list[str], *,
                batch_size: int = 16, max_length: int | None = None) -> torch.Tensor:
    """fp32 logits ``[N, num_labels]`` of a sequence-classification model.

    With ``prompts``: each row is read as a (prompt, response) pair (:func:`reward_model_inputs`).
    Without: each response alone as plain text (a classifier of the text itself, e.g. sentiment).
    Long inputs are truncated to ``max_length`` (default: the tokenizer's limit when it is a real
    one, else 2048) from the right.
    """
    if prompts is not None and len(prompts) != len(responses):
        raise ValueError("prompts and responses differ in length")
    limit = max_length or tokenizer.model_max_length
    if not limit or limit > 1_000_000:
        limit = 2048
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(responses), batch_size):
        chunk = responses[start:start + batch_size]
        if prompts is None:
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=limit,
                            return_tensors="pt")
        else:
            parts = [reward_model_inputs(tokenizer, p, r)
                     for p, r in zip(prompts[start:start + batch_size], chunk, strict=True)]
            texts = [p[0] for p in parts]
            pairs = [p[1] for p in parts] if parts[0][1] is not None else None
            enc = tokenizer(texts, pairs, padding=True, truncation=True, max_length=limit,
                            add_special_tokens=parts[0][2], return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask",
                                                                  "token_type_ids")}
        out.append(model(**enc).logits.float().cpu())
    if not out:
        return torch.zeros(0, int(model.config.num_labels))
    return torch.cat(out)
