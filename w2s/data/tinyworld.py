"""A tiny world where a stronger model really knows more: the W2S testbed that runs on a CPU.

Two random networks of different sizes do not show weak-to-strong generalization: neither knows
anything the other does not. Here the knowledge comes from pretraining, like real LMs:

- The world: ``entities`` made-up names (``bavok``, ``tizel``, ...), each either kind or mean
  (50/50, seeded). A quarter of them are "famous".
- The pretraining corpus: one sentence per fact, ``"bavok is kind."``, famous facts repeated
  ``famous_repeats`` times. Every tiny model is pretrained on the SAME corpus for the same number
  of steps through the one training loop (:func:`w2s.train.train` with ``lm_loss``); what it
  retains depends on its capacity: a small model picks up the famous facts, a larger one the
  famous facts and many rare ones. Knowledge, not architecture, separates weak from strong.
- The task ``tinyworld`` (classification): text ``"bavok is "``, label 1 = kind. The answer is
  the next word the LM would write, so what the model knows is linearly readable at the last
  token, as truthfulness is in real LMs. Each entity is one row; train and test share no entity,
  so the classifier cannot learn a test fact from its training data: it must use what
  pretraining put into the model.

A pretrained model is cached (:class:`w2s.runs.Cache`, keyed by the tiny config, the world and
the pretraining settings) as a ``save_pretrained`` folder with the tiny tokenizer, so the model
layer loads it like any local checkpoint: ``load_classifier(pretrained_tiny("tiny:llama-2x128",
WorldConfig()))``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from w2s.data.core import TaskData
from w2s.data.registry import register_task, split_in_memory

TASK = "tinyworld"
TRAITS = ("mean", "kind")
"""Label 0 and label 1."""


@dataclass
class WorldConfig:
    """The tiny world and how its models are pretrained (used when ``task`` is ``tinyworld``)."""

    entities: int = field(default=800, metadata={"help": "tinyworld: number of entities (facts)"})
    famous_repeats: int = field(default=4, metadata={
        "help": "tinyworld: times each famous fact (every 4th entity) appears in the corpus"})
    world_seed: int = field(default=0, metadata={"help": "tinyworld: seed of names and traits"})
    pretrain_steps: int = field(default=500, metadata={
        "help": "tinyworld: LM pretraining steps of every tiny model (cached after the first run)"})
    pretrain_lr: float = field(default=3e-3, metadata={"help": "tinyworld: pretraining lr"})
    pretrain_batch: int = field(default=64, metadata={"help": "tinyworld: pretraining batch"})


CONSONANTS = "bcdfghjklmnprstvz"
VOWELS = "aeiou"


def world_facts(entities: int, seed: int = 0) -> list[dict]:
    """``[{"name", "trait" (0/1), "famous"}]``: distinct CVCVC names, seeded and deterministic."""
    rng = random.Random(seed)

    def draw(seq: str) -> str:
        return seq[min(int(rng.random() * len(seq)), len(seq) - 1)]

    names: list[str] = []
    seen: set[str] = set()
    while len(names) < entities:
        name = draw(CONSONANTS) + draw(VOWELS) + draw(CONSONANTS) + draw(VOWELS) + draw(CONSONANTS)
        if name not in seen:
            seen.add(name)
            names.append(name)
    return [{"name": n, "trait": int(rng.random() < 0.5), "famous": i % 4 == 0}
            for i, n in enumerate(names)]


def prompt(name: str) -> str:
    """What the classifier reads: the sentence up to the trait (``"bavok is "``)."""
    return f"{name} is "


def sentence(fact: dict) -> str:
    """A corpus sentence: ``"bavok is kind."``."""
    return prompt(fact["name"]) + TRAITS[fact["trait"]] + "."


def corpus(world: WorldConfig) -> list[dict]:
    """The pretraining corpus: ``[{"prompt", "text"}]``, famous facts repeated."""
    out = []
    for fact in world_facts(world.entities, world.world_seed):
        copies = world.famous_repeats if fact["famous"] else 1
        out += [{"prompt": prompt(fact["name"]), "text": sentence(fact)}] * copies
    return out


@register_task(TASK, kind="classification", source="synthetic",
               description="is the made-up entity kind? (label 1); knowledge from tiny-model "
               "pretraining, see w2s.data.tinyworld", license="project-made")
def load_tinyworld(*, split: str = "train", n: int | None = None, seed: int = 0,
                   entities: int = 800, world_seed: int = 0) -> TaskData:
    """The ``tinyworld`` task: one row per entity, ``{"id", "text": "bavok is ", "label",
    "famous"}``, split 80/20 with the fixed split seed."""
    rows = [{"id": f"tinyworld-{i}", "text": prompt(f["name"]), "label": f["trait"],
             "famous": f["famous"]} for i, f in enumerate(world_facts(entities, world_seed))]
    data = TaskData(TASK, "classification", rows,
                    {"source": "synthetic", "label_names": list(TRAITS), "entities": entities,
                     "world_seed": world_seed})
    return split_in_memory(data, split, n, seed)


# --------------------------------------------------------------------------------------------
# pretraining (torch imported inside)


def pretrained_tiny(name: str, world: WorldConfig, log=None) -> Path:
    """A cached ``save_pretrained`` folder of tiny model ``name`` pretrained on the world corpus.

    Pretraining runs once per (tiny config, world, pretraining settings) through
    :func:`w2s.train.train` with :func:`w2s.train.losses.lm_loss` on the trait word (the name is
    the context), and resumes from its checkpoint if interrupted.
    """
    import dataclasses

    import torch

    from w2s.models import build_tiny, tiny_tokenizer
    from w2s.models.tiny import parse_tiny
    from w2s.runs import Cache
    from w2s.train import TrainConfig, lm_loss, train
    from w2s.train.loop import process_precision

    cache = Cache()
    spec = str(parse_tiny(name))
    # a process trains in ONE precision: pretrain in the run's (bf16 runs: bf16), keyed by it
    precision = process_precision()
    key = cache.key(f"tinyworld-pretrain-{spec}", model=spec, world=dataclasses.asdict(world),
                    version=1, **({"mixed_precision": precision} if precision != "no" else {}))
    with cache.claim(key) as found:
        if found is not None:
            return found
        tok = tiny_tokenizer()
        examples = []
        for row in corpus(world):
            ids = tok(row["text"]).input_ids
            examples.append((ids, len(tok(row["prompt"]).input_ids)))

        def collate(items):
            width = max(len(ids) for ids, _ in items)
            x = torch.full((len(items), width), tok.pad_token_id)
            mask = torch.zeros(len(items), width)
            for j, (ids, start) in enumerate(items):
                x[j, :len(ids)] = torch.tensor(ids)
                mask[j, start:len(ids)] = 1  # score the trait and the full stop, not the name
            return {"input_ids": x, "mask": mask}

        def loss_fn(model, batch):
            logits = model(input_ids=batch["input_ids"]).logits
            return lm_loss(logits[:, :-1], batch["input_ids"][:, 1:], batch["mask"][:, 1:])

        model = build_tiny(spec, seed=world.world_seed)
        config = TrainConfig(lr=world.pretrain_lr, batch_size=world.pretrain_batch,
                             micro_batch_size=None, max_steps=world.pretrain_steps,
                             scheduler="cosine", warmup_ratio=0.05, seed=world.world_seed,
                             checkpoint_every=100, mixed_precision=precision)
        progress = cache.root / "inprogress" / key
        result = train(model, examples, loss_fn=loss_fn, collate=collate, config=config,
                       checkpoint_dir=progress, description=f"pretrain {spec} on tinyworld")
        if log is not None:
            log({"stage": "pretrain", "model": name, "steps": result.steps,
                 "final_loss": result.final_loss, "elapsed_s": result.elapsed_s})
        with cache.put_once(key, meta={"model": spec, "world": dataclasses.asdict(world)}) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        import shutil

        shutil.rmtree(progress, ignore_errors=True)
        return cache.get(key)
