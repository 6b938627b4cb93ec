"""Expansion measured directly (issue 22): does post-training solve problems, or find solutions, that its start
never produced? pass@32 alone cannot tell, because it also rises when RL sharpens what the base already solves.

For two evaluations of the same problems (per-problem (n, c), base first):

    transitions(base, trained)        # neither / base only / trained only / both, with intervals
    crossing(curve_a, curve_b)        # the k where the base's pass@k catches up (Yue et al. 2025), or None

and per problem, from its sampled completions:

    distinct_solutions(correct_texts) # distinct step sequences among the right ones (not distinct texts)
    answer_entropy(answers)           # bits of the final-answer distribution
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from excursions.evals.math import STEP
from excursions.evals.passk import bootstrap_ci

KINDS = ("neither", "base_only", "trained_only", "both")


def transitions(base: Sequence[tuple[int, int]], trained: Sequence[tuple[int, int]], iters: int = 1000,
                seed: int = 0) -> dict[str, dict]:
    """Each problem by who solves it within its n samples (c > 0): {kind: {"count", "share", "lo", "hi"}}, the
    share's 95% bootstrap interval over problems. "trained_only" is expansion, "base_only" what was lost; "net"
    is their difference, trained_only - base_only, with its paired interval (the same problems resampled for
    both: the test McNemar's would make).

    >>> t = transitions([(4, 0), (4, 1), (4, 0), (4, 2)], [(4, 0), (4, 0), (4, 3), (4, 4)], iters=10)
    >>> [t[k]["count"] for k in KINDS], t["both"]["share"], t["net"]["share"]
    ([1, 1, 1, 1], 0.25, 0.0)
    """
    if len(base) != len(trained):
        raise ValueError(f"transitions compare the same problems: {len(base)} vs {len(trained)} results")
    kind = [KINDS[2 * (c_t > 0) + (c_b > 0)] for (_, c_b), (_, c_t) in zip(base, trained)]
    per_problem = {k: [float(x == k) for x in kind] for k in KINDS}
    per_problem["net"] = [a - b for a, b in zip(per_problem["trained_only"], per_problem["base_only"])]
    out = {}
    for k, values in per_problem.items():
        lo, hi = bootstrap_ci(values, iters, seed=seed) if values else (0.0, 0.0)
        out[k] = {"count": int(sum(values)), "share": sum(values) / max(1, len(values)), "lo": lo, "hi": hi}
    return out


def crossing(base: dict, trained: dict) -> int | None:
    """The smallest k at which the base's mean pass@k reaches the trained model's, when the trained model leads
    at the smallest k (Yue et al.: RL ahead at k = 1, the base ahead at large k); None if it never does or the
    trained model never led. Arguments: `pass_at_k_table` results ({"pass@k": {"mean", ...}}).

    >>> crossing({"pass@1": {"mean": .1}, "pass@8": {"mean": .4}, "pass@64": {"mean": .8}},
    ...          {"pass@1": {"mean": .3}, "pass@8": {"mean": .5}, "pass@64": {"mean": .7}})
    64
    >>> crossing({"pass@1": {"mean": .1}, "pass@8": {"mean": .4}}, {"pass@1": {"mean": .3}, "pass@8": {"mean": .5}})
    """
    ks = sorted(int(key.split("@")[1]) for key in base if key in trained)
    if not ks or base[f"pass@{ks[0]}"]["mean"] >= trained[f"pass@{ks[0]}"]["mean"]:
        return None
    return next((k for k in ks if base[f"pass@{k}"]["mean"] >= trained[f"pass@{k}"]["mean"]), None)


def step_sequence(text: str) -> tuple[tuple[int, str, int, int], ...]:
    """The written steps of a solution, normalised: operands of + and * in order, the words around them dropped,
    so two phrasings of one computation are one solution.

    >>> step_sequence("First 3 * 4 = 12 pears. Then 7 + 12 = 19.\\n#### 19")
    ((3, '*', 4, 12), (7, '+', 12, 19))
    >>> step_sequence("She buys 4 * 3 = 12, so 12 + 7 = 19 in all\\n#### 19")
    ((3, '*', 4, 12), (7, '+', 12, 19))
    """
    steps = []
    for a, op, b, c in STEP.findall(text):  # the steps the verified scorer reads
        a, b = int(a), int(b)
        if op in "+*":
            a, b = min(a, b), max(a, b)
        steps.append((a, op, b, int(c)))
    return tuple(steps)


def distinct_solutions(correct: Sequence[str]) -> int:
    """Distinct step sequences among a problem's right completions (0 when it has none).

    >>> distinct_solutions(["3 * 4 = 12\\n7 + 12 = 19\\n#### 19", "So 4 * 3 = 12 and 12 + 7 = 19.\\n#### 19",
    ...                     "7 + 3 = 10\\n10 + 9 = 19\\n#### 19"])
    2
    """
    return len({step_sequence(t) for t in correct})


def answer_entropy(answers: Sequence[str | None]) -> float:
    """Entropy in bits of a problem's final answers over its samples (no answer counts as one more outcome):
    0 when every sample gives the same answer, log2(n) when all n differ.

    >>> answer_entropy(["19", "19", "19", "19"]), answer_entropy(["19", "18", None, "7"])
    (0.0, 2.0)
    >>> answer_entropy(["1", "1", "2", "2"])
    1.0
    """
    counts, n = Counter(answers), len(answers)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) + 0.0
