"""Fig. 7: general (non-math) capability after each recipe, measured three ways: the paired per-question change in
multiple-choice accuracy against the base, the paired per-article change in bits per byte on the world's held-out
general articles, and each run's KL from its starting checkpoint on the training prompts (Shenfeld et al. 2025,
"RL's Razor": forgetting tracks this KL), with a figure of the first two against the third."""

from __future__ import annotations

from pathlib import Path

from excursions.evals.figures import plt, tokens_axis
from excursions.study.experiments import experiment
from excursions.study.report import COLORS, Section, legend, line, save
from excursions.study.results import Results
from excursions.study.verdicts import claim, judge, paired

TITLE = "General capability (paper Fig. 7)"
# "Both SFT and SFT-Gold consistently degrade performance by 4-8pp on average across the benchmarks, while RL leaves
# these capabilities essentially unchanged" (Fig. 7): accuracy margin 2 points, half the smallest degradation the
# paper reports; bits per byte 0.003 (verdicts.MARGINS); "consistently": every checkpoint. (claim, favoured, other)
CLAIMS = [
    (claim("SFT and SFT-Gold degrade general capability: accuracy below the base's (every checkpoint)", "superiority",
           ["acc"], "every"), [("base", "sft"), ("base", "sft_gold")]),
    (claim("SFT and SFT-Gold degrade general text: held-out bits per byte above the base's (every checkpoint)",
           "superiority", ["bits_per_byte"], "every"), [("sft", "base"), ("sft_gold", "base")]),
    (claim("RL keeps general capability: accuracy not below the base's by 2 points (every checkpoint)",
           "noninferiority", ["acc"], "every"), [("rl", "base")]),
    (claim("RL keeps general text: held-out bits per byte not above the base's by 0.003 (every checkpoint)",
           "noninferiority", ["bits_per_byte"], "every"), [("base", "rl")]),
]


def changes(res: Results, metric: str) -> list[tuple[str, str, object, object]]:
    """(recipe, checkpoint, paired change of `metric` against the base, the run's KL from its start) of every run
    with both; the change as recipe - base."""
    out = []
    for c in res.checkpoints:
        base = res.arm("general", "base", c, metric)
        for r in res.recipes:
            arm, kl = res.arm("general", r, c, metric), res.get("kl", r, c, "kl")
            if r != "base" and base and arm and kl:
                out.append((r, c, paired(arm, base, seed=res.cfg.eval.seed), kl))
    return out


def _figure(res: Results, path: Path) -> bool:
    """Accuracy along pretraining, and the change in accuracy and in bits per byte against each run's KL; False
    where no run has a KL (a study stored before it was measured): the first panel alone."""
    drift = {m: changes(res, m) for m in ("acc", "bits_per_byte")}
    fig, axes = plt.subplots(1, 3 if drift["acc"] else 1, figsize=(15 if drift["acc"] else 5.5, 3.6), squeeze=False)
    ax, x = axes[0][0], [res.tokens[c] for c in res.checkpoints]
    for recipe in res.recipes:
        line(ax, x, [res.get("general", recipe, c, "acc") for c in res.checkpoints], recipe)
    tokens_axis(ax, x)
    ax.set_ylabel("general MC accuracy (%)")
    legend(ax, "bands: 95% Wilson intervals over questions")
    for ax, (metric, rows) in zip(axes[0][1:], drift.items()):
        scale = 1 if metric == "bits_per_byte" else 100
        for r, c, cmp, kl in rows:
            ax.errorbar(kl.mean, scale * cmp.diff, xerr=[[kl.mean - kl.lo], [kl.hi - kl.mean]],
                        yerr=[[scale * (cmp.diff - cmp.lo)], [scale * (cmp.hi - cmp.diff)]], fmt="o", capsize=2,
                        color=COLORS.get(r), label=r)
            ax.annotate(res.label(c), (kl.mean, scale * cmp.diff), textcoords="offset points", xytext=(3, 3), fontsize=6)
        ax.axhline(0, color="#999", linewidth=1, linestyle="--")
        ax.set_xscale("symlog", linthresh=0.1)  # KL >= 0, from a few hundredths (RL) to tens of nats (SFT)
        ax.set_xlim(left=0)
        ax.set_xlabel("KL(run || its start) on training prompts (nats per completion)")
        ax.set_ylabel("change in accuracy vs base (points)" if scale == 100 else "change in bits per byte vs base")
        legend(ax, "bars: 95% bootstrap intervals (over questions or\narticles; KL over training prompts)")
    fig.tight_layout()
    save(fig, path)
    return bool(drift["acc"])


@experiment(order=4)
def general_experiment(res: Results, figdir: Path) -> Section:
    if "general" not in res.tasks:
        return Section(TITLE, reading="Not evaluated: add general to study.tasks.")
    with_kl = _figure(res, figdir / "general.png")
    claims = [judge(c, [r for a, b in pairs for r in res.rows(c, "general", a, b)]) for c, pairs in CLAIMS]
    table = [["checkpoint", "recipe", "accuracy change vs base", "bits per byte change vs base", "KL from start"]]
    acc = {(r, c): cmp for r, c, cmp, _ in changes(res, "acc")}
    for r, c, cmp, kl in changes(res, "bits_per_byte"):
        change = acc.get((r, c))
        table.append([res.label(c), r, "" if change is None else f"{100 * change.diff:+.1f} [{100 * change.lo:+.1f}, "
                      f"{100 * change.hi:+.1f}]", f"{cmp.diff:+.4f} [{cmp.lo:+.4f}, {cmp.hi:+.4f}]",
                      f"{kl.mean:.2f} [{kl.lo:.2f}, {kl.hi:.2f}]"])
    reading = ("Left: multiple-choice accuracy on the general world's held-out questions (facts about entities, no "
               "math) with 95% Wilson intervals, before (base) and after each recipe. The claims compare each run "
               "with its base paired, question by question (accuracy) and article by article (bits per byte on the "
               "world's held-out general articles), with bootstrap intervals over questions or articles.")
    if with_kl:
        reading += (" Middle and right: each run's change against its KL from the checkpoint it started from, on "
                    "training prompts (one sampled completion each, the exact per-token KL summed over it; 95% "
                    "bootstrap intervals over prompts): if forgetting tracks KL (RL's Razor), the points fall along "
                    "a line, whatever the recipe.")
    return Section(TITLE, "general.png", reading, table if len(table) > 1 else [], claims=claims)
