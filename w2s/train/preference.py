"""Preference training shared by WSPO, MACPO, W2S deception and GenARM: SFT, DPO, SimPO, ARM,
reward models.

Every stage here is the one training loop (:func:`w2s.train.train`) with a loss from
:mod:`w2s.train.losses` over log-probs from the one helper (:func:`w2s.models.response_logprobs`).
What this module adds is the plumbing they share:

1. **Encoding** (:func:`encode`). A (prompt, response) pair becomes token ids plus the index where
   the response starts. The prompt is written the way the model expects it
   (:func:`w2s.models.format_chat`: its chat template, or plain text for base models), the prompt
   and the response are tokenised separately and concatenated (so the response tokens are exactly
   the response's own tokenisation), and EOS is appended so a model learns, and is scored on,
   where to stop. Too long: the prompt is cut from the left (keeping at least half the budget),
   then the response from the right; ``truncation="left"`` instead keeps the last ``max_len``
   tokens of the whole sequence (the W2S deception code's convention).
2. **Batching** (:func:`collate`, :func:`collate_pairs`). Right padding; ``response_mask`` marks
   the response tokens. A pair batch puts the chosen rows first and the rejected rows after, so
   ONE forward pass scores both.
3. **Scoring** (:func:`sequence_logprobs_of`, :func:`score_items`). Summed log-prob and token
   count of each response; no fp32 log-softmax over the vocabulary ever exists.
   :func:`score_tokens` keeps the per-token log-probs instead of their sum, and
   :func:`token_values` puts such per-item values back into a batch's ``[B, T-1]`` layout, so
   token-level losses (WSPO) can train against values computed once, before training.
4. **Reference log-probs, precomputed** (:func:`reference_logprobs`). DPO needs log pi_ref of
   every chosen and rejected response. The reference is the policy before training, so they are
   computed ONCE with the model itself before its first step (with LoRA adapters disabled when
   there are any) and stored in the examples: a training step is then one forward pass of the
   policy, and no second copy of the model is ever loaded (trl #1619/#2452's OOMs).

Stages: :func:`train_sft`, :func:`train_dpo` (``objective="dpo"`` with an optional SFT term
``ftx``, ``"simpo"``, or ``"arm"``: GenARM's autoregressive reward model, used by ``w2s
search``), :func:`train_reward_model` (a :class:`w2s.models.Classifier` with one output read on
the last real token). Each takes a :class:`w2s.train.TrainConfig` and passes
``checkpoint_dir``/``log``/``accelerator``/``progress``/``description`` on to the loop, so it
resumes after a kill like every other training in w2s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from w2s.errors import W2SError, did_you_mean
from w2s.models.batching import pad_right, spans_mask
from w2s.models.loading import format_chat, pad_id
from w2s.models.logprobs import response_logprobs
from w2s.train.loop import train
from w2s.train.losses import (
    arm_loss,
    dpo_loss,
    orpo_loss,
    reward_model_loss,
    sft_loss,
    simpo_loss,
)

__all__ = ["Encoded", "encode", "collate", "collate_pairs", "sequence_logprobs_of",
           "score_items", "score_tokens", "token_values", "reference_logprobs", "reward_scores", "train_sft", "train_dpo", "weighted_losses",
           "preference_loss_fn",
           "train_reward_model", "encode_pairs", "OBJECTIVES"]

OBJECTIVES = ("dpo", "simpo", "arm", "orpo")


@dataclass(frozen=True)
class Encoded:
    """One (prompt, response): ``input_ids`` of both, the response from index ``start`` on."""

    input_ids: tuple[int, ...]
    start: int

    @property
    def n_response(self) -> int:
        return len(self.input_ids) - self.start


def _templated(tokenizer, chat: bool) -> bool:
    return bool(chat and getattr(tokenizer, "chat_template", None))


def encode(tokenizer, prompt: str, response: str, *, max_len: int = 512, chat: bool = True,
           eos: bool = True, sep: str = "", truncation: str = "prompt",
           bos: bool = True) -> Encoded:
    """Token ids of ``prompt`` (chat-formatted when ``chat`` and the tokenizer has a template)
    followed by ``sep + response`` (+ EOS). See the module docstring for truncation.

    ``sep``: text put before the response in plain (untemplated) mode, e.g. ``" "`` after an
    Anthropic-HH ``"...Assistant:"`` prompt. ``bos`` False: a plain prompt gets none of the
    tokenizer's special tokens (LLaMA-Factory's vicuna template adds no BOS). Raises
    :class:`W2SError` for an empty response.
    """
    if not response or not response.strip():
        raise W2SError("a response is empty; every preference row needs non-empty responses "
                       "(drop or fix that row)")
    templated = _templated(tokenizer, chat)
    prompt_text = format_chat(tokenizer, prompt) if templated else prompt
    prompt_ids = tokenizer(prompt_text, add_special_tokens=bos and not templated)["input_ids"]
    text = response if templated else sep + response
    response_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if eos and tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    if max_len < 2:
        raise W2SError(f"max_len must be at least 2, got {max_len}")
    if len(prompt_ids) + len(response_ids) > max_len:
        if truncation == "left":
            ids = (prompt_ids + response_ids)[-max_len:]
            return Encoded(tuple(ids), max(0, len(ids) - len(response_ids)))
        if truncation != "prompt":
            raise ValueError(f"truncation must be 'prompt' or 'left', got {truncation!r}")
        keep_prompt = max(max_len - len(response_ids), max_len // 2)
        prompt_ids = prompt_ids[-keep_prompt:] if keep_prompt else []
        response_ids = response_ids[:max_len - len(prompt_ids)]
    return Encoded(tuple(prompt_ids + response_ids), len(prompt_ids))


def encode_pairs(tokenizer, rows: Sequence[dict], **kwargs: Any) -> list[dict]:
    """``{prompt, chosen, rejected}`` rows -> ``{"chosen": Encoded, "rejected": Encoded}``."""
    return [{"chosen": encode(tokenizer, r["prompt"], r["chosen"], **kwargs),
             "rejected": encode(tokenizer, r["prompt"], r["rejected"], **kwargs)} for r in rows]


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``response_mask`` [B, T]."""
    ids, attention = pad_right([e.input_ids for e in items], pad_id)
    response = spans_mask([e.start for e in items], [len(e.input_ids) for e in items],
                          ids.shape[1])
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response}


