"""The tinyworld models: every tiny model pretrained on the one world corpus.

The world, its corpus and the ``tinyworld`` task are data (:mod:`w2s.data.tinyworld`). Here is
what makes the testbed work: every tiny model is pretrained on the SAME corpus for the same
number of steps through the one training loop (:func:`w2s.train.train` with ``lm_loss`` on the
trait word), and what it retains depends on its capacity. A small model picks up the famous
facts, a larger one the famous facts and many rare ones, so knowledge, not architecture,
separates weak from strong.

A pretrained model is cached (:class:`w2s.runs.Cache`, keyed by the tiny config, the world and
the pretraining settings) as a ``save_pretrained`` folder with the tiny tokenizer, so the model
layer loads it like any local checkpoint::

    load_classifier(pretrained_tiny("tiny:llama-2x128", WorldConfig()))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from w2s.data.tinyworld import WorldConfig, corpus
from w2s.models.tiny import build_tiny, parse_tiny, tiny_tokenizer
from w2s.runs import Cache, cached_stage
from w2s.train import TrainConfig
from w2s.train.launch import process_precision
from w2s.train.lm import train_lm


def pretrained_tiny(name: str, world: WorldConfig, log=None) -> Path:
    """A cached ``save_pretrained`` folder of tiny model ``name`` pretrained on the world corpus.

    Pretraining runs once per (tiny config, world, pretraining settings) through
    :func:`w2s.train.train` with :func:`w2s.train.losses.lm_loss` on the trait word (the name is
    the context), and resumes from its checkpoint if interrupted.
    """
    cache = Cache()
    spec = str(parse_tiny(name))
    # a process trains in ONE precision: pretrain in the run's (bf16 runs: bf16), keyed by it
    precision = process_precision()
    with cached_stage(cache, f"tinyworld-pretrain-{spec}", "pretrain",
                      model=spec, world=dataclasses.asdict(world), version=1,
                      **({"mixed_precision": precision} if precision != "no" else {})) as st:
        if st.done:
            return st.path
        tok = tiny_tokenizer()
        # (ids, start): score the trait and the full stop, not the name that prompts them
        examples = [(tok(row["text"]).input_ids, len(tok(row["prompt"]).input_ids))
                    for row in corpus(world)]
        model = build_tiny(spec, seed=world.world_seed)
        config = TrainConfig(lr=world.pretrain_lr, batch_size=world.pretrain_batch,
                             micro_batch_size=None, max_steps=world.pretrain_steps,
                             scheduler="cosine", warmup_ratio=0.05, seed=world.world_seed,
                             checkpoint_every=100, mixed_precision=precision)
        result = train_lm(model, examples, tok.pad_token_id, config, checkpoint_dir=st.progress,
                          description=f"pretrain {spec} on tinyworld")
        if log is not None:
            log({"stage": "pretrain", "model": name, "steps": result.steps,
                 "final_loss": result.final_loss, "elapsed_s": result.elapsed_s})
        return st.publish(lambda folder: _save(model, tok, folder),
                          meta={"model": spec, "world": dataclasses.asdict(world)})


def _save(model, tok, folder: Path) -> None:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
