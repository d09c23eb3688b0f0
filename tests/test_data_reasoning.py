"""Reasoning tasks (kind ``reasoning``: prompt, solution, answer): GSM8K and MATH formatters on
rows shaped like the hub's, MATH's subjects loaded and concatenated, the offline toy-arithmetic
task's solutions checkable by the answer checker, and the offline hub error."""

from __future__ import annotations

import random

import pytest

from w2s.data import TASKS, load_task
from w2s.data.core import row_problem
from w2s.data.reasoning import MATH_SUBJECTS, format_gsm8k, format_math
from w2s.errors import W2SError
from w2s.evaluation.checking import extract_answer, is_correct

GSM8K_ROW = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold "
                         "half as many clips in May. How many clips did Natalia sell altogether "
                         "in April and May?",
             "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
                       "<<48+24=72>>72 clips altogether in April and May.\n#### 72"}
MATH_ROW = {"problem": "What is $\\frac{1}{2} + \\frac{1}{3}$?", "level": "Level 1",
            "type": "Prealgebra",
            "solution": "We have $\\frac{1}{2}+\\frac{1}{3} = \\frac{3}{6}+\\frac{2}{6} = "
                        "\\boxed{\\frac{5}{6}}$."}


def test_gsm8k_rows_keep_the_worked_solution_without_calculator_notes():
    row = format_gsm8k(GSM8K_ROW, random.Random(0))
    assert row["answer"] == "72" and row["prompt"].startswith("Natalia sold clips")
    assert "<<" not in row["solution"] and row["solution"].endswith("#### 72")
    assert "48/2 = 24 clips in May" in row["solution"]
    assert row_problem({"id": "x", **row}, "reasoning") is None
    assert format_gsm8k({"question": "q", "answer": "no final answer"}, random.Random(0)) is None
    big = format_gsm8k({"question": "q", "answer": "So 1,000 + 250.\n#### 1,250"},
                       random.Random(0))
    assert big["answer"] == "1250"


def test_math_rows_take_the_last_boxed_answer():
    row = format_math(MATH_ROW, random.Random(0))
    assert row["answer"] == "\\frac{5}{6}" and row["subject"] == "Prealgebra"
    assert is_correct(extract_answer(row["solution"]), row["answer"])
    assert format_math({"problem": "p", "solution": "no box"}, random.Random(0)) is None


def test_math_loads_every_subject_and_concatenates_them(monkeypatch):
    import datasets

    asked = []

    def fake(path, name=None, **kwargs):
        asked.append((path, name, kwargs.get("split")))
        return datasets.Dataset.from_list([{**MATH_ROW, "type": name}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = load_task("math", split="test")
    assert [a[1] for a in asked] == list(MATH_SUBJECTS)
    assert {a[0] for a in asked} == {"EleutherAI/hendrycks_math"}
    assert len(data.rows) == 7 and {r["subject"] for r in data.rows} == set(MATH_SUBJECTS)


def test_toy_arithmetic_solutions_check_out():
    data = load_task("toy-arithmetic", split="train", n=50, seed=3)
    assert data.kind == "reasoning" and len(data.rows) == 50
    for r in data.rows:
        assert is_correct(extract_answer(r["solution"]), r["answer"])
        # the answer is the arithmetic of the prompt's numbers
        start, packs, per, lost = (int(w) for w in r["prompt"].replace(".", " ").split()
                                   if w.isdigit())
        assert int(r["answer"]) == start + packs * per - lost
    train = {r["prompt"] for r in load_task("toy-arithmetic", split="train").rows}
    test = {r["prompt"] for r in load_task("toy-arithmetic", split="test").rows}
    assert train and test and not train & test


def test_gsm8k_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    with pytest.raises(W2SError) as err:
        load_task("gsm8k", split="test", n=4)
    assert "openai/gsm8k" in str(err.value) and "\n" not in str(err.value)
    assert TASKS["gsm8k"].kind == "reasoning"