def collate_pairs(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pair examples -> one batch of 2B rows, chosen first, rejected after; any float fields
    of the examples (``ref_chosen``, ``ref_rejected``, weights) become [B] tensors."""
    batch = collate([e["chosen"] for e in examples] + [e["rejected"] for e in examples], pad_id)
    for key, value in examples[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            batch[key] = torch.tensor([float(e[key]) for e in examples])
    return batch


def sequence_logprobs_of(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    """(summed log-prob [B], response token count [B]) of each row's response."""
    _, summed = response_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                  batch["response_mask"])
    return summed, batch["response_mask"][:, 1:].sum(-1)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _adapters_off(model):
    """The base model under LoRA adapters (peft ``disable_adapter``), or the model itself."""
    inner = model.module if hasattr(model, "module") else model
    if hasattr(inner, "disable_adapter") and hasattr(inner, "peft_config"):
        with inner.disable_adapter():
            yield inner
    else:
        yield inner


@torch.no_grad()
def score_items(model, items: Sequence[Encoded], pad_id: int, *, batch_size: int = 16,
                reference: bool = False) -> tuple[list[float], list[int]]:
    """Summed response log-probs and token counts of ``items``, in order (no gradients).

    Batches are formed by length to waste little padding. ``reference=True`` scores with LoRA
    adapters disabled (the base model: DPO/WSPO's pi_ref under LoRA).
    """
    sums: list[float] = [0.0] * len(items)
    counts: list[int] = [0] * len(items)
    for m, idx, batch in _scoring_batches(model, items, pad_id, batch_size, reference):
        summed, n = sequence_logprobs_of(m, batch)
        for j, i in enumerate(idx):
            sums[i], counts[i] = float(summed[j]), int(n[j])
    return sums, counts


