"""Fig. 4, 10-12: RL on `hard` from the final checkpoints of the study's run, a bigger model (N) and the same
model with extra targeted math (D). Opt-in: each variant is a pretraining run of its own
(`study.scale_model`, `study.scale_targeted`)."""

from __future__ import annotations

from pathlib import Path

from excursions.config import Config
from excursions.evals.figures import plt, token_label
from excursions.study.experiments import experiment
from excursions.study.plan import (Unit, all_checkpoints, configured, eval_digest, posttrain_dir, pretrain_dir,
                                   recipe_settings)
from excursions.study.report import BARS, COLORS, Section, legend, save
from excursions.study.results import Results, Stat
from excursions.study.verdicts import Arm, align, claim, compare, judge, not_run

TITLE = "Scaling N vs D for RL on hard problems (paper Fig. 4, 10-12)"
CLAIM = ("Targeted data beats model scale for the gain RL brings on hard problems (Fig. 4, 10-12; per problem, D's "
         "gain over its base minus N's)")
LABEL = {"base": "study's run", "N": "bigger\nmodel (N)", "D": "+ targeted\nmath (D)"}
WHATS = ("base", "base 0-shot", "rl")  # the base few-shot and 0-shot, and after RL


def scaling_variants(cfg: Config) -> dict[str, tuple]:
    """The pretraining runs compared, as overrides of the study's config: the study's own, a bigger model (N), and
    the same model with `scale_targeted` x tokens more, all of it targeted math (D)."""
    s, d, t = cfg.study, cfg.data, cfg.study.scale_targeted
    variants: dict[str, tuple] = {"base": ()}
    if s.scale_model:
        variants["N"] = (("model", "size", s.scale_model),)
    if t:
        variants["D"] = (("pretrain", "tokens", round(cfg.pretrain.tokens * (1 + t))),
                         ("data", "general", d.general / (1 + t)), ("data", "math", d.math / (1 + t)),
                         ("data", "targeted", (d.targeted + t) / (1 + t)))
    return variants


def variant_units(cfg: Config, out: Path) -> dict[str, dict[str, Unit]]:
    """Per variant: its pretraining (the study's own for `base`), its final checkpoint evaluated on `hard`, direct RL
    on `hard` problems from it, and that result evaluated: {variant: {pretrain, base, rl, eval}}."""
    found, ev = {}, eval_digest(cfg)
    for v, overrides in scaling_variants(cfg).items():
        vcfg = configured(cfg, 0, overrides)
        run = pretrain_dir(vcfg, out)
        name, tokens, source = all_checkpoints(vcfg, out)[-1]  # the variant's final checkpoint
        world, seed = str(run / "world"), cfg.study.seeds[0]
        units = {} if v == "base" else {"pretrain": Unit(f"scaling/{v}/pretrain", "pretrain", run, overrides=overrides)}
        units["base"] = Unit(f"scaling/{v}/base", "base_eval", out / "evals" / "scaling" / f"{v}-{name}-{ev}.json",
                             name, tokens, source=source, world=world, tasks=("hard",))
        rl_overrides = overrides + (("rl", "family", "hard"),)
        settings = {**recipe_settings(configured(cfg, seed, rl_overrides), "rl"), "source": source}
        post = posttrain_dir(out, f"scaling-{v}", f"rl-hard-s{seed}", settings)
        units["rl"] = Unit(f"scaling/{v}/rl", "posttrain", post, name, tokens, "rl", seed, source, rl_overrides, world)
        units["eval"] = Unit(f"scaling/{v}/eval", "eval", out / "evals" / "scaling" / f"{v}-rl-{post.name}-{ev}.json",
                             name, tokens, "rl", seed, str(post), world=world, tasks=("hard",))
        found[v] = units
    return found


def scaling_units(cfg: Config, out: Path) -> list[Unit]:
    if not (cfg.study.scale_model or cfg.study.scale_targeted):
        return []
    return [u for units in variant_units(cfg, out).values() for u in units.values()]


