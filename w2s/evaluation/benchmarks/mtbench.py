"""MT-Bench single-answer grading, as FastChat's ``llm_judge`` does it.

MT-Bench (Zheng et al. 2023) is 80 two-turn questions in 8 categories. A judge (GPT-4 in the
papers) reads one model's answer and writes a short explanation ending in a rating from 1 to 10
written ``[[rating]]``. Every question is graded twice:

- turn 1: the prompt ``single-v1`` (question 1, answer 1);
- turn 2: ``single-v1-multi-turn`` (the whole two-turn conversation; the judge rates the second
  answer);
- questions of the categories that need a reference (:data:`NEED_REF_CATS`: math, reasoning,
  coding) use ``single-math-v1`` / ``single-math-v1-multi-turn`` instead, which show the
  reference answer (FastChat's ``reference_answer/gpt-4.jsonl``: the reference file is named
  after the judge model, GPT-4's is the one the papers use).

The judge runs at temperature 0 with up to 2048 new tokens. The rating is read with FastChat's
regex ``\\[\\[(\\d+\\.?\\d*)\\]\\]``, else its backup ``\\[(\\d+\\.?\\d*)\\]``; a judgment with
neither scores -1, which is LEFT OUT of every mean (and counted here as ``failed``). The figures
are those of FastChat's ``show_result.py --mode single``: the mean of turn 1's scores, of turn
2's, and the MT-Bench score, the mean of ALL valid scores of both turns together (not the mean of
the two turn means when a turn has more failures). Per-category means (FastChat's radar plot)
pool both turns the same way.

Inputs are FastChat's own files, so answers generated for FastChat's scripts grade here and the
other way round:

- questions: ``question.jsonl``, rows ``{question_id, category, turns: [q1, q2]}`` (FastChat's
  ``data/mt_bench/question.jsonl``), or, online, the hub dataset :data:`HUB_DATASET` (the same
  80 rows);
- answers: rows ``{question_id, answer_id, model_id, choices: [{index, turns: [a1, a2]}],
  tstamp}`` (``gen_model_answer.py``'s format; the first choice is graded; for a question id
  that appears twice the LAST row counts, as FastChat's loader keeps it); write them with
  :func:`answer_record`, sampling each category at :data:`ANSWER_TEMPERATURES`;
- references: the same answer format.

The judge prompts are FastChat's, reproduced exactly as data (:data:`JUDGE_PROMPTS`, from
``fastchat/llm_judge/data/judge_prompts.jsonl``). Importing this module loads no torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2s.errors import W2SError
from w2s.runs import content_hash, read_jsonl

SOURCE = ("lm-sys/FastChat fastchat/llm_judge (common.py, gen_judgment.py, show_result.py, "
          "data/judge_prompts.jsonl) at 0e6d3e4beaab66f4d3f93db72541a4abab8af28d")
HUB_DATASET = "lighteval/mt-bench"
"""FastChat's question.jsonl on the hub (question_id, category, turns, reference)."""
QUESTIONS_FIX = ("pass --questions PATH (FastChat's fastchat/llm_judge/data/mt_bench/"
                 "question.jsonl)")
REFERENCES_FIX = ("pass --references PATH (FastChat's fastchat/llm_judge/data/mt_bench/"
                  "reference_answer/gpt-4.jsonl)")

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
"""Categories graded against a reference answer (FastChat's ``NEED_REF_CATS``)."""

ANSWER_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0,
                       "coding": 0.0, "reasoning": 0.0, "stem": 0.1, "humanities": 0.1,
                       "arena-hard-200": 0.0}
"""The temperature FastChat's ``gen_model_answer.py`` samples each category's answers at
(``temperature_config``; other categories 0.7, and 0 means greedy)."""

JUDGE_MAX_TOKENS = 2048
"""New tokens a judgment may take (FastChat's OpenAI judge call, at temperature 0)."""

RATING_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
"""FastChat's ``one_score_pattern`` and ``one_score_pattern_backup``."""
FAILED = -1
"""The score of a judgment with no readable rating (left out of the means)."""

_RATE = ('After providing your explanation, you must rate the response on a scale of 1 to 10 by '
         'strictly following this format: "[[rating]]", for example: "Rating: [[5]]".')