def _scoring_batches(model, items: Sequence[Encoded], pad_id: int, batch_size: int,
                     reference: bool):
    """``(model to score with, item indices, batch on its device)``, batches formed by length,
    the model in eval mode (and, ``reference=True``, with its LoRA adapters off) meanwhile."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    was_training = model.training
    model.eval()
    try:
        with _adapters_off(model) if reference else contextlib.nullcontext(model) as m:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = collate([items[i] for i in idx], pad_id)
                yield m, idx, {k: v.to(_device(m)) for k, v in batch.items()}
    finally:
        model.train(was_training)


@torch.no_grad()
def score_tokens(model, items: Sequence[Encoded], pad_id: int, *, batch_size: int = 16,
                 reference: bool = False) -> list[torch.Tensor]:
    """Per-token response log-probs of ``items``, in order: one 1-D fp32 CPU tensor per item.

    Entry ``k`` of item ``i`` is ``log p(token | everything before it)`` of the k-th SCORED
    response token: the positions :func:`collate` marks in ``response_mask[:, 1:]`` (all response
    tokens, EOS included; the first token of the sequence has no context and is never scored).
    ``score_tokens(...)[i].sum()`` equals ``score_items(...)[0][i]`` up to float rounding.
    ``reference=True`` scores with LoRA adapters disabled, as :func:`score_items` does.
    """
    out: list[torch.Tensor] = [torch.zeros(0)] * len(items)
    for m, idx, batch in _scoring_batches(model, items, pad_id, batch_size, reference):
        per_token, _ = response_logprobs(m, batch["input_ids"], batch["attention_mask"],
                                         batch["response_mask"])
        scored = batch["response_mask"][:, 1:].bool()
        for j, i in enumerate(idx):
            out[i] = per_token[j][scored[j]].float().cpu()
    return out


def token_values(response_mask: torch.Tensor, values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-item token values (as :func:`score_tokens` returns them) laid out like the per-token
    log-probs of :func:`w2s.models.response_logprobs` on this batch: ``[B, T-1]`` fp32, row ``b``
    holding ``values[b]`` at the positions ``response_mask[b, 1:]`` marks, 0 elsewhere.

    A value list whose length is not the row's number of scored tokens is a ``ValueError``: the
    values were computed for another encoding of the text.
    """
    scored = response_mask[:, 1:].bool()
    out = torch.zeros(scored.shape, dtype=torch.float32)
    for b, v in enumerate(values):
        positions = scored[b].nonzero().squeeze(1)
        if positions.numel() != len(v):
            raise ValueError(f"row {b} has {positions.numel()} scored tokens but {len(v)} values")
        out[b, positions] = torch.as_tensor(v, dtype=torch.float32)
    return out


def reference_logprobs(model, examples: list[dict], pad_id: int, *, batch_size: int = 16,
                       adapters: bool = False) -> list[dict]:
    """Add ``ref_chosen`` / ``ref_rejected`` (summed log-probs under the model as it is now) to
    every pair example; returns the examples (also changed in place).

    ``adapters=False``: LoRA adapters disabled, i.e. the base model is the reference.
    ``adapters=True``: the model with its active adapter as it is before training, i.e. the
    policy's own starting point (a DPO stage that continues an earlier adapter, e.g. MACPO's
    iterations, then keeps DPO's definition pi_ref = the policy it started from).
    """
    items = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
    sums, _ = score_items(model, items, pad_id, batch_size=batch_size, reference=not adapters)
    n = len(examples)
    for k, e in enumerate(examples):
        e["ref_chosen"], e["ref_rejected"] = sums[k], sums[n + k]
    return examples


@torch.no_grad()
def reward_scores(model, items: Sequence[Encoded], pad_id: int, *, batch_size: int = 16
                  ) -> list[float]:
    """Scalar scores of a one-output :class:`w2s.models.Classifier` (a reward model)."""
    scores: list[float] = [0.0] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate([items[i] for i in idx], pad_id)
            out = model(batch["input_ids"].to(_device(model)),
                        batch["attention_mask"].to(_device(model)))
            for j, i in enumerate(idx):
                scores[i] = float(out[j, 0])
    finally:
        model.train(was_training)
    return scores


