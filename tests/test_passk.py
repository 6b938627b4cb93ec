"""pass@k against the exact combinatorial formula, and the bootstrap interval."""

from __future__ import annotations

import math
import random

import pytest

from excursions.evals.expansion import KINDS, answer_entropy, crossing, distinct_solutions, step_sequence, transitions
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


# ------------------------------------------------------------------ expansion measured directly (issue 22)


def test_large_k_curve_and_the_crossing_on_hand_made_counts():
    # n = 256. Base: each of two problems right once -> pass@k = k / 256 on both. Trained: 64 of 256 right on the
    # first, none on the second -> pass@1 = 64 / 256 / 2 = 1/8, and at most 1/2 at any k (the second is lost).
    base, trained = [(256, 1), (256, 1)], [(256, 64), (256, 0)]
    ks = [1, 8, 32, 64, 128, 256]
    b, t = pass_at_k_table(base, ks, iters=50), pass_at_k_table(trained, ks, iters=50)
    assert [b[f"pass@{k}"]["mean"] for k in ks] == pytest.approx([k / 256 for k in ks])
    assert t["pass@1"]["mean"] == pytest.approx(1 / 8) and t["pass@256"]["mean"] == 0.5
    # pass@64 trained = (1 - C(192, 64) / C(256, 64)) / 2, within 1e-9 of 1/2, ahead of the base's 1/4; at k = 128
    # the base's 1/2 reaches it (the trained one is 1/2 minus a C(192, 128) / C(256, 128) sliver)
    assert t["pass@64"]["mean"] == pytest.approx(0.5 * (1 - math.comb(192, 64) / math.comb(256, 64)))
    assert crossing(b, t) == 128 and crossing(t, b) is None  # the trained side never led at k = 1 the other way
    never = pass_at_k_table([(256, 0), (256, 1)], ks, iters=50)  # at most 1/2, against 200 of 256 right on both
    assert crossing(never, pass_at_k_table([(256, 200), (256, 200)], ks, iters=50)) is None


def test_coverage_transitions_on_hand_made_counts():
    base = [(32, 0), (32, 0), (32, 5), (32, 1), (32, 32), (32, 0)]
    trained = [(32, 0), (32, 3), (32, 0), (32, 9), (32, 32), (32, 1)]
    t = transitions(base, trained, iters=200)
    assert {k: t[k]["count"] for k in KINDS} == {"neither": 1, "base_only": 1, "trained_only": 2, "both": 2}
    assert t["trained_only"]["share"] == pytest.approx(2 / 6)
    assert all(t[k]["lo"] <= t[k]["share"] <= t[k]["hi"] for k in KINDS)
    assert t["neither"]["lo"] < t["neither"]["share"] < t["neither"]["hi"]  # 1 of 6: a wide interval
    assert t["net"]["share"] == pytest.approx(1 / 6) and t["net"]["lo"] < 0 < t["net"]["hi"]  # 2 gained, 1 lost
    gained = transitions([(32, 0)] * 40 + [(32, 3)] * 10, [(32, 2)] * 40 + [(32, 3)] * 10, iters=200)
    assert gained["net"]["share"] == 0.8 and gained["net"]["lo"] > 0.6  # 40 of 50 gained, none lost
    with pytest.raises(ValueError, match="the same problems: 6 vs 5"):
        transitions(base, trained[:5])


def test_distinct_solutions_count_step_sequences_not_phrasings():
    same = ["3 * 4 = 12\n7 + 12 = 19\n#### 19", "She buys 4 * 3 = 12 pears, then 12 + 7 = 19.\n#### 19"]
    other_order = "7 + 3 = 10\n10 + 9 = 19\n#### 19"
    assert distinct_solutions(same) == 1
    assert distinct_solutions(same + [other_order]) == 2
    assert distinct_solutions([]) == 0
    assert step_sequence("12 - 7 = 5") != step_sequence("7 - 12 = 5")  # order matters where the operation has one
    assert answer_entropy(["19"] * 8) == 0.0 and answer_entropy([str(i) for i in range(8)]) == pytest.approx(3.0)
