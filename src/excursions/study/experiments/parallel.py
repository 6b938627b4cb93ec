"""Fig. 9 and 17: parallel averaging against the other recipes, pass@1 and the largest k."""

from __future__ import annotations

from pathlib import Path

from excursions.evals.figures import plt
from excursions.study.experiments import experiment
from excursions.study.report import COLORS, Section, save
from excursions.recipes import RECIPES
from excursions.study.results import Results, compare, not_below, tally


@experiment(order=5)
def parallel_experiment(res: Results, figdir: Path) -> Section:
    task, top = res.math_tasks[0], res.ks[-1]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    width = 0.8 / max(1, len(res.recipes))
    for ax, metric in zip(axes, ("pass@1", top)):
        for i, recipe in enumerate(res.recipes):
            stats = [res.get(task, recipe, c, metric) for c in res.checkpoints]
            xs = [j + i * width for j, s in enumerate(stats) if s]
            ys = [100 * s.mean for s in stats if s]
            err = [[100 * (s.mean - s.lo) for s in stats if s], [100 * (s.hi - s.mean) for s in stats if s]]
            ax.bar(xs, ys, width, yerr=err, label=recipe, color=COLORS.get(recipe), capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(res.checkpoints))],
                      [f"{res.tokens[c] / 1e6:.1f}M" for c in res.checkpoints])
        ax.set_title(f"{task} {metric}")
        ax.set_xlabel("checkpoint (pretraining tokens)")
    axes[1].legend(fontsize=7)
    save(fig, figdir / "parallel.png")
    # "Across every pre-training checkpoint we evaluated, parallel averaging attains the strongest pass@32 among
    # recipes that use a single demonstration per problem, surpassing direct RL, SFT, and the standard pipeline."
    # (Sec. 5): SFT-Gold's recipes, trained on every demonstration, are not in the comparison, nor is the base.
    rivals = [r for r in res.recipes if r in RECIPES and r != "parallel" and RECIPES[r].demonstrations != "all"]
    signs, evidence = [], []
    for c in res.checkpoints:
        par = res.get(task, "parallel", c, top)
        others = {r: s for r in rivals if (s := res.get(task, r, c, top))}
        if par and others:
            best = max(others, key=lambda r: others[r].mean)
            signs.append(compare(par, others[best]))
            evidence.append(f"{res.label(c)}: parallel {par} vs the best of {', '.join(others)} ({best}) {others[best]}")
    claims = [(f"Parallel averaging has the best {top} of the recipes with at most one demonstration per problem",
               tally(signs), "; ".join(evidence))]
    # "this strong pass@k improvements come with a trade-off of a lower pass@1 relative to the direct RL and SFT
    # baselines" (Sec. 5)
    below = lambda a, b: compare(b, a)
    signs, evidence = res.pairs(task, "parallel", "rl", {"pass@1": below})
    more, more_evidence = res.pairs(task, "parallel", "sft", {"pass@1": below})
    claims.append(("Parallel averaging trades pass@1 for it: pass@1 below direct RL's and SFT's", tally(signs + more),
                   "; ".join(evidence + more_evidence)))
    # "It also preserves the base model's general (non-math) capabilities on par with direct RL" (Sec. 5)
    if "general" in res.tasks:
        signs, evidence = res.pairs("general", "parallel", "base", {"acc": not_below})
        claims.append(("Parallel averaging keeps general capability (accuracy not below the base's)", tally(signs),
                       "; ".join(evidence)))
    reading = (f"pass@1 and {top} of every recipe at each checkpoint (error bars: 95% intervals). Parallel averaging "
               "applies an RL and an SFT update from two AdamW states, averaged with weight w.")
    return Section("Parallel averaging (paper Fig. 9, 17)", "parallel.png", reading, claims=claims)