def weighted_losses(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-pair losses [B] times per-pair weights [B] (CW-PO's weighted objective: the loop's
    mean over pairs then gives ``(1/B) sum_i w_i * loss_i``)."""
    return losses * weights.to(device=losses.device, dtype=losses.dtype)


def preference_loss_fn(objective: str, beta: float, *, ftx: float = 0.0,
                       simpo_gamma: float = 1.0):
    """The loop's ``loss_fn(model, batch)`` of :func:`train_dpo`: one forward pass over a
    :func:`collate_pairs` batch, per-pair losses of ``objective`` (times the batch's ``weight``
    when it has one, :func:`weighted_losses`), and the implicit reward margin and accuracy."""

    def loss_fn(m, batch):
        summed, n = sequence_logprobs_of(m, batch)
        b = summed.shape[0] // 2
        chosen, rejected = summed[:b], summed[b:]
        if objective == "dpo":
            ref_c = batch["ref_chosen"].to(summed.device)
            ref_r = batch["ref_rejected"].to(summed.device)
            losses = dpo_loss(chosen, rejected, ref_c, ref_r, beta=beta)
            margin = beta * ((chosen - ref_c) - (rejected - ref_r)).detach()
            if ftx:
                losses = losses + ftx * sft_loss(chosen, n[:b])
        elif objective == "arm":
            losses = arm_loss(chosen, rejected, beta=beta)
            margin = beta * (chosen - rejected).detach()
        else:  # simpo, orpo: on length-normalised log-probs
            avg_c = chosen / n[:b].clamp_min(1)
            avg_r = rejected / n[b:].clamp_min(1)
            losses = (orpo_loss(avg_c, avg_r, beta=beta) if objective == "orpo"
                      else simpo_loss(avg_c, avg_r, beta=beta, gamma=simpo_gamma))
            margin = beta * (avg_c - avg_r).detach()
        if "weight" in batch:
            losses = weighted_losses(losses, batch["weight"])
        return {"loss": losses, "reward_margin": margin,
                "reward_accuracy": (margin > 0).float()}

    return loss_fn


# --------------------------------------------------------------------------------------------
# stages


def train_sft(model, tokenizer, rows: Sequence[dict], config, *, max_len: int = 512,
              chat: bool = True, sep: str = "", eos: bool = True, truncation: str = "prompt",
              bos: bool = True, **train_kwargs: Any):
    """Supervised fine-tuning on ``{prompt, response}`` rows: mean NLL of the response tokens
    (EOS included unless ``eos=False``), prompt tokens unscored; ``truncation`` as in
    :func:`encode` (``"left"``: keep the last ``max_len`` tokens). Returns the loop's
    :class:`TrainResult`."""
    examples = [encode(tokenizer, r["prompt"], r["response"], max_len=max_len, chat=chat,
                       sep=sep, eos=eos, truncation=truncation, bos=bos) for r in rows]
    pad = pad_id(tokenizer)

    def loss_fn(m, batch):
        summed, n = sequence_logprobs_of(m, batch)
        return sft_loss(summed, n)

    train_kwargs.setdefault("description", "sft")
    return train(model, examples, loss_fn=loss_fn, collate=lambda items: collate(items, pad),
                 config=config, **train_kwargs)


def train_dpo(model, tokenizer, rows: Sequence[dict], config, *, objective: str = "dpo",
              beta: float | None = None, ftx: float = 0.0, simpo_gamma: float = 1.0,
              max_len: int = 512, chat: bool = True, sep: str = "", ref_batch_size: int = 16,
              reference_adapters: bool = False, bos: bool = True,
              weights: Sequence[float] | None = None, **train_kwargs: Any):
    """Preference optimisation on ``{prompt, chosen, rejected}`` rows.

    ``weights`` (one float per row, >= 0): each pair's loss is multiplied by its weight before
    the loop averages over the batch (confidence-weighted preference optimisation, CW-PO: pairs
    weighted by the annotator's confidence); None = every pair weight 1.

    objective ``"dpo"``: :func:`~w2s.train.losses.dpo_loss` (beta default 0.1) against the
    model's own log-probs before training (precomputed, see :func:`reference_logprobs`; under
    LoRA with the adapters disabled, or with ``reference_adapters=True`` with the active adapter
    as it is before the first step), plus
    ``ftx`` times the SFT loss of the chosen response (MACPO's DPO + SFT, ftx 0.2).
    ``"simpo"``: :func:`~w2s.train.losses.simpo_loss` (beta default 2.0, ``simpo_gamma`` 1.0),
    no reference. ``"arm"``: GenARM's autoregressive reward model,
    :func:`~w2s.train.losses.arm_loss` (beta default 0.05) on summed log-probs, no reference,
    no length normalisation: the model's log-prob becomes the reward. ``"orpo"``:
    :func:`~w2s.train.losses.orpo_loss` (beta, the odds-ratio weight, default 0.1) on
    length-normalised log-probs, no reference, the SFT term built in. Logged metrics: ``reward_margin`` (the implicit reward of chosen minus
    rejected) and ``reward_accuracy`` (the fraction of pairs where it is positive).
    """
    if objective not in OBJECTIVES:
        raise W2SError(f"unknown preference objective '{objective}'"
                       f"{did_you_mean(objective, OBJECTIVES)}; use one of {list(OBJECTIVES)}")
    beta = {"dpo": 0.1, "simpo": 2.0, "arm": 0.05, "orpo": 0.1}[objective] if beta is None else beta
    if beta <= 0:
        raise W2SError(f"beta must be > 0, got {beta}")
    if ftx < 0:
        raise W2SError(f"ftx (the SFT weight) must be >= 0, got {ftx}")
    pad = pad_id(tokenizer)
    examples = encode_pairs(tokenizer, rows, max_len=max_len, chat=chat, sep=sep, bos=bos)
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(examples):
            raise W2SError(f"{len(weights)} weights for {len(examples)} preference rows; give "
                           "one weight per row")
        if any(not (w >= 0) or w == float("inf") for w in weights):
            raise W2SError("pair weights must be finite and >= 0")
        for e, w in zip(examples, weights, strict=True):
            e["weight"] = w
    if objective == "dpo":
        reference_logprobs(model, examples, pad, batch_size=ref_batch_size,
                           adapters=reference_adapters)

    loss_fn = preference_loss_fn(objective, beta, ftx=ftx, simpo_gamma=simpo_gamma)

    train_kwargs.setdefault("description", objective)
    return train(model, examples, loss_fn=loss_fn,
                 collate=lambda items: collate_pairs(items, pad), config=config, **train_kwargs)


def train_reward_model(model, tokenizer, rows: Sequence[dict], config, *, max_len: int = 512,
                       chat: bool = True, sep: str = "", **train_kwargs: Any):
    """Bradley-Terry reward modelling on ``{prompt, chosen, rejected}`` rows: ``model`` is a
    one-output :class:`w2s.models.Classifier` (``load_classifier(name, num_labels=1)``) scoring
    prompt + response at the last real token; loss :func:`~w2s.train.losses.reward_model_loss`.
    """
    pad = pad_id(tokenizer)
    examples = encode_pairs(tokenizer, rows, max_len=max_len, chat=chat, sep=sep)

    def loss_fn(m, batch):
        scores = m(batch["input_ids"], batch["attention_mask"])[:, 0]
        b = scores.shape[0] // 2
        margin = (scores[:b] - scores[b:]).detach()
        return {"loss": reward_model_loss(scores[:b], scores[b:]), "reward_margin": margin,
                "reward_accuracy": (margin > 0).float()}

    train_kwargs.setdefault("description", "reward model")
    return train(model, examples, loss_fn=loss_fn,
                 collate=lambda items: collate_pairs(items, pad), config=config, **train_kwargs)
