"""Project-made synthetic tasks: seeded, deterministic, instant, for tests and quick runs.

Each generator is a pure function ``(size, seed) -> rows`` drawing from small word lists with
``random.Random(seed).random()`` (whose sequence Python guarantees across versions), keeping
the first ``size`` distinct rows. The registered tasks generate a pool of ``size`` rows (default
2,500) from ``data_seed`` (default 0), split it 80/20 with a fixed seed (2,000 train / 500
test) and sample ``n`` rows with the experiment ``seed``. The pool does not depend on ``seed``,
so a train split loaded with one seed never shares a row with a test split loaded with another.

- ``toy-sentiment`` (classification): templated reviews, label 1 = positive. Most sentences
  carry the label's polarity; a third of the reviews add one contrary clause, so a bag of words
  is not quite enough.
- ``toy-preference`` (preference): a request; chosen = a polite, helpful answer, rejected = a
  rude, dismissive one. The property (politeness) is visible in the text.
- ``toy-prompts`` (prompts): neutral openings of reviews (no reference), for steering demos.
- ``toy-sentiment-pairs`` (preference): a review opening as in ``toy-prompts``; chosen = a
  positive continuation, rejected = a negative one about the same item (for training a guide,
  e.g. GenARM's autoregressive reward model, towards positive text).
"""

from __future__ import annotations

import random

from w2s.data.core import TaskData, pick
from w2s.data.registry import register_task, split_in_memory

POOL_SIZE = 2500

ITEMS = ["movie", "book", "restaurant", "hotel", "phone", "album", "game", "show", "camera",
         "coffee shop", "laptop", "museum"]
ASPECTS = ["story", "service", "price", "design", "sound", "ending", "staff", "battery",
           "food", "acting"]
POSITIVE = ["great", "wonderful", "excellent", "delightful", "superb", "lovely", "fantastic",
            "charming", "brilliant", "pleasant", "impressive", "enjoyable"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "poor", "disappointing", "horrible",
            "bland", "clumsy", "unpleasant", "annoying", "mediocre"]
OPENERS = ["", "I tried the {item} last week.", "A friend recommended the {item}.",
           "We checked out the {item} on a Sunday.", "I finally got around to the {item}."]
VERDICTS = {1: ["I would recommend it to anyone.", "I will come back for more.",
                "Worth every penny.", "Five stars from me.", "A real treat."],
            0: ["I would not recommend it.", "Never again.", "A waste of money.",
                "One star from me.", "I regret it."]}


def toy_sentiment_rows(size: int, seed: int) -> list[dict]:
    """``size`` distinct reviews ``{"id", "text", "label"}``, labels balanced in expectation."""
    rng = random.Random(seed)

    def make(i: int) -> dict:
        label = int(rng.random() < 0.5)
        words = POSITIVE if label else NEGATIVE
        item, aspect = pick(rng, ITEMS), pick(rng, ASPECTS)
        parts = [pick(rng, OPENERS).format(item=item),
                 f"The {item} was {pick(rng, words)}.",
                 f"The {aspect} felt {pick(rng, words)}."]
        if rng.random() < 1 / 3:
            other = pick(rng, [a for a in ASPECTS if a != aspect])
            parts.append(f"Only the {other} was {pick(rng, NEGATIVE if label else POSITIVE)}.")
        parts.append(pick(rng, VERDICTS[label]))
        return {"text": " ".join(p for p in parts if p), "label": label}

    return _distinct(make, size, key=lambda r: r["text"], prefix="toy-sentiment")


WHO = ["", "I'm a student.", "I'm a beginner.", "I'm a busy parent.", "I'm retired.",
       "I'm in a hurry.", "I've never done this before.", "My boss asked me to."]
