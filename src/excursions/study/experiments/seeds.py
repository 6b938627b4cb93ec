"""Fig. 13-14: RL training dynamics across seeds, and how far the final results spread."""

from __future__ import annotations

from pathlib import Path

from excursions.evals.figures import plt
from excursions.study.experiments import experiment
from excursions.study.report import COLORS, Section, legend, save, tracked_band
from excursions.study.results import Results
from excursions.study.verdicts import Arm, claim, compare, judge, not_run

# "For some early M_t model checkpoints between t=4B and t=10B pre-training tokens, we observe brittleness across
# seeds: RL performance on some seeds fails to improve." (Sec. 3.1, App. B.4): some pair of seeds differs in final
# pass@1 (paired on the same test problems, Holm's correction over the pairs); against where every pair is
# equivalent within the pass@1 margin, 5 points
CLAIM = claim("RL outcomes are seed-brittle: some seeds' final pass@1 differ (seed pairs, Holm-corrected)",
              "superiority", ["pass@1"], "any")


@experiment(order=6)
def seeds_experiment(res: Results, figdir: Path) -> Section:
    task = res.math_tasks[0]
    ckpt = max(res.checkpoints, key=lambda c: len(res.seeds("rl", c)))
    seeds = res.seeds("rl", ckpt)
    if len(seeds) < 2:
        why = "one seed per checkpoint: set study.extra_seeds to measure the spread"
        return Section("RL seed brittleness (paper Fig. 13-14)", reading=why.capitalize() + ".",
                       claims=[not_run(CLAIM, why)])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    keys = ("train/reward", f"eval/{task}/pass@1")
    for ax, key in zip(axes[:2], keys):
        for s in seeds:
            steps, vals = res.run_curve("rl", ckpt, s, "rl", key)
            drawn, = ax.plot(steps, [100 * v for v in vals], marker="." if key.startswith("eval") else None,
                             label=f"seed {s}")
            if key.startswith("eval"):
                tracked_band(ax, res, res.unit_id("rl", ckpt, s), "rl", key, dict(zip(steps, steps)),
                             drawn.get_color())
        ax.set_xlabel("RL step")
        ax.set_ylabel(f"{key} (%)")
        ax.set_title(key)
    finals = [res.seed_stats.get((task, "rl", 0, ckpt, "pass@1", s)) for s in seeds]
    base = res.get(task, "base", ckpt, "pass@1", shots=0)
    ax = axes[2]
    ax.errorbar(range(len(seeds)), [100 * f.mean for f in finals],
                yerr=[[100 * (f.mean - f.lo) for f in finals], [100 * (f.hi - f.mean) for f in finals]],
                fmt="o", capsize=3, color=COLORS["rl"], label="after RL")
    if base:
        ax.axhspan(100 * base.lo, 100 * base.hi, color=COLORS["base 0-shot"], alpha=0.3, label="base 0-shot")
    ax.set_xticks(range(len(seeds)), [str(s) for s in seeds])
    ax.set_xlabel("seed")
    ax.set_ylabel("pass@1 (%)")
    ax.set_title(f"final {task} pass@1")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.45 * (hi - lo))  # room for the legend above the points
    legend(ax, "bars, base's band: 95% bootstrap\nintervals over problems", loc="upper center", ncol=2)
    legend(axes[0], None)
    legend(axes[1])
    save(fig, figdir / "seeds.png")
    means = [f.mean for f in finals]
    arm = res.arm(task, "rl", ckpt, "pass@1")
    one = lambda i: Arm(arm.ids, arm.values[i : i + 1], (arm.seeds[i],))
    rows = [compare(CLAIM, res.label(ckpt), f"seed {arm.seeds[i]} vs seed {arm.seeds[j]}", "pass@1", one(i), one(j),
                    seed=res.cfg.eval.seed)
            for i in range(len(arm.seeds)) for j in range(i + 1, len(arm.seeds))]
    claims = [judge(CLAIM, rows)]
    reading = (f"Direct RL from the {res.label(ckpt)}-token checkpoint with {len(seeds)} seeds (rollout "
               f"sampling and problem order): training reward, tracked test pass@1, and the final pass@1 with 95% "
               f"intervals. Final pass@1 ranges from {100 * min(means):.1f}% to {100 * max(means):.1f}%.")
    return Section("RL seed brittleness (paper Fig. 13-14)", "seeds.png", reading, claims=claims)
