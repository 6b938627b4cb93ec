"""Fig. 13 and 15 (App. B.3, B.5): did every run train to convergence before it was compared?

The paper compares recipes "given sufficient compute": "we train all our RL and SFT runs until convergence, and we
confirm the convergence of training" (Sec. 2.2). Each training stage that ran `until = "converged"` scored validation
problems every few steps (`train.loop.Converge`); this section draws those curves with the training reward and the
tracked test pass@1, lists every run with how it ended, and checks the claim over all of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from excursions.evals.figures import plt
from excursions.recipes import RECIPES
from excursions.study.experiments import experiment
from excursions.study.units import SKIPPED
from excursions.study.report import COLORS, Section, legend, save, tracked_band
from excursions.study.results import Results
from excursions.study.verdicts import Claim, Row, decide, judge, not_run, paired
from excursions.train.loop import mean_score, window_arms


def converged_claim(threshold: float) -> Claim:
    # "we train all our RL and SFT runs until convergence, and we confirm the convergence of training" (Sec. 2.2,
    # App. B.3, B.5): in each run, the best validation pass@1 before its last window is not below the window's best
    # by more than the threshold the rule stopped on (non-inferiority of "before" against "last window": exactly
    # the rule's own test, read again from study.db); a run at a fixed step count is not checked
    return Claim("Every run trained to convergence: its last window of validation evaluations gains less than the "
                 f"threshold ({100 * threshold:g} points of pass@1) over the best before it (App. B.3, B.5)",
                 "noninferiority", {"pass@1": threshold},
                 "the convergence rule's threshold ([rl|sft|parallel.converge] threshold), set before any run",
                 "every")


def runs(res: Results) -> list[tuple]:
    """Every finished post-training stage of the study: (unit, stage, its convergence record); a unit skipped for
    want of problems trained nothing."""
    done = [u for u in res.done([u for u in res.units if u.kind == "posttrain"]) if not (u.path / SKIPPED).exists()]
    return [(u, stage, res.store.convergence(u.id, stage)) for u in done for stage in res.stages(u.id, u.recipe)]


def status(rec: dict) -> str:
    if not rec:
        return "no record"
    if not rec.get("checked"):
        return "fixed steps"
    return "converged" if rec.get("converged") else "capped"


def window_row(unit, stage: str, rec: dict, history: list) -> Row | None:
    """The run's last window against the best before it, recomputed from its stored validation counts (`history`)
    as the rule computed it when the run ended: a non-inferiority comparison of "best before" (A) against "last
    window" (B)."""
    arms = window_arms(history, int(rec["window"])) if rec.get("window") else None
    if arms is None:
        return None
    recent, before = arms
    cmp, threshold = paired(before, recent), rec["threshold"]
    return Row(f"{unit.id} ({stage})", "best before vs last window", "pass@1", cmp, threshold,
               decide("noninferiority", cmp.lo, cmp.hi, threshold),
               note="" if rec.get("converged") else f"capped at {rec['steps']:.0f} steps")


@experiment(order=14)
def convergence_experiment(res: Results, figdir: Path) -> Section:
    title = "Convergence of every run (paper Fig. 13, 15; App. B.3, B.5)"
    c = converged_claim(res.cfg.rl.converge.threshold)
    found = runs(res)
    if not found:
        return Section(title, reading="No post-training run has finished yet.", claims=[not_run(c, "no run finished")])
    task = res.math_tasks[0]
    table = [["run", "stage", "steps", "cap", "ended", "last window - best before [95%]", "best val pass@1",
              "val evaluations"]]
    rows, unchecked = [], []
    for unit, stage, rec in found:
        history = res.val_history(unit.id, stage)
        r = window_row(unit, stage, rec, history) if rec.get("checked") else None
        if r:
            rows.append(r)
        else:  # a fixed step count, or a run stored before the rule existed
            unchecked.append(f"{unit.id} ({stage})")
        best = max((mean_score(h) for _, h in history), default=None)
        table.append([unit.id, stage, f"{rec['steps']:.0f}" if rec else "-",
                      f"{rec['cap']:.0f}" if rec.get("cap") else "-", status(rec),
                      (f"{100 * rec['change']:+.1f} [{100 * rec['change_lo']:+.1f}, {100 * rec['change_hi']:+.1f}]"
                       if "change" in rec else "-"), f"{100 * best:.1f}" if best is not None else "-",
                      str(len(history))])
    verdict = judge(c, rows, empty=("not run", "every run trained a fixed number of steps: set rl.until, sft.until "
                                              "and parallel.until to converged"))
    if unchecked and verdict.verdict == "reproduced":  # a run nobody checked cannot count as converged
        verdict.verdict = "inconclusive"
    if unchecked:
        verdict.note = f"{len(unchecked)} run(s) at a fixed step count, not checked (listed in its section's table)"
    figure = _figure(res, task, figdir)
    capped = [r.where for r in rows if r.note]
    reading = (f"{len(found)} training stages: {sum(status(rec) == 'converged' for _, _, rec in found)} converged, "
               f"{len(capped)} capped, {len(unchecked)} at a fixed step count. A run that trains until converged "
               "scores validation problems (never test) every few steps and stops at the first evaluation where the "
               "best of its last window gains less than the threshold over the best before it, with 95% confidence "
               "(paired bootstrap over the validation problems); it returns its last weights. The figure shows, for "
               "the recipes' runs from each checkpoint, the training reward, the validation pass@1 the rule reads and "
               "the tracked test pass@1 along RL steps, and SFT's validation pass@1 per epoch (Fig. 15)."
               + (f" Capped: {', '.join(capped)}." if capped else ""))
    return Section(title, figure, reading, table, [verdict])


