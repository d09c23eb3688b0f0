"""Exact answer checking on the formats real solutions come in: GSM8K's gold ``#### N`` (with
its ``<<calc>>`` annotations), MATH's ``\\boxed{}`` (nested braces, ``\\dfrac``, ``\\text{}``),
and free-text model answers ("The answer is $18.")."""

from __future__ import annotations

import pytest

from w2s.evaluation.checking import (
    check_solution,
    extract_answer,
    is_correct,
    last_boxed,
    normalize,
)

GSM8K_GOLD = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
GSM8K_BIG = "Each costs $1,250 so the total is 4 * 1,250 = <<4*1250=5000>>5,000.\n#### 5,000"
MATH_FRAC = ("The probability is $\\frac{3}{6}$, which simplifies to "
             "$\\boxed{\\dfrac{1}{2}}$.")
MATH_NESTED = "Thus $x = \\boxed{\\frac{\\sqrt{3}}{2}}$."
MATH_TEXT = "The correct option is $\\boxed{\\text{(C)}}$."
MATH_TWO_BOXES = "We first get $\\boxed{3}$, but correcting the sign gives $\\boxed{-3}$."


@pytest.mark.parametrize("text, expected", [
    (GSM8K_GOLD, "72"),
    (GSM8K_BIG, "5,000"),
    (MATH_FRAC, "\\dfrac{1}{2}"),
    (MATH_NESTED, "\\frac{\\sqrt{3}}{2}"),
    (MATH_TEXT, "\\text{(C)}"),
    (MATH_TWO_BOXES, "-3"),                             # the last box
    ("So she makes $18 every day. The answer is 18.", "18"),
    ("The final answer is 42", "42"),
    ("48 + 24 = 72.\nThe answer is: 72", "72"),                 # MetaMath / the authors' MATH
    ("The answer is: \\frac{1}{2}", "\\frac{1}{2}"),
    ("So the answer is 42 dollars.", "42"),
    ("Answer: 7.5 dollars", "7.5"),                               # a lone number among words
    ("She has 3 apples, then 5, then 12 in total", "12"),  # the last number
    ("no number here", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_balances_braces_and_refuses_an_open_one():
    assert last_boxed("\\boxed{\\frac{a}{b^{2}}} and more") == "\\frac{a}{b^{2}}"
    assert last_boxed("\\boxed{unclosed") is None
    assert last_boxed("\\boxed 5$.") == "5"
    assert last_boxed("nothing") is None


@pytest.mark.parametrize("raw, canon", [
    ("5,000", "5000"), ("1,234,567", "1234567"), ("$18", "18"), ("18.", "18"),
    ("0.50", "0.5"), ("\\dfrac{1}{2}", "0.5"), ("\\frac12", "0.5"), ("1/4", "0.25"),
    ("\\frac{1}{3}", "1/3"), ("50\\%", "50"), ("x = 5", "5"), ("-\\frac{3}{4}", "-0.75"),
    ("\\text{(C)}", "(C)"), ("90^\\circ", "90"), ("\\left(1, 2\\right)", "(1,2)"),
    ("2\\sqrt{3}", "2\\sqrt{3}"),
])
def test_normalize(raw, canon):
    assert normalize(raw) == canon


@pytest.mark.parametrize("pred, gold, ok", [
    ("72", "72", True), ("5000", "5,000", True), ("0.5", "\\frac{1}{2}", True),
    ("1/2", "\\dfrac12", True), ("50%", "50", True), ("3.0", "3", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}", True), ("(C)", "\\text{(C)}", True),
    ("71", "72", False), ("0.333", "\\frac{1}{3}", False), (None, "72", False),
    ("\\sqrt{3}", "\\sqrt{2}", False),
])
def test_is_correct(pred, gold, ok):
    assert is_correct(pred, gold) is ok


def test_check_solution_reads_a_model_solution_against_gsm8ks_gold():
    gold = extract_answer(GSM8K_GOLD)
    assert check_solution("48 / 2 = 24 in May, 48 + 24 = 72. The answer is 72.", gold) == {
        "answer": "72", "correct": True}
    assert check_solution("I think it is 70 clips", gold) == {"answer": "70", "correct": False}
    assert check_solution(None, gold) == {"answer": None, "correct": False}
