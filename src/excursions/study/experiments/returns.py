"""Beyond the paper (its section 7, issue 21): RL inside pretraining. From one chosen checkpoint (`study.branch_at`)
the study's pretraining goes on to the end of its schedule, with the run's own AdamW state, LR schedule and data
position, in two ways: *excursion and return* (`study.returns`: a recipe's run from that checkpoint, then more
pretraining from its weights) and *interleaved RL* (`study.interleaves`: GRPO steps mixed into the pretraining,
`[interleave]`). Each branch's final checkpoint is evaluated as a base checkpoint is (few-shot, 0-shot, general) and
set beside the plain run's, against tokens and against FLOPs. Does what RL taught persist through more pretraining,
wash out, or compound? Opt-in: both lists are empty by default.
"""

from __future__ import annotations

from pathlib import Path

from excursions.checkpoint import META, read_json
from excursions.config import Config, digest, to_dict
from excursions.errors import UserError
from excursions.evals.figures import plt, token_label, tokens_axis
from excursions.study.experiments import experiment
from excursions.study.plan import (Unit, all_checkpoints, backbone, chosen_checkpoints, eval_digest, pretrain_dir,
                                   recipe_unit_id, world_dir)
from excursions.study.report import Section, legend, line, save
from excursions.study.results import Results, Stat, row_stats
from excursions.study.verdicts import Verdict, claim, paired, row

TITLE = "RL inside pretraining: excursion and return, interleaved RL (beyond the paper, its section 7)"


def answer(cmp, margin: float) -> str:
    """A beyond-the-paper question's answer from the paired interval of branch - plain: above or below where it
    excludes 0, level where it lies inside +-margin, else inconclusive.

    >>> from excursions.study.verdicts import Paired
    >>> [answer(Paired(0, 0, 0, lo, hi, 0, 1, (1, 1), 1), 0.05) for lo, hi in ((0.01, 0.1), (-0.02, 0.03), (-0.1, 0.02))]
    ['above the plain run', 'level with the plain run (within the margin)', 'inconclusive']
    """
    if cmp.lo > 0 or cmp.hi < 0:
        return "above the plain run" if cmp.lo > 0 else "below the plain run"
    return "level with the plain run (within the margin)" if -margin < cmp.lo and cmp.hi < margin else "inconclusive"


def answers(res: Results, label: str, u: dict, keys: list, final: str, start_label: str, final_label: str,
            task: str, ratio: float) -> list[Verdict]:
    """A branch's two questions (pass@1 few-shot, general accuracy) against the plain run's final checkpoint, paired:
    not the paper's claims, answered two-sided; "level" where the interval lies inside the metric's margin (pass@1
    5 points, accuracy 2)."""
    returned = u["run"].kind == "return"
    questions = ((keys[0], f"does what {label} taught persist through more pretraining ({task} pass@1)?"),
                 (keys[3], f"does {label}'s excursion change general capability after the return?")) if returned else \
        ((keys[0], f"does pretraining with RL mixed in ({label}) end above plain pretraining ({task} pass@1)?"),
         (keys[3], f"does RL mixed into pretraining ({label}) change general capability?"))
    out = []
    for (t, metric, k_shots), question in questions:
        q = claim(f"Beyond the paper: from {start_label}, {question}", "equivalence", [metric], "every")
        a, b = res.unit_arm(u["eval"], t, metric, k_shots), res.arm(t, "base", final, metric, k_shots)
        if a and b:
            cmp = paired(a, b, seed=res.cfg.eval.seed)
            out.append(Verdict(q, answer(cmp, q.margins[metric]), [row(q, final_label, f"{label} vs plain", metric,
                                                                       cmp, arms=(a, b))], f"at {ratio:.2f}x the plain run's FLOPs"))
    return out


