"""Beyond the paper (MultiBERTs' question): how far one setting's numbers move from one pretraining run to the next.
The same command on two machines gave bases of 10.7 and 3.5% pass@1 at 10.5M tokens and direct RL gains of +21.7 and
+5.8 points (docs/LOG.md): within a run a paired interval is 2-4 points wide, across runs the quantity moves by 16.
With `study.pretrain_seeds` the study has several runs of one world; this section puts them side by side at the study's
checkpoints, the base's test score and direct RL's paired gain over it (first seed) in each run, and the gain pooled
by the multi-bootstrap, whose interval covers which run it was as well as the problems. It adds no units and decides
no claim of its own: every claim of the report is already decided in each run and pooled (its claims table).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from excursions.evals.figures import plt, token_label, tokens_axis
from excursions.study.experiments import experiment
from excursions.study.plan import chosen_checkpoints, pretraining_runs
from excursions.study.report import BARS, Section, legend, save
from excursions.study.results import Results, rl_gain
from excursions.study.verdicts import interval, multi_paired

TITLE = "Across pretraining runs (beyond the paper)"


def spread(values: list[float]) -> str:
    """Each run's value and the standard deviation over runs, in points.

    >>> spread([0.107, 0.035, 0.06])
    '10.7 / 3.5 / 6.0 (sd 3.7)'
    """
    sd = f" (sd {100 * statistics.stdev(values):.1f})" if len(values) > 1 else ""
    return " / ".join(f"{100 * v:.1f}" for v in values) + sd


@experiment(order=15)
def runs_experiment(res: Results, figdir: Path) -> Section:
    if res.prefix or not res.cfg.study.pretrain_seeds:  # one run, or another run's own report
        return Section(TITLE, reading="One pretraining run: set study.pretrain_seeds to compare several runs of the "
                                      "same world.")
    task, runs = res.math_tasks[0], pretraining_runs(res.cfg)
    chosen = chosen_checkpoints(res.cfg, res.out)[0]
    ticks = [tokens for _, tokens, _ in chosen]
    gains = {(prefix, ckpt): g for prefix, _ in runs for ckpt, _, _ in chosen  # each paired once: a bootstrap each
             if (g := rl_gain(res, prefix, ckpt, True, task))}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    table = [["checkpoint", f"base test pass@1, {' / '.join(f'run {i + 1}' for i in range(len(runs)))}",
              "RL - base, each run", "RL - base, pooled over runs [95%]"]]
    for i, (prefix, run) in enumerate(runs):
        got = [(tokens, gains[prefix, ckpt]) for ckpt, tokens, _ in chosen if (prefix, ckpt) in gains]
        x = [t * (1 + 0.025 * (i - (len(runs) - 1) / 2)) for t, _ in got]  # runs side by side at each checkpoint
        name = f"run {i + 1} (seed {run.seed})"
        left.plot(x, [100 * b.mean for _, (_, _, b) in got], marker="o", color=f"C{i}", label=name)
        left.plot(x, [100 * a.mean for _, (_, a, _) in got], marker="^", linestyle="--", color=f"C{i}")
        right.errorbar(x, [100 * c.diff for _, (c, _, _) in got], fmt="o", color=f"C{i}", capsize=2, label=name,
                       yerr=[[100 * (c.diff - c.lo) for _, (c, _, _) in got],
                             [100 * (c.hi - c.diff) for _, (c, _, _) in got]])
    pooled = []
    for ckpt, tokens, _ in chosen:
        each = [gains[prefix, ckpt] for prefix, _ in runs if (prefix, ckpt) in gains]
        if len(each) < 2:
            continue
        across = multi_paired([(a, b) for _, a, b in each], seed=res.cfg.eval.seed)
        pooled.append((tokens, across))
        table.append([token_label(tokens), spread([b.mean for _, _, b in each]),
                      spread([c.diff for c, _, _ in each]), f"{interval(across)} ({len(each)} runs)"])
    right.errorbar([t for t, _ in pooled], [100 * c.diff for _, c in pooled], fmt="s", color="black", capsize=4,
                   yerr=[[100 * (c.diff - c.lo) for _, c in pooled], [100 * (c.hi - c.diff) for _, c in pooled]],
                   label="pooled (multi-bootstrap)")
    for ax in (left, right):
        tokens_axis(ax, ticks)
        ax.set_xlim(min(ticks) / 1.12, max(ticks) * 1.12)
    left.plot([], [], "^--", color="#555", label="direct RL (dashed)")
    left.set_ylabel(f"test pass@1 (%); base {res.base_shots}-shot")
    left.set_title("the base (solid) and direct RL (dashed) in each run")
    legend(left, None)
    right.axhline(0, color="#999", linewidth=1)
    right.set_ylabel("RL - base, test pass@1 (points)")
    right.set_title("RL's paired gain in each run, and pooled")
    legend(right, BARS + "; pooled: runs, then problems")
    save(fig, figdir / "runs.png")
    reading = (f"{len(runs)} pretraining runs of one world (seeds {', '.join(str(r.seed) for _, r in runs)}): "
               f"initialisation and data order differ, nothing else. Left: the base's test pass@1 ({res.base_shots}"
               f"-shot) and direct RL's (first seed) at the study's checkpoints, in each run. Right: RL's paired gain "
               f"over the base in each run (its interval covers that run's problems), and pooled by the "
               f"multi-bootstrap (its interval covers which run it was too). The table gives each run's value and "
               f"the standard deviation over runs.")
    return Section(TITLE, "runs.png", reading, table if len(table) > 1 else [])
