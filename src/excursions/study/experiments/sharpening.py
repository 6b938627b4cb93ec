"""Fig. 6: pass@1 and the largest tracked pass@k along RL training, direct RL vs SFT then RL; and expansion measured
directly (issue 22): the problems each side solves that the other never does (`evals.expansion.transitions`)."""

from __future__ import annotations

from pathlib import Path

from excursions.evals.expansion import transitions
from excursions.evals.figures import plt
from excursions.study.experiments import experiment
from excursions.study.report import COLORS, Section, legend, save, tracked_band
from excursions.study.results import Results, Stat
from excursions.study.verdicts import claim, judge, mcnemar


def claims_of(top: str) -> list:
    """(claim, the side it favours, the other, whether the note gives the who-solves-what counts)."""
    return [
        # "applying RL directly to M_t improves both pass@1 and pass@32, expanding the model's distribution rather than
        # merely sharpening it" (Fig. 6, right; Sec. 4.1 "Early stage RL can expand"): at the early checkpoints, and
        # measured directly too: more problems solved within n samples by direct RL alone than by the base alone
        # (net_solved, margin 3 points as pass@k; McNemar's exact p in the note)
        (claim(f"Direct RL expands: pass@1 and {top} above the base checkpoint's, and more problems solved by RL "
               f"alone than by the base alone (every early checkpoint)", "superiority", ["pass@1", top, "net_solved"],
               "early"), "rl", "base", True),
        # "under the standard pipeline, pass@1 continues to improve during RL but pass@32 decreases" (Fig. 6, left;
        # "when we apply the standard pipeline on pretraining checkpoints, we observe the sharpening effect"): SFT's
        # pass@k above SFT->RL's by the pass@k margin, and SFT->RL's pass@1 not below SFT's by the pass@1 margin
        (claim(f"SFT->RL sharpens: its {top} below SFT's (every checkpoint)", "superiority", [top], "every"),
         "sft", "sft_rl", False),
        (claim("SFT->RL sharpens: while its pass@1 is not below SFT's by 5 points (every checkpoint)",
               "noninferiority", ["pass@1"], "every"), "sft_rl", "sft", False),
    ]

PAIRS = (("rl", "base"), ("sft_rl", "sft"))  # (trained, its start)
BARS = (("trained_only", "#2a9d8f"), ("base_only", "#e76f51"), ("both", "#8d99ae"), ("neither", "#e9ecef"))


def coverage(res: Results, task: str, trained: str, start: str, ckpt: str) -> dict | None:
    """`transitions` from `start`'s evaluation to `trained`'s on the problems both sampled, or None."""
    a, b = res.problems(task, start, ckpt), res.problems(task, trained, ckpt)
    common = sorted(set(a) & set(b))
    if not common:
        return None
    return transitions([a[p] for p in common], [b[p] for p in common], res.cfg.eval.bootstrap, res.cfg.eval.seed)


def net(t: dict) -> Stat:
    """The share of problems only the trained side solves minus those only its start solves, paired interval."""
    return Stat(t["net"]["share"], t["net"]["lo"], t["net"]["hi"])


def described(t: dict) -> str:
    only_a, only_b = t["trained_only"]["count"], t["base_only"]["count"]
    return (f"solved by the trained model only {only_a}, by its start only {only_b}, both {t['both']['count']}, "
            f"neither {t['neither']['count']} (net {net(t)}, McNemar p = {mcnemar(only_a, only_b):.2g})")


