"""Fig. 5: is the base checkpoint's pass@k a predictor of what RL reaches?"""

from __future__ import annotations

import math
from pathlib import Path

from excursions.evals.figures import plt
from excursions.study.experiments import experiment
from excursions.study.report import BARS, COLORS, Section, legend, save
from excursions.study.results import Results
from excursions.study.verdicts import claim, compare, interval, judge, paired


@experiment(order=2)
def base_vs_rl_experiment(res: Results, figdir: Path) -> Section:
    task = res.math_tasks[0]
    fig, axes = plt.subplots(1, len(res.ks), figsize=(3.6 * len(res.ks), 3.4), squeeze=False)
    corr = {}
    for ax, k in zip(axes[0], res.ks):
        pts = [(res.get(task, "base", c, k), res.get(task, "rl", c, k), c) for c in res.checkpoints]
        pts = [p for p in pts if p[0] and p[1]]
        xs, ys = [100 * p[0].mean for p in pts], [100 * p[1].mean for p in pts]
        err = lambda s: [[100 * (q.mean - q.lo) for q in s], [100 * (q.hi - q.mean) for q in s]]
        ax.errorbar(xs, ys, xerr=err([p[0] for p in pts]), yerr=err([p[1] for p in pts]), fmt="o",
                    color=COLORS["rl"], ecolor=COLORS["rl"], elinewidth=1, capsize=2, zorder=3,
                    label="checkpoint")
        for x, y, p in zip(xs, ys, pts):
            ax.annotate(f"{res.label(p[2])}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.plot([0, 100], [0, 100], color="#999", linestyle="--", linewidth=1, label="RL = base")
        legend(ax, BARS, loc="lower right")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel(f"base {k} (%)")
        ax.set_ylabel(f"after RL {k} (%)")
        ax.set_title(f"{task} {k}")
        if len(pts) >= 3:
            corr[k] = pearson(xs, ys)
    save(fig, figdir / "base-vs-rl.png")
    # "We observe a generally monotonically increasing relationship in which increasing pass@k for the base model
    # corresponds to increased pass@k for the model after RL." (Sec. 3.4): over every pair of checkpoints whose base
    # pass@k differs (paired interval on the same test problems excluding 0), RL's pass@k must be higher from the
    # better base, by the pass@k margins (every such pair)
    # pass@1 5 points, pass@k 3 (verdicts.MARGINS): the RL results must order as their bases do by that much
    c = claim("Base pass@k predicts pass@k after RL (the better base, the better RL result, every pair of "
              "checkpoints whose bases differ)", "superiority", res.ks, "every")
    rows = []
    for k in res.ks:
        for i, lo in enumerate(res.checkpoints):
            for hi in res.checkpoints[i + 1:]:
                arms = [res.arm(task, r, c, k) for r in ("base", "rl") for c in (lo, hi)]
                if not all(arms):
                    continue
                bases = paired(arms[1], arms[0], seed=res.cfg.eval.seed)
                if bases.lo > 0 or bases.hi < 0:  # the bases differ: which is the better one
                    better, worse = (hi, lo) if bases.lo > 0 else (lo, hi)
                    a, b = (arms[3], arms[2]) if better == hi else (arms[2], arms[3])
                    where = f"{res.label(worse)} -> {res.label(better)} (base {interval(bases)} from {res.label(lo)})"
                    rows.append(compare(c, where, "rl from the better base vs rl from the other", k, a, b,
                                        seed=res.cfg.eval.seed))
    claims = [judge(c, rows, empty=("inconclusive", "no two checkpoints whose base pass@k differs on paired problems"))]
    reading = ("Each point is one checkpoint: its base pass@k (x) against the pass@k after direct RL (y); above the "
               "diagonal RL helped. " + (" ".join(f"Pearson r for {k}: {v:.2f}." for k, v in corr.items())
                                         if corr else "Fewer than three checkpoints: no correlation reported."))
    return Section("Base pass@k as a predictor of RL (paper Fig. 5)", "base-vs-rl.png", reading, claims=claims)


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation of two equal-length lists.

    >>> round(pearson([1, 2, 3], [2, 4, 7]), 3)
    0.993
    """
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else float("nan")
