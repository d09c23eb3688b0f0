"""MACPO's pure steps, checkable on hand-made agent outputs (no model anywhere, torch-free).

- :func:`positive_sources`: whose positive answers a learner learns from (unfamiliar ones);
- :func:`candidates`: the learner's candidate chosen answers, one per (prompt, source);
- :func:`perplexity` and :func:`perplexity_filter`: which candidates survive;
- :func:`sft_candidates` and :func:`pick_sft_answers`: which weak teachers' answers the strong
  agents' initial SFT learns from;
- :func:`contrastive_pairs`: chosen = a kept unfamiliar positive answer, rejected = the
  learner's own negative agent's answer to the same prompt (a familiar mistake).

An agent is named ``<learner>-<pos|neg>`` (:func:`agent_name`): ``teacher1-pos``, ...,
``student-neg``.
"""

from __future__ import annotations

import math
import random

POS, NEG = "pos", "neg"


def agent_name(learner: str, polarity: str) -> str:
    """``teacher1`` + ``pos`` -> ``teacher1-pos``."""
    return f"{learner}-{polarity}"


def positive_sources(learner: str, teachers: list[str], student: str = "student") -> list[str]:
    """The agents whose POSITIVE answers are unfamiliar to ``learner`` (its chosen candidates).

    The student learns from every weak teacher; a teacher learns from the student and from the
    other teachers (never from itself: its own answers are familiar).

    >>> positive_sources("student", ["teacher1", "teacher2"])
    ['teacher1-pos', 'teacher2-pos']
    >>> positive_sources("teacher1", ["teacher1", "teacher2"])
    ['student-pos', 'teacher2-pos']
    """
    if learner == student:
        return [agent_name(t, POS) for t in teachers]
    if learner not in teachers:
        raise ValueError(f"unknown learner {learner!r}")
    return [agent_name(student, POS)] + [agent_name(t, POS) for t in teachers if t != learner]


def candidates(learner: str, prompts: list[dict], answers: dict[str, dict[str, str]],
               teachers: list[str], student: str = "student") -> list[dict]:
    """The learner's candidate chosen answers: one row per (prompt, source agent) with a
    non-empty answer, in prompt order then source order: ``{id, prompt, source, response}``.

    ``answers[agent][prompt id]`` is that agent's answer to that prompt.
    """
    rows = []
    for p in prompts:
        for source in positive_sources(learner, teachers, student):
            text = answers[source].get(p["id"], "")
            if text.strip():
                rows.append({"id": p["id"], "prompt": p["prompt"], "source": source,
                             "response": text})
    return rows


def perplexity(summed_logprob: float, n_tokens: int) -> float:
    """``exp(-summed log-prob / tokens)`` of a response (inf for an empty one)."""
    if n_tokens <= 0:
        return math.inf
    return math.exp(-summed_logprob / n_tokens)


def perplexity_filter(rows: list[dict], rule: str, k: int = 1,
                      max_perplexity: float | None = None) -> list[dict]:
    """Mark which candidates the filter keeps: a copy of each row with ``kept`` set.

    Each row carries ``perplexity`` (under the learner's positive agent). Rules:

    - ``lowest``: per prompt id, the ``k`` rows with the lowest perplexity;
    - ``lowest-global``: the ``k`` rows with the lowest perplexity over all prompts;
    - ``threshold``: the rows with ``perplexity <= max_perplexity``;
    - ``none``: every row.

    Ties keep the earlier row (rows come in source order: the student, then teacher 1, 2, ...).
    """
    out = [dict(r, kept=False) for r in rows]
    if rule == "none":
        for r in out:
            r["kept"] = True
    elif rule == "threshold":
        if max_perplexity is None:
            raise ValueError("the threshold rule needs max_perplexity")
        for r in out:
            r["kept"] = r["perplexity"] <= max_perplexity
    elif rule == "lowest":
        by_prompt: dict[str, list[int]] = {}
        for i, r in enumerate(out):
            by_prompt.setdefault(r["id"], []).append(i)
        for idx in by_prompt.values():
            for i in sorted(idx, key=lambda i: (out[i]["perplexity"], i))[:k]:
                out[i]["kept"] = True
    elif rule == "lowest-global":
        for i in sorted(range(len(out)), key=lambda i: (out[i]["perplexity"], i))[:k]:
            out[i]["kept"] = True
    else:
        raise ValueError(f"unknown filter rule {rule!r}")
    return out


def contrastive_pairs(learner: str, scored: list[dict], negatives: dict[str, str]) -> list[dict]:
    """The learner's DPO pairs: each KEPT candidate is a chosen answer; the rejected answer is
    the learner's own negative agent's answer to the same prompt (``negatives[prompt id]``).

    A prompt whose negative answer is empty, or equal to the chosen text, gives no pair.
    Rows: ``{id, prompt, chosen, rejected, chosen_from, rejected_from, chosen_perplexity}``.
    """
    pairs = []
    for r in scored:
        rejected = negatives.get(r["id"], "")
        if not r["kept"] or not rejected.strip() or rejected == r["response"]:
            continue
        pairs.append({"id": r["id"], "prompt": r["prompt"], "chosen": r["response"],
                      "rejected": rejected, "chosen_from": r["source"],
                      "rejected_from": agent_name(learner, NEG),
                      "chosen_perplexity": r["perplexity"]})
    return pairs



def sft_candidates(prompts: list[dict], agents: list[str],
                   answers: dict[str, dict[str, str]]) -> list[dict]:
    """The strong agents' candidate SFT rows: one per (prompt, teacher agent) with a non-empty
    answer, in prompt order then teacher order: ``{id, prompt, response, teacher}``."""
    return [{"id": p["id"], "prompt": p["prompt"], "response": answers[agent][p["id"]],
             "teacher": agent}
            for p in prompts for agent in agents if answers[agent].get(p["id"], "").strip()]


def pick_sft_answers(rows: list[dict], rule: str, seed: int = 0, salt: str = "") -> list[dict]:
    """Mark which candidate SFT rows (:func:`sft_candidates`) the strong agent learns from: a
    copy of each row with ``kept`` set.

    - ``all``: every row;
    - ``random``: one row per prompt id, drawn by ``random.Random(f"{salt}:{seed}:{id}")`` (a
      prompt's draw depends on the seed and its id only, not on the other prompts);
    - ``lowest_perplexity``: per prompt id the row with the lowest ``perplexity`` (each row
      carries it), ties to the earlier teacher.
    """
    if rule == "lowest_perplexity":
        return perplexity_filter(rows, "lowest", k=1)
    out = [dict(r, kept=rule == "all") for r in rows]
    if rule == "random":
        by_prompt: dict[str, list[dict]] = {}
        for r in out:
            by_prompt.setdefault(r["id"], []).append(r)
        for pid, mine in by_prompt.items():
            draw = random.Random(f"{salt}:{seed}:{pid}").random()  # random() is stable
            mine[min(int(draw * len(mine)), len(mine) - 1)]["kept"] = True
    elif rule != "all":
        raise ValueError(f"unknown SFT answer rule {rule!r}")
    return out
