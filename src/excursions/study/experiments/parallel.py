"""Fig. 9 and 17: parallel averaging against the other recipes, pass@1 and the largest k."""

from __future__ import annotations

from pathlib import Path

from excursions.evals.figures import plt
from excursions.study.experiments import experiment
from excursions.study.report import COLORS, Section, save
from excursions.study.results import Results, compare, verdict


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
    signs, evidence = [], []
    for c in res.checkpoints:
        par = res.get(task, "parallel", c, top)
        others = {r: s for r in res.recipes if r != "parallel" and (s := res.get(task, r, c, top))}
        if not par or not others:
            continue
        best = max(others, key=lambda r: others[r].mean)
        signs.append(compare(par, others[best]))
        evidence.append(f"{res.tokens[c] / 1e6:.1f}M: parallel {par} vs best other ({best}) {others[best]}")
    claims = [(f"Parallel averaging has the best {top}", verdict(signs.count(1), signs.count(-1), len(signs)),
               "; ".join(evidence))]
    reading = (f"pass@1 and {top} of every recipe at each checkpoint (error bars: 95% intervals). Parallel averaging "
               "applies an RL and an SFT update from two AdamW states, averaged with weight w.")
    return Section("Parallel averaging (paper Fig. 9, 17)", "parallel.png", reading, claims=claims)
