"""Arena-Hard-Auto: a model's win rate against a baseline, as Arena-Hard-Auto's own code scores it.

Arena-Hard-Auto (Li et al. 2024, github.com/lmarena/arena-hard-auto) asks a judge model to compare
the model's answer with a baseline's on each hard prompt, TWICE: game 1 shows the baseline as
assistant A and the model as B, game 2 swaps them. The judge writes an evaluation ending in a
label ``[[A>>B]]``, ``[[A>B]]``, ``[[A=B]]``, ``[[B>A]]`` or ``[[B>>A]]``; a strong verdict
(``>>``) counts as 3 battles. The battles feed a Bradley-Terry model whose ratings give the
model's predicted win rate against the baseline (in percent), with a bootstrap interval; with
style control the BT regression also gets the answers' length and markdown differences as
features, whose coefficients are dropped before the win rate is read off.

Two settings, each its code path exactly (the scoring is in :mod:`.arenahard_score`):

``v0.1`` (Arena-Hard v0.1, the leaderboard until April 2025; repository commit 3071ef9:
``show_result.py``, ``utils_math.py``, ``gen_judgment.py``, ``config/judge_config.yaml``)
    judge GPT-4-Turbo (gpt-4-1106-preview), baseline gpt-4-0314, temperature 0, max 4096 tokens;
    one regex ``\\[\\[([AB<>=]+)\\]\\]``; a reply with no label is asked again ONCE ("continue
    your judgment ..."), one with two different labels is no verdict; an unparsed game is left
    out alone. Score: the BT MLE (unpenalised logistic regression, ratings 400 per log10-odds,
    baseline anchored at 1000), the win rate predicted from it; interval: 2.5 / 97.5
    percentiles of 100 bootstrap ratings (numpy seeded 42, as ``utils_math`` seeds it).
    Style control: token-length, header, list and bold counts, (baseline - model) / (sum + 1),
    standardised; an L2-penalised fit (scikit-learn's default C = 1).

``v2`` (Arena-Hard v2.0, current; commit 196f6b8: ``show_result.py``, ``utils/math_utils.py``,
``utils/judge_utils.py``, ``gen_judgment.py``, ``config/arena-hard-v2.0.yaml``)
    judge GPT-4.1 (max 16000 tokens), baseline o3-mini-2025-01-31 (creative writing:
    gemini-2.0-flash-001, with its own system prompt); the reply upper-cased, the regexes
    ``\\[\\[([AB<>=]+)\\]\\]`` then ``\\[([AB<>=]+)\\]``, the LAST match of the first that
    matches; a question with an unparsed game is left out whole; also ``A<<B``, ``B=A`` etc.
    Score: the mean of 100 bootstrap means of the model's battle scores (1 win, 0.5 tie, 0
    loss); interval 5 / 95 percentiles (a 90% interval). Style control (the official
    configuration, ``--control-features markdown length``): length (model - baseline) / sum,
    markdown DENSITY (count / (tokens + 1)) differences / (sum + 1), standardised (sample std),
    an unpenalised BT fit per bootstrap round; score the median round, interval 5 / 95.

Only generative judges (``api:``, ``llm:``, built by
:func:`w2s.evaluation.judges.generate.build_generative_judge`) can be used: the benchmark
parses the judge's text. Each game is one conversation sent with the judge's
:meth:`~w2s.evaluation.judges.JudgmentWriter.reply` (temperature 0 / greedy, the setting's
token budget), cached under the judge's identity and a template name carrying the hash of
Arena-Hard's prompts, so a rerun asks nothing.

Their leaderboards fit every model's battles together. Without style control that changes
nothing for one model (every battle involves the baseline, so each model's fit is its own); with
style control the covariates are standardised over all the battles in the fit and share their
coefficients, so a one-model style-controlled score (what this computes) matches the
leaderboard's only for the same set of models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from w2s.errors import W2SError

SETTINGS = ("v0.1", "v2")

OG_ARENA_HARD_PROMPT = "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user prompt displayed below. You will be given assistant A's answer and assistant B's answer. Your job is to evaluate which assistant's answer is better.\n\nBegin your evaluation by generating your own answer to the prompt. You must provide your answers before judging any answers.\n\nWhen evaluating the assistants' answers, compare both assistants' answers with your answer. You must identify and correct any mistakes or inaccurate information.\n\nThen consider if the assistant's answers are helpful, relevant, and concise. Helpful means the answer correctly responds to the prompt or follows the instructions. Note when user prompt has any ambiguity or more than one interpretation, it is more helpful and appropriate to ask for clarifications or more information from the user than providing an answer based on assumptions. Relevant means all parts of the response closely connect or are appropriate to what is being asked. Concise means the response is clear and not verbose or excessive.\n\nThen consider the creativity and novelty of the assistant's answers when needed. Finally, identify any missing important information in the assistants' answers that would be beneficial to include when responding to the user prompt.\n\nAfter providing your explanation, you must output only one of the following choices as your final verdict with a label:\n\n1. Assistant A is significantly better: [[A>>B]]\n2. Assistant A is slightly better: [[A>B]]\n3. Tie, relatively the same: [[A=B]]\n4. Assistant B is slightly better: [[B>A]]\n5. Assistant B is significantly better: [[B>>A]]\n\nExample output: \"My final verdict is tie: [[A=B]]\"."  # noqa: E501
"""The judge's system prompt: ``config/judge_config.yaml`` (v0.1) and ``OG_ARENA_HARD_PROMPT``
of ``utils/judge_utils.py`` (v2: hard_prompt, coding, math), the same text."""

CREATIVE_WRITING_PROMPT = "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user prompt displayed below. You will be given assistant A's answer and assistant B's answer. Your job is to evaluate which assistant's answer is better.\n\nWhen evaluating the assistants' answers, compare both assistants' answers. You must identify and correct any mistakes or inaccurate information.\n\nThen consider if the assistant's answers are helpful, relevant, and concise. Helpful means the answer correctly responds to the prompt or follows the instructions. Note when user prompt has any ambiguity or more than one interpretation, it is more helpful and appropriate to ask for clarifications or more information from the user than providing an answer based on assumptions. Relevant means all parts of the response closely connect or are appropriate to what is being asked. Concise means the response is clear and not verbose or excessive.\n\nThen consider the creativity and novelty of the assistant's answers when needed. Finally, identify any missing important information in the assistants' answers that would be beneficial to include when responding to the user prompt.\n\nAfter providing your explanation, you must output only one of the following choices as your final verdict with a label:\n\n1. Assistant A is significantly better: [[A>>B]]\n2. Assistant A is slightly better: [[A>B]]\n3. Tie, relatively the same: [[A=B]]\n4. Assistant B is slightly better: [[B>A]]\n5. Assistant B is significantly better: [[B>>A]]\n\nExample output: \"My final verdict is tie: [[A=B]]\"."  # noqa: E501
"""v2's system prompt for the ``creative_writing`` category (``utils/judge_utils.py``)."""

