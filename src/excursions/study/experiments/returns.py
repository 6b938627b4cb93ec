"""Beyond the paper (its section 7, issue 21): excursion and return. A recipe's run from the first chosen checkpoint
goes back to pretraining with the run's own AdamW state, LR schedule and data position, to the end of the schedule;
its final checkpoint is evaluated as a base checkpoint is (few-shot, 0-shot, general) and set beside the plain
run's. Does what RL taught persist through more pretraining, wash out, or compound? Opt-in: `study.returns`.
"""

from __future__ import annotations

from pathlib import Path

from excursions.config import Config, digest
from excursions.errors import UserError
from excursions.evals.figures import plt, tokens_axis
from excursions.study.experiments import experiment
from excursions.study.plan import (Unit, all_checkpoints, backbone, chosen_checkpoints, eval_digest, pretrain_dir,
                                   recipe_unit_id, world_dir)
from excursions.study.report import Section, line, save
from excursions.study.results import Results, Stat, compare, wilson

TITLE = "Excursion and return: RL, then more pretraining (beyond the paper, its section 7)"
ANSWER = {1: "above the plain run", 0: "level with the plain run (the intervals overlap)", -1: "below the plain run"}


def return_runs(cfg: Config, out: Path) -> dict[str, dict[str, Unit]]:
    """{recipe: {"return": the pretraining resumed from its run, "eval": the returned final checkpoint's evaluation}}
    for each recipe of `study.returns`, from the first chosen checkpoint with the first seed."""
    s = cfg.study
    if not s.returns:
        return {}
    name, tokens, _ = chosen_checkpoints(cfg, out)[0][0]
    final, final_tokens, _ = all_checkpoints(cfg, out)[-1]
    if name == final:
        raise UserError("config: study.returns: the first of study.checkpoints is the last checkpoint, so there is no "
                        "pretraining to return to; choose an earlier one first")
    runs = {u.id: u for u in backbone(cfg, out)}
    found, ev = {}, eval_digest(cfg)
    for recipe in s.returns:
        run = runs[recipe_unit_id(recipe, name, s.seeds[0])]
        back = out / "returns" / f"{recipe}-{name}-{digest({'excursion': run.path.name, 'pretrain': pretrain_dir(cfg, out).name})}"
        found[recipe] = {
            "return": Unit(f"return/{recipe}/{name}", "return", back, name, tokens, recipe, run.seed, str(run.path)),
            # on the study's world, but not one of its checkpoints: `world` keeps it out of the study's own results
            "eval": Unit(f"return/{recipe}/{name}/eval", "base_eval", out / "evals" / "return" /
                         f"{back.name}-{ev}.json", final, final_tokens, source=str(back / "checkpoints" / final),
                         world=str(world_dir(cfg, out)))}
    return found


def return_units(cfg: Config, out: Path) -> list[Unit]:
    return [u for units in return_runs(cfg, out).values() for u in units.values()]


def returned_stats(res: Results, unit: Unit) -> dict[tuple[str, str, int | None], Stat]:
    """{(task, metric, shots): stat} of a returned run's evaluation, as the study's base evaluations are read."""
    stats = {}
    for r in res.store.evaluations([unit.id]):
        if r["metric"] is not None:
            stats[r["task"], r["metric"], r["shots"]] = Stat(r["mean"], r["lo"], r["hi"])
        elif r["acc"] is not None:
            stats[r["task"], "acc", None] = wilson(r["acc"], r["n"])
    return stats


@experiment(order=13, units=return_units)
def returns_experiment(res: Results, figdir: Path) -> Section:
    planned = return_runs(res.cfg, res.out)
    got = {recipe: returned_stats(res, u["eval"]) for recipe, u in planned.items()}
    got = {recipe: st for recipe, st in got.items() if st}
    if not got:
        return Section(TITLE, reading="Not run: set study.returns (e.g. [\"rl\"]) to send a recipe's run from the "
                                      "first chosen checkpoint back to pretraining.")
    task = res.math_tasks[0] if res.math_tasks else "gsm"
    first = next(iter(planned.values()))  # every return starts at the same checkpoint and ends at the last one
    (start, t0), (final, t1) = ((first[k].checkpoint, first[k].tokens) for k in ("return", "eval"))
    start_label, final_label, shots = f"{t0 / 1e6:.1f}M", f"{t1 / 1e6:.1f}M", res.base_shots
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    x = [res.tokens[c] for c in res.checkpoints]
    panels = [(axes[0], task, "pass@1", f"{task} pass@1, {shots}-shot (%)"), (axes[1], "general", "acc",
                                                                              "general MC accuracy (%)")]
    for ax, t, metric, ylabel in panels:
        line(ax, x, [res.get(t, "base", c, metric) for c in res.checkpoints], "base")
        for recipe, st in got.items():
            after = st.get((t, metric, shots if t != "general" else None))
            excursion = res.get(t, recipe, start, metric)  # the excursion's own result (0-shot), at its start
            line(ax, [t0, t1], [excursion, after], recipe, linestyle=":")
        tokens_axis(ax, x)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=7)
    save(fig, figdir / "returns.png")
    table = [["", f"{task} pass@1 {shots}-shot", f"{task} pass@32 {shots}-shot", f"{task} pass@1 0-shot", "general acc"]]
    keys = [(task, "pass@1", shots), (task, "pass@32", shots), (task, "pass@1", 0), ("general", "acc", None)]
    plain = {k: res.get(k[0], "base", final, k[1], k[2]) for k in keys}
    table.append([f"plain run, {final_label}"] + [str(plain[k] or "") for k in keys])
    claims = []
    for recipe, st in got.items():
        table.append([f"{recipe} at {start_label}, then pretraining to {final_label}"]
                     + [str(st.get(k, "")) for k in keys])
        for k, question in ((keys[0], f"does what {recipe} taught persist through more pretraining ({task} pass@1)?"),
                            (keys[3], f"does {recipe}'s excursion change general capability after the return?")):
            if st.get(k) and plain[k]:
                sign = compare(st[k], plain[k])
                claims.append((f"Beyond the paper: from {start_label}, {question}", ANSWER[sign],
                               f"{final_label}: returned {st[k]} vs plain {plain[k]}"))
    reading = (f"From the {start_label}-token checkpoint, each recipe's run (dotted, its 0-shot result at its "
               f"start) goes back to pretraining with the plain run's AdamW state, LR schedule and data, to "
               f"{final_label} tokens; the returned model is evaluated as the base checkpoints are ({shots}-shot "
               f"and 0-shot, 95% intervals) beside the plain run (solid). Level means more pretraining washes the "
               f"excursion out; above means it persists or compounds. Not the paper's claims: its section 7 asks.")
    return Section(TITLE, "returns.png", reading, table, claims)
