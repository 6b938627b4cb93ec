"""How a claim is decided: paired differences on the same problems, a margin fixed in advance, a verdict.

Every comparison in the report is arm A against arm B scored on the same problems (questions, articles). The
per-problem scores are aligned by problem id, and the interval is that of their mean *paired* difference, by
bootstrap over problems (Miller 2024, "Adding Error Bars to Evals"): difficulty is shared by both arms, so the
paired interval is far narrower than two separate ones. Where an arm has two or more training seeds, seeds are
resampled as an outer level, so the interval contains seed-to-seed variation too.

    cmp = paired(rl, base)                     # rl, base: Arm(ids, values[seeds, problems], seeds)
    cmp.diff, cmp.lo, cmp.hi, cmp.mde          # points as fractions; mde: 2.8 standard errors
    decide("superiority", cmp.lo, cmp.hi, 0.05)   # +1 in the claim's favour, -1 against, 0 neither

Three kinds of claim (Lakens 2017 on equivalence tests), each with a margin stated next to the paper's sentence:

- superiority, "A beats B": in favour when the interval lies above 0; against when it lies below +margin
  without lying above 0 (any advantage is smaller than the margin); else inconclusive.
- non-inferiority, "A matches / keeps B": in favour when the lower end is above -margin; against when the upper
  end is below -margin; else inconclusive. A wide interval is inconclusive, never "reproduced".
- equivalence, "does not depend on", "has converged": in favour when the whole interval lies inside +-margin;
  against when it lies wholly outside; else inconclusive.

A claim holds over its comparisons as its sentence quantifies them (`QUANTIFIERS`): every comparison in favour
(every checkpoint, or the early ones it names), one comparison of the checkpoints pooled, or any of several seed
pairs after a Holm correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

KINDS = ("superiority", "noninferiority", "equivalence")
QUANTIFIERS = {
    "every": "every checkpoint compared must be in favour; one against refutes it",
    "early": "the first half of the checkpoints (the early ones the sentence names), each in favour",
    "pooled": "one comparison of the per-problem scores averaged over the checkpoints",
    "any": "some pair differs: pairs tested with a Holm correction (seed brittleness)",
}
LEVEL = 0.95
ITERS = 2000  # bootstrap replicates: the 2.5% and 97.5% percentiles move by < 0.3 points between seeds at 200 problems
MDE_Z = 2.8  # 1.96 + 0.84: a difference this many standard errors away is detected 80% of the time at alpha 0.05

# The margins, in the metric's own units (fractions of 1 for rates), fixed before any result was read. Changing one
# is a commit with its reason in docs/LOG.md. Each claim names the margins it uses next to the paper's sentence.
MARGINS = {
    # the paper's "on par" curves (Fig. 2-3) differ by up to ~5 points of pass@1; its "outperforms" gaps are 10+
    "pass@1": 0.05,
    # pass@k near its ceiling: the paper's recipe gaps at pass@32 (Fig. 9) are 3-6 points
    "pass@k": 0.03,
    # half the paper's smallest reported SFT degradation on general benchmarks (4 points, Fig. 7)
    "acc": 0.02,
    # 2.5% of the tiny base's ~0.12 bits per byte on held-out articles (SFT at 5 epochs moved it by 0.007)
    "bits_per_byte": 0.003,
    # problems solved within n samples by one side only, net: pass@n per problem, so as pass@k
    "net_solved": 0.03,
}


def margin(metric: str) -> float:
    """The fixed margin of a metric: pass@1 (verified too), pass@k for k > 1, acc, bits_per_byte, net_solved.

    >>> margin("pass@1"), margin("verified_pass@1"), margin("pass@32"), margin("acc")
    (0.05, 0.05, 0.03, 0.02)
    """
    base = metric.removeprefix("verified_")
    if base.startswith("pass@"):
        return MARGINS["pass@1"] if base == "pass@1" else MARGINS["pass@k"]
    if base not in MARGINS:
        raise KeyError(f"no margin fixed for metric {metric!r}; add one to verdicts.MARGINS with its reason")
    return MARGINS[base]


@dataclass(frozen=True)
class Claim:
    """A claim as the report checks it: its sentence, its kind, the margin of each metric it compares (fixed here,
    in the experiment file next to the paper's sentence), why those margins, and how its sentence quantifies the
    comparisons. A claim without a margin or a quantifier cannot be built."""

    text: str
    kind: str
    margins: dict[str, float]  # metric -> margin, in the metric's units
    why: str  # one line: why these margins are the smallest difference that matters here
    quantifier: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.text!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.quantifier not in QUANTIFIERS:
            raise ValueError(f"claim {self.text!r}: quantifier {self.quantifier!r} is not one of "
                             f"{', '.join(QUANTIFIERS)}")
        if not self.margins or any(not m > 0 for m in self.margins.values()):
            raise ValueError(f"claim {self.text!r}: every metric needs a margin > 0 (got {self.margins})")
        if not self.why.strip():
            raise ValueError(f"claim {self.text!r}: say why its margins are what they are")


def claim(text: str, kind: str, metrics: Sequence[str], quantifier: str, why: str = "") -> Claim:
    """A claim on `metrics` with the fixed margins of `MARGINS`; `why` defaults to the margins' own reasons."""
    margins = {m: margin(m) for m in metrics}
    why = why or "the fixed margins: " + ", ".join(f"{m} {fmt_margin(m, v)}" for m, v in margins.items())
    return Claim(text, kind, margins, why, quantifier)


def fmt_margin(metric: str, value: float) -> str:
    return f"{value:.3f}" if metric == "bits_per_byte" else f"{100 * value:g} points"


@dataclass(frozen=True)
class Arm:
    """One arm of a comparison: per-problem scores of each training seed, aligned by problem id."""

    ids: tuple[str, ...]
    values: np.ndarray  # [seeds, problems]
    seeds: tuple = (None,)

    @property
    def mean(self) -> float:
        return float(self.values.mean())


def align(a: Arm, b: Arm) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """The problems both arms have, and the two arms' scores on them in that order: (ids, [seeds_a, P],
    [seeds_b, P])."""
    common = tuple(sorted(set(a.ids) & set(b.ids)))
    ia, ib = {p: i for i, p in enumerate(a.ids)}, {p: i for i, p in enumerate(b.ids)}
    return common, a.values[:, [ia[p] for p in common]], b.values[:, [ib[p] for p in common]]


@dataclass(frozen=True)
class Paired:
    """A - B on the same problems: the mean difference, its 95% bootstrap interval and standard error, the two
    means, how many problems and seeds it covers, and a two-sided bootstrap p-value."""

    a: float
    b: float
    diff: float
    lo: float
    hi: float
    se: float
    problems: int
    seeds: tuple[int, int]
    p: float
    runs: int = 1  # pretraining runs the interval resamples (multi_paired); 1: one run's noise only

    @property
    def mde(self) -> float:
        """The minimum detectable effect at this sample size: 2.8 standard errors of the paired difference."""
        return MDE_Z * self.se


def _replicates(x: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means of one arm [seeds, P] at the resampled problems `rows` [B, P]: seeds resampled as an outer
    level (per replicate, S seeds drawn with replacement) where there are two or more."""
    iters, (s, _) = rows.shape[0], x.shape
    if s == 1:
        return x[0][rows].mean(axis=1)
    picked = x[rng.integers(0, s, (iters, s))].mean(axis=1)  # [B, P]: the drawn seeds' per-problem mean
    return np.take_along_axis(picked, rows, axis=1).mean(axis=1)


def paired(a: Arm, b: Arm, iters: int = ITERS, seed: int = 0) -> Paired:
    """The paired comparison of A and B on their common problems.

    Vectorised numpy, not `scipy.stats.bootstrap`: the study makes a few hundred comparisons of up to 600 problems,
    each a two-level resampling (seeds inside problems) that scipy's one-level `paired=True` does not express, and
    one [B, P] index draw shared by both arms keeps the pairing exact. Percentile interval, ITERS replicates.

    >>> c = paired(Arm(("p0", "p1", "p2", "p3"), np.array([[1.0, 1.0, 0.0, 1.0]])),
    ...            Arm(("p3", "p2", "p1", "p0"), np.array([[1.0, 0.0, 0.0, 0.0]])))
    >>> c.diff, c.problems, c.seeds   # p0 and p1 gained, p2 and p3 level: +2/4
    (0.5, 4, (1, 1))
    """
    _, xa, xb = align(a, b)
    p = xa.shape[1]
    if p == 0:
        raise ValueError("a paired comparison needs problems scored by both arms; these share none")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, p, (iters, p))
    reps = _replicates(xa, rows, rng) - _replicates(xb, rows, rng)
    return _from_replicates(reps, float(xa.mean()), float(xb.mean()), p, (xa.shape[0], xb.shape[0]))


def _from_replicates(reps: np.ndarray, a: float, b: float, problems: int, seeds: tuple[int, int],
                     runs: int = 1) -> Paired:
    """The Paired result of bootstrap replicates of A - B: percentile interval, standard error, two-sided p."""
    lo, hi = np.quantile(reps, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    pval = min(1.0, 2 * min(float((reps <= 0).mean()), float((reps >= 0).mean())))
    return Paired(a, b, a - b, float(lo), float(hi), float(reps.std(ddof=1)), problems, seeds, pval, runs)


def multi_paired(pairs: Sequence[tuple[Arm, Arm]], iters: int = ITERS, seed: int = 0) -> Paired:
    """A - B over several pretraining runs, one (A, B) pair per run, paired within it, by the multi-bootstrap
    (Sellam et al. 2022, MultiBERTs): each replicate draws the runs with replacement (the outermost level), then
    within every drawn run its training seeds and one draw of the problems shared by all runs (the same world, the
    same test problems), as `paired` does. The estimate is the mean over runs of each run's mean difference; the
    interval covers which pretraining run it was, which training seed and which problems. One pair: `paired` itself.

    >>> one = lambda d: (Arm(("p0", "p1"), np.array([[d, d]])), Arm(("p0", "p1"), np.array([[0.0, 0.0]])))
    >>> c = multi_paired([one(0.3), one(0.1), one(0.2)])
    >>> round(c.diff, 3), c.runs, round(c.lo, 3) >= 0.1, round(c.hi, 3) <= 0.3   # runs alone vary: 0.1 to 0.3
    (0.2, 3, True, True)
    """
    if len(pairs) == 1:
        return paired(*pairs[0], iters=iters, seed=seed)
    aligned = [align(a, b) for a, b in pairs]
    common = sorted(set.intersection(*(set(ids) for ids, _, _ in aligned)))
    if not common:
        raise ValueError("a comparison over pretraining runs needs problems every run scored; these share none")
    cols = [[{q: i for i, q in enumerate(ids)}[q] for q in common] for ids, _, _ in aligned]
    xs = [(xa[:, c], xb[:, c]) for (_, xa, xb), c in zip(aligned, cols)]
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(common), (iters, len(common)))
    per_run = np.stack([_replicates(xa, rows, rng) - _replicates(xb, rows, rng) for xa, xb in xs])  # [R, B]
    drawn = rng.integers(0, len(xs), (iters, len(xs)))
    reps = np.take_along_axis(per_run.T, drawn, axis=1).mean(axis=1)
    a, b = (float(np.mean([x[i].mean() for x in xs])) for i in (0, 1))
    return _from_replicates(reps, a, b, len(common), (sum(x[0].shape[0] for x in xs), sum(x[1].shape[0] for x in xs)),
                            runs=len(xs))


def robust(pooled_sign: int, run_signs: Sequence[int]) -> bool:
    """A finding about the method, not about one pretraining run: in the claim's favour over the runs pooled (the
    multi-bootstrap), and against it in no run taken alone.

    >>> robust(1, [1, 0, 1]), robust(1, [1, -1, 1]), robust(0, [1, 1, 1])
    (True, False, False)
    """
    return pooled_sign == 1 and all(s != -1 for s in run_signs)


def pooled(pairs: Sequence[tuple[Arm, Arm]]) -> tuple[Arm, Arm]:
    """Arms whose per-problem score is the mean over several checkpoints' (each first averaged over its seeds): one
    comparison for a claim its sentence makes of the checkpoints together. Its interval covers problems and sampling,
    not seeds."""
    def mean_arm(arms: list[Arm]) -> Arm:
        common = sorted(set.intersection(*(set(x.ids) for x in arms)))
        cols = [[{p: i for i, p in enumerate(x.ids)}[q] for q in common] for x in arms]
        return Arm(tuple(common), np.mean([x.values.mean(axis=0)[c] for x, c in zip(arms, cols)], axis=0)[None, :])

    return mean_arm([a for a, _ in pairs]), mean_arm([b for _, b in pairs])


def decide(kind: str, lo: float, hi: float, margin: float) -> int:
    """+1 in the claim's favour, -1 against, 0 inconclusive, from the interval [lo, hi] of A - B (A the side the
    claim favours) and the claim's margin.

    >>> [decide("superiority", lo, hi, 0.05) for lo, hi in ((0.01, 0.09), (-0.02, 0.04), (-0.02, 0.08))]
    [1, -1, 0]
    >>> [decide("noninferiority", lo, hi, 0.05) for lo, hi in ((-0.04, 0.2), (-0.09, -0.06), (-0.15, 0.1))]
    [1, -1, 0]
    >>> [decide("equivalence", lo, hi, 0.05) for lo, hi in ((-0.03, 0.04), (0.06, 0.1), (-0.03, 0.07))]
    [1, -1, 0]
    """
    if kind == "superiority":
        return 1 if lo > 0 else -1 if hi < margin else 0
    if kind == "noninferiority":
        return 1 if lo > -margin else -1 if hi < -margin else 0
    if kind == "equivalence":
        return 1 if -margin < lo and hi < margin else -1 if lo > margin or hi < -margin else 0
    raise ValueError(f"unknown kind of claim {kind!r}; choose from {', '.join(KINDS)}")


SIGN_WORDS = {1: "in favour", -1: "against", 0: "inconclusive"}


@dataclass(frozen=True)
class Row:
    """One comparison of a claim: where (a checkpoint, a split, a seed pair), what against what, on which metric,
    the paired result and its sign under the claim's kind and margin."""

    where: str
    what: str  # "rl vs base"
    metric: str
    cmp: Paired
    margin: float
    sign: int
    note: str = ""  # what the reader should know of the arms (a run that stopped at its cap unconverged)
    arms: tuple | None = field(default=None, compare=False, repr=False)  # (A, B): to pool over pretraining runs