PROMPT_TEMPLATE = ("<|User Prompt|>\n{QUESTION}\n\n<|The Start of Assistant A's Answer|>\n"
                   "{ANSWER_A}\n<|The End of Assistant A's Answer|>\n\n<|The Start of Assistant "
                   "B's Answer|>\n{ANSWER_B}\n<|The End of Assistant B's Answer|>")
"""The user turn: ``prompt_template`` of both configs (v0.1 names the fields question_1,
answer_1, answer_2)."""

FOLLOW_UP = "continue your judgment and finish by outputting a final verdict label"
"""v0.1's second request when the first reply has no label (``gen_judgment.py``, 2 attempts)."""

PATTERNS = {"v0.1": (r"\[\[([AB<>=]+)\]\]",),
            "v2": (r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]")}
MAX_TOKENS = {"v0.1": 4096, "v2": 16000}
JUDGE_MODEL = {"v0.1": "gpt-4-1106-preview", "v2": "gpt-4.1"}
BASELINE_MODEL = {"v0.1": "gpt-4-0314", "v2": "o3-mini-2025-01-31"}
ENCODING = {"v0.1": "cl100k_base", "v2": "o200k_base"}
"""The tiktoken encodings of ``add_markdown_info.py``'s token lengths (gpt-3.5-turbo, gpt-4o)."""


def system_prompt(setting: str, category: str | None = None) -> str:
    """The judge's system prompt for a question of ``category``."""
    check_setting(setting)
    if setting == "v2" and category == "creative_writing":
        return CREATIVE_WRITING_PROMPT
    return OG_ARENA_HARD_PROMPT


def judge_prompt(question: str, answer_a: str, answer_b: str) -> str:
    """The user turn with ``answer_a`` as assistant A and ``answer_b`` as B."""
    return PROMPT_TEMPLATE.format(QUESTION=question, ANSWER_A=answer_a, ANSWER_B=answer_b)


def check_setting(setting: str) -> str:
    if setting not in SETTINGS:
        raise W2SError(f"Arena-Hard setting '{setting}' is not one of {', '.join(SETTINGS)}")
    return setting


def parse_verdict(text: str | None, setting: str = "v2") -> tuple[str | None, bool]:
    """A judgment -> ``(label, ask_again)``: the verdict label (``"A>B"``, ...) or None.

    v0.1 (``get_score`` of its ``gen_judgment.py``): all matches of ``[[...]]`` in the text as
    written; none -> ``(None, True)`` (v0.1 asks once more); one distinct label -> it; two
    different ones -> ``(None, False)``. v2: the text upper-cased, each pattern in turn; the
    last match of the first that matches; ``ask_again`` is always False.

    >>> parse_verdict("My final verdict is [[A>B]]", "v0.1"), parse_verdict("[b>>a]", "v2")
    (('A>B', False), ('B>>A', False))
    """
    check_setting(setting)
    text = text or ""
    if setting == "v0.1":
        matches = [m for m in re.findall(PATTERNS["v0.1"][0], text) if m != ""]
        if not matches:
            return None, True
        return (matches[0].strip("\n"), False) if len(set(matches)) == 1 else (None, False)
    for pattern in PATTERNS["v2"]:
        matches = [m for m in re.findall(pattern, text.upper()) if m != ""]
        if matches:
            return matches[-1].strip("\n"), False
    return None, False


# --------------------------------------------------------------------------------------------
# answer and question files


def _read_jsonl(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise W2SError(f"{what} {path}: no such file")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise W2SError(f"{what} {path}, line {n}: not JSON; Arena-Hard files are JSON "
                           "lines") from None
        if not isinstance(row, dict):
            raise W2SError(f"{what} {path}, line {n}: not a JSON object")
        rows.append(row)
    if not rows:
        raise W2SError(f"{what} {path}: empty")
    return rows


def _qid(row: dict, where: str) -> str:
    for key in ("uid", "question_id"):
        if row.get(key) is not None:
            return str(row[key])
    raise W2SError(f"{where}: a row without uid or question_id")


def read_questions(path: str | Path) -> dict[str, dict]:
    """``question.jsonl`` -> ``{id: {"prompt", "category"}}``: v2 rows ``{uid, category,
    prompt}``, v0.1 rows ``{question_id, category, turns: [{content}]}`` (or ``prompt``)."""
    path = Path(path)
    out: dict[str, dict] = {}
    for row in _read_jsonl(path, "questions"):
        qid = _qid(row, f"questions {path}")
        prompt = row.get("prompt")
        if prompt is None:
            try:
                prompt = row["turns"][0]["content"]
            except (KeyError, IndexError, TypeError):
                raise W2SError(f"questions {path}: question {qid} has neither prompt nor "
                               "turns[0].content") from None
        out[qid] = {"prompt": str(prompt), "category": row.get("category")}
    return out


def read_answers(path: str | Path) -> tuple[str, dict[str, dict]]:
    """A model's answer file -> ``(model name, {id: {"answer", "prompt", "metadata"}})``.

    v2 rows ``{uid, model, messages: [{role: user, content}, {role: assistant, content:
    {answer}}], metadata}``; v0.1 rows ``{question_id, model_id, choices: [{turns: [{content,
    token_len}]}], conv_metadata}``. ``metadata``: the style counts the file carries (what
    ``add_markdown_info.py`` wrote), else None; ``prompt``: the user turn where the file has it.
    """
    path = Path(path)
    where = f"answers {path}"
    names, out = set(), {}
    for row in _read_jsonl(path, "answers"):
        qid = _qid(row, where)
        names.add(row.get("model") or row.get("model_id"))
        prompt, meta = None, row.get("metadata") or row.get("conv_metadata")
        try:
            if "messages" in row:
                last = row["messages"][-1]["content"]
                answer = last["answer"] if isinstance(last, dict) else last
                users = [m["content"] for m in row["messages"] if m.get("role") == "user"]
                prompt = users[0] if users and isinstance(users[0], str) else None
            else:
                turn = row["choices"][0]["turns"][0]
                answer = turn["content"]
                if meta is None and "token_len" in turn:
                    meta = {"token_len": turn["token_len"]}
        except (KeyError, IndexError, TypeError):
            raise W2SError(f"{where}: answer {qid} has neither messages[-1].content.answer nor "
                           "choices[0].turns[0].content (Arena-Hard's answer formats)") from None
        out[qid] = {"answer": str(answer), "prompt": prompt,
                    "metadata": meta if isinstance(meta, dict) else None}
    names.discard(None)
    return (names.pop() if len(names) == 1 else path.stem), out


# --------------------------------------------------------------------------------------------
# style metadata (utils/add_markdown_info.py)

_CODE_BLOCK = re.compile("```([^`]*)```")


def markdown_counts(answer: str) -> dict[str, dict[str, int]]:
    """``add_markdown_info.py``'s counts: headers (h1-h6), lists (ordered, unordered), bold
    (``**``, ``__``), on the answer with what is between ``` fences removed (their code removes
    the fenced text and leaves the fences)."""
    for block in _CODE_BLOCK.findall(answer):
        answer = answer.replace(block, "")
    m = re.MULTILINE
    return {"header_count": {f"h{k}": len(re.findall(rf"^#{{{k}}}\s", answer, m))
                             for k in range(1, 7)},
            "list_count": {"ordered": len(re.findall(r"^\s*\d+\.\s", answer, m)),
                           "unordered": len(re.findall(r"^\s*[-*+]\s", answer, m))},
            "bold_count": {"**": len(re.findall(r"\*\*[^*\n]+\*\*", answer)),
                           "__": len(re.findall(r"__[^_\n]+__", answer))}}


def token_counter(setting: str):
    """``len(encoding.encode(text, disallowed_special=()))`` with the setting's tiktoken
    encoding, or None when tiktoken or its encoding file is not available (offline)."""
    try:
        import tiktoken

        encoding = tiktoken.get_encoding(ENCODING[setting])
    except Exception:
        return None
    return lambda text: len(encoding.encode(text, disallowed_special=()))


STYLE_KEYS = ("token_len", "header_count", "list_count", "bold_count")


def style_metadata(answer: str, stored: dict | None, count_tokens) -> dict[str, int] | None:
    """The four style numbers of an answer: what the answer file stores (as Arena-Hard reads
    them), the rest computed; None when the token length is neither stored nor countable."""
    meta = dict(stored or {})
    if any(k not in meta for k in STYLE_KEYS[1:]):
        meta = {**markdown_counts(answer), **meta}
    if "token_len" not in meta:
        if count_tokens is None:
            return None
        meta["token_len"] = count_tokens(answer)
    return {k: int(v if isinstance(v, (int, float)) else sum(v.values()))
            for k, v in ((k, meta[k]) for k in STYLE_KEYS)}


# --------------------------------------------------------------------------------------------
# the run


def _inputs(answers: Path, baseline: Path, questions: Path | None, setting: str,
            category: str | None) -> dict[str, Any]:
    """Read and pair the files: the questions both answered (in the questions' order)."""
    model, ans = read_answers(answers)
    base_name, base = read_answers(baseline)
    if questions is not None:
        qs = read_questions(questions)
    else:
        qs = {}
        for qid, row in ans.items():
            prompt = row["prompt"] or (base.get(qid) or {}).get("prompt")
            if prompt is None:
                raise W2SError(f"answers {answers}: answer {qid} does not carry its question "
                               "(v0.1 answer files do not); pass --questions question.jsonl")
            qs[qid] = {"prompt": prompt, "category": None}
    if category is not None:
        qs = {k: q for k, q in qs.items() if q["category"] == category}
        if not qs:
            raise W2SError(f"no question of category '{category}' in {questions or answers}")
    cats = sorted({str(q["category"]) for q in qs.values() if q["category"] is not None})
    if setting == "v2" and len(cats) > 1:
        raise W2SError(f"the questions are of {len(cats)} categories ({', '.join(cats)}); "
                       "Arena-Hard v2 scores one at a time, each against its own baseline "
                       "(hard_prompt: o3-mini-2025-01-31, creative_writing: "
                       "gemini-2.0-flash-001): pass --category")
    ids = [k for k in qs if k in ans and k in base]
    if not ids:
        raise W2SError(f"no question has an answer in both {answers} and {baseline} (rows pair "
                       "by uid / question_id)")
    missing = {"answers": sum(k not in ans for k in qs), "baseline": sum(k not in base for k in qs)}
    return {"model": model, "baseline_model": base_name, "answers": ans, "baseline": base,
            "questions": qs, "ids": ids, "missing": missing, "categories": cats}


def _judge_question(ask, setting: str, question: dict, model_ans: str,
                    base_ans: str) -> list[dict[str, Any]]:
    """The two games of one question: game 1 baseline as A, game 2 the model as A. ``ask``:
    a conversation -> (reply, cached)."""
    system = system_prompt(setting, question["category"])
    games = []
    for game, (a, b) in enumerate(((base_ans, model_ans), (model_ans, base_ans)), 1):
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": judge_prompt(question["prompt"], a, b)}]
        reply, cached = ask(messages)
        # v0.1 accumulates its attempts as "\n" + reply (+ "\n" + the second)
        text, replies = ("\n" + reply if setting == "v0.1" else reply), 1
        label, again = parse_verdict(text, setting)
        if again:  # v0.1: one more attempt in the same conversation
            messages += [{"role": "assistant", "content": reply},
                         {"role": "user", "content": FOLLOW_UP}]
            more, cached2 = ask(messages)
            text, replies, cached = text + "\n" + more, 2, cached and cached2
            label, _ = parse_verdict(text, setting)
        games.append({"game": game, "judgment": text, "verdict": label, "replies": replies,
                      "cached": cached})
    return games


def eval_arenahard(answers: str | Path, baseline: str | Path, judge: str, *,
                   questions: str | Path | None = None, setting: str = "v2",
                   category: str | None = None, n_boot: int = 100, seed: int = 42,
                   run_dir: str | Path | None = None, cache: Any = True, workers: int = 1,
                   max_tokens: int | None = None, weight: int = 3,
                   judges: Sequence[str] = (), repeats: int = 1, **judge_options: Any
                   ) -> tuple[dict[str, Any], Path]:
    """What ``w2s eval arenahard`` does: each question judged twice (positions swapped) by a
    generative judge with Arena-Hard's prompt, the verdicts parsed with its regex, scored as the
    ``setting``'s code scores them (plain and style-controlled). Writes an ``arenahard`` run
    directory (config, env with the judge identity, prompt hash and file hashes,
    ``judgments.jsonl``, ``metrics.json``). Returns ``(metrics, run path)``. ``judges`` and
    ``repeats``: see :func:`w2s.evaluation.robust.run_judges` (the score is the figure compared;
    the outcomes are the verdicts per question and game).

    Every input problem is a W2SError raised before a run directory is kept.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from w2s.evaluation.benchmarks.arenahard_score import (
        arena_score,
        battles_from_games,
        style_features,
    )
    from w2s.evaluation.judges.generate import build_generative_judge
    from w2s.evaluation.robust import run_judges
    from w2s.runs import Run, content_hash, file_hash

    check_setting(setting)
    if n_boot < 1:
        raise W2SError(f"--n-boot must be at least 1, got {n_boot}")
    answers, baseline = Path(answers), Path(baseline)
    questions = Path(questions) if questions is not None else None
    _check_judge(judge)
    data = _inputs(answers, baseline, questions, setting, category)
    count = token_counter(setting)
    metas = {side: {k: style_metadata(data[side][k]["answer"], data[side][k]["metadata"], count)
                    for k in data["ids"]} for side in ("answers", "baseline")}
    specs = list(dict.fromkeys([judge, *judges]))
    for spec in specs[1:]:
        _check_judge(spec)
    built = build_generative_judge(judge, what="Arena-Hard", cache=cache, **judge_options)
    budget = int(max_tokens or MAX_TOKENS[setting])
    prompts = {"system": OG_ARENA_HARD_PROMPT, "creative_writing": CREATIVE_WRITING_PROMPT,
               "template": PROMPT_TEMPLATE, "follow_up": FOLLOW_UP, "patterns": PATTERNS[setting]}
    template = f"arena-hard-{setting}@{content_hash(prompts, 8)}"

    def identity(j) -> dict[str, Any]:  # who judged (served_model is known once it has answered)
        return {**j.writer_identity(), "template": template, "max_tokens": budget}

    config = {"answers": str(answers), "baseline": str(baseline), "judge": judge,
              "judges": specs[1:], "judge_repeats": repeats,
              "questions": str(questions) if questions else None, "setting": setting,
              "category": category, "n_boot": n_boot, "seed": seed, "weight": weight,
              "max_tokens": budget, "workers": workers,
              "judge_options": {k: v for k, v in judge_options.items() if v is not None},
              "cache": str(cache) if not isinstance(cache, bool) else cache}
    hashes = {"answers": file_hash(answers), "baseline": file_hash(baseline)}
    if questions:
        hashes["questions"] = file_hash(questions)
    env = {"judge": identity(built), "template_hash": content_hash(prompts, 16),
           "data_hashes": hashes}
    with Run.start("arenahard", config, run_dir=run_dir, headline=("score",),
                   env_extra=env) as run:
        def once(j, name: str) -> tuple[dict, dict]:
            metrics, rows = _score_with(j, name)
            return metrics, {(r["question_id"], r["model_a"]): r["verdict"] for r in rows}

        def _score_with(j, name: str) -> tuple[dict, list[dict]]:
            def ask(messages: list[dict[str, str]]) -> tuple[str, bool]:
                return j.reply(messages, template=template, max_tokens=budget)

            def one(qid: str) -> list[dict]:
                return _judge_question(ask, setting, data["questions"][qid],
                                       data["answers"][qid]["answer"],
                                       data["baseline"][qid]["answer"])

            if workers > 1 and len(data["ids"]) > 1:
                with ThreadPoolExecutor(workers) as pool:
                    judged = list(pool.map(one, data["ids"]))
            else:
                judged = [one(qid) for qid in data["ids"]]
            rows = []
            for qid, games in zip(data["ids"], judged, strict=True):
                names = ((data["baseline_model"], data["model"]), (data["model"],
                                                                   data["baseline_model"]))
                for g, (a, b) in zip(games, names, strict=True):
                    rows.append({"question_id": qid, "category": data["questions"][qid]["category"],
                                 "model_a": a, "model_b": b, **g})
            run.write_rows(name, rows)
            games = [(qid, g[0]["verdict"], g[1]["verdict"])
                     for qid, g in zip(data["ids"], judged, strict=True)]
            battles = battles_from_games(games, setting, weight)
            style, reason, no_score = None, None, None
            qids = battles["question_ids"]
            if not len(battles["scores"]):  # a judge that names no verdict: counted, not fatal
                no_score = (f"no battles to score: {battles['n_unparsed']} of "
                            f"{battles['n_games']} games had no verdict label the {setting} "
                            "regex reads (judgments.jsonl has the replies)")
                plain = {"score": None, "ci_low": None, "ci_high": None, "ci_level": None,
                         "method": None}
                reason = no_score
            else:
                plain = arena_score(battles["scores"], setting, n_boot=n_boot, seed=seed)
            if no_score:
                pass
            elif any(metas[s][k] is None for s in metas for k in qids):
                reason = (f"token lengths unknown: the answer files carry no token_len and the "
                          f"tiktoken encoding {ENCODING[setting]} could not be loaded (offline? set "
                          "TIKTOKEN_CACHE_DIR to a folder holding it)")
            else:
                key = list(STYLE_KEYS)
                feats = style_features(np.array([[metas["answers"][k][c] for c in key] for k in qids]),
                                       np.array([[metas["baseline"][k][c] for c in key] for k in qids]),
                                       setting)
                style = arena_score(battles["scores"], setting, features=feats, n_boot=n_boot,
                                    seed=seed)
            n_cached = sum(r["cached"] for r in rows)
            run.log({"stage": "arenahard", "judge": j.spec, "setting": setting, "file": name,
                     "score": plain["score"], "requests": j.requests})
            metrics = {"setting": setting, **{k: plain[k] for k in ("score", "ci_low", "ci_high",
                                                                     "ci_level")},
                       "score_method": plain["method"], "score_reason": no_score,
                       "style_controlled_score": style and style["score"],
                       "style_ci_low": style and style["ci_low"],
                       "style_ci_high": style and style["ci_high"],
                       "style_coefficients": style and style["style_coefficients"],
                       "style_method": style and style["method"],
                       "style_controlled_score_reason": reason,
                       "n_questions": len(data["ids"]), "n_games": battles["n_games"],
                       "n_unparsed": battles["n_unparsed"],
                       "n_questions_dropped": battles["n_questions_dropped"],
                       "n_battles": len(battles["scores"]), "missing_answers": data["missing"],
                       "category": category if category is not None else
                       (data["categories"][0] if len(data["categories"]) == 1 else None),
                       "model": data["model"], "baseline_model": data["baseline_model"],
                       "judge": identity(j), "judge_requests": j.requests,
                       "cached": n_cached, "n_boot": n_boot, "seed": seed, "weight": weight}
            return metrics, rows

        def build(spec: str, repeat: int):
            if spec == judge and repeat == 0:
                return built
            return build_generative_judge(spec, what="Arena-Hard", cache=cache, repeat=repeat,
                                          **judge_options)

        metrics = run_judges(specs, repeats, build, once, figure="score")
        full = run.finish(metrics)
    return full, run.path


def _check_judge(judge: str) -> None:
    """A one-line W2SError, before anything is read, unless ``judge`` is api: or llm:."""
    from w2s.evaluation.judges import parse_judge
    from w2s.evaluation.judges.generate import GENERATIVE_KINDS

    kind, _ = parse_judge(judge)
    if kind not in GENERATIVE_KINDS:
        raise W2SError(f"judge '{judge}' does not write a judgment: Arena-Hard parses a "
                       "generative judge's text for its [[A>B]] verdicts, so use "
                       "api:URL[#MODEL] or llm:MODEL (mapping reward scores to verdicts is not "
                       "Arena-Hard's method)")
