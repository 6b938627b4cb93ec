"""The study's report: one figure per experiment, a reading of each, and the paper's claims checked.

Everything is read back from the study database, so the report says exactly what the database holds.
`write_report` writes `report/report.md`, `report/report.html` (figures embedded, readable offline) and
`report/figures/*.png`. Each experiment is a function registered by name (the `study.experiments` list);
each returns a `Section`; claims compare confidence intervals, so "inconclusive" is a possible verdict.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from matplotlib.ticker import NullFormatter

from excursions.config import Config
from excursions.figures import plt, save_figure, tokens_axis
from excursions.study import difficulty
from excursions.train.checkpoint import atomic_write_text

ORDER = ("base", "rl", "sft", "sft_rl", "sft_gold", "sft_gold_rl", "parallel")
COLORS = {"base": "#555555", "base 0-shot": "#999999", "rl": "#d62728", "sft": "#1f77b4", "sft_rl": "#9467bd",
          "sft_gold": "#2ca02c", "sft_gold_rl": "#17becf", "parallel": "#ff7f0e"}


# ----------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Stat:
    mean: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} [{100 * self.lo:.1f}, {100 * self.hi:.1f}]"


def compare(a: Stat, b: Stat) -> int:
    """+1 if a's interval lies above b's, -1 if below, 0 if they overlap.

    >>> compare(Stat(0.5, 0.4, 0.6), Stat(0.3, 0.2, 0.35)), compare(Stat(0.5, 0.4, 0.6), Stat(0.45, 0.3, 0.5))
    (1, 0)
    """
    return 1 if a.lo > b.hi else -1 if a.hi < b.lo else 0


def wilson(p: float, n: int, z: float = 1.96) -> Stat:
    """An accuracy with its 95% Wilson interval (general multiple choice has no bootstrap of its own).

    >>> s = wilson(0.5, 100); round(s.lo, 3), round(s.hi, 3)
    (0.404, 0.596)
    """
    if n == 0:
        return Stat(p, 0.0, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Stat(p, centre - half, centre + half)


class Results:
    """The study database as lookups: evaluation stats by (task, recipe, checkpoint), training curves by unit."""

    def __init__(self, db, base_shots: int):
        self.db = db
        self.base_shots = base_shots  # base checkpoints are compared at this exemplar count
        rows = db.execute("SELECT e.*, m.metric, m.mean, m.lo, m.hi FROM evaluations e JOIN units u ON u.id = e.unit "
                          "LEFT JOIN metrics m ON m.evaluation = e.id WHERE u.status = 'done' AND u.id NOT LIKE 'scaling/%'"
                          ).fetchall()  # the scaling variants' checkpoints are not the study's (see scaling_experiment)
        self.stats: dict[tuple, list[Stat]] = {}  # (task, recipe, shots, checkpoint, metric) -> one per seed
        self.seed_stats: dict[tuple, Stat] = {}  # (task, recipe, shots, checkpoint, metric, seed) -> stat
        self.tokens: dict[str, int] = {}
        for r in rows:
            self.tokens[r["checkpoint"]] = r["tokens"]
            if r["metric"] is not None:
                items = [(r["metric"], Stat(r["mean"], r["lo"], r["hi"]))]
            else:
                items = [(k, wilson(r[k], r["n"])) for k in ("acc", "acc_norm") if r[k] is not None]
            for metric, stat in items:
                key = (r["task"], r["recipe"], r["shots"], r["checkpoint"], metric)
                self.stats.setdefault(key, []).append(stat)
                self.seed_stats[key + (r["seed"],)] = stat
        self.checkpoints = sorted(self.tokens, key=lambda c: (self.tokens[c], c))
        self.recipes = [r for r in ORDER if any(k[1] == r for k in self.stats)]
        self.tasks = sorted({k[0] for k in self.stats})
        self.math_tasks = [t for t in self.tasks if any(k[0] == t and k[4].startswith("pass@") for k in self.stats)]
        self.ks = sorted({k[4] for k in self.stats if k[4].startswith("pass@")}, key=lambda m: int(m.split("@")[1]))

    def get(self, task: str, recipe: str, ckpt: str, metric: str, shots: int | None = None) -> Stat | None:
        """The stat averaged over seeds (mean of means and of bounds); base defaults to its few-shot result."""
        if task not in self.math_tasks:
            shots = None  # general tasks have no exemplars
        elif shots is None:
            shots = self.base_shots if recipe == "base" else 0
        found = self.stats.get((task, recipe, shots, ckpt, metric))
        if not found:
            return None
        return Stat(*(sum(getattr(s, f) for s in found) / len(found) for f in ("mean", "lo", "hi")))

    def training(self, unit: str, stage: str, key: str) -> tuple[list[int], list[float]]:
        rows = self.db.execute("SELECT step, value FROM training WHERE unit = ? AND stage = ? AND key = ? "
                               "ORDER BY step", (unit, stage, key)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def seeds(self, recipe: str, ckpt: str) -> list[int]:
        return sorted({k[5] for k in self.seed_stats if k[1] == recipe and k[3] == ckpt})


# ----------------------------------------------------------------------------------------- report parts


@dataclass
class Section:
    title: str
    figure: str = ""  # file name under report/figures/
    reading: str = ""
    table: list[list[str]] = field(default_factory=list)  # first row is the header
    claims: list[tuple[str, str, str]] = field(default_factory=list)  # (claim, verdict, evidence)


EXPERIMENTS: dict[str, Callable[[Results, Path], Section]] = {}


def experiment(name: str):
    def register(fn):
        EXPERIMENTS[name] = fn
        return fn

    return register


def _save(fig, path: Path) -> None:
    save_figure(fig, path, dpi=110, svg=False)  # PNG only: the HTML report embeds it


def _verdict(wins: int, losses: int, total: int) -> str:
    """A claim holds where intervals separate in its favour at most checkpoints and never against it."""
    if total == 0:
        return "not run"
    if wins > total / 2 and losses == 0:
        return "reproduced"
    if losses > total / 2 and wins == 0:
        return "not reproduced"
    return "inconclusive"


def _line(ax, x, stats, label, **kw):
    pts = [(xi, s) for xi, s in zip(x, stats) if s is not None]
    if not pts:
        return
    xs = [p[0] for p in pts]
    line, = ax.plot(xs, [100 * p[1].mean for p in pts], marker="o", label=label, color=COLORS.get(label), **kw)
    ax.fill_between(xs, [100 * p[1].lo for p in pts], [100 * p[1].hi for p in pts], alpha=0.15,
                    color=line.get_color())  # the band in its line's colour (pass@k lines have no fixed one)


@experiment("recipes")
def recipes_experiment(res: Results, figdir: Path) -> Section:
    """Fig. 2-3: pass@k along pretraining for each recipe, on each math task."""
    tasks, ks = res.math_tasks, res.ks
    fig, axes = plt.subplots(len(tasks), len(ks), figsize=(4 * len(ks), 3.3 * len(tasks)), squeeze=False)
    x = [res.tokens[c] for c in res.checkpoints]
    for row, task in zip(axes, tasks):
        for ax, k in zip(row, ks):
            for recipe in res.recipes:
                _line(ax, x, [res.get(task, recipe, c, k) for c in res.checkpoints], recipe,
                      linestyle="--" if recipe.startswith("sft_gold") else "-")
            _line(ax, x, [res.get(task, "base", c, k, shots=0) for c in res.checkpoints], "base 0-shot",
                  linestyle=":")
            ax.set_title(f"{task} {k}")
            tokens_axis(ax, x)
            ax.set_ylabel(f"{k} (%)")
    axes[0][-1].legend(fontsize=7)
    _save(fig, figdir / "recipes.png")
    task = tasks[0]
    head = ["checkpoint"] + [f"{r} pass@1" for r in res.recipes] + [f"{r} {ks[-1]}" for r in res.recipes]
    table = [head] + [[f"{res.tokens[c] / 1e6:.2f}M"] + [str(res.get(task, r, c, "pass@1") or "-") for r in res.recipes]
                      + [str(res.get(task, r, c, ks[-1]) or "-") for r in res.recipes] for c in res.checkpoints]
    claims = []
    for name, a, b, ties in (("RL beats SFT with one demonstration per problem (pass@1)", "rl", "sft", False),
                             ("With all demonstrations (SFT-Gold), SFT matches or beats RL (pass@1)", "sft_gold", "rl",
                              True)):
        pairs = [(c, res.get(task, a, c, "pass@1"), res.get(task, b, c, "pass@1")) for c in res.checkpoints]
        pairs = [(c, sa, sb) for c, sa, sb in pairs if sa and sb]
        signs = [compare(sa, sb) for _, sa, sb in pairs]
        wins = signs.count(1) + (signs.count(0) if ties else 0)
        claims.append((name, _verdict(wins, signs.count(-1), len(pairs)),
                       "; ".join(f"{res.tokens[c] / 1e6:.1f}M: {a} {sa} vs {b} {sb}" for c, sa, sb in pairs)))
    early = res.checkpoints[: max(1, len(res.checkpoints) // 2)]
    pairs = [(c, res.get(task, "rl", c, "pass@1"), res.get(task, "base", c, "pass@1")) for c in early]
    pairs = [(c, r, b) for c, r, b in pairs if r and b]
    signs = [compare(r, b) for _, r, b in pairs]
    claims.insert(0, ("RL is effective early in pretraining (pass@1 above the base checkpoint's)",
                      _verdict(signs.count(1), signs.count(-1), len(pairs)),
                      "; ".join(f"{res.tokens[c] / 1e6:.1f}M: rl {r} vs base {b}" for c, r, b in pairs)))
    best = {c: max(res.recipes, key=lambda r: (res.get(task, r, c, "pass@1") or Stat(-1, -1, -1)).mean)
            for c in res.checkpoints}
    reading = (f"pass@k on the {', '.join(tasks)} test set after each recipe, from each checkpoint (base: "
               f"{res.base_shots}-shot, dotted: base 0-shot; post-trained models 0-shot; bands are 95% bootstrap "
               f"intervals). The recipe with the highest {task} pass@1 is "
               + ", ".join(f"{best[c]} at {res.tokens[c] / 1e6:.1f}M" for c in res.checkpoints) + ".")
    return Section("Recipes along pretraining (paper Fig. 2-3)", "recipes.png", reading, table, claims)


@experiment("base_vs_rl")
def base_vs_rl_experiment(res: Results, figdir: Path) -> Section:
    """Fig. 5: is the base checkpoint's pass@k a predictor of what RL reaches?"""
    task = res.math_tasks[0]
    fig, axes = plt.subplots(1, len(res.ks), figsize=(3.6 * len(res.ks), 3.4), squeeze=False)
    corr = {}
    for ax, k in zip(axes[0], res.ks):
        pts = [(res.get(task, "base", c, k), res.get(task, "rl", c, k), c) for c in res.checkpoints]
        pts = [p for p in pts if p[0] and p[1]]
        xs, ys = [100 * p[0].mean for p in pts], [100 * p[1].mean for p in pts]
        ax.scatter(xs, ys, color=COLORS["rl"], zorder=3)
        for x, y, p in zip(xs, ys, pts):
            ax.annotate(f"{res.tokens[p[2]] / 1e6:.1f}M", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.plot([0, 100], [0, 100], color="#999", linestyle="--", linewidth=1)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel(f"base {k} (%)")
        ax.set_ylabel(f"after RL {k} (%)")
        ax.set_title(f"{task} {k}")
        if len(pts) >= 3:
            corr[k] = _pearson(xs, ys)
    _save(fig, figdir / "base-vs-rl.png")
    reading = ("Each point is one checkpoint: its base pass@k (x) against the pass@k after direct RL (y); above the "
               "diagonal RL helped. " + (" ".join(f"Pearson r for {k}: {v:.2f}." for k, v in corr.items())
                                         if corr else "Fewer than three checkpoints: no correlation reported."))
    return Section("Base pass@k as a predictor of RL (paper Fig. 5)", "base-vs-rl.png", reading)


def _pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation of two equal-length lists.

    >>> round(_pearson([1, 2, 3], [2, 4, 7]), 3)
    0.993
    """
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else float("nan")


@experiment("sharpening")
def sharpening_experiment(res: Results, figdir: Path) -> Section:
    """Fig. 6: pass@1 and the largest tracked pass@k along RL training, direct RL vs SFT then RL."""
    task = res.math_tasks[0]
    keys = [r[0] for r in res.db.execute("SELECT DISTINCT key FROM training WHERE key LIKE ?", (f"eval/{task}/pass@%",))]
    keys = sorted(keys, key=lambda k: int(k.split("@")[1]))
    tracked = [keys[0], keys[-1]] if len(keys) > 1 else keys
    ckpts = res.checkpoints
    fig, axes = plt.subplots(len(tracked), len(ckpts), figsize=(3.2 * len(ckpts), 2.8 * len(tracked)),
                             squeeze=False)
    for j, c in enumerate(ckpts):
        for i, key in enumerate(tracked):
            ax = axes[i][j]
            for recipe in ("rl", "sft_rl"):
                seeds = res.seeds(recipe, c)
                steps, vals = res.training(f"{recipe}/{c}/s{seeds[0] if seeds else 0}", "rl", key)
                if steps:
                    ax.plot(steps, [100 * v for v in vals], marker=".", label=recipe, color=COLORS[recipe])
            ax.set_title(f"{res.tokens[c] / 1e6:.1f}M tokens", fontsize=9)
            ax.set_xlabel("RL step")
            ax.set_ylabel(key.split("/")[-1] + " (%)")
    axes[0][0].legend(fontsize=7)
    _save(fig, figdir / "sharpening.png")
    top = res.ks[-1]
    expand, sharpen, rows = [], [], []
    for c in ckpts:
        base, rl = res.get(task, "base", c, top), res.get(task, "rl", c, top)
        sft, sft_rl = res.get(task, "sft", c, top), res.get(task, "sft_rl", c, top)
        if base and rl:
            expand.append(compare(rl, base))
        if sft and sft_rl:
            sharpen.append(compare(sft_rl, sft))
        rows.append(f"{res.tokens[c] / 1e6:.1f}M: base {base or '-'} -> rl {rl or '-'}; sft {sft or '-'} -> sft_rl "
                    f"{sft_rl or '-'}")
    # expansion: direct RL lifts pass@k at large k; sharpening: after SFT, RL does not (equal or lower)
    wins = sum(1 for e, s in zip(expand, sharpen) if e == 1 and s <= 0)
    against = sum(1 for e, s in zip(expand, sharpen) if e == -1 or s == 1)
    claims = [(f"Direct RL expands ({top} up) while SFT->RL sharpens ({top} not up)",
               _verdict(wins, against, min(len(expand), len(sharpen))), "; ".join(rows))]
    big = tracked[-1].split("/")[-1] if tracked else top
    reading = (f"Test {' and '.join(k.split('/')[-1] for k in tracked)} (0-shot, tracked during training on a subset "
               f"of the test problems) along the RL steps of direct RL and of the RL stage of SFT->RL, from each "
               f"checkpoint. Expansion shows as {big} rising with pass@1; sharpening as pass@1 rising while {big} stays "
               f"or falls. The claim below uses the final evaluations' {top}.")
    return Section("Sharpening vs expansion (paper Fig. 6)", "sharpening.png", reading, claims=claims)


@experiment("general")
def general_experiment(res: Results, figdir: Path) -> Section:
    """Fig. 7: general (non-math) capability after each recipe."""
    if "general" not in res.tasks:
        return Section("General capability (paper Fig. 7)", reading="Not evaluated: add general to study.tasks.")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = [res.tokens[c] for c in res.checkpoints]
    for recipe in res.recipes:
        _line(ax, x, [res.get("general", recipe, c, "acc") for c in res.checkpoints], recipe)
    tokens_axis(ax, x)
    ax.set_ylabel("general MC accuracy (%)")
    ax.legend(fontsize=7)
    _save(fig, figdir / "general.png")
    claims = []
    for recipe, want in (("sft", -1), ("rl", 0)):
        pairs = [(c, res.get("general", recipe, c, "acc"), res.get("general", "base", c, "acc"))
                 for c in res.checkpoints]
        pairs = [p for p in pairs if p[1] and p[2]]
        signs = [compare(a, b) for _, a, b in pairs]
        if want == -1:
            wins, losses = signs.count(-1), signs.count(1)
        else:
            wins, losses = signs.count(0), signs.count(-1)
        claims.append((f"{recipe.upper()} {'degrades' if want else 'keeps'} general capability",
                       _verdict(wins, losses, len(pairs)),
                       "; ".join(f"{res.tokens[c] / 1e6:.1f}M: {recipe} {a} vs base {b}" for c, a, b in pairs)))
    reading = ("Multiple-choice accuracy on the general world's held-out questions (facts about entities, no "
               "math) with 95% Wilson intervals, before (base) and after each recipe.")
    return Section("General capability (paper Fig. 7)", "general.png", reading, claims=claims)


@experiment("parallel")
def parallel_experiment(res: Results, figdir: Path) -> Section:
    """Fig. 9 and 17: parallel averaging against the other recipes, pass@1 and the largest k."""
    task, top = res.math_tasks[0], res.ks[-1]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    width = 0.8 / max(1, len(res.recipes))
    for ax, metric in zip(axes, ("pass@1", top)):
        for i, recipe in enumerate(res.recipes):
            stats = [res.get(task, recipe, c, metric) for c in res.checkpoints]
            xs = [j + i * width for j, s in enumerate(stats) if s]
            ys = [100 * s.mean for s in stats if s]
            err = [[100 * (s.mean - s.lo) for s in stats if s], [100 * (s.hi - s.mean) for s in stats if s]]
            ax.bar(xs, ys, width, yerr=err, label=recipe, color=COLORS.get(recipe), capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(res.checkpoints))],
                      [f"{res.tokens[c] / 1e6:.1f}M" for c in res.checkpoints])
        ax.set_title(f"{task} {metric}")
        ax.set_xlabel("checkpoint (pretraining tokens)")
    axes[1].legend(fontsize=7)
    _save(fig, figdir / "parallel.png")
    signs, evidence = [], []
    for c in res.checkpoints:
        par = res.get(task, "parallel", c, top)
        others = {r: s for r in res.recipes if r != "parallel" and (s := res.get(task, r, c, top))}
        if not par or not others:
            continue
        best = max(others, key=lambda r: others[r].mean)
        signs.append(compare(par, others[best]))
        evidence.append(f"{res.tokens[c] / 1e6:.1f}M: parallel {par} vs best other ({best}) {others[best]}")
    verdict = _verdict(signs.count(1), signs.count(-1), len(signs))
    claims = [(f"Parallel averaging has the best {top}", verdict, "; ".join(evidence))]
    reading = (f"pass@1 and {top} of every recipe at each checkpoint (error bars: 95% intervals). Parallel averaging "
               "applies an RL and an SFT update from two AdamW states, averaged with weight w.")
    return Section("Parallel averaging (paper Fig. 9, 17)", "parallel.png", reading, claims=claims)


@experiment("seeds")
def seeds_experiment(res: Results, figdir: Path) -> Section:
    """Fig. 13-14: RL training dynamics across seeds, and how far the final results spread."""
    task = res.math_tasks[0]
    ckpt = max(res.checkpoints, key=lambda c: len(res.seeds("rl", c)))
    seeds = res.seeds("rl", ckpt)
    if len(seeds) < 2:
        return Section("RL seed brittleness (paper Fig. 13-14)",
                       reading="One seed per checkpoint: set study.extra_seeds to measure the spread.")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    keys = ("train/reward", f"eval/{task}/pass@1")
    for ax, key in zip(axes[:2], keys):
        for s in seeds:
            steps, vals = res.training(f"rl/{ckpt}/s{s}", "rl", key)
            ax.plot(steps, [100 * v for v in vals], marker="." if key.startswith("eval") else None, label=f"seed {s}")
        ax.set_xlabel("RL step")
        ax.set_ylabel(f"{key} (%)")
        ax.set_title(key)
    finals = [res.seed_stats.get((task, "rl", 0, ckpt, "pass@1", s)) for s in seeds]
    base = res.get(task, "base", ckpt, "pass@1", shots=0)
    ax = axes[2]
    ax.errorbar(range(len(seeds)), [100 * f.mean for f in finals],
                yerr=[[100 * (f.mean - f.lo) for f in finals], [100 * (f.hi - f.mean) for f in finals]],
                fmt="o", capsize=3, color=COLORS["rl"], label="after RL")
    if base:
        ax.axhspan(100 * base.lo, 100 * base.hi, color=COLORS["base 0-shot"], alpha=0.3, label="base 0-shot")
    ax.set_xticks(range(len(seeds)), [str(s) for s in seeds])
    ax.set_xlabel("seed")
    ax.set_ylabel("pass@1 (%)")
    ax.set_title(f"final {task} pass@1")
    ax.legend(fontsize=7)
    axes[0].legend(fontsize=7)
    _save(fig, figdir / "seeds.png")
    means = [f.mean for f in finals]
    disjoint = any(compare(a, b) != 0 for a in finals for b in finals)
    claims = [("RL outcomes are seed-brittle (final pass@1 intervals of some seeds do not overlap)",
               "reproduced" if disjoint else "not reproduced",
               f"{len(seeds)} seeds at {res.tokens[ckpt] / 1e6:.1f}M: " + ", ".join(str(f) for f in finals))]
    reading = (f"Direct RL from the {res.tokens[ckpt] / 1e6:.1f}M-token checkpoint with {len(seeds)} seeds (rollout "
               f"sampling and problem order): training reward, tracked test pass@1, and the final pass@1 with 95% "
               f"intervals. Final pass@1 ranges from {100 * min(means):.1f}% to {100 * max(means):.1f}%.")
    return Section("RL seed brittleness (paper Fig. 13-14)", "seeds.png", reading, claims=claims)


@experiment("nshot")
def nshot_experiment(res: Results, figdir: Path) -> Section:
    """Fig. 16: the base checkpoint's pass@k against the number of in-context exemplars."""
    task = res.math_tasks[0]
    found = {(k[2], k[3]) for k in res.stats if k[0] == task and k[1] == "base"}  # (shots, checkpoint)
    ckpt = max({c for _, c in found}, key=lambda c: sum(x == c for _, x in found), default=None)
    shots = sorted(s for s, c in found if c == ckpt)
    if len(shots) < 3:
        return Section("Base checkpoint vs n-shot (paper Fig. 16)", reading="No n-shot sweep in this study.")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k in res.ks:
        _line(ax, shots, [res.get(task, "base", ckpt, k, shots=s) for s in shots], k)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set_xlabel("in-context exemplars (n-shot)")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(f"{task}, base checkpoint at {res.tokens[ckpt] / 1e6:.1f}M tokens")
    ax.legend(fontsize=7)
    _save(fig, figdir / "nshot.png")
    table = [["shots"] + res.ks] + [[str(s)] + [str(res.get(task, "base", ckpt, k, shots=s)) for k in res.ks]
                                    for s in shots]
    reading = (f"pass@k of the {res.tokens[ckpt] / 1e6:.1f}M-token base checkpoint with 0 to {shots[-1]} worked "
               f"exemplars in the prompt (the study evaluates base checkpoints {res.base_shots}-shot).")
    return Section("Base checkpoint vs n-shot (paper Fig. 16)", "nshot.png", reading, table)


@experiment("sft_epochs")
def sft_epochs_experiment(res: Results, figdir: Path) -> Section:
    """Fig. 15: SFT's test pass@k after each epoch of one longer run; has it converged by the study's epochs?"""
    title = "SFT epochs (paper Fig. 15)"
    units = [r[0] for r in res.db.execute("SELECT id FROM units WHERE id LIKE 'sft_epochs/%' AND status = 'done'")]
    if not units:
        return Section(title, reading="No SFT epochs run in this study (study.sft_epochs = 0).")
    unit, task = units[0], res.math_tasks[0]
    keys = sorted((r[0] for r in res.db.execute("SELECT DISTINCT key FROM training WHERE unit = ? AND key LIKE ?",
                                                  (unit, f"eval/{task}/pass@%"))), key=lambda k: int(k.split("@")[1]))
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
    ckpt = unit.split("/")[1]
    ax.set_title(f"sft from the {res.tokens.get(ckpt, 0) / 1e6:.1f}M-token checkpoint", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, figdir / "sft_epochs.png")
    reading = (f"Test {', '.join(k.split('/')[-1] for k in keys)} (0-shot, tracked on a subset of the {task} test "
               f"problems) after each epoch of one SFT run on one demonstration per problem, {max(at.values(), default=0):.0f} "
               "epochs. Where the curve has flattened by the study's SFT epochs, its sft results are converged.")
    return Section(title, "sft_epochs.png", reading, table)


def value_at(xs: list[float], ys: list[float], x: float) -> float:
    """A tracked curve's value at `x`, linearly between its points; before its first point, the first value
    (which had more compute than `x`: a comparison at `x` then favours this curve).

    >>> value_at([10, 20], [0.2, 0.4], 15), value_at([10, 20], [0.2, 0.4], 5), value_at([10, 20], [0.2, 0.4], 30)
    (0.30000000000000004, 0.2, 0.4)
    """
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


@experiment("rollouts")
def rollouts_experiment(res: Results, figdir: Path) -> Section:
    """Fig. 18: direct RL on easy / hard training splits with few and many rollouts, per FLOP and per step."""
    title = "Rollouts per prompt, per FLOP, on difficulty splits (paper Fig. 18)"
    units = [r[0] for r in res.db.execute("SELECT id FROM units WHERE id LIKE 'rollouts/%' AND status = 'done' "
                                          "ORDER BY id")]
    units = [u for u in units if res.training(u, "rl", "total_rollout_flops")[0]]  # skipped runs have none
    runs = {}  # (split, G) -> unit
    for u in units:
        _, split, g, ckpt = u.split("/")
        runs[split, int(g[1:])] = u
    gs = sorted({g for _, g in runs})
    splits = [s for s in ("easy", "hard") if any((s, g) in runs for g in gs)]
    if not splits:
        return Section(title, reading="No rollouts experiment in this study (add 'rollouts' to study.experiments).")
    if len(gs) < 2:  # the runs are in the database; the figure compares rollout counts, and there is one
        return Section(title, reading=f"The rollouts experiment ran with one rollout count ({gs[0]} per prompt); its "
                                      "figure compares two: set study.rollouts to two counts, e.g. [4, 16].")
    task = res.math_tasks[0]
    metrics = [k for k in ("pass@1", "pass@8") if res.training(next(iter(runs.values())), "rl", f"eval/{task}/{k}")[0]]
    curves = {}  # (split, G, metric) -> (steps, flops, values)
    for (split, g), u in runs.items():
        flops = dict(zip(*res.training(u, "rl", "total_train_flops")))
        rflops = dict(zip(*res.training(u, "rl", "total_rollout_flops")))
        for m in metrics:
            steps, vals = res.training(u, "rl", f"eval/{task}/{m}")
            curves[split, g, m] = (steps, [flops.get(st, 0) + rflops.get(st, 0) for st in steps], vals)
    colors = dict(zip(gs, ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e")))
    fig, axes = plt.subplots(len(splits), len(metrics) + 1, figsize=(4 * (len(metrics) + 1), 3.2 * len(splits)),
                             squeeze=False)
    for row, split in zip(axes, splits):
        for ax, m in zip(row, metrics):
            for g in gs:
                if (split, g, m) in curves:
                    _, fl, vals = curves[split, g, m]
                    ax.plot(fl, [100 * v for v in vals], marker="o", color=colors[g], label=f"n = {g}")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^11, 3x10^11, ... overlap at this width
            ax.set_xlabel("RL FLOPs (training + rollouts)")
            ax.set_ylabel(f"test {m} (%)")
            ax.set_title(f"{split} split: {m} per FLOP", fontsize=9)
            ax.legend(fontsize=7)
        ax = row[-1]
        for g in gs:
            if (split, g, metrics[0]) in curves:
                steps, _, vals = curves[split, g, metrics[0]]
                ax.plot(steps, [100 * v for v in vals], marker="o", color=colors[g], label=f"n = {g}")
        ax.set_xlabel("RL step (same prompts per step)")
        ax.set_ylabel(f"test {metrics[0]} (%)")
        ax.set_title(f"{split} split: {metrics[0]} per step", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, figdir / "rollouts.png")
    tracked = _tracked_problems(res, units, task)
    # equal FLOPs: the fewest rollouts' final value against the most rollouts' curve at that budget
    few, many = gs[0], gs[-1]
    table, wins, losses, total = [["split", "metric", f"n = {few} at its end", f"n = {many} at the same FLOPs",
                                   "FLOPs"]], 0, 0, 0
    for split in splits:
        for m in metrics:
            if (split, few, m) not in curves or (split, many, m) not in curves:
                continue
            _, fl_few, v_few = curves[split, few, m]
            _, fl_many, v_many = curves[split, many, m]
            a, b = v_few[-1], value_at(fl_many, v_many, fl_few[-1])
            sign = _separate(a, b, tracked)
            wins, losses, total = wins + (sign > 0), losses + (sign < 0), total + 1
            table.append([split, m, f"{100 * a:.1f}", f"{100 * b:.1f}", f"{fl_few[-1]:.2e}"])
    claims = [("Fewer rollouts per problem are more FLOP-efficient (Fig. 18)", _verdict(wins, losses, total),
               f"n = {few} vs n = {many} at n = {few}'s final FLOPs, {tracked} tracked test problems: "
               + "; ".join(f"{r[0]} {r[1]} {r[2]} vs {r[3]}" for r in table[1:]))]
    counts = res.db.execute("SELECT p.n, p.c FROM problems p JOIN evaluations e ON e.id = p.evaluation "
                            "WHERE e.unit LIKE 'splits/%'").fetchall()
    kinds = [difficulty(c, n) for n, c in counts]
    reading = (f"The last checkpoint's training problems split by its own 0-shot success rate in {counts[0][0] if counts else '?'} "
               f"samples each (easy: at least a quarter correct, {kinds.count('easy')} of {len(kinds)} sampled; hard: "
               f"at most an eighth, {kinds.count('hard')}; both splits cut to the smaller's size), then direct RL on each split with "
               f"n = {', '.join(map(str, gs))} rollouts per prompt and otherwise equal settings. Test pass@k (0-shot, "
               f"{tracked} test problems) is tracked along training against the FLOPs spent (6N per trained token, "
               f"2N per generated one) and against RL steps. The claim compares n = {few} at the end of its run with "
               f"n = {many} at the same FLOPs (interpolated; where n = {many}'s first point already cost more, that "
               f"point: the comparison then favours n = {many}); a difference counts where it exceeds 1.96 "
               "binomial standard errors over the tracked problems.")
    return Section(title, "rollouts.png", reading, table, claims)


def _tracked_problems(res: Results, units: list[str], task: str) -> int:
    """How many test problems the tracked pass@k of these runs used (their rl.track_problems, or fewer)."""
    row = res.db.execute("SELECT value FROM training WHERE unit = ? AND key = ? LIMIT 1",
                         (units[0], f"eval/{task}/problems")).fetchone()
    return int(row[0]) if row else 100


def _separate(a: float, b: float, problems: int) -> int:
    """+1 / -1 where two rates on `problems` problems differ by more than 1.96 standard errors, else 0.

    >>> _separate(0.5, 0.3, 100), _separate(0.32, 0.3, 100), _separate(0.1, 0.3, 100)
    (1, 0, -1)
    """
    se = math.sqrt((a * (1 - a) + b * (1 - b)) / max(problems, 1))
    return 0 if abs(a - b) <= 1.96 * se else 1 if a > b else -1


@experiment("scaling")
def scaling_experiment(res: Results, figdir: Path) -> Section:
    """Fig. 4, 10-12: RL on `hard` from the final checkpoints of the study's run, a bigger model (N) and the same
    model with extra targeted math (D)."""
    title, claim = "Scaling N vs D for RL on hard problems (paper Fig. 4, 10-12)", \
        "Targeted data beats model scale for RL gains on hard problems (Fig. 4, 10-12)"
    rows = res.db.execute(
        "SELECT u.id, e.shots, e.checkpoint, e.tokens, m.metric, m.mean, m.lo, m.hi FROM evaluations e "
        "JOIN units u ON u.id = e.unit JOIN metrics m ON m.evaluation = e.id "
        "WHERE u.id LIKE 'scaling/%' AND u.status = 'done' AND e.task = 'hard'").fetchall()
    stats: dict[tuple, Stat] = {}  # (variant, what, metric): what = base (few-shot) | base 0-shot | rl
    tokens: dict[str, int] = {}
    for uid, shots, _, tok, metric, mean, lo, hi in rows:
        _, v, kind = uid.split("/")
        what = "rl" if kind == "eval" else "base" if shots == res.base_shots else "base 0-shot"
        stats[v, what, metric] = Stat(mean, lo, hi)
        tokens[v] = tok
    variants = [v for v in ("base", "N", "D") if any(k[0] == v for k in stats)]
    if len(variants) < 2:
        why = ("opt-in (a bigger model's and a targeted-data pretraining run): set study.scale_model and "
               "study.scale_targeted")
        return Section(title, reading=f"Not run in this study: {why}.", claims=[(claim, "not run", why)])
    ks = sorted({k[2] for k in stats}, key=lambda m: int(m.split("@")[1]))
    label = {"base": "study's run", "N": "bigger\nmodel (N)", "D": "+ targeted\nmath (D)"}
    fig, axes = plt.subplots(1, len(ks), figsize=(4 * len(ks), 3.4), squeeze=False)
    whats = ("base", "base 0-shot", "rl")
    for ax, k in zip(axes[0], ks):
        for j, what in enumerate(whats):
            xs = [i + (j - 1) * 0.27 for i in range(len(variants))]
            got = [stats.get((v, what, k)) for v in variants]
            ax.bar(xs, [100 * g.mean if g else 0 for g in got], width=0.27, label=what, color=COLORS.get(what),
                   yerr=[[100 * (g.mean - g.lo) if g else 0 for g in got], [100 * (g.hi - g.mean) if g else 0 for g in got]],
                   capsize=2)
        ax.set_xticks(range(len(variants)), [label[v] for v in variants], fontsize=8)
        ax.set_ylabel(f"hard {k} (%)")
        ax.set_title(f"hard {k}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, figdir / "scaling.png")
    table = [["variant", "tokens"] + [f"{w} {k}" for k in ks for w in whats]]
    for v in variants:
        table.append([label[v].replace("\n", " "), f"{tokens.get(v, 0) / 1e6:.1f}M"]
                     + [str(stats.get((v, w, k), "-")) for k in ks for w in whats])
    if "N" in variants and "D" in variants:
        signs = [compare(stats[("D", "rl", k)], stats[("N", "rl", k)]) for k in ks
                 if ("D", "rl", k) in stats and ("N", "rl", k) in stats]
        verdict = _verdict(signs.count(1), signs.count(-1), len(signs))
        evidence = "; ".join(f"after RL, {k}: D {stats[('D', 'rl', k)]} vs N {stats[('N', 'rl', k)]}" for k in ks
                             if ("D", "rl", k) in stats and ("N", "rl", k) in stats)
    else:
        verdict, evidence = "not run", "needs both variants: study.scale_model and study.scale_targeted"
    reading = ("Direct RL on the hard family from the final checkpoint of each pretraining run: the study's own, a "
               "bigger model on the same data (scaling N) and the same model with extra targeted hard-family math "
               "(scaling D). Bars: the base few-shot and 0-shot, and after RL (0-shot), with 95% intervals. The "
               "paper finds that targeted data helps RL on hard problems more than a bigger model does.")
    return Section(title, "scaling.png", reading, table, [(claim, verdict, evidence)])


# ----------------------------------------------------------------------------------------- writing


def setup_section(cfg: Config, store, res: Results) -> Section:
    units = store.db.execute("SELECT kind, COUNT(*), SUM(seconds), COUNT(seconds) FROM units WHERE status = 'done' "
                             "GROUP BY kind ORDER BY MIN(started)").fetchall()
    table = [["unit kind", "count", "wall time"]]
    total = 0.0
    for kind, count, secs, timed in units:
        total += secs or 0
        note = "" if timed == count else f" (+ {count - timed} reused from an earlier run, not timed)"
        table.append([kind, str(count), (f"{secs / 60:.1f} min" if timed else "-") + note])
    table.append(["all timed", str(sum(u[3] for u in units)), f"{total / 60:.1f} min"])
    m, p, r = cfg.model, cfg.pretrain, cfg.rl
    reading = (f"Study {cfg.name}: an OLMo-2 model (size {m.size}) pretrained on {p.tokens / 1e6:.1f}M tokens of the "
               f"synthetic worlds (math share {cfg.data.math:g}), {len(res.checkpoints)} checkpoints, recipes "
               f"{', '.join(cfg.study.recipes)}, seeds {', '.join(map(str, cfg.study.seeds))}. RL: GRPO, "
               f"{r.steps} steps of {r.prompts_per_step} prompts x {r.group_size} rollouts, lr {r.lr:.0e}, KL {r.kl_coef:.0e}; "
               f"SFT: {cfg.sft.epochs} epochs at lr {cfg.sft.lr:.0e}; parallel: {cfg.parallel.steps} steps, w = "
               f"{cfg.parallel.weight:g}. "
               f"Evaluation: {cfg.eval.problems} test problems, n = {cfg.eval.n} samples at T = {cfg.eval.temperature}, "
               f"unbiased pass@k with 95% bootstrap intervals; base checkpoints {res.base_shots}-shot, post-trained "
               f"models 0-shot. Wall time of the work recorded in the database (reused units count their first run):")
    return Section("Setup", reading=reading, table=table)


VERDICTS = ("Each claim is checked at every evaluated checkpoint (named by its pretraining tokens, e.g. 6.5M) by "
            "comparing 95% intervals: reproduced where they separate in the claim's favour at most checkpoints and "
            "never against it, not reproduced where the opposite holds, inconclusive otherwise. Post-trained models "
            "are evaluated 0-shot, base checkpoints few-shot.")


def write_report(cfg: Config, out: Path, store) -> Path:
    res = Results(store.db, cfg.eval.shots)
    rdir = out / "report"
    figdir = rdir / "figures"
    sections = [setup_section(cfg, store, res)]
    if res.math_tasks:
        sections += [EXPERIMENTS[name](res, figdir) for name in cfg.study.experiments]
    claims = [c for s in sections for c in s.claims]
    atomic_write_text(rdir / "report.md", to_markdown(cfg, sections, claims))
    atomic_write_text(rdir / "report.html", to_html(cfg, sections, claims, figdir))
    return rdir / "report.html"


def _md_table(rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return out + ["| " + " | ".join(r) + " |" for r in rows[1:]] + [""]


def to_markdown(cfg: Config, sections: list[Section], claims: list) -> str:
    lines = [f"# excursions study: {cfg.name}", "", "## Findings", "", VERDICTS, ""]
    lines += _md_table([["claim (paper)", "verdict at this scale", "evidence (pass@k %, 95% intervals)"]]
                       + [[c, v, e] for c, v, e in claims])
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.figure:
            lines += [f"![{s.title}](figures/{s.figure})", ""]
        if s.reading:
            lines += [s.reading, ""]
        lines += _md_table(s.table)
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.reproduced{color:#1a7f37;font-weight:600}
.not-reproduced{color:#c0392b;font-weight:600}.inconclusive{color:#b7791f;font-weight:600}.not-run{color:#888}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}"""


def _html_table(rows: list[list[str]], verdict_col: int | None = None) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = []
    for r in rows[1:]:
        cells = []
        for i, v in enumerate(r):
            cls = f' class="{v.replace(" ", "-")}"' if i == verdict_col else ""
            cells.append(f"<td{cls}>{html.escape(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def to_html(cfg: Config, sections: list[Section], claims: list, figdir: Path) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>excursions study: {html.escape(cfg.name)}"
             f"</title><style>{CSS}</style></head><body><h1>excursions study: {html.escape(cfg.name)}</h1>",
             "<h2>Findings</h2>", f"<p>{html.escape(VERDICTS)}</p>",
             _html_table([["claim (paper)", "verdict at this scale", "evidence (pass@k %, 95% intervals)"]]
                         + [[c, v, e] for c, v, e in claims], verdict_col=1)]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.figure:
            data = base64.b64encode((figdir / s.figure).read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(s.title)}' src='data:image/png;base64,{data}'>")
        if s.reading:
            parts.append(f"<p>{html.escape(s.reading)}</p>")
        parts.append(_html_table(s.table))
    parts.append("</body></html>")
    return "\n".join(parts)