NORMAL = "bands: 95% normal intervals over the\nvalidation problems"
BOOTSTRAP = "bands: 95% bootstrap intervals over problems"


def val_band(ax, res: Results, unit: str, stage: str, xs: dict[int, float] | None, color) -> None:
    """The 95% band of the validation pass@1 the rule read at each evaluation (mean +- 1.96 standard errors over the
    validation problems), at x = xs[step] (the step itself where None)."""
    history = res.val_history(unit, stage)
    if not history:
        return
    x, lo, hi = [], [], []
    for step, per in history:
        v = np.array(list(per.values()))
        half = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
        x.append(step if xs is None else xs.get(step, step))
        lo.append(100 * (v.mean() - half))
        hi.append(100 * (v.mean() + half))
    ax.fill_between(x, lo, hi, color=color, alpha=0.12, linewidth=0)


def _figure(res: Results, task: str, figdir: Path) -> str:
    """Rows: checkpoints; columns: RL reward, validation pass@1 and test pass@1 along steps (RL and parallel
    stages), and SFT stages' validation pass@1 per epoch; one line per recipe run (seed 0 solid, others dotted)."""
    ckpts = res.checkpoints
    if not ckpts:
        return ""
    cols = [("train/reward", "training reward"), (f"val/{task}/pass@1", "validation pass@1"),
            (f"eval/{task}/pass@1", "test pass@1 (tracked)"), ("sft", "SFT: validation pass@1")]
    fig, axes = plt.subplots(len(ckpts), len(cols), figsize=(4 * len(cols), 2.9 * len(ckpts)), squeeze=False)
    for row, ckpt in zip(axes, ckpts):
        for recipe in RECIPES:
            for seed in res.seeds(recipe, ckpt):
                unit = res.unit_id(recipe, ckpt, seed)
                stages = RECIPES[recipe].stages
                for stage in stages:
                    name = recipe if len(stages) == 1 else stage
                    style = dict(color=COLORS[recipe], linestyle="-" if seed == res.cfg.study.seeds[0] else ":",
                                 label=f"{recipe}" + (f" ({stage})" if len(stages) > 1 else "") + f" s{seed}")
                    if stage.startswith("sft"):
                        steps, vals = res.training(unit, name, f"val/{task}/pass@1")
                        at = dict(zip(*res.training(unit, name, "epoch")))
                        if steps:
                            row[3].plot([at.get(s, 0) for s in steps], [100 * v for v in vals], marker=".", **style)
                            val_band(row[3], res, unit, name, {s: at.get(s, 0) for s in steps}, COLORS[recipe])
                        continue
                    for ax, (key, _) in zip(row[:3], cols[:3]):
                        steps, vals = res.training(unit, name, key)
                        if steps:
                            ax.plot(steps, [100 * v for v in vals], marker="." if "/" in key[5:] else None, **style)
                    val_band(row[1], res, unit, name, None, COLORS[recipe])
                    test_steps = res.training(unit, name, cols[2][0])[0]
                    tracked_band(row[2], res, unit, name, cols[2][0], dict(zip(test_steps, test_steps)), COLORS[recipe])
        for ax, (key, label) in zip(row, cols):
            ax.set_title(f"{res.label(ckpt)}: {label}", fontsize=9)
            ax.set_xlabel("SFT epoch" if key == "sft" else "step")
            ax.set_ylabel("%")
    for ax, why in zip(axes[0], (None, NORMAL, BOOTSTRAP, NORMAL)):
        if ax.get_legend_handles_labels()[0]:
            legend(ax, why, fontsize=6)
    save(fig, figdir / "convergence.png")
    return "convergence.png"