def row(c: Claim, where: str, what: str, metric: str, cmp: Paired, arms: tuple | None = None) -> Row:
    return Row(where, what, metric, cmp, c.margins[metric], decide(c.kind, cmp.lo, cmp.hi, c.margins[metric]),
               arms=arms)


def compare(c: Claim, where: str, what: str, metric: str, a: Arm, b: Arm, seed: int = 0) -> Row:
    """The claim's comparison of arm A with arm B (paired), keeping the arms so that the same comparison in other
    pretraining runs can be pooled with it (`across_runs`)."""
    return row(c, where, what, metric, paired(a, b, seed=seed), arms=(a, b))


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down correction: which hypotheses are rejected at family-wise level alpha.

    >>> holm([0.01, 0.04, 0.03]), holm([0.001, 0.2]), holm([0.03, 0.03])
    ([True, False, False], [True, False], [False, False])
    """
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        out[i] = True
    return out


def tally(c: Claim, rows: Sequence[Row]) -> str:
    """The claim's verdict over its comparisons' signs, as its quantifier reads them: reproduced | not reproduced |
    inconclusive | not run (no comparison). every / early / pooled: reproduced when every comparison is in favour,
    not reproduced when any is against. any: reproduced when some comparison is in favour, not reproduced when
    every one is against (see `judge`)."""
    if not rows:
        return "not run"
    signs = [r.sign for r in rows]
    if c.quantifier == "any":
        return "reproduced" if 1 in signs else "not reproduced" if all(s == -1 for s in signs) else "inconclusive"
    return "reproduced" if all(s == 1 for s in signs) else "not reproduced" if -1 in signs else "inconclusive"


SIGNS = {"reproduced": 1, "not reproduced": -1}  # a verdict as a sign: in favour, against (else 0)


@dataclass
class Verdict:
    """A claim with its verdict, its comparisons and any further evidence (counts, a crossing k) for the report."""

    claim: Claim
    verdict: str
    rows: list[Row] = field(default_factory=list)
    note: str = ""  # evidence beyond the rows, or why it was not run
    runs: list[str] = field(default_factory=list)  # with several pretraining runs: the verdict in each other run
    pooled: Verdict | None = None  # and the claim decided over all runs (`across_runs`)
    robust: bool | None = None  # set by `across_runs`: in favour pooled, against in no run alone

    @property
    def text(self) -> str:
        return self.claim.text

    def decisive(self) -> Row | None:
        """The comparison that decides the verdict: one against (not reproduced), the weakest in favour
        (reproduced: the lowest end nearest its threshold), else the first inconclusive one."""
        if not self.rows:
            return None
        want = SIGNS.get(self.verdict, 0)
        found = [r for r in self.rows if r.sign == want] or self.rows
        return min(found, key=lambda r: r.cmp.lo) if want == 1 else found[0]


def judge(c: Claim, rows: Sequence[Row], note: str = "", empty: tuple[str, str] | None = None) -> Verdict:
    """The claim's Verdict over `rows`; with no rows, `empty` (verdict, why) where it ran with nothing to compare."""
    if not rows and empty:
        return Verdict(c, empty[0], [], empty[1])
    if c.quantifier == "any":  # "some pair differs": in favour where Holm's correction rejects the pair's equality,
        # against where the pair is equivalent within the margin, else neither
        rows = [replace(r, sign=1 if rejected else -1 if decide("equivalence", r.cmp.lo, r.cmp.hi, r.margin) == 1
                        else 0) for r, rejected in zip(rows, holm([r.cmp.p for r in rows]))]
    return Verdict(c, tally(c, rows), list(rows), note)


