"""Token log-probabilities: the one helper every method scores text with.

WSPO, DPO, SimPO, W2S search and the deception experiments all need ``log pi(y_t | x, y_<t)`` for
the response tokens of a batch, summed per sequence. The naive way::

    torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])

materialises an fp32 tensor of shape [B, T, V] (and keeps it for backward). With a 150k vocabulary,
batch 16 and 2k tokens that is 20 GB: the OOM reported against the W2S search reference code.

Here ``log p(label) = logit[label] - logsumexp(logits)``, computed only for the rows that are
actually scored (mask == 1), a chunk of rows at a time; each chunk is upcast to fp32 on its own and,
when gradients are needed, recomputed in the backward pass (activation checkpointing), so the fp32
copy of a chunk never outlives it. Peak extra memory is one chunk of ``chunk_size x V`` fp32.

:func:`response_logprobs` goes one step further: it catches the model's final hidden states and
applies the output head itself, to the scored rows only, chunk by chunk, so even the model-dtype
logits over the full sequence are never built.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from w2s import compute
from w2s.errors import W2SError


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, 2, ... counted over real tokens only, so a left-padded sequence gets the
    same positions (and the same outputs) as the unpadded one. Pad positions get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _rows_logprob(rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(rows)[label] for a [N, V] chunk, in fp32: gathered logit minus logsumexp."""
    rows = rows.float()
    return rows.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(rows, dim=-1)