def mean_interval(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, lo, hi): the mean over problems with a 95% normal interval.

    >>> mean_interval([1.0, 2.0, 3.0])
    (2.0, 0.868, 3.132)
    """
    if not values:
        return None
    m = sum(values) / len(values)
    sd = (sum((v - m) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
    half = 1.96 * sd / len(values) ** 0.5
    return m, round(m - half, 3), round(m + half, 3)


def diversity(record: dict | None) -> tuple | None:
    """(distinct right step sequences per solved problem, answer entropy in bits per problem) of an evaluation's
    per-problem rows, each with its interval; None for a result written before they were kept."""
    rows = (record or {}).get("per_problem", [])
    if not rows or "distinct" not in rows[0]:
        return None
    return mean_interval([r["distinct"] for r in rows if r["c"]]), mean_interval([r["answer_entropy"] for r in rows])


def _cell(stat: tuple | None) -> str:
    return "" if stat is None else f"{stat[0]:.2f} [{stat[1]:.2f}, {stat[2]:.2f}]"


@experiment(order=3)
def sharpening_experiment(res: Results, figdir: Path) -> Section:
    task = res.math_tasks[0]
    keys = sorted(res.store.training_keys(f"eval/{task}/pass@"), key=lambda k: int(k.split("@")[1]))
    tracked = [keys[0], keys[-1]] if len(keys) > 1 else keys
    ckpts = res.checkpoints
    cover = {(c, pair): coverage(res, task, *pair, c) for c in ckpts for pair in PAIRS}
    _figure(res, tracked, cover, figdir / "sharpening.png")
    top = res.ks[-1]
    claims = []
    for c, a, b, note in claims_of(top):
        rows = res.rows(c, task, a, b)
        if note:  # the who-solves-what counts behind net_solved, with McNemar's exact p
            note = "; ".join(f"{res.label(k)}: {described(t)}" for k in res.early() if (t := cover[(k, PAIRS[0])]))
        claims.append(judge(c, rows, note))
    big = tracked[-1].split("/")[-1] if tracked else top
    reading = (f"Test {' and '.join(k.split('/')[-1] for k in tracked)} (0-shot, tracked during training on a subset "
               f"of the test problems, with 95% bootstrap bands, from step 0: the starting model) along the RL "
               f"steps of direct RL and of the RL stage of SFT->RL, from each checkpoint. Expansion shows as {big} rising with pass@1; sharpening as pass@1 rising while {big} stays "
               f"or falls. The claim below uses the final evaluations' {top}. The bottom row measures expansion "
               f"directly: of the problems both evaluations sampled, those the trained model solves within n "
               f"samples and its start never does (trained_only), the reverse (base_only: what was lost), both, "
               f"neither; direct RL expands where trained_only exceeds base_only beyond the paired interval.")
    table = [["checkpoint", "trained vs its start", "distinct right solutions per solved problem",
              "answer entropy (bits)"]]
    for c in ckpts:
        for pair in PAIRS:
            got = [diversity(res.record(task, r, c)) for r in pair]
            if all(got):
                table.append([res.label(c), f"{pair[0]} vs {pair[1]}", f"{_cell(got[0][0])} vs {_cell(got[1][0])}",
                              f"{_cell(got[0][1])} vs {_cell(got[1][1])}"])
    if len(table) > 1:
        reading += (" The table counts, per solved problem, the distinct correct step sequences among its n samples "
                    "(normalised `a op b = c` chains: two phrasings of one chain count once), and the entropy of the "
                    "final answers per problem (95% normal intervals over problems): sharpening narrows both.")
    return Section("Sharpening vs expansion (paper Fig. 6)", "sharpening.png", reading, table if len(table) > 1 else [],
                   claims=claims)

def _figure(res: Results, tracked: list[str], cover: dict, path: Path) -> None:
    """Per checkpoint: the tracked pass@k along RL (bands: 95% intervals), and who solves which problems."""
    ckpts = res.checkpoints
    fig, axes = plt.subplots(len(tracked) + 1, len(ckpts), figsize=(3.2 * len(ckpts), 2.8 * (len(tracked) + 1)),
                             squeeze=False)
    for j, c in enumerate(ckpts):
        for i, key in enumerate(tracked):
            ax = axes[i][j]
            for recipe in ("rl", "sft_rl"):
                seeds = res.seeds(recipe, c)
                seed = seeds[0] if seeds else 0
                steps, vals = res.run_curve(recipe, c, seed, "rl", key)
                if steps:
                    ax.plot(steps, [100 * v for v in vals], marker=".", label=recipe, color=COLORS[recipe])
                tracked_band(ax, res, res.unit_id(recipe, c, seed), "rl", key, dict(zip(steps, steps)),
                             COLORS[recipe], alpha=0.15)
            ax.set_title(f"{res.label(c)} tokens", fontsize=9)
            ax.set_xlabel("RL step")
            ax.set_ylabel(key.split("/")[-1] + " (%)")
        ax = axes[-1][j]  # the bottom row: who solves which problems (within n samples), trained vs its start
        for y, pair in enumerate(PAIRS):
            left, t = 0.0, cover[(c, pair)]
            for kind, color in BARS if t else ():
                ax.barh(y, 100 * t[kind]["share"], left=left, color=color, label=kind)
                left += 100 * t[kind]["share"]
        ax.set_yticks(range(len(PAIRS)), [f"{a} vs {b}" for a, b in PAIRS], fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_xlabel("problems (%)")
        ax.set_title(f"{res.label(c)} tokens: who solves what", fontsize=9)
    for i, row in enumerate(axes):  # one legend a row, in the first panel that has something to name
        ax = next((a for a in row if a.get_legend_handles_labels()[0]), None)
        if ax is not None:
            legend(ax, None if i == len(axes) - 1 else "bands: 95% bootstrap intervals\nover problems", fontsize=6)
    save(fig, path)
