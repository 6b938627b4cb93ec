"""The verdict rule on hand-made per-problem scores: paired intervals, the three kinds of claim with their margins,
the quantifiers, McNemar, and the seed level. Expected values are derived by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from excursions.evals.passk import bootstrap_ci
from excursions.study.verdicts import (Arm, Claim, claim, decide, holm, judge, margin, mcnemar, paired, pooled,
                                       row)


def arm(values, seeds=None) -> Arm:
    values = np.atleast_2d(np.asarray(values, dtype=float))
    return Arm(tuple(f"p{i:03d}" for i in range(values.shape[1])), values,
               tuple(seeds) if seeds else tuple(range(values.shape[0])))


def test_overlapping_separate_intervals_but_a_paired_difference_that_excludes_zero_is_decided():
    """200 problems of every difficulty (per-problem pass@1 spread over 0..1); A solves each 5 points more often
    than B. Apart, each mean's 95% interval is about +-4 points (sd ~0.29 / sqrt(200) x 1.96), so they overlap; the
    per-problem difference is exactly +0.05 everywhere, so its paired interval is [0.05, 0.05]."""
    b = np.linspace(0.0, 0.9, 200)
    a = b + 0.05
    lo_a, hi_a = bootstrap_ci(list(a))
    lo_b, hi_b = bootstrap_ci(list(b))
    assert lo_a < hi_b  # the old overlap rule: undecided
    cmp = paired(arm(a), arm(b))
    assert cmp.diff == pytest.approx(0.05) and cmp.lo == pytest.approx(0.05) and cmp.hi == pytest.approx(0.05)
    c = claim("A beats B", "superiority", ["pass@1"], "every")
    assert judge(c, [row(c, "1M", "a vs b", "pass@1", cmp)]).verdict == "reproduced"


def test_a_non_inferiority_claim_with_a_wide_interval_is_inconclusive_not_reproduced():
    """10 problems, differences alternating +0.5 / -0.5: mean 0, sd 0.527, se 0.167, so the interval is about
    [-0.3, +0.3]: its lower end lies below -0.05 and its upper end above it. Under the old rule (A not below B's
    interval) this read "reproduced"; now it is inconclusive."""
    b = np.full(10, 0.5)
    a = b + np.array([0.5, -0.5] * 5)
    cmp = paired(arm(a), arm(b))
    assert cmp.diff == pytest.approx(0.0) and cmp.lo < -0.2 and cmp.hi > 0.2
    c = claim("A matches B", "noninferiority", ["pass@1"], "every")
    assert judge(c, [row(c, "1M", "a vs b", "pass@1", cmp)]).verdict == "inconclusive"
    # the same claim with a tight interval inside the margin is reproduced; one wholly below -margin is refuted
    tight, below = paired(arm(b - 0.01), arm(b)), paired(arm(b - 0.2), arm(b))
    assert judge(c, [row(c, "1M", "a vs b", "pass@1", tight)]).verdict == "reproduced"
    assert judge(c, [row(c, "1M", "a vs b", "pass@1", below)]).verdict == "not reproduced"


def test_equivalence_inside_the_margin_is_reproduced_and_straddling_it_is_not():
    """Inside: the difference is +0.01 on every problem, interval [0.01, 0.01], within +-0.05. Straddling: half the
    200 problems differ by 0 and half by 0.10: mean 0.05, se = 0.05 / sqrt(200) ~ 0.0035, interval about
    [0.043, 0.057], across the margin's edge: inconclusive. Outside: +0.2 everywhere, refuted."""
    c = claim("A does not depend on B", "equivalence", ["pass@1"], "every")
    b = np.linspace(0.1, 0.8, 200)
    verdict = lambda a: judge(c, [row(c, "1M", "a vs b", "pass@1", paired(arm(a), arm(b)))]).verdict
    assert verdict(b + 0.01) == "reproduced"
    straddle = b + np.tile([0.0, 0.10], 100)
    cmp = paired(arm(straddle), arm(b))
    assert cmp.lo < 0.05 < cmp.hi
    assert verdict(straddle) == "inconclusive"
    assert verdict(b + 0.2) == "not reproduced"


def test_superiority_is_refuted_when_any_advantage_is_below_the_margin():
    """decide by hand: superiority with margin 0.05 is for A where lo > 0; against where hi < 0.05 (A's advantage,
    if any, is smaller than the margin), whether or not the interval reaches below 0."""
    assert decide("superiority", 0.001, 0.2, 0.05) == 1
    assert decide("superiority", -0.01, 0.04, 0.05) == -1
    assert decide("superiority", -0.3, -0.1, 0.05) == -1
    assert decide("superiority", -0.01, 0.06, 0.05) == 0