_GENERAL = ("Please act as an impartial judge and evaluate the quality of the response provided "
            "by an AI assistant to the user question displayed below. Your evaluation should "
            "consider factors such as the helpfulness, relevance, accuracy, depth, creativity, "
            "and level of detail of the response.")
_MATH = ("Your evaluation should consider correctness and helpfulness. You will be given a "
         "reference answer and the assistant's answer.")
_COMPARE = ("Begin your evaluation by comparing the assistant's answer with the reference "
            "answer. Identify and correct any mistakes. Be as objective as possible.")
_CONVERSATION = ("<|The Start of Assistant A's Conversation with User|>\n\n### User:\n"
                 "{question_1}\n\n### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n"
                 "### Assistant A:\n{answer_2}\n\n<|The End of Assistant A's Conversation with "
                 "User|>")

JUDGE_PROMPTS: dict[str, dict[str, str]] = {
    "single-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": (
            f"[Instruction]\n{_GENERAL} Begin your evaluation by providing a short explanation. "
            f"Be as objective as possible. {_RATE}\n\n[Question]\n{{question}}\n\n"
            "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"),
        "output_format": "[[rating]]",
    },
    "single-math-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": (
            "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the "
            "response provided by an AI assistant to the user question displayed below. "
            f"{_MATH} {_COMPARE} {_RATE}\n\n[Question]\n{{question}}\n\n"
            "[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n"
            "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"),
        "output_format": "[[rating]]",
    },
    "single-v1-multi-turn": {
        "system_prompt": (
            f"{_GENERAL} You evaluation should focus on the assistant's answer to the second "
            "user question. Begin your evaluation by providing a short explanation. Be as "
            f"objective as possible. {_RATE}\n\n"),
        "prompt_template": _CONVERSATION,
        "output_format": "[[rating]]",
    },
    "single-math-v1-multi-turn": {
        "system_prompt": (
            "Please act as an impartial judge and evaluate the quality of the response provided "
            f"by an AI assistant to the user question. {_MATH} You evaluation should focus on "
            f"the assistant's answer to the second question. {_COMPARE} {_RATE}\n\n"),
        "prompt_template": (
            "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n"
            "### Reference answer:\n{ref_answer_1}\n\n### User:\n{question_2}\n\n"
            "### Reference answer:\n{ref_answer_2}\n\n<|The End of Reference Answer|>\n\n\n"
            + _CONVERSATION),
        "output_format": "[[rating]]",
    },
}
"""FastChat's four single-answer judge prompts (``data/judge_prompts.jsonl``: system_prompt,
prompt_template, output_format), verbatim, typos included ("You evaluation")."""


def template_hash(name: str) -> str:
    """A short hash of one judge prompt's texts (what a cached judgment and the run record
    name it by, beside its name)."""
    return content_hash(JUDGE_PROMPTS[name], 12)


def template_id(name: str) -> str:
    """``name@hash``, e.g. ``single-v1@...``."""
    return f"{name}@{template_hash(name)}"


def prompt_name(category: str, turn: int) -> str:
    """The judge prompt FastChat grades a category's turn with."""
    math = category in NEED_REF_CATS
    if turn == 1:
        return "single-math-v1" if math else "single-v1"
    if turn == 2:
        return "single-math-v1-multi-turn" if math else "single-v1-multi-turn"
    raise W2SError(f"MT-Bench has turns 1 and 2, not {turn}")


# --------------------------------------------------------------------------------------------
# the rating


def parse_rating(judgment: str | None) -> int | float:
    """The rating in a judgment: FastChat's ``[[x]]`` pattern, else its ``[x]`` backup; -1
    (:data:`FAILED`) when neither is there. The first match counts; ``"7"`` reads as the int 7,
    ``"8.5"`` as 8.5 (as FastChat's ``ast.literal_eval``; a leading zero, ``[[07]]``, on which
    literal_eval raises, reads 7). Ratings are not clipped to 1..10, as FastChat does not.

    >>> parse_rating("Good. Rating: [[7]]"), parse_rating("[[8.5]]"), parse_rating("[6]")
    (7, 8.5, 6)
    >>> parse_rating("no rating here")
    -1
    """
    if not judgment:
        return FAILED
    match = RATING_PATTERN.search(judgment) or RATING_PATTERN_BACKUP.search(judgment)
    if not match:
        return FAILED
    text = match.group(1)
    return float(text) if "." in text else int(text)


