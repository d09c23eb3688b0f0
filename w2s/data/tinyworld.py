"""A tiny world where a stronger model really knows more: the W2S testbed that runs on a CPU.

Two random networks of different sizes do not show weak-to-strong generalization: neither knows
anything the other does not. Here the knowledge comes from pretraining, like real LMs:

- The world: ``entities`` made-up names (``bavok``, ``tizel``, ...), each either kind or mean
  (50/50, seeded). A quarter of them are "famous".
- The pretraining corpus: one sentence per fact, ``"bavok is kind."``, famous facts repeated
  ``famous_repeats`` times. Every tiny model is pretrained on the SAME corpus for the same number
  of steps through the one training loop (:func:`w2s.tiny.world.pretrained_tiny`); what it
  retains depends on its capacity: a small model picks up the famous facts, a larger one the
  famous facts and many rare ones. Knowledge, not architecture, separates weak from strong.
- The task ``tinyworld`` (classification): text ``"bavok is "``, label 1 = kind. The answer is
  the next word the LM would write, so what the model knows is linearly readable at the last
  token, as truthfulness is in real LMs. Each entity is one row; train and test share no entity,
  so the classifier cannot learn a test fact from its training data: it must use what
  pretraining put into the model.

This module is the data: the world, the corpus, the task and :class:`WorldConfig`. The
pretraining that turns the corpus into tiny models trains, so it lives above the training loop,
in :mod:`w2s.tiny.world` (``pretrained_tiny("tiny:llama-2x128", WorldConfig())``, cached).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

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
