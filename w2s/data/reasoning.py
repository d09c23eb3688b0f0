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
POOL_SIZE = 1000


def toy_arithmetic_rows(size: int, seed: int) -> list[dict]:
    """``size`` distinct problems: a start, a purchase of ``k`` packs of ``m``, a loss, asked
    for the total. The worked solution does each step and ends ``#### N``."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < size:
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        start, packs, per, lost = (rng.randint(2, 30), rng.randint(2, 9), rng.randint(2, 12),
                                   rng.randint(1, 10))
        key = (name, item, start, packs, per, lost)
        if key in seen:
            continue
        seen.add(key)
        bought = packs * per
        total = start + bought - lost
        prompt = (f"{name} has {start} {item}. {name} buys {packs} packs of {per} {item} each, "
                  f"then gives away {lost}. How many {item} does {name} have now?")
        solution = (f"{name} buys {packs} * {per} = {bought} {item}. "
                    f"{name} then has {start} + {bought} = {start + bought} {item}. "
                    f"After giving away {lost}, {name} has {start + bought} - {lost} = {total}.\n"
                    f"#### {total}")
        rows.append({"id": f"arith-{len(rows)}", "prompt": prompt, "solution": solution,
                     "answer": str(total)})
    return rows


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