def _select_logprob(flat: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return _rows_logprob(flat.index_select(0, idx), labels)


def _head_logprob(head, hidden: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor):
    return _rows_logprob(head(hidden.index_select(0, idx)), labels)


CHUNK_ELEMENTS = 1 << 26
"""Default fp32 budget of one chunk (64M elements = 256 MB): rows = CHUNK_ELEMENTS // vocab, so
a 152k vocabulary is scored ~440 rows at a time and a 50k one ~1300."""


def chunk_rows(chunk_size: int | None, vocab: int) -> int:
    """Rows per chunk: ``chunk_size`` when given, else what fits in :data:`CHUNK_ELEMENTS`."""
    if chunk_size is None:
        return max(1, CHUNK_ELEMENTS // max(1, vocab))
    return chunk_size


def _chunked(fn, source: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor, chunk_size: int,
             extra: tuple = ()) -> torch.Tensor:
    """Apply ``fn(*extra, source, idx_chunk, label_chunk)`` over chunks of ``idx``; concatenate.

    When gradients flow, each chunk runs under non-reentrant checkpointing: the forward keeps only
    ``source`` (which exists anyway) and the indices, and the fp32 chunk is rebuilt in backward.
    """
    if chunk_size < 1:
        raise W2SError(f"chunk_size must be >= 1, got {chunk_size}")
    grad = torch.is_grad_enabled() and (source.requires_grad or any(
        p.requires_grad for m in extra for p in getattr(m, "parameters", lambda: [])()))
    out = []
    for start in range(0, idx.numel(), chunk_size):
        args = (*extra, source, idx[start:start + chunk_size], labels[start:start + chunk_size])
        out.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
    if not out:  # nothing scored: an empty result that still belongs to the graph
        return source.reshape(-1)[:0].float()
    return torch.cat(out)


def _scatter(values: torch.Tensor, idx: torch.Tensor, shape, device) -> torch.Tensor:
    """Place per-row values at flat positions ``idx`` of a zero [B, T] fp32 tensor."""
    flat = torch.zeros(shape[0] * shape[1], dtype=torch.float32, device=device)
    return flat.index_put((idx,), values).view(shape)


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                      chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``labels`` under ``logits``, masked, without a full fp32 log-softmax.

    Args:
        logits: [B, T, V], any float dtype, ALREADY ALIGNED: ``logits[:, t]`` is the distribution
            of ``labels[:, t]`` (the caller shifts; see :func:`response_logprobs`).
        labels: [B, T] token ids; values at masked positions are ignored (-100 is fine).
        mask: [B, T], nonzero on the tokens to score (usually the response tokens).
        chunk_size: rows (tokens) upcast to fp32 at a time; None (default) sizes chunks to
            :data:`CHUNK_ELEMENTS` fp32 elements whatever the vocabulary.

    Returns:
        ``(per_token, summed)``: per_token [B, T] fp32 with log p(label) where mask is set and 0
        elsewhere; summed [B] fp32, its sum over T. Gradients flow back to ``logits``.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2] or mask.shape != labels.shape:
        raise ValueError(f"expected logits [B, T, V] with labels and mask [B, T]; got "
                         f"{tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(mask.shape)}")
    B, T, V = logits.shape
    idx = mask.reshape(-1).nonzero().squeeze(-1)  # flat positions that are scored
    picked = labels.reshape(-1).index_select(0, idx).clamp(0, V - 1)
    values = _chunked(_select_logprob, logits.reshape(B * T, V), idx, picked,
                      chunk_rows(chunk_size, V))
    per_token = _scatter(values, idx, (B, T), logits.device)
    return per_token, per_token.sum(-1)


_HEAD_MISMATCH: set[type] = set()
"""Model classes whose logits are not ``head(last hidden state)`` (logit soft-capping, scaling):
:func:`response_logprobs` uses their full logits instead."""


def _unwrap(model):
    """The module inside a DistributedDataParallel wrapper (forward hooks on the inner body fire
    when the wrapper is called, so scoring keeps its memory savings under DDP)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _partitioned(module) -> bool:
    """True when DeepSpeed ZeRO-3 partitions ``module``'s weights: they are whole only inside
    its own forward, so the head cannot be re-applied chunk by chunk under checkpointing."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _body_and_head(model):
    """(transformer body, output head) of a causal LM, plain or peft-wrapped; (None, None) when
    the model does not expose them the standard transformers way."""
    lm = _unwrap(model)
    lm = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    body = getattr(lm, "base_model", None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if body is None or body is lm or head is None:
        return None, None
    return body, head


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor, chunk_size: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a causal LM and score its own input: log p(input_ids[:, t+1] | input_ids[:, :t+1]).

    Args:
        model: a causal LM (plain or peft-wrapped).
        input_ids, attention_mask: [B, T], left or right padded (positions are computed from the
            mask, so padding side does not change the result).
        response_mask: [B, T], 1 on the tokens to score (the response, often plus its EOS).
        chunk_size: rows at a time through the output head and the fp32 logsumexp.

    Returns:
        ``(per_token, summed)``: per_token [B, T-1] fp32, entry t is the log-prob of token t+1
        (zero where ``response_mask[:, t+1] == 0``); summed [B]. Gradients flow into the model.

    How: the model runs with ``logits_to_keep=1`` (logits for the last position only) while a
    forward hook on its transformer body catches the final hidden states; the output head is then
    applied to the scored rows only, a chunk at a time. The last position's logits double as a
    check that the model's logits really are ``head(hidden)``; a model where they are not
    (soft-capping, logit scaling) is re-run for full logits, and remembered. Under DeepSpeed
    ZeRO-3 (a partitioned head) the model's full logits are read too; the fp32 log-softmax is
    still computed a chunk at a time.
    """
    if not torch.is_grad_enabled():  # scoring; a training step's tokens are the loop's to count
        compute.count(forward=int(attention_mask.sum()))
    labels = input_ids[:, 1:]
    mask = response_mask[:, 1:]
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    body, head = _body_and_head(model)
    inner = _unwrap(model)
    kind = type(inner.get_base_model() if hasattr(inner, "get_base_model") else inner)
    if body is not None and kind not in _HEAD_MISMATCH and not _partitioned(head):
        caught = []

        def catch(module, args, output):
            caught.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

        hook = body.register_forward_hook(catch)
        try:
            out = model(**kwargs, logits_to_keep=1)
        except TypeError:  # a model without logits_to_keep: full logits below
            out = None
        finally:
            hook.remove()
        if out is not None and len(caught) == 1:
            hidden = caught[0]
            with torch.no_grad():
                ours = head(hidden[:, -1:]).float()
            theirs = out.logits[:, -1:].float()
            scale = theirs.abs().max().clamp(min=1.0).item()
            if ours.shape == theirs.shape and torch.allclose(ours, theirs, rtol=1e-3,
                                                             atol=1e-3 * scale):
                B, T1 = labels.shape
                idx = mask.reshape(-1).nonzero().squeeze(-1)
                vocab = theirs.shape[-1]
                picked = labels.reshape(-1).index_select(0, idx).clamp(0, vocab - 1)
                flat_hidden = hidden[:, :-1].reshape(B * T1, hidden.shape[-1])
                values = _chunked(_head_logprob, flat_hidden, idx, picked,
                                  chunk_rows(chunk_size, vocab), extra=(head,))
                per_token = _scatter(values, idx, (B, T1), hidden.device)
                return per_token, per_token.sum(-1)
        _HEAD_MISMATCH.add(kind)
    logits = model(**kwargs).logits
    return sequence_logprobs(logits[:, :-1], labels, mask, chunk_size)
