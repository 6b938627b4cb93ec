"""Beyond the paper (its section 7): where a step's rollouts go. Direct RL from the first chosen checkpoint (the one
with the most room) under each rollout allocator of `study.allocators` (`rl.rollouts`: uniform, filter,
until_positive, adaptive), otherwise equal settings, test pass@k tracked against the FLOPs spent; each allocator
is compared with uniform at equal FLOPs.
"""

from __future__ import annotations

from pathlib import Path

from excursions.config import Config
from excursions.evals.figures import plt
from excursions.study.experiments import experiment
from excursions.study.experiments.rollouts import arm_at, flops_curve, value_at
from excursions.study.plan import Unit, chosen_checkpoints, configured, posttrain_dir, recipe_settings, rollout_prompts
from excursions.study.report import Section, legend, save, tracked_band
from excursions.study.results import Results
from excursions.study.verdicts import claim, compare, judge, not_run

TITLE = "Rollout allocators at equal FLOPs (beyond the paper: its section 7)"
COLORS = {"uniform": "#6c757d", "filter": "#1f77b4", "until_positive": "#d62728", "adaptive": "#2a9d8f"}


def beats_uniform(allocator: str):
    # Beyond the paper (its section 7: "adaptive rollout strategies that concentrate compute on prompts where the base
    # model has non-trivial coverage"): the allocator above uniform at equal FLOPs, paired on the tracked problems,
    # by the pass@1 margin, 5 points
    return claim(f"{allocator} beats uniform rollouts at equal FLOPs (tracked test pass@1 at the smaller of the two "
                 "runs' final FLOPs)", "superiority", ["pass@1"], "every")


def allocator_runs(cfg: Config, out: Path) -> dict[str, Unit]:
    """The RL runs, by allocator: the rollouts experiment's steps and prompts, at most 4 G rollouts a prompt a step
    (until_positive, adaptive)."""
    s = cfg.study
    name, tokens, source = chosen_checkpoints(cfg, out)[0][0]
    seed, steps, prompts = s.seeds[0], s.rollout_steps or cfg.rl.steps, rollout_prompts(cfg)
    found = {}
    for allocator in s.allocators:
        overrides = (("rl", "rollouts", allocator), ("rl", "steps", steps), ("rl", "prompts_per_step", prompts),
                     ("rl", "track_every", max(1, steps // 4)), ("rl", "max_rollouts", 4 * cfg.rl.group_size))
        settings = {**recipe_settings(configured(cfg, seed, overrides), "rl"), "source": source}
        run = posttrain_dir(out, name, f"allocator-{allocator}", settings)
        found[allocator] = Unit(f"allocators/{allocator}/{name}", "posttrain", run, name, tokens, "rl", seed, source,
                                overrides)
    return found


def curve_steps(res: Results, unit: str, task: str) -> tuple[list[int], list[float]]:
    """A run's tracked steps and the FLOPs spent by each."""
    steps, flops, _ = flops_curve(res, unit, task, "pass@1")
    return steps, flops


def allocator_units(cfg: Config, out: Path) -> list[Unit]:
    return list(allocator_runs(cfg, out).values())


@experiment(order=10, units=allocator_units)
def allocators_experiment(res: Results, figdir: Path) -> Section:
    planned = allocator_runs(res.cfg, res.out)
    done = {u.id for u in res.done(list(planned.values()))}
    ran = {a: u.id for a, u in planned.items() if u.id in done}
    others = [a for a in res.cfg.study.allocators if a != "uniform"]
    if "uniform" not in ran or not any(a in ran for a in others):
        return Section(TITLE, reading="Not run: set study.allocators to uniform and at least one other allocator "
                                      "(filter, until_positive, adaptive).",
                       claims=[not_run(beats_uniform(a), "set study.allocators") for a in others or ["adaptive"]])
    task = res.math_tasks[0]
    metrics = [m for m in ("pass@1", "pass@8") if res.training(ran["uniform"], "rl", f"eval/{task}/{m}")[0]]
    lines = {(a, m): flops_curve(res, u, task, m)[1:] for a, u in ran.items() for m in metrics}  # (FLOPs, values)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for a, u in ran.items():
            flops, vals = lines[a, m]
            ax.plot(flops, [100 * v for v in vals], marker="o", color=COLORS.get(a), label=a)
            steps = res.training(u, "rl", f"eval/{task}/{m}")[0]
            tracked_band(ax, res, u, "rl", f"eval/{task}/{m}", dict(zip(steps, flops)), COLORS.get(a))
        ax.set_xlabel("RL FLOPs (training + rollouts)")
        ax.set_ylabel(f"test {m} (%)")
        legend(ax)
    ckpt = planned["uniform"].checkpoint
    fig.suptitle(f"direct RL from the {res.label(ckpt)}-token checkpoint", fontsize=9)
    fig.tight_layout()
    save(fig, figdir / "allocators.png")
    problems = res.training(ran["uniform"], "rl", f"eval/{task}/problems")[1]
    tracked = int(problems[0]) if problems else 100
    table = [["allocator", "final FLOPs"] + [f"{m} at its end" for m in metrics]
             + [f"{m}, uniform at the same FLOPs" for m in metrics]]
    claims = []
    u_flops, ckpt_label = lines["uniform", "pass@1"][0], res.label(ckpt)
    for a in ran:
        flops = lines[a, "pass@1"][0]
        budget = min(flops[-1], u_flops[-1])  # equal FLOPs: where both runs got to
        uniform_at = {m: value_at(*lines["uniform", m], budget) for m in metrics}
        table.append([a, f"{flops[-1]:.2e}"] + [f"{100 * lines[a, m][1][-1]:.1f}" for m in metrics]
                     + [f"{100 * uniform_at[m]:.1f}" for m in metrics])
        if a != "uniform":
            c, arms = beats_uniform(a), [arm_at(res, ran[x], *curve_steps(res, ran[x], task), budget, "pass@1")
                                         for x in (a, "uniform")]
            rows = [compare(c, ckpt_label, f"{a} vs uniform at {budget:.2e} FLOPs", "pass@1", *arms,
                            seed=res.cfg.eval.seed)] if all(arms) else []
            claims.append(judge(c, rows, empty=("not run", "tracked without per-problem counts: run again")))
    reading = (f"Direct RL from the {res.label(ckpt)}-token checkpoint with the same steps, prompts per step and "
               f"group size, the rollouts of each step placed by each allocator: uniform (G per prompt), filter "
               f"(DAPO's dynamic sampling: the step's groups with a right and a wrong rollout, out of "
               f"{res.cfg.rl.filter_over}x the prompts), until_positive (the paper's authors' adaptive rollouts: G "
               f"more until one is right, at most 4 G), adaptive (the step's budget spread over "
               f"{res.cfg.rl.filter_over}x the prompts by the chance each more group holds a GRPO signal, from what "
               f"earlier rollouts saw). Test pass@k (0-shot, {tracked} problems, from step 0) against the FLOPs "
               f"spent, training and rollouts (6N per trained token, 2N per generated one: filter and until_positive "
               f"pay for the rollouts they draw and drop or add). Each allocator is compared with uniform where both "
               f"spent the same FLOPs, paired on the tracked problems (each problem's score interpolated between the two "
               f"tracked points around that budget).")
    return Section(TITLE, "allocators.png", reading, table, claims)