def across_runs(per_run: Sequence[Verdict], seed: int = 0) -> Verdict:
    """One claim decided over several pretraining runs, from its Verdict in each: every comparison made in every
    run (the same where, what and metric, its arms kept by `compare`) pooled by the multi-bootstrap and judged as
    the claim's sentence quantifies it. The note gives each run's own verdict and whether the finding is robust
    (in favour pooled, against in no run alone)."""
    c, first = per_run[0].claim, per_run[0]
    key = lambda r: (r.where, r.what, r.metric)
    rows = []
    for r in first.rows:
        same = [next((x for x in v.rows if key(x) == key(r) and x.arms), None) for v in per_run]
        if r.arms and all(same):
            rows.append(row(c, r.where, r.what, r.metric, multi_paired([x.arms for x in same], seed=seed)))
    pooled_verdict = judge(c, rows, empty=("not run", "no comparison was made in every pretraining run"))
    verdicts = [v.verdict for v in per_run]
    held = robust(SIGNS.get(pooled_verdict.verdict, 0), [SIGNS.get(v, 0) for v in verdicts])
    pooled_verdict.note = (f"{len(per_run)} pretraining runs, each: {', '.join(verdicts)}; "
                           + ("robust" if held else "not robust"))
    pooled_verdict.robust = held
    return pooled_verdict


