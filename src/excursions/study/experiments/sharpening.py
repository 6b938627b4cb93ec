"""Fig. 6: pass@1 and the largest tracked pass@k along RL training, direct RL vs SFT then RL."""

from __future__ import annotations

from pathlib import Path

from excursions.evals.figures import plt
from excursions.study.experiments import experiment
from excursions.study.report import COLORS, Section, save
from excursions.study.results import Results, compare, not_below, tally


@experiment(order=3)
def sharpening_experiment(res: Results, figdir: Path) -> Section:
    task = res.math_tasks[0]
    keys = sorted(res.store.training_keys(f"eval/{task}/pass@"), key=lambda k: int(k.split("@")[1]))
    tracked = [keys[0], keys[-1]] if len(keys) > 1 else keys
    ckpts = res.checkpoints
    fig, axes = plt.subplots(len(tracked), len(ckpts), figsize=(3.2 * len(ckpts), 2.8 * len(tracked)),
                             squeeze=False)
    for j, c in enumerate(ckpts):
        for i, key in enumerate(tracked):
            ax = axes[i][j]
            for recipe in ("rl", "sft_rl"):
                seeds = res.seeds(recipe, c)
                steps, vals = res.run_curve(recipe, c, seeds[0] if seeds else 0, "rl", key)
                if steps:
                    ax.plot(steps, [100 * v for v in vals], marker=".", label=recipe, color=COLORS[recipe])
            ax.set_title(f"{res.tokens[c] / 1e6:.1f}M tokens", fontsize=9)
            ax.set_xlabel("RL step")
            ax.set_ylabel(key.split("/")[-1] + " (%)")
    axes[0][0].legend(fontsize=7)
    save(fig, figdir / "sharpening.png")
    top = res.ks[-1]
    # "applying RL directly to M_t improves both pass@1 and pass@32, expanding the model's distribution rather
    # than merely sharpening it" (Fig. 6, right)
    expand, ev_expand = res.pairs(task, "rl", "base", {"pass@1": compare, top: compare})
    # "under the standard pipeline, pass@1 continues to improve during RL but pass@32 decreases" (Fig. 6, left):
    # SFT->RL against SFT, its pass@k below while its pass@1 is not
    sharpen, ev_sharpen = res.pairs(task, "sft_rl", "sft", {"pass@1": not_below, top: lambda a, b: compare(b, a)})
    claims = [(f"Direct RL expands: pass@1 and {top} both above the base checkpoint's", tally(expand),
               "; ".join(ev_expand)),
              (f"SFT->RL sharpens: {top} below SFT's while pass@1 is not", tally(sharpen), "; ".join(ev_sharpen))]
    big = tracked[-1].split("/")[-1] if tracked else top
    reading = (f"Test {' and '.join(k.split('/')[-1] for k in tracked)} (0-shot, tracked during training on a subset "
               f"of the test problems) along the RL steps of direct RL and of the RL stage of SFT->RL, from each "
               f"checkpoint. Expansion shows as {big} rising with pass@1; sharpening as pass@1 rising while {big} stays "
               f"or falls. The claim below uses the final evaluations' {top}.")
    return Section("Sharpening vs expansion (paper Fig. 6)", "sharpening.png", reading, claims=claims)