def branch_runs(cfg: Config, out: Path) -> dict[str, dict[str, Unit]]:
    """{label: {"run": the branched pretraining, "eval": its final checkpoint's evaluation}}: a return for each recipe
    of `study.returns` (its first-seed run from the branch checkpoint), an interleaved run for each mode of
    `study.interleaves`."""
    s = cfg.study
    if not (s.returns or s.interleaves):
        return {}
    name, tokens, source = chosen_checkpoints(cfg, out)[0][s.branch_at]
    final, final_tokens, _ = all_checkpoints(cfg, out)[-1]
    if name == final:
        raise UserError("config: study.branch_at picks the last checkpoint, so there is no pretraining left to branch "
                        "into; choose an earlier one of study.checkpoints")
    runs, ev, plain = {u.id: u for u in backbone(cfg, out)}, eval_digest(cfg), pretrain_dir(cfg, out).name
    branches: dict[str, Unit] = {}
    for recipe in s.returns:
        run = runs[recipe_unit_id(recipe, name, s.seeds[0])]
        path = out / "returns" / f"{recipe}-{name}-{digest({'excursion': run.path.name, 'pretrain': plain})}"
        branches[recipe] = Unit(f"return/{recipe}/{name}", "return", path, name, tokens, recipe, run.seed, str(run.path))
    for mode in s.interleaves:
        settings = {"interleave": {**to_dict(cfg.interleave), "mode": mode}, "rl": to_dict(cfg.rl), "pretrain": plain,
                    "seed": s.seeds[0]}
        path = out / "returns" / f"interleave-{mode}-{name}-{digest(settings)}"
        branches[f"interleaved ({mode})"] = Unit(f"interleave/{mode}/{name}", "interleave", path, name, tokens,
                                                 seed=s.seeds[0], source=source,
                                                 overrides=(("interleave", "mode", mode),))
    # on the study's world, but not one of its checkpoints: `world` keeps the evaluations out of the study's results
    return {label: {"run": u, "eval": Unit(f"{u.id}/eval", "base_eval", out / "evals" / "return" /
                                           f"{u.path.name}-{ev}.json", final, final_tokens,
                                           source=str(u.path / "checkpoints" / final), world=str(world_dir(cfg, out)))}
            for label, u in branches.items()}


def branch_units(cfg: Config, out: Path) -> list[Unit]:
    return [u for units in branch_runs(cfg, out).values() for u in units.values()]


def branch_stats(res: Results, unit: Unit) -> dict[tuple[str, str, int | None], Stat]:
    """{(task, metric, shots): stat} of a branch's evaluation, as the study's base evaluations are read."""
    return {(r["task"], metric, r["shots"]): stat for r in res.store.evaluations([unit.id]) for metric, stat in row_stats(r)}


def _flops(unit: Unit, final: str) -> tuple[float, float]:
    """(next-token FLOPs per token, FLOPs beyond next-token prediction) of a branch at its final checkpoint."""
    meta = read_json(unit.path / "checkpoints" / final / META)
    return meta["flops"]["pretrain"] / meta["tokens"], meta["flops"]["extra"]


