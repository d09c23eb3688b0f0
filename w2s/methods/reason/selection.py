"""The data choices of weak-to-strong reasoning, as pure functions (torch-free, unit-tested).

Stage I keeps the problems where two sources agree on the FINAL ANSWER (not on the text):
:func:`consistent` gives their indices, :func:`stage1_rows` the SFT rows of the kept problems
from one source, the other or both ("hybrid"). Stage II votes over the strong model's samples
(:func:`majority_vote`) and builds contrastive pairs (:func:`contrast_pairs`), the authors' way
(the weak solution on one side) or from the strong model's samples alone.

Answers are compared after :func:`w2s.evaluation.checking.normalize` (``"1,000"`` and ``"1000"``
agree, ``"0.5"`` and ``"1/2"`` agree); a solution without an answer agrees with nothing.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

from w2s.evaluation.checking import is_correct, normalize
from w2s.methods.reason.config import PAIR_MODES, STAGE1_DATA

_PARTIAL_QUESTION = re.compile(r"\n\s*Q(?:u(?:e(?:s(?:t(?:i(?:o(?:n)?)?)?)?)?)?)?\s*$")


def same_answer(a: str | None, b: str | None) -> bool:
    """Whether two final answers agree (normalised; numbers within 1e-6); None agrees with
    nothing, not even None."""
    return a is not None and b is not None and is_correct(a, b)


def consistent(answers_a: Sequence[str | None], answers_b: Sequence[str | None]) -> list[int]:
    """Indices of the problems where the two sources' final answers agree.

    >>> consistent(["3", "4", None], ["3.0", "5", None])
    [0]
    """
    if len(answers_a) != len(answers_b):
        raise ValueError(f"{len(answers_a)} answers against {len(answers_b)}; both sources must "
                         "answer the same problems")
    return [i for i, (a, b) in enumerate(zip(answers_a, answers_b, strict=True))
            if same_answer(a, b)]


def stage1_rows(problems: Sequence[dict], keep: Sequence[int], weak: Sequence[str],
                icl: Sequence[str], which: str) -> list[dict]:
    """SFT rows ``{id, prompt, response, source}`` of the kept problems: the ``weak`` source's
    solutions, the ``icl`` source's, or both (``hybrid``: two rows per kept problem, the weak one
    first, as the authors' hybrid files are laid out)."""
    if which not in STAGE1_DATA:
        raise ValueError(f"stage-1 data '{which}' is not one of {STAGE1_DATA}")
    rows = []
    for i in keep:
        for source, texts in (("weak", weak), ("icl", icl)):
            if which in (source, "hybrid"):
                rows.append({"id": problems[i]["id"], "prompt": problems[i]["prompt"],
                             "response": texts[i], "source": source})
    return rows


def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, float, list[int], list[int]]:
    """``(answer, confidence, agreeing, disagreeing)`` over one problem's sampled answers.

    ``answer`` is the most frequent normalised answer (a missing answer counts as its own value;
    ties go to the one seen first), ``confidence`` its share of the samples, ``agreeing`` and
    ``disagreeing`` the sample indices with and without it. The authors vote the same way on the
    extracted strings; ``answer`` None means most samples had none.

    >>> majority_vote(["2", "3", "2.0", None])
    ('2', 0.5, [0, 2], [1, 3])
    """
    if not answers:
        raise ValueError("no samples to vote over")
    keys = [normalize(a) for a in answers]
    counts = Counter(keys)
    top = max(counts.values())
    winner = next(k for k in keys if counts[k] == top)
    agreeing = [i for i, k in enumerate(keys) if k == winner]
    disagreeing = [i for i, k in enumerate(keys) if k != winner]
    return winner, top / len(answers), agreeing, disagreeing


def contrast_pairs(prompt: str, weak_solution: str, weak_answer: str | None,
                   samples: Sequence[str], sample_answers: Sequence[str | None], *,
                   mode: str = "paper", min_confidence: float = 0.6,
                   flip_confidence: float = 0.8, max_pairs: int = 1,
                   rng: random.Random) -> list[dict]:
    """The stage-II preference pairs ``{prompt, chosen, rejected, kind}`` of one problem.

    The strong model's ``samples`` vote (:func:`majority_vote`); a problem whose winning answer
    has a share below ``min_confidence`` (0.6), or is missing, gives no pair. Then:

    ``mode="paper"`` (the authors' ``construct_paired_data``): if the weak solution's answer IS
    the majority answer, it is chosen against a sample that disagrees (``kind`` "weak+"; none
    when every sample agrees: "too easy"); otherwise, if the majority is confident (share >=
    ``flip_confidence``, 0.8), a majority sample is chosen against the weak solution ("weak-").
    ``mode="self"``: a majority sample against a disagreeing one ("self"), the weak solution
    unused. Up to ``max_pairs`` pairs per problem (the authors: 1 on GSM8K, 3 on MATH), each
    with another sample (for "weak-", another TEXT), drawn by ``rng``.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"pair mode '{mode}' is not one of {PAIR_MODES}")
    answer, share, agree, disagree = majority_vote(sample_answers)
    if answer is None or share < min_confidence:
        return []

    def pick(indices: list[int]) -> list[int]:
        return rng.sample(indices, min(max_pairs, len(indices)))

    if mode == "self":
        if not disagree:
            return []
        good = rng.choice(agree)
        return [{"prompt": prompt, "chosen": samples[good], "rejected": samples[j],
                 "kind": "self"} for j in pick(disagree)]
    if same_answer(weak_answer, answer):
        return [{"prompt": prompt, "chosen": weak_solution, "rejected": samples[j],
                 "kind": "weak+"} for j in pick(disagree)]
    if share >= flip_confidence:  # distinct chosen texts, as the authors' MATH script
        distinct = list({samples[j]: j for j in reversed(agree)}.values())[::-1]
        return [{"prompt": prompt, "chosen": samples[j], "rejected": weak_solution,
                 "kind": "weak-"} for j in pick(distinct)]
    return []


def icl_prompt(demos: Sequence[tuple[str, str]], question_prompt: str) -> str:
    """A few-shot prompt: each demonstration's ``Question: ...\\nAnswer: <solution>``, a blank
    line apart, then the question to answer."""
    shots = "".join(f"{q} {s.strip()}\n\n" for q, s in demos)
    return shots + question_prompt


def cut_answer(text: str) -> str:
    """A generated solution up to where the model starts another question (the authors stop
    generation at "Question"); surrounding whitespace stripped."""
    for stop in ("\nQuestion:", "Question:"):
        head, found, _ = text.partition(stop)
        if found:
            text = head
    # a generation cut by max_new_tokens just as the next question began ("...\n\nQues")
    return _PARTIAL_QUESTION.sub("", text).strip()
