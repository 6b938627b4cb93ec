"""pass@k: the unbiased estimator of Chen et al. (2021), its mean over problems, bootstrap intervals; and the
paper's easy / hard split of problems by their (n, c).

With n samples of which c are correct, pass@k = 1 - C(n - c, k) / C(n, k), computed as the product
prod_{i = n-c+1}^{n} (1 - k / i), which never forms the huge binomials.

    >>> pass_at_k(n=4, c=1, k=1)
    0.25
    >>> round(pass_at_k(n=4, c=1, k=2), 6)   # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    >>> pass_at_k(n=32, c=0, k=8), pass_at_k(n=32, c=32, k=32), pass_at_k(n=10, c=3, k=8)
    (0.0, 1.0, 1.0)
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems, from per-problem (n, c)."""
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def bootstrap_ci(values: Sequence[float], iters: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling problems.

    >>> bootstrap_ci([1.0] * 10)
    (1.0, 1.0)
    """
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(iters))
    lo = means[int((1 - level) / 2 * iters)]
    hi = means[min(iters - 1, int((1 + level) / 2 * iters))]
    return lo, hi


def pass_at_k_table(counts: Sequence[tuple[int, int]], ks: Sequence[int], iters: int = 1000, seed: int = 0) -> dict:
    """{"pass@k": {"mean", "lo", "hi"}} for each k <= the smallest n."""
    out = {}
    for k in ks:
        if k > min(n for n, _ in counts):
            continue
        per_problem = [pass_at_k(n, c, k) for n, c in counts]
        lo, hi = bootstrap_ci(per_problem, iters, seed=seed)
        out[f"pass@{k}"] = {"mean": sum(per_problem) / len(per_problem), "lo": lo, "hi": hi}
    return out


SPLITS = ("easy", "hard")


def difficulty(c: int, n: int) -> str | None:
    """The paper's split of a problem by its base model's successes in n samples (App. D, n = 64): easy with
    16..64 correct, hard with at most 8, neither in between; the same fractions at other n.

    >>> [difficulty(c, 64) for c in (0, 8, 9, 15, 16, 64)]
    ['hard', 'hard', None, None, 'easy', 'easy']
    """
    return "easy" if 4 * c >= n else "hard" if 8 * c <= n else None


def guess_baseline(train: Sequence[str], test: Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    """pass@k of a blind guesser that samples each answer from the train split's answer distribution.

    A model that has learned which answers are common, and nothing else, scores this: with small-integer
    answers it is far from zero, so base pass@k near it says nothing about skill.

    >>> guess_baseline(["1", "1", "2", "3"], ["1", "4"], [1, 2])   # p = 1/2 and 0: pass@2 = (1 - 1/4) / 2
    {'pass@1': 0.25, 'pass@2': 0.375}
    """
    freq, n = Counter(train), len(train)
    return {f"pass@{k}": sum(1 - (1 - freq[a] / n) ** k for a in test) / len(test) for k in ks}
