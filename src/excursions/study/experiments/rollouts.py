"""Fig. 18: direct RL on easy / hard training splits with few and many rollouts, per FLOP and per step.

The last chosen checkpoint's training problems are split by its own success rate (a `splits` unit: App. D's
easy and hard sets, equal in size), then direct RL runs on each split with each rollout count of `study.rollouts`,
test pass@k tracked along training against the FLOPs spent.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.ticker import NullFormatter

from excursions.config import Config, digest, prompt_settings
from excursions.evals.figures import plt
from excursions.evals.passk import SPLITS, difficulty
from excursions.study.experiments import experiment
from excursions.study.plan import (Checkpoint, Unit, chosen_checkpoints, configured, posttrain_dir, recipe_settings,
                                   rollout_prompts, world_dir)
from excursions.study.report import Section, legend, save, tracked_band
from excursions.study.results import Results
from excursions.study.verdicts import Arm, align, claim, compare, judge, not_run

TITLE = "Rollouts per prompt, per FLOP, on difficulty splits (paper Fig. 18)"
METRICS = ("pass@1", "pass@8")
CLAIMS = (
    # "n=5 achieves comparable accuracy at substantially lower FLOPs, especially on the harder split" (App. D.2,
    # Fig. 18): the fewest rollouts at the end of their run above the most rollouts at the same FLOPs, paired on the
    # tracked problems, on each split and tracked metric; margins pass@1 5 points, pass@8 3
    claim("Fewer rollouts per problem are more FLOP-efficient (above the most rollouts at equal FLOPs, every split)",
          "superiority", METRICS, "every"),
    # "asymptotic performance is largely independent of the number of rollouts; both n=5 and n=64 converge to similar
    # pass@k peaks across difficulty levels" (App. D.2): the two runs' final values equivalent within the margins
    claim("The final pass@k does not depend on the rollout count (equivalent within the margins, every split)",
          "equivalence", METRICS, "every"),
)


def splits_unit(cfg: Config, out: Path, ckpt: Checkpoint) -> Unit:
    """The checkpoint's training problems sampled and split by difficulty: its record and the two worlds beside it."""
    s, (name, tokens, source) = cfg.study, ckpt
    settings = {"source": source, "world": str(world_dir(cfg, out)), "family": cfg.rl.family,
                "problems": s.split_problems, "n": s.split_n, "temperature": cfg.rl.temperature,
                "max_new_tokens": cfg.rl.max_new_tokens, "min_size": rollout_prompts(cfg), **prompt_settings(cfg)}
    return Unit(f"splits/{name}", "splits", out / "splits" / f"{name}-{digest(settings)}" / "record.json", name,
                tokens, source=source)


