"""Exact answer checking for problems with a checkable final answer (GSM8K, MATH, arithmetic).

A judge is not needed where the answer can be checked: this module pulls the final answer out of
a solution and compares it with the gold one.

:func:`extract_answer` reads, in this order of trust:

1. ``\\boxed{...}`` (the LAST one; braces nested to any depth), MATH's convention;
2. ``#### 42``, GSM8K's gold-solution convention;
3. "the answer is ...", "the answer is: ...", "answer: ..." (the last such phrase; a lone number
   among words, "42 dollars", is that number);
4. the last number in the text (GSM8K-style free text), when ``fallback`` allows it.

:func:`normalize` puts an answer in a canonical form: LaTeX wrappers dropped (``\\text{}``,
``\\left``/``\\right``, ``$``, ``\\!``, ``^\\circ``, units in ``\\text``), ``\\dfrac``/``\\tfrac`` ->
``\\frac``, ``\\frac12`` -> ``\\frac{1}{2}``, thousands separators and trailing ``.`` removed, ``0.50``
-> ``0.5``, a percent sign dropped (``50\\%`` is ``50``, as MATH's own equivalence check and
GSM8K's gold answers read it). :func:`is_correct` compares two answers: equal after
normalisation, or both numbers (fractions ``a/b`` and ``\\frac{a}{b}``, decimals) within a
relative 1e-6.
"""

from __future__ import annotations

import re
from fractions import Fraction

from w2s.data.reasoning import last_boxed  # noqa: F401  (a public name here too)

_ANSWER_IS = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is\s*[:=]?|answer\s*[:=])\s*(.+?)"
                        r"(?:\.\s|\.$|\n|$)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_answer(text: str | None, *, fallback: bool = True) -> str | None:
    """The final answer of a solution, or None (see the module docstring for the order)."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    said = _ANSWER_IS.findall(text)
    if said:
        answer = said[-1].strip().rstrip(".").strip()
        # "The answer is 42 dollars": a number with words around it is the number
        numbers = _NUMBER.findall(answer)
        if len(numbers) == 1 and normalize(answer) != normalize(numbers[0]) \
                and not re.search(r"\\|\^|/|\{", answer):
            return numbers[0]
        return answer
    if fallback:
        numbers = _NUMBER.findall(text)
        if numbers:
            return numbers[-1]
    return None


def _strip_latex(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", s)
    s = re.sub(r"\\(?:mathrm|textbf|mathbf)\{([^{}]*)\}", r"\1", s)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "^\\circ", "^{\\circ}",
                  "\\%", "%", "\\$", "$"):
        s = s.replace(token, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)         # \frac12
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)  # \frac{1}2
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)              # \frac1{2}
    return s


def normalize(answer: str | None) -> str | None:
    """A canonical form of an answer (see the module docstring); None stays None."""
    if answer is None:
        return None
    s = _strip_latex(answer)
    s = re.sub(r"^(?:x|y|n|k|a|b)\s*=\s*", "", s)  # "x = 5" -> "5"
    s = s.rstrip(".").strip()
    s = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", s)  # 1,234 -> 1234
    s = re.sub(r"\s+", "", s)
    number = _as_number(s)
    if number is not None:
        return _show(number)
    return s


def _as_number(s: str) -> Fraction | None:
    """``s`` as an exact number: an integer, a decimal, ``a/b``, ``\\frac{a}{b}``."""
    s = s.strip()
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s)
    try:
        if m:
            value = Fraction(m.group(2)) / Fraction(m.group(3))
            value = -value if m.group(1) else value
        elif re.fullmatch(r"-?\d+(?:\.\d+)?/-?\d+(?:\.\d+)?", s):
            a, b = s.split("/")
            value = Fraction(a) / Fraction(b)
        elif re.fullmatch(r"-?(?:\d+(?:\.\d*)?|\.\d+)", s):
            value = Fraction(s)
        else:
            return None
    except (ValueError, ZeroDivisionError):
        return None
    return value


def _show(x: Fraction) -> str:
    if x.denominator == 1:
        return str(x.numerator)
    as_float = float(x)
    short = f"{as_float:.10g}"
    return short if Fraction(short) == x else f"{x.numerator}/{x.denominator}"


def is_correct(predicted: str | None, gold: str | None, *, rel_tol: float = 1e-6) -> bool:
    """Whether a predicted final answer equals the gold one (normalised; numbers within
    ``rel_tol``). A missing answer is never correct."""
    if predicted is None or gold is None:
        return False
    p, g = normalize(predicted), normalize(gold)
    if p == g:
        return True
    a, b = _as_number(p or ""), _as_number(g or "")
    if a is None or b is None:
        return False
    return abs(float(a) - float(b)) <= rel_tol * max(1.0, abs(float(b)))


def check_solution(solution: str | None, gold_answer: str) -> dict:
    """``{"answer", "correct"}`` of one generated solution against the gold answer."""
    answer = extract_answer(solution)
    return {"answer": answer, "correct": is_correct(answer, gold_answer)}
