"""Verifiable rewards: plain functions over strings (TRL style), built on the evaluator's graders.

The format is strict on purpose: a lenient check ("the first #### N anywhere") gets hacked into
"#### 2. #### 1. ..." guesses that never stop (docs/LOG.md, DESIGN.md's probe).

    >>> math_reward("6 + 3 = 9\\n#### 9", "9", finished=True)
    1.0
    >>> math_reward("6 + 3 = 8\\n#### 8", "9", finished=True)   # formatted, wrong: format_score
    0.1
    >>> math_reward("#### 9 #### 8", "9", finished=True)         # two markers: not the format
    0.0
    >>> math_reward("6 + 3 = 9\\n#### 9", "9", finished=False)  # cut at the length limit
    0.0
    >>> math_rewards(["#### 4", "x"], ["4", "4"], [True, True])
    [1.0, 0.0]

With the question given (`rl.reward = "verified"`) a right answer counts only when its written work reaches it
(`evals.math.verified`); a lucky one earns the format score:

    >>> q = "Ada has 6 pears. Ada buys 3 more pears. How many pears does Ada have now?"
    >>> math_reward("6 + 3 = 9\\n#### 9", "9", True, question=q), math_reward("#### 9", "9", True, question=q)
    (1.0, 0.1)
"""

from __future__ import annotations

from typing import Sequence

from excursions.evals.math import answers_match, strict_answer, verified


def math_reward(completion: str, answer: str, finished: bool, format_score: float = 0.1,
                question: str | None = None) -> float:
    """1 if the strictly formatted answer is right (and, given the question, verified), `format_score` if
    formatted but not that, else 0."""
    got = strict_answer(completion, finished)
    if got is None:
        return 0.0
    right = answers_match(got, answer) and (question is None or verified(completion, question, answer))
    return 1.0 if right else format_score


def math_rewards(completions: Sequence[str], answers: Sequence[str], finished: Sequence[bool],
                 format_score: float = 0.1, questions: Sequence[str] | None = None) -> list[float]:
    """`math_reward` of each completion; `questions` (one per completion) makes the reward the verified one."""
    qs = questions if questions is not None else [None] * len(completions)
    return [math_reward(c, a, f, format_score, q) for c, a, f, q in zip(completions, answers, finished, qs)]
