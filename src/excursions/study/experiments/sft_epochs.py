"""Fig. 15: SFT's test pass@k after each epoch of one longer run; has it converged by the study's epochs?"""

from __future__ import annotations

from pathlib import Path

from excursions.config import Config
from excursions.evals.figures import plt
from excursions.study.experiments import experiment
from excursions.study.report import Section, save
from excursions.study.plan import Unit, chosen_checkpoints, configured, posttrain_dir, recipe_settings, train_size
from excursions.study.results import Results, separate, tally


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
    title, claim = "SFT epochs (paper Fig. 15)", f"SFT has converged by the study's {res.cfg.sft.epochs} epochs"
    done = res.done(sft_epochs_units(res.cfg, res.out))
    if not done:
        return Section(title, reading="No SFT epochs run in this study (study.sft_epochs = 0).",
                       claims=[(claim, "not run", "set study.sft_epochs")])
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
        ax.plot(xs, [100 * v for v in vals], marker="o", label=key.split("/")[-1])
    tracked = sorted({e for c in curves.values() for e in c})
    for e in tracked:
        table.append([str(e)] + [f"{100 * curves[k][e]:.1f}" if e in curves[k] else "-" for k in keys])
    ax.set_xticks(tracked)  # whole epochs, not 1.25, 1.5, ...
    ax.set_xlabel("SFT epoch")
    ax.set_ylabel("test pass@k (%)")
    ckpt = done[0].checkpoint
    ax.set_title(f"sft from the {res.tokens.get(ckpt, 0) / 1e6:.1f}M-token checkpoint", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, figdir / "sft_epochs.png")
    reading = (f"Test {', '.join(k.split('/')[-1] for k in keys)} (0-shot, tracked on a subset of the {task} test "
               f"problems) after each epoch of one SFT run on one demonstration per problem, {max(at.values(), default=0):.0f} "
               "epochs. Where the curve has flattened by the study's SFT epochs, its sft results are converged.")
    # "Performance plateaus by 5 epochs, which we use as the standard SFT training length for all M_t^SFT
    # baselines." (App. B.5): at the study's epochs against the longer run's last, each tracked pass@k; a rise beyond
    # 1.96 binomial standard errors over the tracked problems says the study's SFT had not converged
    problems = res.training(unit, "sft", f"eval/{task}/problems")[1]
    n, used, last = int(problems[0]) if problems else 100, res.cfg.sft.epochs, tracked[-1] if tracked else 0
    signs, evidence = [], []
    for key in keys:
        if used in curves[key] and last > used:
            signs.append(not_below_rate(curves[key][used], curves[key][last], n))
            evidence.append(f"{key.split('/')[-1]} epoch {used} {100 * curves[key][used]:.1f} vs epoch {last} "
                            f"{100 * curves[key][last]:.1f}")
    evidence.append(f"{n} tracked test problems")
    return Section(title, "sft_epochs.png", reading, table, [(claim, tally(signs), "; ".join(evidence))])


def not_below_rate(a: float, b: float, problems: int) -> int:
    """+1 unless rate a lies below rate b by more than 1.96 binomial standard errors (a plateau claim).

    >>> not_below_rate(0.30, 0.32, 100), not_below_rate(0.10, 0.30, 100)
    (1, -1)
    """
    return -1 if separate(a, b, problems) < 0 else 1