def test_mcnemar_on_a_hand_made_table():
    """Solved within n: 9 problems by the trained model only, 1 by the base only (the concordant ones do not enter).
    Exact two-sided p = 2 * P(X <= 1), X ~ Binomial(10, 1/2) = 2 * (1 + 10) / 1024 = 0.021484375."""
    assert mcnemar(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar(1, 9) == mcnemar(9, 1)
    assert mcnemar(5, 5) == 1.0  # 2 * P(X <= 5), X ~ B(10, 1/2) = 2 * 638 / 1024 > 1: capped at 1
    assert mcnemar(4, 0) == pytest.approx(2 / 16)  # 2 * (1/2)^4


def test_a_second_seed_level_widens_the_interval():
    """A's two seeds are B's per-problem score +0.1 and -0.1: their mean equals B everywhere, so with seeds averaged
    first the paired interval is [0, 0]; with seeds resampled as an outer level, a replicate that draws seed 0 twice
    is +0.1 and one that draws seed 1 twice is -0.1 (a quarter of the replicates each), so the interval reaches
    both."""
    b = np.linspace(0.2, 0.6, 100)
    two = arm(np.stack([b + 0.1, b - 0.1]))
    averaged = arm(two.values.mean(axis=0))
    flat, nested = paired(averaged, arm(b)), paired(two, arm(b))
    assert flat.hi - flat.lo == pytest.approx(0.0, abs=1e-12)
    assert nested.lo == pytest.approx(-0.1) and nested.hi == pytest.approx(0.1)
    assert nested.seeds == (2, 1)


def test_arms_are_aligned_by_problem_id_not_by_position():
    a = Arm(("x", "y", "z"), np.array([[1.0, 0.0, 0.5]]))
    b = Arm(("z", "x"), np.array([[0.5, 0.0]]))  # y is missing, the order differs
    cmp = paired(a, b)
    assert cmp.problems == 2 and cmp.diff == pytest.approx(0.5)  # x: 1 - 0; z: 0.5 - 0.5


def test_pooled_averages_each_problem_over_the_checkpoints():
    """Two checkpoints: A - B per problem is +0.2 at the first and 0 at the second: pooled, +0.1 on every problem."""
    b = np.linspace(0.1, 0.5, 50)
    a, bb = pooled([(arm(b + 0.2), arm(b)), (arm(b), arm(b))])
    cmp = paired(a, bb)
    assert cmp.diff == pytest.approx(0.1) and cmp.lo == pytest.approx(0.1)


def test_quantifiers_every_and_any():
    """every: one comparison against refutes the claim; any (seed brittleness): Holm over the pairs' p-values."""
    c = claim("A beats B at every checkpoint", "superiority", ["pass@1"], "every")
    b = np.linspace(0.1, 0.5, 100)
    up, level = paired(arm(b + 0.1), arm(b)), paired(arm(b), arm(b))
    assert judge(c, [row(c, "1M", "", "pass@1", up), row(c, "2M", "", "pass@1", up)]).verdict == "reproduced"
    assert judge(c, [row(c, "1M", "", "pass@1", up), row(c, "2M", "", "pass@1", level)]).verdict == "not reproduced"
    assert judge(c, []).verdict == "not run"
    s = claim("Some seeds differ", "superiority", ["pass@1"], "any")
    assert judge(s, [row(s, "1M", "seed 0 vs seed 1", "pass@1", level)]).verdict == "not reproduced"  # equivalent
    assert judge(s, [row(s, "1M", "seed 0 vs seed 1", "pass@1", level),
                     row(s, "1M", "seed 0 vs seed 2", "pass@1", up)]).verdict == "reproduced"
    assert holm([0.01, 0.02, 0.5]) == [True, True, False]  # 0.01 <= 0.05/3, 0.02 <= 0.05/2, 0.5 > 0.05


def test_a_claim_without_a_margin_or_a_quantifier_cannot_be_built():
    with pytest.raises(TypeError):
        Claim("A beats B", "superiority", why="no margins", quantifier="every")  # margins missing
    with pytest.raises(TypeError):
        Claim("A beats B", "superiority", {"pass@1": 0.05}, "why")  # quantifier missing
    with pytest.raises(ValueError, match="quantifier"):
        Claim("A beats B", "superiority", {"pass@1": 0.05}, "why", "most")
    with pytest.raises(ValueError, match="margin"):
        Claim("A beats B", "superiority", {}, "why", "every")
    with pytest.raises(ValueError, match="why"):
        Claim("A beats B", "superiority", {"pass@1": 0.05}, " ", "every")
    with pytest.raises(KeyError, match="no margin fixed"):
        margin("entropy")


def test_brief_evidence_cell_reads_the_decisive_comparison_in_points_with_its_margin():
    from excursions.study.verdicts import Paired, Row, brief

    cmp = Paired(a=0.186, b=0.072, diff=0.114, lo=0.080, hi=0.150, se=0.018, problems=200, seeds=(2, 1), p=0.0)
    assert brief(Row("10.5M", "rl vs base", "pass@1", cmp, 0.05, 1)) == \
        "10.5M pass@1: rl 18.6 vs base 7.2, +11.4 [+8.0, +15.0] (margin 5)"
    bpb = Paired(a=0.1251, b=0.1246, diff=0.0005, lo=0.0002, hi=0.0007, se=0.0001, problems=300, seeds=(1, 1), p=0.0)
    assert brief(Row("12M", "rl vs base", "bits_per_byte", bpb, 0.003, 1, note="rl from 12M capped at 300 steps")) == \
        "12M bits_per_byte: rl 0.1251 vs base 0.1246, +0.0005 [+0.0002, +0.0007] (margin 0.003); a capped run"


# ------------------------------------------------------------------------------ several pretraining runs (issue 44)

def _run(effect: float, seed: int, problems: int = 200) -> tuple:
    """One pretraining run's (A, B) arms: B's per-problem pass@1 drawn from [0, 1], A = B + effect (clipped)."""
    rng = np.random.default_rng(seed)
    ids = tuple(f"p{i}" for i in range(problems))
    b = rng.uniform(0, 1, problems)
    a = np.clip(b + effect + rng.normal(0, 0.05, problems) * (effect != 0), 0, 1)
    return Arm(ids, a[None, :]), Arm(ids, b[None, :])


def test_a_difference_present_in_every_run_is_robust():
    from excursions.study.verdicts import multi_paired, robust

    runs = [_run(0.15, s) for s in range(3)]
    signs = [decide("superiority", c.lo, c.hi, 0.05) for c in (paired(*r) for r in runs)]
    pooled_cmp = multi_paired(runs)
    assert signs == [1, 1, 1] and pooled_cmp.runs == 3
    assert robust(decide("superiority", pooled_cmp.lo, pooled_cmp.hi, 0.05), signs)


def test_a_difference_in_one_run_of_three_decides_that_run_alone_and_is_not_robust():
    from excursions.study.verdicts import multi_paired, robust

    runs = [_run(0.30, 0), _run(0.0, 1), _run(0.0, 2)]  # only the first pretraining run shows the effect
    alone = paired(*runs[0])
    assert decide("superiority", alone.lo, alone.hi, 0.05) == 1  # that run, reported by itself, "reproduces" it
    signs = [decide("superiority", c.lo, c.hi, 0.05) for c in (paired(*r) for r in runs)]
    assert signs[1:] == [-1, -1]  # the others: no difference, intervals [0, 0] below the margin
    pooled_cmp = multi_paired(runs)
    assert not robust(decide("superiority", pooled_cmp.lo, pooled_cmp.hi, 0.05), signs)


def test_resampling_pretraining_runs_widens_the_interval_over_resampling_problems_alone():
    from excursions.study.verdicts import multi_paired

    runs = [_run(0.05, 0), _run(0.15, 1), _run(0.25, 2)]
    across = multi_paired(runs)
    # the same per-problem scores averaged over the runs, problems resampled alone
    ids = runs[0][0].ids
    a = Arm(ids, np.mean([r[0].values for r in runs], axis=0))
    b = Arm(ids, np.mean([r[1].values for r in runs], axis=0))
    within = paired(a, b)
    assert across.diff == pytest.approx(within.diff)  # the same estimate: the mean over runs
    assert across.hi - across.lo > 3 * (within.hi - within.lo)


def test_capability_matching_picks_each_runs_first_checkpoint_at_or_above_the_target():
    from excursions.study.plan import first_at

    run_a = [("8M", 0.02), ("9M", 0.049), ("10.5M", 0.05), ("12M", 0.20)]
    run_b = [("8M", 0.06), ("9M", 0.10), ("10.5M", 0.30), ("12M", 0.45)]
    assert [first_at(r, 0.05) for r in (run_a, run_b)] == ["10.5M", "8M"]
    assert first_at(run_a, 0.5) is None


def test_a_claim_over_pretraining_runs_gives_each_runs_verdict_and_calls_it_robust_only_when_none_is_against():
    from excursions.study.verdicts import across_runs, compare

    c = claim("rl beats base (pass@1, every checkpoint)", "superiority", ["pass@1"], "every")
    per_run = lambda effects: [judge(c, [compare(c, "10.5M", "rl vs base", "pass@1", *_run(e, i))])
                               for i, e in enumerate(effects)]
    everywhere = across_runs(per_run([0.15, 0.12, 0.18]))
    assert everywhere.verdict == "reproduced" and everywhere.rows[0].cmp.runs == 3
    assert everywhere.note == "3 pretraining runs, each: reproduced, reproduced, reproduced; robust"
    once = across_runs(per_run([0.30, 0.0, 0.0]))
    assert once.note.startswith("3 pretraining runs, each: reproduced, not reproduced, not reproduced;")
    assert once.note.endswith("; not robust")