ASKS = ["can you help me {task}?", "how do I {task}?", "what is the best way to {task}?"]
CHORES = ["fix a flat bike tyre", "bake bread", "learn to juggle", "write a cover letter",
          "plant tomatoes", "clean a cast-iron pan", "start running", "save money each month",
          "prepare for an interview", "learn a new language", "organise my desk",
          "make cold brew coffee", "tie a bowline knot", "back up my photos", "sleep better",
          "write a thank-you note", "paint a room", "train my dog to sit", "plan a trip",
          "read more books", "cook rice", "change a light bulb", "meditate", "learn chess"]
POLITE_OPEN = ["Of course, happy to help!", "Great question!", "Sure, glad you asked.",
               "Absolutely, let's do it together.", "Thanks for asking!"]
FIRST_STEPS = ["gathering what you need", "breaking it into small steps",
               "reading a short guide first", "practising a little every day",
               "setting a simple goal", "asking someone who has done it"]
POLITE_CLOSE = ["Good luck, you've got this!", "Let me know if you want more detail.",
                "I hope that helps!", "Feel free to ask a follow-up."]
RUDE = ["Ugh, that's obvious. Figure it out yourself.", "Why would you even ask that? Look it up.",
        "Not my problem. Stop asking.", "Seriously? Anyone knows that.",
        "Whatever. Just do it somehow.", "Do I look like a manual? Go away."]


def toy_preference_rows(size: int, seed: int) -> list[dict]:
    """``size`` distinct pairs ``{"id", "prompt", "chosen", "rejected"}``: polite vs rude."""
    rng = random.Random(seed)

    def make(i: int) -> dict:
        chore = pick(rng, CHORES)
        who, ask = pick(rng, WHO), pick(rng, ASKS).format(task=chore)
        prompt = f"{who} {ask[0].upper()}{ask[1:]}".strip()
        chosen = (f"{pick(rng, POLITE_OPEN)} To {chore.replace('my ', 'your ')}, start by {pick(rng, FIRST_STEPS)}, "
                  f"then keep going at your own pace. {pick(rng, POLITE_CLOSE)}")
        return {"prompt": prompt, "chosen": chosen, "rejected": pick(rng, RUDE)}

    return _distinct(make, size, key=lambda r: (r["prompt"], r["chosen"], r["rejected"]),
                     prefix="toy-preference")


PROMPT_TEMPLATES = ["My review of the {thing} I tried {time}:", "I visited the {thing} {time} and",
                    "Here is what I think about the {aspect} of the {thing}:",
                    "Honestly, the {thing} {time} was", "Let me tell you about the {thing} {time}.",
                    "So, the {aspect} of the {thing}", "Quick thoughts on the {thing} {time}:",
                    "The {thing} I saw {time}"]
MODIFIERS = ["new", "local", "famous", "cheap", "expensive", "popular", "old", "tiny"]
TIMES = ["yesterday", "last week", "this morning", "on holiday", "last night", "at the weekend",
         "after work", "last month"]


def toy_prompts_rows(size: int, seed: int) -> list[dict]:
    """``size`` distinct review openings ``{"id", "prompt", "reference": None}``."""
    rng = random.Random(seed)

    def make(i: int) -> dict:
        thing = f"{pick(rng, MODIFIERS)} {pick(rng, ITEMS)}"
        prompt = pick(rng, PROMPT_TEMPLATES).format(thing=thing, aspect=pick(rng, ASPECTS),
                                                    time=pick(rng, TIMES))
        return {"prompt": prompt, "reference": None}

    return _distinct(make, size, key=lambda r: r["prompt"], prefix="toy-prompts")


