"""Fig. 7: general (non-math) capability after each recipe."""

from __future__ import annotations

from pathlib import Path

from excursions.evals.figures import plt, tokens_axis
from excursions.study.experiments import experiment
from excursions.study.report import Section, line, save
from excursions.study.results import Results, compare, not_below, tally


@experiment(order=4)
def general_experiment(res: Results, figdir: Path) -> Section:
    if "general" not in res.tasks:
        return Section("General capability (paper Fig. 7)", reading="Not evaluated: add general to study.tasks.")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = [res.tokens[c] for c in res.checkpoints]
    for recipe in res.recipes:
        line(ax, x, [res.get("general", recipe, c, "acc") for c in res.checkpoints], recipe)
    tokens_axis(ax, x)
    ax.set_ylabel("general MC accuracy (%)")
    ax.legend(fontsize=7)
    save(fig, figdir / "general.png")
    below = lambda a, b: compare(b, a)  # in favour where the recipe's interval lies below the base's
    degrade = [res.pairs("general", r, "base", {"acc": below}) for r in ("sft", "sft_gold")]
    keep, ev_keep = res.pairs("general", "rl", "base", {"acc": not_below})
    claims = [  # "Both SFT and SFT-Gold consistently degrade performance by 4-8pp on average across the benchmarks,
                # while RL leaves these capabilities essentially unchanged" (Fig. 7)
        ("SFT and SFT-Gold degrade general capability (accuracy below the base's)",
         tally(degrade[0][0] + degrade[1][0]), "; ".join(degrade[0][1] + degrade[1][1])),
        ("RL keeps general capability (accuracy not below the base's)", tally(keep), "; ".join(ev_keep))]
    reading = ("Multiple-choice accuracy on the general world's held-out questions (facts about entities, no "
               "math) with 95% Wilson intervals, before (base) and after each recipe.")
    return Section("General capability (paper Fig. 7)", "general.png", reading, claims=claims)
