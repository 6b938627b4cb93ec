"""Grading math answers: plain functions over strings that never raise on garbage.

    >>> extract_answer("2 + 3 = 5\\n#### 5")
    '5'
    >>> extract_answer("so x = 7, \\\\boxed{7}")
    '7'
    >>> extract_answer("no marker here") is None
    True
    >>> is_correct("6 + 3 = 9\\n#### 9", "9")
    True
    >>> is_correct("#### 8", "9")
    False
"""

from __future__ import annotations

import re

_HASH = re.compile(r"####\s*([^\n]*)")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_answer(text: str) -> str | None:
    """The text after the last answer marker (`#### N` or `\\boxed{N}`), stripped; None if absent."""
    found = [(m.start(), m.group(1)) for m in _HASH.finditer(text)] + [(m.start(), m.group(1)) for m in _BOXED.finditer(text)]
    if not found:
        return None
    return max(found)[1].strip()


def normalize_number(s: str) -> str:
    """Canonical text of a number: no commas, `$`, trailing `.`; `-0` is `0`; `7.0` is `7`."""
    s = s.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    try:
        value = float(s)
    except ValueError:
        return s
    if value == int(value):
        return str(int(value))
    return repr(value)


def is_correct(completion: str, answer: str) -> bool:
    got = extract_answer(completion)
    return got is not None and normalize_number(got) == normalize_number(answer)
