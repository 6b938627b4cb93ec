"""Fig. 15: SFT's test pass@k after each epoch of one longer run; has it converged by the study's epochs?"""

from __future__ import annotations

from pathlib import Path

from excursions.config import Config
from excursions.evals.figures import plt, token_label
from excursions.study.experiments import experiment
from excursions.study.report import Section, legend, save, tracked_band
from excursions.study.plan import Unit, chosen_checkpoints, configured, posttrain_dir, recipe_settings, train_size
from excursions.study.results import Results
from excursions.study.verdicts import claim, compare, judge, not_run


def converged(epochs: int, metrics: list[str]):
    # "Performance plateaus by 5 epochs, which we use as the standard SFT training length for all M_t^SFT
    # baselines." (App. B.5): the study's epochs against the longer run's last, paired on the tracked problems, each
    # tracked pass@k equivalent within its margin (pass@1 5 points, pass@k 3)
    return claim(f"SFT has converged by the study's {epochs} epochs (tracked pass@k at epoch {epochs} equivalent to "
                 "the longer run's last epoch)", "equivalence", metrics or ["pass@1"], "every")


def sft_epochs_units(cfg: Config, out: Path) -> list[Unit]:
    """One sft run of `study.sft_epochs` epochs from the extra seeds' checkpoint (else the first chosen one),
    test pass@k tracked after every epoch."""
    s = cfg.study
    if not s.sft_epochs:
        return []
    chosen, seed_ckpt = chosen_checkpoints(cfg, out)
    name, tokens, source = seed_ckpt or chosen[0]
    seed, per_epoch = s.seeds[0], -(-train_size(cfg) // cfg.sft.batch_size)
    overrides = (("sft", "epochs", s.sft_epochs), ("sft", "track_every", per_epoch))
    settings = recipe_settings(configured(cfg, seed, overrides), "sft")
    run = posttrain_dir(out, name, f"sft-epochs-s{seed}", {**settings, "source": source})
    return [Unit(f"sft_epochs/{name}/s{seed}", "posttrain", run, name, tokens, "sft", seed, source, overrides)]


@experiment(order=8, units=sft_epochs_units)
def sft_epochs_experiment(res: Results, figdir: Path) -> Section:
    title = "SFT epochs (paper Fig. 15)"
    done = res.done(sft_epochs_units(res.cfg, res.out))
    if not done:
        return Section(title, reading="No SFT epochs run in this study (study.sft_epochs = 0).",
                       claims=[not_run(converged(res.cfg.sft.epochs, []), "set study.sft_epochs")])
    unit, task = done[0].id, res.math_tasks[0]
    keys = sorted(res.store.training_keys(f"eval/{task}/pass@", unit), key=lambda k: int(k.split("@")[1]))
    at = dict(zip(*res.training(unit, "sft", "epoch")))  # step -> epoch
    fig, ax = plt.subplots(figsize=(5, 3.5))
    table = [["epoch"] + [k.split("/")[-1] for k in keys]]
    curves = {}
    for key in keys:
        steps, vals = res.training(unit, "sft", key)
        xs = [round(at.get(st, 0)) for st in steps]
        curves[key] = dict(zip(xs, vals))
        drawn, = ax.plot(xs, [100 * v for v in vals], marker="o", label=key.split("/")[-1])
        tracked_band(ax, res, unit, "sft", key, dict(zip(steps, xs)), drawn.get_color())
    tracked = sorted({e for c in curves.values() for e in c})
    for e in tracked:
        table.append([str(e)] + [f"{100 * curves[k][e]:.1f}" if e in curves[k] else "-" for k in keys])
    ax.set_xticks(tracked)  # whole epochs, not 1.25, 1.5, ...
    ax.set_xlabel("SFT epoch")
    ax.set_ylabel("test pass@k (%)")
    ckpt = done[0].checkpoint
    ax.set_title(f"sft from the {token_label(res.tokens.get(ckpt, 0))}-token checkpoint", fontsize=9)
    legend(ax)
    save(fig, figdir / "sft_epochs.png")
    reading = (f"Test {', '.join(k.split('/')[-1] for k in keys)} (0-shot, tracked on a subset of the {task} test "
               f"problems) after each epoch of one SFT run on one demonstration per problem, {max(at.values(), default=0):.0f} "
               "epochs. Where the curve has flattened by the study's SFT epochs, its sft results are converged.")
    used = res.cfg.sft.epochs
    c = converged(used, [k.split("/")[-1] for k in keys])
    step_at = {round(at.get(st, 0)): st for st in res.training(unit, "sft", keys[0])[0]} if keys else {}
    rows = []
    if used in step_at and tracked and tracked[-1] > used:
        for metric in c.margins:
            a, b = (res.tracked_arm(unit, "sft", step_at[e], metric) for e in (tracked[-1], used))
            if a and b:
                rows.append(compare(c, res.label(ckpt), f"epoch {tracked[-1]} vs epoch {used}", metric, a, b,
                                    seed=res.cfg.eval.seed))
    why = "" if rows else ("needs a longer run than the study's epochs, tracked with per-problem counts (runs stored "
                           "before they were kept have means only: run the unit again)")
    return Section(title, "sft_epochs.png", reading, table, [judge(c, rows, empty=("not run", why) if why else None)])
