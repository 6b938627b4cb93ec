"""Grading math answers: plain functions over strings that never raise on garbage.

The final answer is what follows the last answer marker, `#### N` (GSM8K) or `\\boxed{...}` (MATH).
A lenient fallback ("the answer is N", else the last number) is reported separately, never as correct.

Accepted:

    >>> extract_answer("2 + 3 = 5\\n#### 5")
    '5'
    >>> extract_answer("#### 1,234")
    '1,234'
    >>> extract_answer("so x = 7, \\\\boxed{7}")
    '7'
    >>> extract_answer("\\\\boxed{\\\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> extract_answer("#### 4\\n#### 5")  # the last marker wins
    '5'
    >>> extract_answer("first \\\\boxed{3} then #### 8")
    '8'
    >>> extract_answer("####   -12  ")
    '-12'

Refused:

    >>> extract_answer("no marker here") is None
    True
    >>> extract_answer("#### ") is None
    True
    >>> extract_answer("\\\\boxed{unclosed") is None
    True
    >>> extract_answer("") is None
    True

Numbers compare exactly after normalisation; LaTeX goes through HF math-verify:

    >>> [answers_match(a, "1234") for a in ("1,234", "$1234", "1234.", "1234.0", "1234 ")]
    [True, True, True, True, True]
    >>> answers_match("-0", "0"), answers_match("0.50", ".5"), answers_match("12", "21")
    (True, True, False)
    >>> answers_match("\\\\frac{1}{2}", "0.5"), answers_match("\\\\frac{2}{4}", "\\\\frac{1}{2}")
    (True, True)
    >>> answers_match("\\\\sqrt{2}", "2"), answers_match("", "3"), answers_match("}{", "3")
    (False, False, False)

The strict format (the RL reward's): exactly one marker, the completion ends right after it, and
it ended by itself (EOS or a stop string), not at the length limit:

    >>> strict_answer("6 + 3 = 9\\n#### 9", finished=True)
    '9'
    >>> strict_answer("6 + 3 = 9\\n#### 9", finished=False) is None
    True
    >>> strict_answer("#### 2. #### 1.", finished=True) is None
    True
    >>> strict_answer("#### 9 and then more text", finished=True) is None
    True
    >>> strict_answer("x = 3\\n\\\\boxed{3}\\n", finished=True)
    '3'
    >>> strict_answer("#### nine", finished=True) is None
    True

    >>> grade("6 + 3 = 9\\n#### 9", "9")
    Grade(answer='9', correct=True, lenient=True)
    >>> grade("the answer is 9", "9")
    Grade(answer=None, correct=False, lenient=True)
"""

from __future__ import annotations

import re
import threading
from typing import NamedTuple

_HASH = re.compile(r"####[ \t]*([^\n]*)")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)


def _boxed(text: str) -> list[tuple[int, str]]:
    """(position, content) of every complete \\boxed{...}, braces matched."""
    out = []
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append((m.start(), text[m.end() : i - 1]))
    return out


def last_boxed(text: str) -> str | None:
    """The stripped content of the last complete `\\boxed{}` (MATH's answer convention), or None."""
    found = _boxed(text)
    return found[-1][1].strip() or None if found else None


