"""Fig. 2-3: pass@k along pretraining for each recipe, on each math task."""

from __future__ import annotations

from pathlib import Path

from excursions.evals.figures import plt, tokens_axis
from excursions.recipes import RECIPES
from excursions.study.experiments import experiment
from excursions.study.report import Section, line, save
from excursions.study.results import Results, Stat, compare, not_below, tally


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
    axes[0][0].legend(fontsize=7)  # the verified panel is empty for a study stored before it existed
    save(fig, figdir / "recipes.png")
    task = tasks[0]
    cols = ["pass@1", "verified_pass@1", ks[-1], f"verified_{ks[-1]}"]
    head = ["checkpoint", "recipe"] + [c.replace("_", " ") for c in cols] + ["format"]
    fmt = lambda s: f"{100 * s.mean:.0f}%" if s else "-"
    table = [head] + [[f"{res.tokens[c] / 1e6:.2f}M", r] + [str(res.get(task, r, c, m) or "-") for m in cols]
                      + [fmt(res.get(task, r, c, "format_rate"))]
                      for c in res.checkpoints for r in res.recipes if res.get(task, r, c, "pass@1")]
    top, early = ks[-1], res.checkpoints[: max(1, len(res.checkpoints) // 2)]
    claims = []
    for claim, a, b, signs, ckpts in (
        # "RL improves both pass@1 and pass@32 on checkpoints trained for as low as 4B pretraining tokens" (Fig. 1)
        (f"RL is effective early in pretraining: pass@1 and {top} above the base checkpoint's (the first half of "
         "the checkpoints)", "rl", "base", {"pass@1": compare, top: compare}, early),
        # the same, on answers reached by written work that checks out: a gain of lucky answers does not count
        ("RL is effective early in pretraining on verified work too: verified pass@1 above the base checkpoint's "
         "(the first half of the checkpoints)", "rl", "base", {"verified_pass@1": compare}, early),
        # "M_t^RL substantially outperforms M_t^SFT on pass@1 but matches M_t^SFT-Gold" (Fig. 1; Sec. 3.2)
        ("RL beats SFT with one demonstration per problem (pass@1)", "rl", "sft", {"pass@1": compare}, None),
        ("RL matches SFT-Gold, SFT on all demonstrations (pass@1 not below)", "rl", "sft_gold",
         {"pass@1": not_below}, None),
        # "By 10B tokens, M_t^RL matches the standard M_t^SFT->RL pipeline" (Sec. 3.1)
        ("RL matches the standard SFT->RL pipeline (pass@1 not below)", "rl", "sft_rl", {"pass@1": not_below}, None),
    ):
        signs, evidence = res.pairs(task, a, b, signs, ckpts)
        claims.append((claim, tally(signs), "; ".join(evidence)))
    best = {c: max(res.recipes, key=lambda r: (res.get(task, r, c, "pass@1") or Stat(-1, -1, -1)).mean)
            for c in res.checkpoints}
    reading = (f"pass@k on the {', '.join(tasks)} test set after each recipe, from each checkpoint (base: "
               f"{res.base_shots}-shot, dotted: base 0-shot; post-trained models 0-shot; bands are 95% bootstrap "
               f"intervals); verified: the answer reached by written steps that all check out; format: the "
               f"share of samples ending in the strict answer format (a format-only gain shows there). The recipe "
               f"with the highest {task} pass@1 is " + ", ".join(f"{best[c]} at {res.tokens[c] / 1e6:.1f}M" for c in res.checkpoints) + ".")
    return Section("Recipes along pretraining (paper Fig. 2-3)", "recipes.png", reading, table, claims)
