"""Fig. 16: the base checkpoint's pass@k against the number of in-context exemplars."""

from __future__ import annotations

from pathlib import Path

from excursions.config import Config, digest, prompt_settings, to_dict
from excursions.evals.figures import plt
from excursions.study.experiments import experiment
from excursions.study.report import Section, line, save
from excursions.study.plan import Unit, chosen_checkpoints
from excursions.study.results import Results, compare, tally

TITLE = "Base checkpoint vs n-shot (paper Fig. 16)"
CLAIM = "Base checkpoints are evaluated at their best exemplar count ({}-shot pass@1 not below any other)"


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
        return Section(TITLE, reading="No n-shot sweep in this study.", claims=[(CLAIM.format(res.base_shots), "not run", "set study.nshot")])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k in res.ks:
        line(ax, shots, [res.get(task, "base", ckpt, k, shots=s) for s in shots], k)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set_xlabel("in-context exemplars (n-shot)")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(f"{task}, base checkpoint at {res.tokens[ckpt] / 1e6:.1f}M tokens")
    ax.legend(fontsize=7)
    save(fig, figdir / "nshot.png")
    table = [["shots"] + res.ks] + [[str(s)] + [str(res.get(task, "base", ckpt, k, shots=s)) for k in res.ks]
                                    for s in shots]
    reading = (f"pass@k of the {res.tokens[ckpt] / 1e6:.1f}M-token base checkpoint with 0 to {shots[-1]} worked "
               f"exemplars in the prompt (the study evaluates base checkpoints {res.base_shots}-shot).")
    # "Across both benchmarks, accuracy is maximized at 8-shot, which we use throughout for M_t evaluation."
    # (App. B.6): is the exemplar count the study evaluates base checkpoints at the best one swept?
    used = res.get(task, "base", ckpt, "pass@1", shots=res.base_shots)
    others = [(s, res.get(task, "base", ckpt, "pass@1", shots=s)) for s in shots if s != res.base_shots]
    signs = [compare(used, st) for _, st in others] if used else []
    evidence = "; ".join(f"pass@1 {res.base_shots}-shot {used} vs {s}-shot {st}" for s, st in others) if used else \
        f"the sweep has no {res.base_shots}-shot point"
    return Section(TITLE, "nshot.png", reading, table, [(CLAIM.format(res.base_shots), tally(signs), evidence)])
