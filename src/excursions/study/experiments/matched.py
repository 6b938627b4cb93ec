"""Beyond the paper (MultiBERTs' question): checkpoints matched by capability beside token counts. Pretraining runs of
one setting reach a capability at different token counts (the base's 4-shot pass@1 at 10.5M tokens: 2.0 to 5.8% in
four runs, docs/LOG.md), so "RL from the 10.5M checkpoint" is an earlier model in one run than in another. Here each
run's base is scored on validation problems at every saved checkpoint, and in each run direct RL also starts from the
first checkpoint whose base reaches each of `study.match_targets` (`study.match_metric`, few-shot as the base is
compared): the runs are then compared at equal capability, the paper's Sec. 3.4 reading (the base's pass@k predicts
what RL reaches) turned into the unit of comparison. Opt-in: `study.match_targets` is empty by default.

Which checkpoint a target picks is known only once the base's validation scores are in: until then the experiment
plans those evaluations alone, and the runner plans again after each round of units (`runner.run_study`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from excursions.checkpoint import read_json
from excursions.config import Config
from excursions.errors import UserError
from excursions.evals.figures import plt, token_label, tokens_axis
from excursions.study.experiments import experiment
from excursions.study.plan import (MATCHED, Unit, all_checkpoints, chosen_checkpoints, configured, eval_digest,
                                   first_at, pretraining_runs, run_backbone)
from excursions.study.report import BARS, Section, legend, save
from excursions.study.results import Results, Stat, rl_gain
from excursions.study.verdicts import claim, compare, interval, judge, not_run

TITLE = "Checkpoints matched by capability (beyond the paper)"
VAL = (("eval", "split", "val"),)  # the base's scores that choose a checkpoint: validation problems, never test
# "RL is effective early" read at equal capability: in every run, direct RL from the first checkpoint whose base
# reaches each target beats that base on test problems by the pass@1 margin (5 points), paired on the same problems
CLAIM = claim("Beyond the paper: at equal base capability (the first checkpoint whose base reaches each validation "
              "target, in each run), direct RL beats the base (every target)", "superiority", ["pass@1"], "every")


def val_units(cfg: Config, out: Path, prefix: str) -> list[Unit]:
    """The base evaluated on validation problems at every saved checkpoint of one pretraining run (the first math
    task, few-shot and 0-shot as a base is): what chooses that run's capability-matched checkpoints."""
    task = next(t for t in cfg.study.tasks if t != "general")
    ev = eval_digest(configured(cfg, 0, VAL))
    return [Unit(f"{prefix}{MATCHED}val/{name}", "base_eval", out / "evals" / f"{prefix}match" / f"{name}-{ev}.json",
                 name, tokens, source=source, overrides=VAL, tasks=(task,)) for name, tokens, source in
            all_checkpoints(cfg, out)]


def val_score(unit: Unit, cfg: Config) -> Stat | None:
    """The base's validation `study.match_metric` at its few-shot count from a finished val unit's record; None until
    it is written."""
    if not unit.path.is_file():
        return None
    for f in read_json(unit.path):  # beside the record (its paths are the study directory's: read from anywhere)
        f = unit.path.with_suffix("") / Path(f).name
        r = read_json(f) if f.is_file() else {}
        m = r.get("metrics", {}).get(cfg.study.match_metric)
        if r.get("shots") == cfg.eval.shots and m:
            return Stat(m["mean"], m["lo"], m["hi"])
    return None


def matches(cfg: Config, out: Path, prefix: str) -> tuple[list[tuple[Unit, Stat | None]], dict[float, str]]:
    """One run's validation curve (each val unit with its score, None where not in) and, once every score is in,
    the checkpoint each target picks ({target: name}; a target no checkpoint reaches is left out)."""
    curve = [(u, val_score(u, cfg)) for u in val_units(cfg, out, prefix)]
    if any(s is None for _, s in curve):
        return curve, {}
    points = [(u.checkpoint, s.mean) for u, s in curve]
    return curve, {t: name for t in cfg.study.match_targets if (name := first_at(points, t))}


def matched_units(cfg: Config, out: Path) -> list[Unit]:
    """Per pretraining run: the validation evaluations; then, where a target picks a checkpoint the study does not
    branch from already, that checkpoint's base evaluation and direct RL from it (the first seed) with its
    evaluation: the backbone's units of that checkpoint, their ids under `match/`."""
    if not cfg.study.match_targets:
        return []
    if int(cfg.study.match_metric.removeprefix("pass@")) not in cfg.eval.ks:  # its scores would never be written
        raise UserError(f"config: study.match_metric {cfg.study.match_metric} is not among eval.ks "
                        f"({', '.join(map(str, cfg.eval.ks))}): choose pass@k with k one of them")
    units = []
    for prefix, run in pretraining_runs(cfg):
        units += val_units(run, out, prefix)
        every, chosen = all_checkpoints(run, out), {c[0] for c in chosen_checkpoints(run, out)[0]}
        for name in sorted({n for n in matches(run, out, prefix)[1].values() if n not in chosen},
                           key=[c[0] for c in every].index):
            one = replace(run, study=replace(run.study, checkpoints=([c[0] for c in every].index(name),),
                                             recipes=("rl",), seeds=run.study.seeds[:1], extra_seeds=()))
            units += [replace(u, id=prefix + MATCHED + u.id.removeprefix(prefix))
                      for u in run_backbone(one, out, prefix, cfg.seed) if u.kind != "pretrain"]
    return units


