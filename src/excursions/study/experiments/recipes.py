"""Fig. 2-3: pass@k along pretraining for each recipe, on each math task."""

from __future__ import annotations

from pathlib import Path

from excursions.evals.figures import plt, tokens_axis
from excursions.recipes import RECIPES
from excursions.study.experiments import experiment
from excursions.study.report import Section, legend, line, save
from excursions.study.results import Results, Stat
from excursions.study.verdicts import claim, judge


def claims_of(top: str) -> list:
    """(claim, the side it favours, the other) of this section, `top` the largest k evaluated."""
    return [
        # "RL improves both pass@1 and pass@32 on checkpoints trained for as low as 4B pretraining tokens" (Fig. 1):
        # at the early checkpoints, each; pass@1 5 points and pass@k 3 points (verdicts.MARGINS)
        (claim(f"RL is effective early in pretraining: pass@1 and {top} above the base checkpoint's (every early "
               "checkpoint)", "superiority", ["pass@1", top], "early"), "rl", "base"),
        # the same, on answers reached by written work that checks out: a gain of lucky answers does not count
        (claim("RL is effective early in pretraining on verified work too: verified pass@1 above the base "
               "checkpoint's (every early checkpoint)", "superiority", ["verified_pass@1"], "early"), "rl", "base"),
        # "M_t^RL substantially outperforms M_t^SFT on pass@1 but matches M_t^SFT-Gold" (Fig. 1; Sec. 3.2): the first
        # half at every checkpoint; the second is the overview's, of no checkpoint in particular: pooled
        (claim("RL beats SFT with one demonstration per problem (pass@1, every checkpoint)", "superiority",
               ["pass@1"], "every"), "rl", "sft"),
        (claim("RL matches SFT-Gold, SFT on all demonstrations (pass@1 not below by 5 points, checkpoints pooled)",
               "noninferiority", ["pass@1"], "pooled"), "rl", "sft_gold"),
        # "By 10B tokens, M_t^RL matches the standard M_t^SFT->RL pipeline" (Sec. 3.1; Fig. 2): every checkpoint
        # the study branches from is past its takeoff, as 10B is in the paper's
        (claim("RL matches the standard SFT->RL pipeline (pass@1 not below by 5 points, every checkpoint)",
               "noninferiority", ["pass@1"], "every"), "rl", "sft_rl"),
    ]


@experiment(order=1)
def recipes_experiment(res: Results, figdir: Path) -> Section:
    tasks, ks = res.math_tasks, res.ks
    panels = [*ks, "verified_pass@1"]  # answers alone, then answers reached by work that checks out
    fig, axes = plt.subplots(len(tasks), len(panels), figsize=(4 * len(panels), 3.3 * len(tasks)), squeeze=False)
    x = [res.tokens[c] for c in res.checkpoints]
    for row, task in zip(axes, tasks):
        for ax, k in zip(row, panels):
            for recipe in res.recipes:
                dashed = recipe in RECIPES and RECIPES[recipe].dashed
                line(ax, x, [res.get(task, recipe, c, k) for c in res.checkpoints], recipe,
                     linestyle="--" if dashed else "-")
            line(ax, x, [res.get(task, "base", c, k, shots=0) for c in res.checkpoints], "base 0-shot", linestyle=":")
            ax.set_title(f"{task} {k.replace('_', ' ')}")
            tokens_axis(ax, x)
            ax.set_ylabel(f"{k.replace('_', ' ')} (%)")
    # beside the last panel, where it covers no line (the lines are named in the first: the verified panel is empty
    # for a study stored before it existed)
    legend(axes[0][-1], "bands: 95% bootstrap\nintervals over problems", of=axes[0][0], loc="upper left",
           bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    save(fig, figdir / "recipes.png")
    task = tasks[0]
    cols = ["pass@1", "verified_pass@1", ks[-1], f"verified_{ks[-1]}"]
    head = ["checkpoint", "recipe"] + [c.replace("_", " ") for c in cols] + ["format"]
    fmt = lambda s: f"{100 * s.mean:.0f}%" if s else "-"
    table = [head] + [[f"{res.label(c)}", r] + [str(res.get(task, r, c, m) or "-") for m in cols]
                      + [fmt(res.get(task, r, c, "format_rate"))]
                      for c in res.checkpoints for r in res.recipes if res.get(task, r, c, "pass@1")]
    top = ks[-1]
    claims = [judge(c, res.rows(c, task, a, b)) for c, a, b in claims_of(top)]
    best = {c: max(res.recipes, key=lambda r: (res.get(task, r, c, "pass@1") or Stat(-1, -1, -1)).mean)
            for c in res.checkpoints}
    reading = (f"pass@k on the {', '.join(tasks)} test set after each recipe, from each checkpoint (base: "
               f"{res.base_shots}-shot, dotted: base 0-shot; post-trained models 0-shot; bands are 95% bootstrap "
               f"intervals); verified: the answer reached by written steps that all check out; format: the "
               f"share of samples ending in the strict answer format (a format-only gain shows there). The recipe "
               f"with the highest {task} pass@1 is " + ", ".join(f"{best[c]} at {res.label(c)}" for c in res.checkpoints) + ".")
    return Section("Recipes along pretraining (paper Fig. 2-3)", "recipes.png", reading, table, claims)