@experiment(order=13, units=branch_units)
def returns_experiment(res: Results, figdir: Path) -> Section:
    planned = branch_runs(res.cfg, res.out)
    got = {label: (u, branch_stats(res, u["eval"])) for label, u in planned.items()}
    got = {label: (u, st) for label, (u, st) in got.items() if st}
    if not got:
        return Section(TITLE, reading="Not run: set study.returns (e.g. [\"rl\"]) to send a recipe's run from a chosen "
                                      "checkpoint back to pretraining, study.interleaves (e.g. [\"alternate\"]) to "
                                      "pretrain from there with RL mixed in; study.branch_at picks the checkpoint.")
    task = res.math_tasks[0] if res.math_tasks else "gsm"
    first = next(iter(planned.values()))  # every branch starts at the same checkpoint and ends at the last one
    (start, t0), (final, t1) = ((first[k].checkpoint, first[k].tokens) for k in ("run", "eval"))
    start_label, final_label, shots = token_label(t0), token_label(t1), res.base_shots
    flops = {label: _flops(u["run"], final) for label, (u, _) in got.items()}
    per_token = next(iter(flops.values()))[0]  # one model: the same for every branch
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    x = [res.tokens[c] for c in res.checkpoints]
    metrics = [(task, "pass@1", f"{task} pass@1, {shots}-shot (%)"), (task, "pass@32", f"{task} pass@32, {shots}-shot (%)"),
               ("general", "acc", "general MC accuracy (%)")]
    for panel_row, flops_x in enumerate((False, True)):  # against pretraining tokens, then against the FLOPs spent
        for col, (t, metric, ylabel) in enumerate(metrics):
            ax = axes[panel_row][col]
            xs = [per_token * t_ / 1e12 for t_ in x] if flops_x else x
            line(ax, xs, [res.get(t, "base", c, metric) for c in res.checkpoints], "base")
            for label, (u, st) in got.items():
                after = st.get((t, metric, shots if t != "general" else None))
                returned = u["run"].kind == "return"
                # where the branch starts: a return at its excursion's own result (0-shot), interleaving at the base
                begin = res.get(t, u["run"].recipe if returned else "base", start, metric)
                extra = flops[label][1]
                ends = [(per_token * t0 + (extra if returned else 0)) / 1e12, (per_token * t1 + extra) / 1e12] \
                    if flops_x else [t0, t1]
                line(ax, ends, [begin, after], label, linestyle=":" if returned else "--")
            if flops_x:
                ax.set_xlabel("TFLOPs (next-token + RL training + rollouts)")
            else:
                tokens_axis(ax, x)
            ax.set_ylabel(ylabel)
    legend(axes[0][0])
    save(fig, figdir / "returns.png")
    keys = [(task, "pass@1", shots), (task, "pass@32", shots), (task, "pass@1", 0), ("general", "acc", None)]
    table = [["", f"{task} pass@1 {shots}-shot", f"{task} pass@32 {shots}-shot", f"{task} pass@1 0-shot",
              "general acc", "FLOPs (x plain)"]]
    plain = {k: res.get(k[0], "base", final, k[1], k[2]) for k in keys}
    table.append([f"plain run, {final_label}"] + [str(plain[k] or "") for k in keys] + ["1.00"])
    claims = []
    for label, (u, st) in got.items():
        ratio = 1 + flops[label][1] / (per_token * t1)
        what = (f"{label} at {start_label}, then pretraining to {final_label}" if u["run"].kind == "return"
                else f"pretraining {start_label} to {final_label} with RL mixed in ({label.split('(')[1][:-1]})")
        table.append([what] + [str(st.get(k, "")) for k in keys] + [f"{ratio:.2f}"])
        claims += answers(res, label, u, keys, final, start_label, final_label, task, ratio)
    reading = (f"From the {start_label}-token checkpoint the study's pretraining goes on to {final_label} tokens with "
               f"the plain run's AdamW state, LR schedule and data: after an excursion, from its weights (dotted: the "
               f"excursion's own 0-shot result at its start), or with GRPO steps mixed in (dashed: "
               f"[interleave] every {res.cfg.interleave.every} pretraining steps, {res.cfg.rl.prompts_per_step} prompts "
               f"x {res.cfg.rl.group_size} rollouts each). Each branch's final checkpoint is evaluated as the base "
               f"checkpoints are ({shots}-shot and 0-shot, 95% intervals) beside the plain run (solid); bottom row: "
               f"against the FLOPs spent (6N per trained token, 2N per generated one). The plain run stops at {final_label}, so "
               f"a branch that spent more FLOPs is compared with it at its own last checkpoint, not at equal FLOPs: the "
               f"last column says by how much. Level means more pretraining washes RL out; above, it persists or "
               f"compounds. Not the paper's claims: its section 7 asks.")
    return Section(TITLE, "returns.png", reading, table, claims)