@experiment(order=16, units=matched_units)
def matched_experiment(res: Results, figdir: Path) -> Section:
    s, task = res.cfg.study, res.math_tasks[0]
    if not s.match_targets:
        why = "set study.match_targets (base validation pass rates) to compare runs at equal capability"
        return Section(TITLE, reading=why.capitalize() + ".", claims=[not_run(CLAIM, why)])
    runs = [(res.prefix, res.cfg)] if res.prefix else pretraining_runs(res.cfg)  # another run's report: its own
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    rows, table, ticks = [], [["run", "target", "checkpoint", f"base val {s.match_metric}", "RL - base, test pass@1"]], []
    for i, (prefix, run) in enumerate(runs):
        color, name = f"C{i}", f"run {i + 1} (seed {run.seed})"
        curve, picked = matches(run, res.out, prefix)
        have = [(u, st) for u, st in curve if st]
        ticks += [u.tokens for u, _ in have]
        left.plot([u.tokens for u, _ in have], [100 * st.mean for _, st in have], marker=".", color=color, label=name)
        left.fill_between([u.tokens for u, _ in have], [100 * st.lo for _, st in have],
                          [100 * st.hi for _, st in have], color=color, alpha=0.15, linewidth=0)
        val = {u.checkpoint: (u.tokens, st) for u, st in have}
        chosen = {c[0] for c in chosen_checkpoints(run, res.out)[0]}
        for ckpt in sorted(chosen | set(picked.values()), key=lambda c: val.get(c, (0,))[0]):
            gain = rl_gain(res, prefix, ckpt, ckpt in chosen, task)
            if gain is None or ckpt not in val:
                continue
            (tokens, x), (cmp, a, b) = val[ckpt], gain
            is_matched = ckpt in picked.values()
            right.errorbar(100 * x.mean, 100 * cmp.diff, xerr=[[100 * (x.mean - x.lo)], [100 * (x.hi - x.mean)]],
                           yerr=[[100 * (cmp.diff - cmp.lo)], [100 * (cmp.hi - cmp.diff)]], color=color, capsize=2,
                           fmt="^" if is_matched else "o", markerfacecolor=color if is_matched else "white")
            right.annotate(token_label(tokens), (100 * x.mean, 100 * cmp.diff), textcoords="offset points",
                           xytext=(4, 4), fontsize=7)
            for t in (t for t, c in picked.items() if c == ckpt):
                where = f"base val {s.match_metric} >= {100 * t:g}%"
                rows.append(compare(CLAIM, where, "rl vs base", "pass@1", a, b, seed=res.cfg.eval.seed))
                table.append([name, f"{100 * t:g}%", token_label(tokens), f"{100 * x.mean:.1f}", interval(cmp)])
    for t in s.match_targets:
        left.axhline(100 * t, color="#999", linestyle="--", linewidth=1)
    if ticks:
        tokens_axis(left, ticks)
    left.set_ylabel(f"base val {s.match_metric} (%), {res.base_shots}-shot")
    left.set_title("the base along pretraining (dashed: targets)")
    legend(left, "bands: 95% bootstrap intervals over val problems")
    right.axhline(0, color="#999", linewidth=1)
    lo, hi = right.get_ylim()
    right.set_ylim(min(lo, -5), max(hi, 5) + 0.35 * (max(hi, 5) - min(lo, -5)))  # the margin's scale; legend room
    right.plot([], [], "o", color="#555", markerfacecolor="white", label="token-matched (study.checkpoints)")
    right.plot([], [], "^", color="#555", label="capability-matched (first to reach a target)")
    right.set_xlabel(f"base val {s.match_metric} (%)")
    right.set_ylabel("RL - base, test pass@1 (points)")
    right.set_title("RL's paired gain against the base's capability")
    legend(right, BARS.replace("problems", "problems (x: val, y: test, paired)"), loc="upper left")
    save(fig, figdir / "matched.png")
    reading = (f"Left: each pretraining run's base on validation problems at every saved checkpoint; the dashed lines "
               f"are the targets ({', '.join(f'{100 * t:g}%' for t in s.match_targets)} {s.match_metric}). Right: direct "
               f"RL's paired gain over the base on test problems (first seed) against the base's validation score, one "
               f"point per run and checkpoint: circles at the study's token counts, triangles at each run's "
               f"capability-matched checkpoints. A claim pooled over runs compares them at the same target.")
    return Section(TITLE, "matched.png", reading, table if len(table) > 1 else [],
                   [judge(CLAIM, rows, empty=("not run", "no target was reached, or its runs are not done yet"))])