def _markers(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every answer marker in `text`."""
    found = [(m.start(), m.end(), m.group(1).strip()) for m in _HASH.finditer(text)]
    for start, content in _boxed(text):
        found.append((start, start + len("\\boxed{") + len(content) + 1, content.strip()))
    return sorted(found)


def extract_answer(text: str) -> str | None:
    """The content of the last answer marker, stripped; None if there is none or it is empty."""
    found = _markers(text)
    return found[-1][2] or None if found else None


def extract_lenient(text: str) -> str | None:
    """Fallback for unformatted completions: "the answer is N", else the last number."""
    m = _ANSWER_IS.findall(text)
    if m:
        return m[-1]
    nums = _NUMBER.findall(text)
    return nums[-1] if nums else None


def strict_answer(text: str, finished: bool) -> str | None:
    """The answer if `text` has exactly one well-formed marker and ends right after it, else None."""
    found = _markers(text)
    if not finished or len(found) != 1:
        return None
    start, end, content = found[0]
    if text[end:].strip(" \t\n$."):  # `####` matches to the end of its line; `\boxed{}` may sit in $...$.
        return None
    if text.startswith("####", start) and not _is_number(content):
        return None
    return content or None


def normalize_number(s: str) -> str | None:
    """Canonical text of a plain number (no commas, `$`, trailing `.`; `-0` is `0`), or None."""
    s = s.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    try:
        value = float(s)
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return str(int(value)) if value == int(value) else repr(value)


def _is_number(s: str) -> bool:
    return normalize_number(s) is not None


def answers_match(got: str, gold: str) -> bool:
    """Whether two final answers are equal: exactly as numbers, else by math-verify."""
    a, b = normalize_number(got), normalize_number(gold)
    if a is not None and b is not None:
        return a == b
    if not got.strip() or not gold.strip():
        return False
    return _math_verify(got, gold)


def _math_verify(got: str, gold: str) -> bool:
    """math-verify's symbolic equality; its signal-based timeouts only work on the main thread."""
    try:
        from math_verify import parse, verify

        main = threading.current_thread() is threading.main_thread()
        timeout = 5 if main else None
        parsed_gold = parse(f"${gold}$", parsing_timeout=timeout)
        parsed = parse(f"${got}$", parsing_timeout=timeout)
        return bool(parsed_gold and parsed and verify(parsed_gold, parsed, timeout_seconds=timeout))
    except Exception:  # a grader never crashes on garbage
        return False


class Grade(NamedTuple):
    answer: str | None  # what the marker says (None: no marker)
    correct: bool  # the marked answer equals the gold one
    lenient: bool  # correct by the lenient fallback (reported separately)


def grade(completion: str, gold: str) -> Grade:
    answer = extract_answer(completion)
    correct = answer is not None and answers_match(answer, gold)
    loose = answer if answer is not None else extract_lenient(completion)
    return Grade(answer, correct, correct or (loose is not None and answers_match(loose, gold)))


def is_correct(completion: str, gold: str) -> bool:
    """
    >>> is_correct("6 + 3 = 9\\n#### 9", "9"), is_correct("#### 8", "9")
    (True, False)
    """
    return grade(completion, gold).correct


# ------------------------------------------------------------------------------------- verified chains

# whole numbers only: a sentence's full stop may follow, a decimal point and digit may not
STEP = re.compile(r"(?<![\d.])(\d+) ([-+*/]) (\d+) = (\d+)(?!\.?\d)")
_QUESTION_NUMBER = re.compile(r"(?<![\d.])\d+(?!\.?\d)")
# the multipliers the worlds' questions state in words
_NUMBER_WORDS = {"twice": 2, "double": 2, "doubles": 2, "triple": 3, "triples": 3, "three times": 3, "half": 2}


def apply(a: int, op: str, b: int) -> int | None:
    """The exact integer result of `a op b`, or None if it is not a non-negative integer (the worlds' arithmetic,
    which draws problems with it, and the verified scorer's, which checks written steps with it)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b if a >= b else None
    if op == "*":
        return a * b
    if op == "/":
        return a // b if b and a % b == 0 else None
    raise ValueError(op)


def verified(completion: str, question: str, gold: str) -> bool:
    r"""Whether the answer is right *and* the written work reaches it: every step `a op b = c` is arithmetically
    right, takes its operands from the question's numbers (or its number words: twice, doubles, ...) or from
    earlier steps' results, and the last step's result is the answer. A lucky answer scores 0 here.

    A correct chain:

    >>> q = "Ada has 7 pears. Ada buys 3 boxes with 4 pears in each box. How many pears does Ada have now?"
    >>> verified("3 * 4 = 12\n7 + 12 = 19\n#### 19", q, "19")
    True

    The right answer with a wrong step, a step using a number from nowhere, no work, a chain ending elsewhere:

    >>> verified("3 * 4 = 12\n7 + 12 = 18\n#### 19", q, "19")  # a wrong step
    False
    >>> verified("3 * 4 = 12\n7 + 12 = 19\n19 + 0 = 19\n#### 19", q, "19")  # 0 is in neither question nor chain
    False
    >>> verified("#### 19", q, "19"), verified("7 + 12 = 19\n3 * 4 = 12\n#### 19", q, "19")  # no work; 12 too early
    (False, False)
    >>> verified("Then Ada doubles them: 5 * 2 = 10\n#### 10", "Ada has 5 pears. Ada doubles the number.", "10")
    True
    """
    if not answers_match(extract_answer(completion) or "", gold):
        return False
    known = {int(n) for n in _QUESTION_NUMBER.findall(question)}
    lowered = question.lower()
    known |= {v for word, v in _NUMBER_WORDS.items() if re.search(rf"\b{word}\b", lowered)}
    last = None
    for a, op, b, c in STEP.findall(completion):
        a, b, c = int(a), int(b), int(c)
        if a not in known or b not in known or apply(a, op, b) != c:
            return False
        known.add(c)
        last = c
    return last is not None and normalize_number(str(last)) == normalize_number(gold)
