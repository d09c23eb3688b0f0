"""Reasoning tasks with checkable answers: rows ``{id, prompt, solution, answer}`` (kind
``reasoning``), for weak-to-strong reasoning, where accuracy needs no judge.

=================  ==============================================================  =============
task               source                                                          answer
=================  ==============================================================  =============
``gsm8k``          hub ``openai/gsm8k`` (config ``main``): grade-school word        the number
                   problems; the gold solution ends ``#### N``                      after ``####``
``math``           hub ``EleutherAI/hendrycks_math`` (its 7 subject configs,        the last
                   concatenated): competition problems                              ``\\boxed{}``
``toy-arithmetic`` generated here (offline): multi-step word problems with a        the number
                   worked solution ending ``#### N``
=================  ==============================================================  =============

``solution`` is the gold worked solution (what a ceiling is trained on); ``answer`` its final
answer as :func:`w2s.evaluation.checking.extract_answer` reads it (GSM8K's ``<<48/2=24>>``
calculator annotations are removed from the solution text). The hub loaders are the real ones
(``datasets``); offline, without the hub's copy in the cache, loading them is one line naming the
fix, like every hub task.
"""

from __future__ import annotations

import random
import re

from w2s.data.core import TaskData
from w2s.data.hub import HubSource, HubTask, _register
from w2s.data.registry import register_task, split_in_memory

_CALC = re.compile(r"<<[^<>]*>>")

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None when
    there is none or it is not closed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        rest = text[start + len("\\boxed"):].strip()  # "\boxed 5"
        return rest.split()[0].rstrip("$.") if rest else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def format_gsm8k(raw: dict, rng: random.Random) -> dict | None:
    """A GSM8K row: ``question``, and ``answer`` = the worked solution ending ``#### N``."""
    question, text = raw.get("question"), raw.get("answer")
    if not isinstance(question, str) or not isinstance(text, str) or "####" not in text:
        return None
    worked, _, final = text.rpartition("####")
    answer = final.strip().replace(",", "")
    if not answer:
        return None
    solution = _CALC.sub("", worked).strip()
    return {"prompt": question.strip(), "solution": f"{solution}\n#### {answer}",
            "answer": answer}


def format_math(raw: dict, rng: random.Random) -> dict | None:
    """A MATH row: ``problem`` and ``solution`` (its answer in the last ``\\boxed{}``), with the
    ``level`` and ``type`` kept."""
    problem, solution = raw.get("problem"), raw.get("solution")
    if not isinstance(problem, str) or not isinstance(solution, str):
        return None
    answer = last_boxed(solution)
    if not answer or not answer.strip():
        return None
    return {"prompt": problem.strip(), "solution": solution.strip(), "answer": answer.strip(),
            "level": raw.get("level"), "subject": raw.get("type")}


_register(HubTask("gsm8k", "reasoning", HubSource("openai/gsm8k", name="main"), format_gsm8k,
                  "grade-school math word problems with worked solutions (#### answer)",
                  "MIT"))
_register(HubTask("math", "reasoning",
                  HubSource("EleutherAI/hendrycks_math", name=MATH_SUBJECTS), format_math,
                  "competition mathematics (Hendrycks et al.), all 7 subjects; answer boxed",
                  "MIT"))


# --------------------------------------------------------------------------------------------
# toy-arithmetic: offline word problems with worked solutions

NAMES = ("Ada", "Ben", "Chloe", "Dev", "Ema", "Femi", "Gus", "Hana", "Ivo", "Jun")
ITEMS = ("apples", "marbles", "stamps", "books", "shells", "coins", "cards", "pens")
POOL_SIZE = 1200


def question_prompt(question: str) -> str:
    """The zero-shot prompt of a reasoning problem, ``Question: ...\nAnswer:`` (the authors'
    "vanilla" template of weak-to-strong reasoning): what ``w2s reason`` trains and asks with, and
    what a tiny model's reasoning corpus stage reads, the solution following after one space."""
    return f"Question: {question}\nAnswer:"