def runs(cfg: Config, out: Path) -> dict[tuple[str, int], Unit]:
    """The RL runs, by (split, rollouts per prompt)."""
    s = cfg.study
    name, tokens, source = ckpt = chosen_checkpoints(cfg, out)[0][-1]
    seed, steps, prompts = s.seeds[0], s.rollout_steps or cfg.rl.steps, rollout_prompts(cfg)
    split_dir = splits_unit(cfg, out, ckpt).path.parent
    found = {}
    for split in SPLITS:
        for g in s.rollouts:
            overrides = (("rl", "group_size", g), ("rl", "steps", steps), ("rl", "prompts_per_step", prompts),
                         ("rl", "track_every", max(1, steps // 4)))
            world = split_dir / split
            settings = {**recipe_settings(configured(cfg, seed, overrides), "rl"), "source": source, "world": str(world)}
            run = posttrain_dir(out, name, f"rollouts-{split}-n{g}", settings)
            found[split, g] = Unit(f"rollouts/{split}/n{g}/{name}", "posttrain", run, name, tokens, "rl", seed, source,
                                   overrides, str(world))
    return found


def rollout_units(cfg: Config, out: Path) -> list[Unit]:
    if not cfg.study.rollouts:
        return []
    return [splits_unit(cfg, out, chosen_checkpoints(cfg, out)[0][-1]), *runs(cfg, out).values()]


@experiment(order=9, units=rollout_units)
def rollouts_experiment(res: Results, figdir: Path) -> Section:
    planned = runs(res.cfg, res.out) if res.cfg.study.rollouts else {}
    done = {u.id for u in res.done(list(planned.values()))}
    trained = {key: u.id for key, u in planned.items()  # a skipped run (its split too small) has no FLOPs logged
               if u.id in done and res.training(u.id, "rl", "total_rollout_flops")[0]}
    gs = sorted({g for _, g in trained})
    splits = [s for s in SPLITS if any((s, g) in trained for g in gs)]
    skipped = [not_run(c, "needs runs with two rollout counts: study.rollouts, e.g. [4, 16]") for c in CLAIMS]
    if not splits:
        return Section(TITLE, reading="No rollouts experiment in this study (add 'rollouts' to study.experiments).",
                       claims=skipped)
    if len(gs) < 2:  # the runs are in the database; the figure compares rollout counts, and there is one
        return Section(TITLE, reading=f"The rollouts experiment ran with one rollout count ({gs[0]} per prompt); its "
                                      "figure compares two: set study.rollouts to two counts, e.g. [4, 16].",
                       claims=skipped)
    task = res.math_tasks[0]
    first = min(trained.values())  # every run tracks the same metrics on the same problems
    metrics = [k for k in METRICS if res.training(first, "rl", f"eval/{task}/{k}")[0]]
    curves = {(split, g, m): flops_curve(res, u, task, m) for (split, g), u in trained.items() for m in metrics}
    _figure(res, trained, task, curves, splits, gs, metrics, figdir / "rollouts.png")
    problems = res.training(first, "rl", f"eval/{task}/problems")[1]
    tracked = int(problems[0]) if problems else 100  # the runs' rl.track_problems, or fewer
    table, claims = _claims(res, trained, curves, splits, gs, metrics, task)
    counts = res.store.problem_counts(splits_unit(res.cfg, res.out, chosen_checkpoints(res.cfg, res.out)[0][-1]).id)
    return Section(TITLE, "rollouts.png", _reading(counts, gs, tracked), table, claims)


def _figure(res: Results, trained: dict, task: str, curves: dict, splits: list[str], gs: list[int], metrics: list[str],
            path: Path) -> None:
    """Per split: each tracked pass@k against FLOPs, and the first against RL steps, a line per rollout count."""
    colors = dict(zip(gs, ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e")))
    fig, axes = plt.subplots(len(splits), len(metrics) + 1, figsize=(4 * (len(metrics) + 1), 3.2 * len(splits)),
                             squeeze=False)
    for panels, split in zip(axes, splits):
        for ax, m in zip(panels, metrics):
            start = None
            for g in gs:
                if (split, g, m) in curves:
                    steps, fl, vals = curves[split, g, m]
                    # a log axis has no 0: the start (step 0, no FLOPs spent) is a line of its own
                    start = vals[0] if fl[0] == 0 else start
                    spent = [i for i, f in enumerate(fl) if f > 0]
                    ax.plot([fl[i] for i in spent], [100 * vals[i] for i in spent], marker="o", color=colors[g],
                            label=f"n = {g}")
                    tracked_band(ax, res, trained[split, g], "rl", f"eval/{task}/{m}",
                                 {steps[i]: fl[i] for i in spent}, colors[g])
            if start is not None:
                ax.axhline(100 * start, color="#999", linestyle=":", linewidth=1, label="start (step 0)")
            ax.set_xscale("log")
            lo, hi = ax.get_xlim()  # labelled at 1, 2 and 5 x 10^e: every run's points between two labels
            ticks = [(m, e) for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                     for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
            ax.set_xticks([m * 10.0 ** e for m, e in ticks], [f"{m}e{e}" for m, e in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())  # 3e12, 4e12, ... overlap at this width
            ax.set_xlabel("RL FLOPs (training + rollouts)")
            ax.set_ylabel(f"test {m} (%)")
            ax.set_title(f"{split} split: {m} per FLOP", fontsize=9)
            legend(ax)
        ax = panels[-1]
        for g in gs:
            if (split, g, metrics[0]) in curves:
                steps, _, vals = curves[split, g, metrics[0]]
                ax.plot(steps, [100 * v for v in vals], marker="o", color=colors[g], label=f"n = {g}")
                tracked_band(ax, res, trained[split, g], "rl", f"eval/{task}/{metrics[0]}", dict(zip(steps, steps)),
                             colors[g])
        ax.set_xlabel("RL step (same prompts per step)")
        ax.set_ylabel(f"test {metrics[0]} (%)")
        ax.set_title(f"{split} split: {metrics[0]} per step", fontsize=9)
        legend(ax)
    fig.tight_layout()
    save(fig, path)


def _claims(res: Results, trained: dict, curves: dict, splits: list[str], gs: list[int], metrics: list[str],
            task: str):
    """The fewest rollouts' final value against the most rollouts' curve at that budget (equal FLOPs), and the two
    runs' final values (the paper's asymptote), per split and metric, paired on the tracked problems."""
    few, many = gs[0], gs[-1]
    table = [["split", "metric", f"n = {few} at its end", f"n = {many} at the same FLOPs", "FLOPs",
              f"n = {many} at its end"]]
    efficient, alike = [], []
    for split in splits:
        for m in metrics:
            if (split, few, m) not in curves or (split, many, m) not in curves:
                continue
            (st_few, fl_few, v_few), (st_many, fl_many, v_many) = curves[split, few, m], curves[split, many, m]
            a = res.tracked_arm(trained[split, few], "rl", st_few[-1], m)
            b = arm_at(res, trained[split, many], st_many, fl_many, fl_few[-1], m)
            last = res.tracked_arm(trained[split, many], "rl", st_many[-1], m)
            if a and b:
                efficient.append(compare(CLAIMS[0], split, f"n = {few} vs n = {many} at {fl_few[-1]:.2e} FLOPs", m,
                                         a, b, seed=res.cfg.eval.seed))
            if a and last:
                alike.append(compare(CLAIMS[1], split, f"n = {few} vs n = {many}, final", m, a, last,
                                     seed=res.cfg.eval.seed))
            table.append([split, m, f"{100 * v_few[-1]:.1f}", f"{100 * value_at(fl_many, v_many, fl_few[-1]):.1f}",
                          f"{fl_few[-1]:.2e}", f"{100 * v_many[-1]:.1f}"])
    why = ("not run", "the runs were tracked without per-problem counts (stored before they were kept): run them "
                      "again")
    return table, [judge(CLAIMS[0], efficient, empty=why), judge(CLAIMS[1], alike, empty=why)]


def arm_at(res: Results, unit: str, steps: list[int], flops: list[float], x: float, metric: str) -> Arm | None:
    """A run's tracked per-problem scores at `x` FLOPs, each problem linearly between the two tracked points around
    it (`value_at`, per problem: the mean of the result is the curve's value there); before the first point, the
    first (which had more compute than x: the comparison then favours this run)."""
    i = next((j for j in range(1, len(flops)) if x <= flops[j]), len(flops) - 1)
    if x <= flops[0] or i == 0:
        return res.tracked_arm(unit, "rl", steps[0], metric)
    lo, hi = (res.tracked_arm(unit, "rl", steps[j], metric) for j in (i - 1, i))
    if not lo or not hi:
        return None
    t = min(1.0, (x - flops[i - 1]) / (flops[i] - flops[i - 1]))
    ids, a, b = align(lo, hi)
    return Arm(ids, a + (b - a) * t, lo.seeds)


def _reading(counts: list[tuple[int, int]], gs: list[int], tracked: int) -> str:
    kinds = [difficulty(c, n) for n, c in counts]
    few, many = gs[0], gs[-1]
    return (f"The last checkpoint's training problems split by its own 0-shot success rate in "
            f"{counts[0][0] if counts else '?'} samples each (easy: at least a quarter correct, {kinds.count('easy')} "
            f"of {len(kinds)} sampled; hard: at most an eighth, {kinds.count('hard')}; both splits cut to the smaller's "
            f"size), then direct RL on each split with n = {', '.join(map(str, gs))} rollouts per prompt and otherwise "
            f"equal settings. Test pass@k (0-shot, {tracked} test problems) is tracked along training against the "
            f"FLOPs spent (6N per trained token, 2N per generated one) and against RL steps. The first claim compares "
            f"n = {few} at the end of its run with n = {many} at the same FLOPs (interpolated; where n = {many}'s "
            f"first point already cost more, that point: the comparison then favours n = {many}), the second the two "
            "runs' final values, each paired on the tracked problems (at equal FLOPs, each problem's score "
            "interpolated between the two tracked points around it).")


def flops_curve(res: Results, unit: str, task: str, metric: str) -> tuple[list[int], list[float], list[float]]:
    """A run's tracked test `metric`: (steps, the FLOPs spent by then, training + rollouts; 0 at step 0, values)."""
    flops = dict(zip(*res.training(unit, "rl", "total_train_flops")))
    rflops = dict(zip(*res.training(unit, "rl", "total_rollout_flops")))
    steps, vals = res.training(unit, "rl", f"eval/{task}/{metric}")
    return steps, [flops.get(st, 0) + rflops.get(st, 0) for st in steps], vals


def value_at(xs: list[float], ys: list[float], x: float) -> float:
    """A tracked curve's value at `x`, linearly between its points; before its first point, the first value
    (which had more compute than `x`: a comparison at `x` then favours this curve).

    >>> value_at([10, 20], [0.2, 0.4], 15), value_at([10, 20], [0.2, 0.4], 5), value_at([10, 20], [0.2, 0.4], 30)
    (0.30000000000000004, 0.2, 0.4)
    """
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]
