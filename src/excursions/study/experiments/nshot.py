"""Fig. 16: the base checkpoint's pass@k against the number of in-context exemplars."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from excursions.config import Config, digest, prompt_settings, to_dict
from excursions.evals.figures import plt
from excursions.study.experiments import experiment
from excursions.study.report import Section, legend, line, save
from excursions.study.plan import Unit, chosen_checkpoints
from excursions.study.results import Results
from excursions.study.verdicts import claim, judge, not_run

TITLE = "Base checkpoint vs n-shot (paper Fig. 16)"


def best_count(shots: int):
    # "Across both benchmarks, accuracy is maximized at 8-shot, which we use throughout for M_t evaluation." (App.
    # B.6): the exemplar count the study evaluates base checkpoints at, not below any other count swept by the pass@1
    # margin, 5 points, paired on the same problems
    return claim(f"Base checkpoints are evaluated at their best exemplar count ({shots}-shot pass@1 not below any "
                 "other count by 5 points)", "noninferiority", ["pass@1"], "every")


def nshot_units(cfg: Config, out: Path) -> list[Unit]:
    """The last chosen checkpoint evaluated at each exemplar count of `study.nshot`, on the first math task."""
    if not cfg.study.nshot:
        return []
    name, tokens, source = chosen_checkpoints(cfg, out)[0][-1]
    shots = digest({"eval": to_dict(cfg.eval), "shots": sorted(cfg.study.nshot), **prompt_settings(cfg)})
    return [Unit(f"nshot/{name}", "nshot", out / "evals" / "nshot" / f"{name}-{shots}.json", name, tokens,
                 source=source)]


@experiment(order=7, units=nshot_units)
def nshot_experiment(res: Results, figdir: Path) -> Section:
    task = res.math_tasks[0]
    found = {(k[2], k[3]) for k in res.stats if k[0] == task and k[1] == "base"}  # (shots, checkpoint)
    ckpt = max({c for _, c in found}, key=lambda c: sum(x == c for _, x in found), default=None)
    shots = sorted(s for s, c in found if c == ckpt)
    if len(shots) < 3:
        return Section(TITLE, reading="No n-shot sweep in this study.",
                       claims=[not_run(best_count(res.base_shots), "set study.nshot")])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k in res.ks:
        line(ax, shots, [res.get(task, "base", ckpt, k, shots=s) for s in shots], k)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set_xlabel("in-context exemplars (n-shot)")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(f"{task}, base checkpoint at {res.label(ckpt)} tokens")
    legend(ax)
    save(fig, figdir / "nshot.png")
    table = [["shots"] + res.ks] + [[str(s)] + [str(res.get(task, "base", ckpt, k, shots=s)) for k in res.ks]
                                    for s in shots]
    reading = (f"pass@k of the {res.label(ckpt)}-token base checkpoint with 0 to {shots[-1]} worked "
               f"exemplars in the prompt (the study evaluates base checkpoints {res.base_shots}-shot).")
    c = best_count(res.base_shots)
    rows = [replace(r, what=f"{res.base_shots}-shot vs {s}-shot") for s in shots if s != res.base_shots
            for r in res.rows(c, task, "base", "base", [ckpt], shots=(res.base_shots, s))]
    return Section(TITLE, "nshot.png", reading, table,
                   [judge(c, rows, empty=("not run", f"the sweep has no {res.base_shots}-shot point"))])