# --------------------------------------------------------------------------------------------
# files


def _check_turns(value: Any, where: str) -> list[str]:
    if (not isinstance(value, list) or not value or len(value) > 2
            or not all(isinstance(t, str) for t in value)):
        raise W2SError(f"{where}: 'turns' must be a list of one or two strings")
    return list(value)


def normalise_question(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One question row -> ``{question_id, category, turns}`` (``reference`` kept when there);
    the hub dataset's ``prompt`` column is read as ``turns``."""
    turns = row.get("turns", row.get("prompt"))
    if "question_id" not in row or not isinstance(row.get("category"), str) or turns is None:
        raise W2SError(f"{where}: an MT-Bench question needs question_id, category and turns "
                       f"(FastChat's question.jsonl); got keys {sorted(row)}")
    out = {"question_id": row["question_id"], "category": row["category"],
           "turns": _check_turns(turns, where)}
    if row.get("reference"):
        out["reference"] = list(row["reference"])
    return out


def _rows(path: str | Path, what: str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise W2SError(f"MT-Bench {what} file {path} does not exist")
    rows = read_jsonl(path)
    if not rows:
        raise W2SError(f"MT-Bench {what} file {path} has no rows")
    bad = next((i for i, r in enumerate(rows, 1) if not isinstance(r, dict)), None)
    if bad is not None:
        raise W2SError(f"{path}: row {bad} is not a JSON object")
    return rows


def load_questions(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The questions: a local ``question.jsonl``, else the hub dataset :data:`HUB_DATASET`
    (needs the network once, or its copy in the Hugging Face cache; offline without it this
    is one line naming the fix). Question ids must be unique."""
    if path is not None:
        rows = _rows(path, "questions")
        where = str(path)
    else:
        rows, where = _hub_questions(), HUB_DATASET
    questions = [normalise_question(r, f"{where}: row {i}") for i, r in enumerate(rows, 1)]
    seen: set = set()
    for q in questions:
        if q["question_id"] in seen:
            raise W2SError(f"{where}: question_id {q['question_id']!r} appears twice")
        seen.add(q["question_id"])
    return questions


def _hub_questions() -> list[dict]:
    try:
        import datasets

        return [dict(r) for r in datasets.load_dataset(HUB_DATASET, split="train")]
    except Exception as e:  # noqa: BLE001 - offline, not cached, no such dataset: one line
        cause = " ".join(str(e).split())[:100]
        raise W2SError(f"MT-Bench questions: cannot load the hub dataset {HUB_DATASET} (offline "
                       f"or not in the Hugging Face cache: {type(e).__name__}: {cause}); "
                       f"{QUESTIONS_FIX}") from None


def load_answers(path: str | Path, what: str = "answers") -> dict[Any, dict[str, Any]]:
    """FastChat's answer file (answers, or reference answers) -> ``{question_id: row}``, each
    row with ``turns`` (its first choice's) and ``model_id``. A question id given twice keeps
    the last row, as FastChat's ``load_model_answers`` does."""
    out: dict[Any, dict[str, Any]] = {}
    for i, row in enumerate(_rows(path, what), 1):
        where = f"{path}: row {i}"
        try:
            turns = row["choices"][0]["turns"]
            qid = row["question_id"]
        except (KeyError, IndexError, TypeError):
            raise W2SError(f"{where}: an MT-Bench answer needs question_id and "
                           "choices[0].turns (FastChat's model_answer format)") from None
        out[qid] = {"question_id": qid, "model_id": row.get("model_id"),
                    "turns": _check_turns(turns, where)}
    return out


def answer_record(question_id: Any, model_id: str, turns: Sequence[str], *,
                  answer_id: str | None = None, tstamp: float | None = None) -> dict[str, Any]:
    """One row of FastChat's answer format (what ``gen_model_answer.py`` writes), one choice;
    ``answer_id`` defaults to a hash of the row."""
    import time

    row = {"question_id": question_id, "model_id": model_id,
           "choices": [{"index": 0, "turns": list(turns)}]}
    return {"question_id": question_id,
            "answer_id": answer_id or content_hash(row, 22), "model_id": model_id,
            "choices": row["choices"], "tstamp": time.time() if tstamp is None else tstamp}


def _ids(ids: Iterable[Any], limit: int = 3) -> str:
    ids = list(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(repr(i) for i in ids[:limit]) + more


def check_inputs(questions: list[dict], answers: Mapping[Any, dict],
                 references: Mapping[Any, dict] | None) -> None:
    """What FastChat's ``check_data`` asserts, as one-line errors: every answer is for a
    known question, every question has an answer with as many turns as it asks, and every
    question of :data:`NEED_REF_CATS` has a reference answer with as many turns."""
    by_id = {q["question_id"]: q for q in questions}
    unknown = [qid for qid in answers if qid not in by_id]
    if unknown:
        raise W2SError(f"answers for question ids that are not in the questions: {_ids(unknown)}"
                       "; grade them against the question file they answer (--questions)")
    missing = [q["question_id"] for q in questions if q["question_id"] not in answers]
    if missing:
        raise W2SError(f"no answer to questions {_ids(missing)} ({len(missing)} of "
                       f"{len(questions)}); answer every question, or give a question file "
                       "with only the answered ones")
    short = [q["question_id"] for q in questions
             if len(answers[q["question_id"]]["turns"]) < len(q["turns"])]
    if short:
        raise W2SError(f"answers to questions {_ids(short)} have fewer turns than the questions")
    need = [q for q in questions if q["category"] in NEED_REF_CATS]
    lacking = [q["question_id"] for q in need if q["question_id"] not in (references or {})]
    if lacking:
        cats = sorted({q["category"] for q in need if q["question_id"] in lacking})
        raise W2SError(f"questions {_ids(lacking)} ({', '.join(cats)}) are graded against a "
                       f"reference answer and have none; {REFERENCES_FIX}")
    short = [q["question_id"] for q in need
             if len(references[q["question_id"]]["turns"]) < len(q["turns"])]  # type: ignore
    if short:
        raise W2SError(f"reference answers to questions {_ids(short)} have fewer turns than "
                       "the questions")


# --------------------------------------------------------------------------------------------
# judge prompts


@dataclass(frozen=True)
class JudgePrompt:
    """What the judge is shown for one (question, turn)."""

    question_id: Any
    category: str
    turn: int
    name: str       # the judge prompt: single-v1, single-math-v1-multi-turn, ...
    system: str
    user: str


def judge_prompt(question: Mapping[str, Any], answer_turns: Sequence[str], turn: int,
                 reference_turns: Sequence[str] | None = None) -> JudgePrompt:
    """The judge prompt of one question's turn, built as FastChat's ``run_judge_single``."""
    name = prompt_name(question["category"], turn)
    spec = JUDGE_PROMPTS[name]
    q = question["turns"]
    fields: dict[str, str] = {}
    if "math" in name:
        if reference_turns is None:
            raise W2SError(f"question {question['question_id']!r} ({question['category']}) is "
                           f"graded against a reference answer and has none; {REFERENCES_FIX}")
        fields["ref_answer_1"] = reference_turns[0]
        if turn == 2:
            fields["ref_answer_2"] = reference_turns[1]
    if turn == 1:
        user = spec["prompt_template"].format(question=q[0], answer=answer_turns[0], **fields)
    else:
        user = spec["prompt_template"].format(question_1=q[0], question_2=q[1],
                                              answer_1=answer_turns[0],
                                              answer_2=answer_turns[1], **fields)
    return JudgePrompt(question["question_id"], question["category"], turn, name,
                       spec["system_prompt"], user)


def judge_prompts(questions: list[dict], answers: Mapping[Any, dict],
                  references: Mapping[Any, dict] | None = None) -> list[JudgePrompt]:
    """Every judge prompt of a grading: turn 1 of every question, turn 2 of every two-turn
    question (FastChat skips the others), in question order."""
    check_inputs(questions, answers, references)
    out = []
    for q in questions:
        ref = (references or {}).get(q["question_id"])
        for turn in range(1, len(q["turns"]) + 1):
            out.append(judge_prompt(q, answers[q["question_id"]]["turns"], turn,
                                    ref["turns"] if ref else None))
    return out


# --------------------------------------------------------------------------------------------
# figures


def _mean(scores: list[float]) -> float | None:
    return sum(scores) / len(scores) if scores else None


def _group(rows: list[dict]) -> dict[str, Any]:
    valid = [float(r["score"]) for r in rows if r["score"] != FAILED]
    return {"mean": _mean(valid), "scored": len(valid), "failed": len(rows) - len(valid)}


def mtbench_figures(judgments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The figures of graded judgments (rows with ``turn``, ``category``, ``score``):

    - ``mtbench_score``: the mean of every valid score of both turns (FastChat's "Average");
    - ``turn_1``, ``turn_2``: the mean of each turn's valid scores;
    - ``categories``: ``{category: {mean, scored, failed}}``, both turns pooled;
    - ``turns``: ``{"1": {mean, scored, failed}, "2": ...}``;
    - ``n`` judgments, ``scored`` with a rating, ``failed`` without (score -1, left out).

    A mean with no valid score is None. Hand example: turn 1 scores 8 and -1, turn 2 scores 6
    and 7 give turn_1 8, turn_2 6.5 and mtbench_score 7 (= 21 / 3, not (8 + 6.5) / 2).
    """
    rows = [dict(r) for r in judgments]
    if not rows:
        raise W2SError("no MT-Bench judgments to compute figures from")
    by_turn: dict[int, list[dict]] = {}
    by_cat: dict[str, list[dict]] = {}
    for r in rows:
        by_turn.setdefault(int(r["turn"]), []).append(r)
        by_cat.setdefault(str(r["category"]), []).append(r)
    overall = _group(rows)
    turns = {str(t): _group(rs) for t, rs in sorted(by_turn.items())}
    return {"mtbench_score": overall["mean"],
            "turn_1": turns.get("1", {}).get("mean"), "turn_2": turns.get("2", {}).get("mean"),
            "categories": {c: _group(rs) for c, rs in sorted(by_cat.items())},
            "turns": turns, "n": len(rows), "scored": overall["scored"],
            "failed": overall["failed"]}


# --------------------------------------------------------------------------------------------
# grading


def grade(prompts: list[JudgePrompt], judge, *, max_tokens: int = JUDGE_MAX_TOKENS
          ) -> list[dict[str, Any]]:
    """Have ``judge`` (a :class:`~w2s.evaluation.judges.JudgmentWriter`) write every
    judgment; one row per prompt: question_id, turn, category, judge_prompt, user_prompt,
    judgment, score, cached."""
    rows: list[dict | None] = [None] * len(prompts)
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_name.setdefault(p.name, []).append(i)
    for name, idx in by_name.items():
        written = judge.write_judgments([(prompts[i].system, prompts[i].user) for i in idx],
                                        template=template_id(name), max_tokens=max_tokens)
        for i, w in zip(idx, written, strict=True):
            p = prompts[i]
            rows[i] = {"question_id": p.question_id, "turn": p.turn, "category": p.category,
                       "judge_prompt": name, "user_prompt": p.user, "judgment": w["text"],
                       "score": parse_rating(w["text"]), "cached": bool(w.get("cached"))}
    return rows  # type: ignore[return-value]


def _writer_kind(judge: str) -> None:
    from w2s.evaluation.judges import parse_judge
    from w2s.evaluation.judges.generate import GENERATIVE_KINDS

    kind = parse_judge(judge)[0]
    if kind not in GENERATIVE_KINDS:
        raise W2SError(f"MT-Bench needs a judge that writes judgments, api:URL#MODEL or "
                       f"llm:MODEL, not '{judge}' (a {kind} judge only scores)")


def _writer(judge: Any, **options: Any):
    from w2s.evaluation.judges import build_judge, writes_judgments

    if isinstance(judge, str):
        _writer_kind(judge)
    built = build_judge(judge, **options)
    if not writes_judgments(built):
        raise W2SError(f"MT-Bench needs a judge that writes judgments (api:URL#MODEL or "
                       f"llm:MODEL); {built!r} does not")
    return built


def evaluate_mtbench(questions: list[dict], answers: Mapping[Any, dict], judge, *,
                     references: Mapping[Any, dict] | None = None, run=None,
                     max_tokens: int = JUDGE_MAX_TOKENS, judgments: str = "judgments.jsonl",
                     **judge_options: Any) -> dict[str, Any]:
    """Grade ``answers`` to ``questions`` with ``judge`` (a judge string or a built judge);
    the figures of :func:`mtbench_figures` plus ``model`` (the answers' model_id), ``cached``
    and the judge's identity. With a ``run``, the judgments go to its file ``judgments``."""
    prompts = judge_prompts(questions, answers, references)
    built = _writer(judge, **judge_options)
    rows = grade(prompts, built, max_tokens=max_tokens)
    models = sorted({str(a.get("model_id")) for a in answers.values() if a.get("model_id")})
    for r in rows:
        r["model"] = answers[r["question_id"]].get("model_id")
    metrics = {**mtbench_figures(rows), "model": models[0] if len(models) == 1 else models,
               "cached": sum(r["cached"] for r in rows), "judge": built.writer_identity()}
    if run is not None:
        run.write_rows(judgments, rows)
        run.log({"stage": "mtbench", "judge": built.spec, "n": len(rows), "file": judgments,
                 "mtbench_score": metrics["mtbench_score"], "failed": metrics["failed"]})
    return metrics


def eval_mtbench(answers: str | Path, judge: str, *, questions: str | Path | None = None,
                 references: str | Path | None = None, run_dir: str | Path | None = None,
                 cache: Any = True, max_tokens: int = JUDGE_MAX_TOKENS,
                 judges: Sequence[str] = (), repeats: int = 1,
                 **judge_options: Any) -> tuple[dict[str, Any], Path]:
    """What ``w2s eval mtbench`` does: read the files, check them, grade, and write an
    ``mtbench`` run directory (config.yaml; env.json with the judge, the prompt templates'
    hashes and the files' hashes; judgments.jsonl; metrics.json). Every input problem is a
    W2SError raised before the run directory exists, or with it removed. ``judges`` and
    ``repeats``: see :func:`w2s.evaluation.robust.run_judges` (the MT-Bench score is the figure
    compared; the outcomes are the ratings per question and turn)."""
    from w2s.evaluation.robust import run_judges
    from w2s.runs import Run, file_hash, read_jsonl

    opts = {k: v for k, v in judge_options.items() if v is not None}
    qs = load_questions(questions)
    ans = load_answers(answers)
    refs = load_answers(references, "references") if references is not None else None
    judge_prompts(qs, ans, refs)  # every input check, before anything is built or written
    specs = list(dict.fromkeys([judge, *judges]))
    built = _writer(judge, cache=cache, **opts)
    for spec in specs[1:]:
        _writer_kind(spec)
    config = {"answers": str(answers), "questions": str(questions) if questions else HUB_DATASET,
              "references": str(references) if references else None, "judge": judge,
              "judges": specs[1:], "judge_repeats": repeats,
              "judge_options": opts, "max_tokens": max_tokens,
              "cache": str(cache) if not isinstance(cache, bool) else cache}
    hashes = {"answers": file_hash(answers),
              "questions": file_hash(questions) if questions else content_hash(qs),
              "references": file_hash(references) if references else None}
    env = {"judge": built.writer_identity(), "data_hashes": hashes, "source": SOURCE,
           "prompt_templates": {name: template_hash(name) for name in JUDGE_PROMPTS}}
    with Run.start("mtbench", config, run_dir=run_dir, headline=("mtbench_score",),
                   env_extra=env) as run:
        def once(j, name: str) -> tuple[dict, dict]:
            metrics = evaluate_mtbench(qs, ans, j, references=refs, run=run,
                                       max_tokens=max_tokens, judgments=name)
            rows = read_jsonl(run.path / name)
            return metrics, {(r["question_id"], r["turn"]): None if r["score"] == FAILED
                             else r["score"] for r in rows}

        def build(spec: str, repeat: int):
            if spec == judge and repeat == 0:
                return built
            return _writer(spec, cache=cache, repeat=repeat, **opts)

        metrics = run_judges(specs, repeats, build, once, figure="mtbench_score")
        if metrics["mtbench_score"] is None:
            metrics["mtbench_score_reason"] = (f"no judgment had a readable rating "
                                               f"({metrics['failed']} failed)")
        full = run.finish(metrics)
    return full, run.path


def write_answers(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write answer rows (:func:`answer_record`) as FastChat's answer jsonl."""
    path = Path(path)
    path.write_text("".join(json.dumps(dict(r)) + "\n" for r in rows))
    return path
