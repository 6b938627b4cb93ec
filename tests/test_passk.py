"""pass@k against the exact combinatorial formula, and the bootstrap interval."""

from __future__ import annotations

import math
import random

import pytest

from excursions.evals.passk import bootstrap_ci, mean_pass_at_k, pass_at_k, pass_at_k_table


def exact(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) with Python's exact integers."""
    return 1 - math.comb(n - c, k) / math.comb(n, k)


def test_matches_the_combinatorial_formula_on_random_cases():
    rng = random.Random(0)
    cases = [(n, c, k) for n in (1, 2, 5, 32, 64, 200) for c in {0, 1, n // 2, n - 1, n} if 0 <= c <= n
             for k in {1, max(1, n // 4), n}]
    cases += [(n, rng.randint(0, n), rng.randint(1, n)) for n in (rng.randint(1, 300) for _ in range(500))]
    for n, c, k in cases:
        assert pass_at_k(n, c, k) == pytest.approx(exact(n, c, k), abs=1e-12), (n, c, k)


def test_edge_cases():
    assert pass_at_k(32, 0, 1) == 0.0 and pass_at_k(32, 0, 32) == 0.0  # c = 0
    assert pass_at_k(32, 32, 1) == 1.0  # c = n
    assert pass_at_k(32, 1, 32) == 1.0  # k = n: any correct sample is drawn
    assert pass_at_k(32, 8, 1) == pytest.approx(8 / 32)  # pass@1 is c / n
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_mean_over_problems_and_table():
    counts = [(4, 0), (4, 2), (4, 4)]
    assert mean_pass_at_k(counts, 1) == pytest.approx((0 + 0.5 + 1) / 3)
    # pass@2 for c = 2 of 4: 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert mean_pass_at_k(counts, 2) == pytest.approx((0 + 5 / 6 + 1) / 3)
    table = pass_at_k_table(counts, ks=(1, 2, 8))
    assert set(table) == {"pass@1", "pass@2"}  # k = 8 > n is left out
    assert table["pass@1"]["lo"] <= table["pass@1"]["mean"] <= table["pass@1"]["hi"]


def test_bootstrap_interval_is_reproducible_and_brackets_the_mean():
    values = [float(i % 3 == 0) for i in range(300)]
    lo, hi = bootstrap_ci(values, seed=1)
    assert (lo, hi) == bootstrap_ci(values, seed=1)
    mean = sum(values) / len(values)
    assert lo < mean < hi and hi - lo < 0.15