def _arithmetic_numbers(rng: random.Random) -> tuple[int, int, int, int]:
    start, packs, per = rng.randint(1, 30), rng.randint(2, 4), rng.randint(2, 6)
    return start, packs, per, rng.randint(1, min(9, start + packs * per))


def toy_arithmetic_rows(size: int, seed: int, exclude: frozenset = frozenset()) -> list[dict]:
    """``size`` problems: a start (1..30), a purchase of ``k`` packs (2..4) of ``m`` (2..6), a
    gift (1..9, never more than there is), asked for the total (0..54). The problems differ in
    their NUMBERS (the solution names no one, so two problems with the same numbers would share
    a solution word for word), and none has numbers in ``exclude``. The worked solution does
    each step and ends ``#### N``. Short on purpose (about 110 bytes): a byte-level tiny model
    reads a one-shot prompt well within its 512 positions. The number sets run out near 3,950:
    a larger ``size`` is refused."""
    rng = random.Random(seed)
    rows, seen, tries = [], set(exclude), 0
    while len(rows) < size:
        tries += 1
        if tries > 200 * size + 10_000:
            raise ValueError(f"toy-arithmetic: cannot draw {size} problems with distinct numbers")
        numbers = _arithmetic_numbers(rng)
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        if numbers in seen:
            continue
        seen.add(numbers)
        start, packs, per, lost = numbers
        bought = packs * per
        total = start + bought - lost
        prompt = (f"{name} has {start} {item}, buys {packs} packs of {per} and gives away {lost}. "
                  f"How many {item} now?")
        solution = (f"{packs} * {per} = {bought}. {start} + {bought} = {start + bought}. "
                    f"{start + bought} - {lost} = {total}.\n#### {total}")
        rows.append({"id": f"arith-{len(rows)}", "prompt": prompt, "solution": solution,
                     "answer": str(total)})
    return rows


def arithmetic_numbers(row: dict) -> tuple[int, ...]:
    """The numbers of a toy-arithmetic problem (start, packs, per, gift), read from its prompt."""
    words = row["prompt"].replace(",", " ").replace(".", " ").split()
    return tuple(int(w) for w in words if w.isdigit())


@register_task("toy-arithmetic", kind="reasoning", source="synthetic",
               description="multi-step arithmetic word problems with worked solutions (offline)",
               license="project-made")
def load_toy_arithmetic(*, split: str = "train", n: int | None = None, seed: int = 0,
                        size: int = POOL_SIZE, data_seed: int = 0) -> TaskData:
    """The ``toy-arithmetic`` task: ``size`` problems from ``data_seed``, split 80/20."""
    data = TaskData("toy-arithmetic", "reasoning", toy_arithmetic_rows(size, data_seed),
                    {"source": "synthetic", "generator_seed": data_seed, "pool_size": size,
                     "prompt_format": "plain"})
    return split_in_memory(data, split, n, seed)


@register_task("toy-arithmetic-corpus", kind="reasoning", source="synthetic",
               description="2400 more toy-arithmetic problems, none with the numbers of one of "
                           "toy-arithmetic's: a "
                           "pretraining corpus for tiny models (tiny:...+toy-arithmetic-corpus)",
               license="project-made")
def load_toy_arithmetic_corpus(*, split: str = "train", n: int | None = None, seed: int = 0,
                               size: int = 2400) -> TaskData:
    """Problems drawn like ``toy-arithmetic``'s from another seed, excluding the numbers of
    every problem of ``toy-arithmetic`` (train and test): a tiny model pretrained on it has
    practised the skill and never read the solution of an experiment's problem."""
    taken = frozenset(arithmetic_numbers(r) for r in toy_arithmetic_rows(POOL_SIZE, 0))
    rows = [{**r, "id": f"arith-corpus-{i}"}
            for i, r in enumerate(toy_arithmetic_rows(size, 1, exclude=taken))]
    data = TaskData("toy-arithmetic-corpus", "reasoning", rows,
                    {"source": "synthetic", "generator_seed": 1, "pool_size": size,
                     "prompt_format": "plain"})
    return split_in_memory(data, split, n, seed)
