"""Fig. 7: general (non-math) capability after each recipe."""

from __future__ import annotations

from pathlib import Path

from excursions.evals.figures import plt, tokens_axis
from excursions.study.experiments import experiment
from excursions.study.report import Section, line, save
from excursions.study.results import Results, compare, verdict


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
    claims = []
    for recipe, want in (("sft", -1), ("rl", 0)):
        pairs = [(c, res.get("general", recipe, c, "acc"), res.get("general", "base", c, "acc"))
                 for c in res.checkpoints]
        pairs = [p for p in pairs if p[1] and p[2]]
        signs = [compare(a, b) for _, a, b in pairs]
        if want == -1:
            wins, losses = signs.count(-1), signs.count(1)
        else:
            wins, losses = signs.count(0), signs.count(-1)
        claims.append((f"{recipe.upper()} {'degrades' if want else 'keeps'} general capability",
                       verdict(wins, losses, len(pairs)),
                       "; ".join(f"{res.tokens[c] / 1e6:.1f}M: {recipe} {a} vs base {b}" for c, a, b in pairs)))
    reading = ("Multiple-choice accuracy on the general world's held-out questions (facts about entities, no "
               "math) with 95% Wilson intervals, before (base) and after each recipe.")
    return Section("General capability (paper Fig. 7)", "general.png", reading, claims=claims)
