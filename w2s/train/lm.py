"""Language-model training on texts: next-token cross-entropy through the one training loop.

Three parts of w2s teach a model to read text before it is used: the tinyworld and corpus
pretraining of tiny models (:mod:`w2s.tiny`), and W2S generalization's optional generative
fine-tuning on the task's unlabeled texts. All of them call :func:`train_lm`::

    train_lm(model, [tok(t).input_ids for t in texts], pad_id, config,
             checkpoint_dir=stage.progress, description="generative fine-tuning")

An example is a list of token ids, scored at every position after the first, or ``(ids,
start)`` to score only the tokens from index ``start`` on (e.g. a fact's trait, not the name
that prompts it). The per-example loss is the mean token cross-entropy of the scored tokens
(:func:`~w2s.train.losses.lm_loss`); the loop averages examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from w2s.models.batching import pad_right, spans_mask
from w2s.train.losses import lm_loss


def lm_collate(pad_id: int):
    """Examples (ids, or ``(ids, start)``) -> ``{"input_ids", "attention_mask", "mask"}``;
    ``mask`` is 1 on the tokens the loss scores."""
    def collate(items: Sequence) -> dict:
        pairs = [(it, 0) if not isinstance(it, tuple) else it for it in items]
        ids, attention = pad_right([p[0] for p in pairs], pad_id)
        mask = spans_mask([p[1] for p in pairs], [len(p[0]) for p in pairs], ids.shape[1])
        return {"input_ids": ids, "attention_mask": attention, "mask": mask}
    return collate


def lm_loss_fn(model, batch: dict, *_: Any):
    """Per-example next-token loss of a causal LM on a :func:`lm_collate` batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return lm_loss(logits[:, :-1], batch["input_ids"][:, 1:], batch["mask"][:, 1:])


def train_lm(model, examples: Sequence, pad_id: int, config, **train_kwargs: Any):
    """Train ``model`` on ``examples`` (see the module docstring) with the loop's ``config``;
    ``train_kwargs`` go to :func:`w2s.train.train` (checkpoint_dir, accelerator, description,
    log). Returns the loop's :class:`~w2s.train.TrainResult`."""
    from w2s.train.loop import train

    return train(model, examples, loss_fn=lm_loss_fn, collate=lm_collate(pad_id),
                 config=config, **train_kwargs)
