"""Fig. 6: pass@1 and the largest tracked pass@k along RL training, direct RL vs SFT then RL."""

from __future__ import annotations

from pathlib import Path

from excursions.evals.figures import plt
from excursions.study.experiments import experiment
from excursions.study.report import COLORS, Section, save
from excursions.study.results import Results, compare, verdict


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
    expand, sharpen, rows = [], [], []
    for c in ckpts:
        base, rl = res.get(task, "base", c, top), res.get(task, "rl", c, top)
        sft, sft_rl = res.get(task, "sft", c, top), res.get(task, "sft_rl", c, top)
        if base and rl:
            expand.append(compare(rl, base))
        if sft and sft_rl:
            sharpen.append(compare(sft_rl, sft))
        rows.append(f"{res.tokens[c] / 1e6:.1f}M: base {base or '-'} -> rl {rl or '-'}; sft {sft or '-'} -> sft_rl "
                    f"{sft_rl or '-'}")
    # expansion: direct RL lifts pass@k at large k; sharpening: after SFT, RL does not (equal or lower)
    wins = sum(1 for e, s in zip(expand, sharpen) if e == 1 and s <= 0)
    against = sum(1 for e, s in zip(expand, sharpen) if e == -1 or s == 1)
    claims = [(f"Direct RL expands ({top} up) while SFT->RL sharpens ({top} not up)",
               verdict(wins, against, min(len(expand), len(sharpen))), "; ".join(rows))]
    big = tracked[-1].split("/")[-1] if tracked else top
    reading = (f"Test {' and '.join(k.split('/')[-1] for k in tracked)} (0-shot, tracked during training on a subset "
               f"of the test problems) along the RL steps of direct RL and of the RL stage of SFT->RL, from each "
               f"checkpoint. Expansion shows as {big} rising with pass@1; sharpening as pass@1 rising while {big} stays "
               f"or falls. The claim below uses the final evaluations' {top}.")
    return Section("Sharpening vs expansion (paper Fig. 6)", "sharpening.png", reading, claims=claims)