def not_run(c: Claim, why: str) -> Verdict:
    return Verdict(c, "not run", [], why)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def interval(cmp: Paired, metric: str = "") -> str:
    """"+11.5 [+4.0, +18.5]" (points), or bits per byte to three decimals."""
    if metric == "bits_per_byte":
        return f"{cmp.diff:+.4f} [{cmp.lo:+.4f}, {cmp.hi:+.4f}]"
    return f"{100 * cmp.diff:+.1f} [{100 * cmp.lo:+.1f}, {100 * cmp.hi:+.1f}]"


def brief(r: Row) -> str:
    """One comparison in a table cell: "10.5M pass@1: rl 18.6 vs base 7.2, +11.4 [+8.0, +15.0] (margin 5)";
    a comparison involving a run stopped at its cap says so."""
    value = (lambda x: f"{x:.4f}") if r.metric == "bits_per_byte" else pct
    return (f"{r.where} {r.metric}: {r.what.replace(' vs ', f' {value(r.cmp.a)} vs ')} {value(r.cmp.b)}, "
            f"{interval(r.cmp, r.metric)} (margin {fmt_margin(r.metric, r.margin).removesuffix(' points')})"
            + ("; a capped run" if "capped" in r.note else ""))


def mcnemar(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (problems only A solves, only B solves): the
    binomial test of only_a against Binomial(only_a + only_b, 1/2).

    >>> round(mcnemar(9, 1), 4)    # 2 * (C(10,0) + C(10,1)) / 2^10 = 2 * 11 / 1024
    0.0215
    >>> mcnemar(3, 3), mcnemar(0, 0)
    (1.0, 1.0)
    """
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