def toy_sentiment_pair_rows(size: int, seed: int) -> list[dict]:
    """``size`` distinct pairs ``{"id", "prompt", "chosen", "rejected"}``: a review opening,
    a positive continuation (chosen) and a negative one (rejected) of the same item."""
    rng = random.Random(seed)

    def review(label: int, item: str) -> str:
        words = POSITIVE if label else NEGATIVE
        return (f" The {item} was {pick(rng, words)}. The {pick(rng, ASPECTS)} felt "
                f"{pick(rng, words)}. {pick(rng, VERDICTS[label])}")

    def make(i: int) -> dict:
        item = pick(rng, ITEMS)
        prompt = pick(rng, PROMPT_TEMPLATES).format(thing=f"{pick(rng, MODIFIERS)} {item}",
                                                    aspect=pick(rng, ASPECTS),
                                                    time=pick(rng, TIMES))
        return {"prompt": prompt, "chosen": review(1, item), "rejected": review(0, item)}

    return _distinct(make, size, key=lambda r: (r["prompt"], r["chosen"], r["rejected"]),
                     prefix="toy-sentiment-pairs")


def _distinct(make, size: int, key, prefix: str) -> list[dict]:
    """Draw rows until ``size`` distinct ones (by ``key``); ids ``<prefix>-<k>``."""
    rows, seen, tries = [], set(), 0
    while len(rows) < size:
        tries += 1
        if tries > 50 * size + 1000:
            raise ValueError(f"{prefix}: cannot draw {size} distinct rows from its word lists")
        row = make(tries)
        k = key(row)
        if k in seen:
            continue
        seen.add(k)
        rows.append({"id": f"{prefix}-{len(rows)}", **row})
    return rows


def _synthetic(name: str, kind: str, rows: list[dict], seed: int, size: int) -> TaskData:
    meta = {"source": "synthetic", "generator_seed": seed, "pool_size": size,
            "prompt_format": "plain"}
    if kind == "classification":
        meta["label_names"] = ["negative", "positive"]
    return TaskData(name, kind, rows, meta)


@register_task("toy-sentiment", kind="classification", source="synthetic",
               description="templated positive/negative reviews (label 1 = positive)",
               license="project-made")
def load_toy_sentiment(*, split: str = "train", n: int | None = None, seed: int = 0,
                       size: int = POOL_SIZE, data_seed: int = 0) -> TaskData:
    """The ``toy-sentiment`` task: a pool of ``size`` reviews from ``data_seed``, split 80/20."""
    data = _synthetic("toy-sentiment", "classification", toy_sentiment_rows(size, data_seed), data_seed, size)
    return split_in_memory(data, split, n, seed)


@register_task("toy-preference", kind="preference", source="synthetic",
               description="requests with a polite helpful answer (chosen) vs a rude one",
               license="project-made")
def load_toy_preference(*, split: str = "train", n: int | None = None, seed: int = 0,
                        size: int = POOL_SIZE, data_seed: int = 0) -> TaskData:
    """The ``toy-preference`` task: ``size`` pairs from ``data_seed``, split 80/20 by prompt."""
    data = _synthetic("toy-preference", "preference", toy_preference_rows(size, data_seed), data_seed, size)
    return split_in_memory(data, split, n, seed)


@register_task("toy-prompts", kind="prompts", source="synthetic",
               description="neutral openings of reviews, for sentiment-steering demos",
               license="project-made")
def load_toy_prompts(*, split: str = "train", n: int | None = None, seed: int = 0,
                     size: int = POOL_SIZE, data_seed: int = 0) -> TaskData:
    """The ``toy-prompts`` task: ``size`` review openings from ``data_seed``, split 80/20."""
    data = _synthetic("toy-prompts", "prompts", toy_prompts_rows(size, data_seed), data_seed, size)
    return split_in_memory(data, split, n, seed)


@register_task("toy-sentiment-pairs", kind="preference", source="synthetic",
               description="review openings with a positive (chosen) vs a negative continuation",
               license="project-made")
def load_toy_sentiment_pairs(*, split: str = "train", n: int | None = None, seed: int = 0,
                             size: int = POOL_SIZE, data_seed: int = 0) -> TaskData:
    """The ``toy-sentiment-pairs`` task: ``size`` pairs from ``data_seed``, split 80/20."""
    data = _synthetic("toy-sentiment-pairs", "preference",
                      toy_sentiment_pair_rows(size, data_seed), data_seed, size)
    return split_in_memory(data, split, n, seed)