@experiment(order=11, units=scaling_units)
def scaling_experiment(res: Results, figdir: Path) -> Section:
    stats: dict[tuple, Stat] = {}  # (variant, what, metric): what = base (few-shot) | base 0-shot | rl
    tokens: dict[str, int] = {}
    planned = variant_units(res.cfg, res.out) if res.cfg.study.scale_model or res.cfg.study.scale_targeted else {}
    for v, units in planned.items():
        for r in res.store.evaluations([units["base"].id, units["eval"].id], task="hard"):
            if r["metric"] is None:
                continue
            what = "rl" if r["unit"] == units["eval"].id else "base" if r["shots"] == res.base_shots else "base 0-shot"
            stats[v, what, r["metric"]] = Stat(r["mean"], r["lo"], r["hi"])
            tokens[v] = r["tokens"]
    variants = [v for v in ("base", "N", "D") if any(k[0] == v for k in stats)]
    if len(variants) < 2:
        why = ("opt-in (a bigger model's and a targeted-data pretraining run): set study.scale_model and "
               "study.scale_targeted")
        return Section(TITLE, reading=f"Not run in this study: {why}.",
                       claims=[not_run(claim(CLAIM, "superiority", ["pass@1"], "every"), why)])
    ks = sorted({k[2] for k in stats}, key=lambda m: int(m.split("@")[1]))
    _figure(stats, variants, ks, figdir / "scaling.png")
    table = [["variant", "tokens"] + [f"{w} {k}" for k in ks for w in WHATS]]
    for v in variants:
        table.append([LABEL[v].replace("\n", " "), f"{token_label(tokens.get(v, 0))}"]
                     + [str(stats.get((v, w, k), "-")) for k in ks for w in WHATS])
    # "when measuring the gain from RL relative to each checkpoint's own base performance, the 4B model does not
    # obtain larger improvements" and "the RL gain over the base model is substantially larger" with the added
    # data (Sec. 3.3, Fig. 4): per problem, the gain is after RL minus the base, and D's gain minus N's is compared
    # paired on the same hard test problems (a difference in differences), by the pass@1 and pass@k margins. The base
    # is taken at its better prompt, few-shot or 0-shot, for each metric: the paper's few-shot prompts fit its models'
    # context, and where ours do not (tiny: 4 hard exemplars run past the 512-token pretraining sequences) a
    # few-shot base near 0 would inflate the gain.
    c = claim(CLAIM, "superiority", ks, "every")
    gains = {(v, k): g for v in ("D", "N") if v in planned for k in ks if (g := gain_arm(res, planned[v], k, stats, v))}
    rows = [compare(c, "final checkpoints", "D's RL gain vs N's", k, gains["D", k], gains["N", k],
                    seed=res.cfg.eval.seed)
            for k in ks if ("D", k) in gains and ("N", k) in gains and set(gains["D", k].ids) & set(gains["N", k].ids)]
    verdict = judge(c, rows, empty=("not run", "needs both variants (study.scale_model and study.scale_targeted), "
                                               "evaluated on the same hard test problems"))
    reading = ("Direct RL on the hard family from the final checkpoint of each pretraining run: the study's own, a "
               "bigger model on the same data (scaling N) and the same model with extra targeted hard-family math "
               "(scaling D). Bars: the base few-shot and 0-shot, and after RL (0-shot), with 95% intervals. The "
               "paper finds that targeted data raises the gain RL brings on hard problems more than a bigger model "
               "does; the claim compares the gains: after RL minus the base at its better prompt (few-shot or 0-shot, the "
               "higher of the two for each metric).")
    return Section(TITLE, "scaling.png", reading, table, [verdict])


def gain_arm(res: Results, units: dict[str, Unit], metric: str, stats: dict, v: str) -> Arm | None:
    """Per problem: a variant's pass@k after RL minus its base's at the better prompt (by mean, as in the table)."""
    prompts = [w for w in ("base", "base 0-shot") if (v, w, metric) in stats]
    if not prompts or (v, "rl", metric) not in stats:
        return None
    better = max(prompts, key=lambda w: stats[v, w, metric].mean)
    shots = res.base_shots if better == "base" else 0
    base, rl = res.unit_arm(units["base"], "hard", metric, shots), res.unit_arm(units["eval"], "hard", metric, 0)
    if not base or not rl:
        return None
    ids, a, b = align(rl, base)
    return Arm(ids, a - b)


def _figure(stats: dict, variants: list[str], ks: list[str], path: Path) -> None:
    cols = min(3, len(ks))  # a grid that fits a page: six metrics are two rows of three
    rows = -(-len(ks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(ks):]:
        ax.set_visible(False)
    for ax, k in zip(axes.flat, ks):
        for j, what in enumerate(WHATS):
            xs = [i + (j - 1) * 0.27 for i in range(len(variants))]
            got = [stats.get((v, what, k)) for v in variants]
            ax.bar(xs, [100 * g.mean if g else 0 for g in got], width=0.27, label=what, color=COLORS.get(what),
                   yerr=[[100 * (g.mean - g.lo) if g else 0 for g in got],
                         [100 * (g.hi - g.mean) if g else 0 for g in got]], capsize=2)
        ax.set_xticks(range(len(variants)), [LABEL[v] for v in variants], fontsize=8)
        ax.set_ylabel(f"hard {k} (%)")
        ax.set_title(f"hard {k}", fontsize=9)
    legend(axes[0][0], BARS)
    fig.tight_layout()
    save(fig, path)
