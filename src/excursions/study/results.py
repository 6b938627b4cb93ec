"""The study's numbers as the report reads them: every result with its 95% interval (for display), and the
per-problem scores behind them (for the paired comparisons that decide claims, `study.verdicts`).

    res = Results(store, cfg, out, units)
    res.get("gsm", "rl", checkpoint, "pass@1")      # Stat(mean, lo, hi), averaged over seeds; None if not run
    res.arm("gsm", "rl", checkpoint, "pass@1")      # Arm: per-problem pass@1 of each seed, by problem id
    res.rows(claim, "gsm", "rl", "base")            # the claim's paired comparisons, as its quantifier reads it
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from excursions.config import Config
from excursions.evals.figures import token_label
from excursions.evals.passk import pass_at_k
from excursions.recipes import RECIPES
from excursions.study.plan import MATCHED, Unit, base_unit_id, recipe_unit_id
from excursions.study.store import VAL, Store
from excursions.study.verdicts import Arm, Claim, Paired, Row, compare, paired, pooled


@dataclass(frozen=True)
class Stat:
    mean: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} [{100 * self.lo:.1f}, {100 * self.hi:.1f}]"


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


def row_stats(r) -> list[tuple[str, Stat]]:
    """(metric, stat) of one row of `Store.evaluations`: its pass@k (and, with pass@1, the format rate), or a
    multiple-choice evaluation's accuracies with Wilson intervals."""
    if r["metric"] is not None:
        items = [(r["metric"], Stat(r["mean"], r["lo"], r["hi"]))]
        if r["metric"] == "pass@1" and r["format_rate"] is not None:  # one per evaluation, as a metric
            items.append(("format_rate", Stat(r["format_rate"], r["format_rate"], r["format_rate"])))
        return items
    return [(k, wilson(r[k], r["n"])) for k in ("acc", "acc_norm") if r[k] is not None]


class Results:
    """The study's results on its own checkpoints as lookups: evaluation stats by (task, recipe, checkpoint), and
    the training curves and units behind them. Units on a world of their own (the scaling experiment's other
    pretraining runs) are not the study's checkpoints, and evaluations with settings of their own (the large-k curves)
    not the study's evaluations: their experiments read them from `store` themselves."""

    def __init__(self, store: Store, cfg: Config, out: Path, units: list[Unit], prefix: str = ""):
        self.store, self.cfg, self.out, self.units = store, cfg, Path(out), units
        self.prefix = prefix  # the unit id prefix of the pretraining run these units are (plan.pretraining_runs)
        self.base_shots = cfg.eval.shots  # base checkpoints are compared at this exemplar count
        self.stats: dict[tuple, list[Stat]] = {}  # (task, recipe, shots, checkpoint, metric) -> one per seed
        self.seed_stats: dict[tuple, Stat] = {}  # (task, recipe, shots, checkpoint, metric, seed) -> stat
        self.tokens: dict[str, int] = {}
        # not the study's own measurements: units on a world of their own, and evaluations with settings of their own
        self.unit_ids = [u.id for u in units if not u.world and not (u.overrides and u.kind in ("base_eval", "eval"))
                         and not u.id.removeprefix(prefix).startswith(MATCHED)]  # and checkpoints chosen by capability
        for r in store.evaluations(self.unit_ids):
            self.tokens[r["checkpoint"]] = r["tokens"]
            for metric, stat in row_stats(r):
                key = (r["task"], r["recipe"], r["shots"], r["checkpoint"], metric)
                self.stats.setdefault(key, []).append(stat)
                self.seed_stats[key + (r["seed"],)] = stat
        self.checkpoints = sorted(self.tokens, key=lambda c: (self.tokens[c], c))
        self.recipes = [r for r in ("base", *RECIPES) if any(k[1] == r for k in self.stats)]
        self.tasks = sorted({k[0] for k in self.stats})
        self.math_tasks = [t for t in self.tasks if any(k[0] == t and k[4].startswith("pass@") for k in self.stats)]
        self.ks = sorted({k[4] for k in self.stats if k[4].startswith("pass@")}, key=lambda m: int(m.split("@")[1]))

    def _shots(self, task: str, recipe: str, shots: int | None) -> int | None:
        if task not in self.math_tasks:
            return None  # general tasks have no exemplars
        return (self.base_shots if recipe == "base" else 0) if shots is None else shots

    def get(self, task: str, recipe: str, ckpt: str, metric: str, shots: int | None = None) -> Stat | None:
        """The stat averaged over seeds (mean of means and of bounds, for display); base defaults to few-shot."""
        shots = self._shots(task, recipe, shots)
        found = self.stats.get((task, recipe, shots, ckpt, metric))
        if not found:
            return None
        return Stat(*(sum(getattr(s, f) for s in found) / len(found) for f in ("mean", "lo", "hi")))

    def problems(self, task: str, recipe: str, ckpt: str, shots: int | None = None) -> dict[str, tuple[int, int]]:
        """{problem: (n, c)} of a recipe's evaluation from a checkpoint (its first seed; base few-shot by default)."""
        shots = (self.base_shots if recipe == "base" else 0) if shots is None else shots
        seeds = self.seeds(recipe, ckpt)
        return self.store.problem_table(self.unit_ids, ckpt, recipe, task, shots, seeds[0] if seeds else None)

    def record(self, task: str, recipe: str, ckpt: str, shots: int | None = None) -> dict | None:
        """The result file of the evaluation `problems` reads (as `evals.harness` wrote it), or None."""
        shots = (self.base_shots if recipe == "base" else 0) if shots is None else shots
        seeds = self.seeds(recipe, ckpt)
        path = self.store.record_path(self.unit_ids, ckpt, recipe, task, shots, seeds[0] if seeds else None)
        return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None

    def label(self, ckpt: str) -> str:
        """A checkpoint as every table, figure and sentence of the report names it: its pretraining tokens (10.5M, 12M)."""
        return token_label(self.tokens[ckpt])

    def arm(self, task: str, recipe: str, ckpt: str, metric: str, shots: int | None = None) -> Arm | None:
        """Per-problem scores of a recipe's evaluation from a checkpoint, one row per seed, on the problems every
        seed has: pass@k or verified_pass@k from each problem's (n, c), a question's 0 / 1 for acc, an article's
        bits_per_byte, a training prompt's kl. None where it was not evaluated."""
        shots = self._shots(task, recipe, shots)
        found = {s: v for s in self.seeds(recipe, ckpt) or [None] if (v := self._scores(task, recipe, ckpt, metric,
                                                                                           shots, s))}
        return to_arm(found)

    def _scores(self, task: str, recipe: str, ckpt: str, metric: str, shots: int | None, seed) -> dict[str, float]:
        if metric in ("bits_per_byte", "kl"):
            return self.store.item_values(self.unit_ids, ckpt, recipe, task, seed, metric)
        return scores(self.store.problem_scores(self.unit_ids, ckpt, recipe, task, shots, seed), metric)

    def unit_arm(self, unit: Unit, task: str, metric: str, shots: int | None) -> Arm | None:
        """Per-problem scores of one evaluation unit's result outside the study's own (a large-k curve, a scaling
        variant, a pretraining branch): its checkpoint, recipe and seed, on `task` at `shots`."""
        counts = self.store.problem_scores([unit.id], unit.checkpoint, unit.recipe, task, shots, unit.seed)
        return to_arm({unit.seed: scores(counts, metric)})

    def tracked_arm(self, unit: str, stage: str, step: int, metric: str) -> Arm | None:
        """Per-problem scores of a run's tracked evaluation at a step (one seed)."""
        return to_arm({0: scores(self.store.tracked(unit, stage, step), metric)})

    def early(self) -> list[str]:
        """The first half of the checkpoints (at least one): where a claim about early pretraining is checked."""
        return self.checkpoints[: max(1, len(self.checkpoints) // 2)]

    def rows(self, c: Claim, task: str, a: str, b: str, ckpts: list[str] | None = None,
             shots: tuple[int | None, int | None] = (None, None)) -> list[Row]:
        """Recipe a against recipe b (a the side the claim favours) on each metric of the claim, paired on the
        same problems: at each checkpoint where both were evaluated (the early ones for an "early" claim), or one
        comparison of the checkpoints pooled for a "pooled" one."""
        ckpts = ckpts or (self.early() if c.quantifier == "early" else self.checkpoints)
        found = [(k, m, x, y) for k in ckpts for m in c.margins
                 if (x := self.arm(task, a, k, m, shots[0])) and (y := self.arm(task, b, k, m, shots[1]))
                 and set(x.ids) & set(y.ids)]
        what = f"{a} vs {b}"
        if c.quantifier != "pooled":
            return [replace(compare(c, self.label(k), what, m, x, y, seed=self.cfg.eval.seed),
                            note="; ".join(self.capped(a, k) + self.capped(b, k))) for k, m, x, y in found]
        where = "pooled over " + ", ".join(self.label(k) for k in ckpts if any(f[0] == k for f in found))
        return [compare(c, where, what, m, *pooled([(x, y) for _, mm, x, y in found if mm == m]),
                        seed=self.cfg.eval.seed)
                for m in c.margins if any(f[1] == m for f in found)]

    def training(self, unit: str, stage: str, key: str) -> tuple[list[int], list[float]]:
        """One metric of one training stage of a unit along its steps: (steps, values)."""
        return self.store.training(unit, stage, key)

    def unit_id(self, recipe: str, ckpt: str, seed: int) -> str:
        """The id of a recipe's run from a checkpoint with a seed, in this pretraining run."""
        return self.prefix + recipe_unit_id(recipe, ckpt, seed)

    def run_curve(self, recipe: str, ckpt: str, seed: int, stage: str, key: str) -> tuple[list[int], list[float]]:
        """A metric along the training of a recipe's run from a checkpoint (a stage of it, for two-stage recipes)."""
        return self.store.training(self.unit_id(recipe, ckpt, seed), stage, key)

    def stages(self, unit: str, recipe: str) -> list[str]:
        """The stage names a post-training unit's training is stored under: the recipe's for one stage, each stage's
        own for several (sft_rl: sft, rl), less a stage it took from another unit (the study's sft_rl: its rl only)."""
        stages = RECIPES[recipe].stages
        if len(stages) == 1:
            return [recipe]
        stored = self.store.stages(unit)
        return [s for s in stages if s in stored] or list(stages)

    def capped(self, recipe: str, ckpt: str) -> list[str]:
        """The stages of a recipe's runs from a checkpoint that reached their cap unconverged ("rl s0: capped at 150
        steps"), for the evidence of a comparison that involves them."""
        out = []
        for seed in self.seeds(recipe, ckpt) if recipe != "base" else []:
            unit = self.unit_id(recipe, ckpt, seed)
            for stage in self.stages(unit, recipe):
                rec = self.store.convergence(unit, stage)
                if rec.get("checked") and not rec.get("converged"):
                    out.append(f"{recipe} s{seed}{'' if stage == recipe else ' ' + stage}: capped at "
                               f"{rec['steps']:.0f} steps")
        return out

    def val_history(self, unit: str, stage: str) -> list[tuple[int, dict[str, float]]]:
        """The convergence rule's validation evaluations of a run's stage: (step, {problem: pass@1}) in order."""
        key = stage + VAL
        return [(st, scores(self.store.tracked(unit, key, st), "pass@1")) for st in self.store.tracked_steps(unit, key)]

    def seeds(self, recipe: str, ckpt: str) -> list[int]:
        return sorted({k[5] for k in self.seed_stats if k[1] == recipe and k[3] == ckpt})

    def done(self, units: list[Unit]) -> list[Unit]:
        """The units of this list whose results are in (finished with the settings they have now)."""
        finished = self.store.done_ids()
        return [u for u in units if u.id in finished]


def scores(counts: dict[str, tuple], metric: str) -> dict[str, float]:
    """Per-problem values of `metric` from {problem: (n, c, c_verified)}: pass@k, verified_pass@k (empty where the
    verified counts were not stored), acc (c / n: a question is one sample).

    >>> scores({"a": (4, 1, 0), "b": (4, 4, 4)}, "pass@2"), scores({"a": (4, 1, 0)}, "verified_pass@1")
    ({'a': 0.5, 'b': 1.0}, {'a': 0.0})
    """
    if metric == "acc":
        return {p: c / n for p, (n, c, _) in counts.items()}
    if metric == "net_solved":  # solved within its n samples: net of two arms is the problems one side alone solves
        return {p: float(c > 0) for p, (n, c, _) in counts.items()}
    verified, k = metric.startswith("verified_"), int(metric.split("@")[1])
    if verified and any(cv is None for _, _, cv in counts.values()):
        return {}
    return {p: pass_at_k(n, cv if verified else c, k) for p, (n, c, cv) in counts.items() if k <= n}


def to_arm(per_seed: dict) -> Arm | None:
    """An Arm of {seed: {problem: value}} on the problems every seed has; None if there is none."""
    per_seed = {s: v for s, v in per_seed.items() if v}
    if not per_seed:
        return None
    ids = sorted(set.intersection(*(set(v) for v in per_seed.values())))
    return Arm(tuple(ids), np.array([[v[p] for p in ids] for v in per_seed.values()], dtype=float), tuple(per_seed))


def rl_gain(res: Results, prefix: str, ckpt: str, chosen: bool, task: str) -> tuple[Paired, Arm, Arm] | None:
    """(paired RL - base on test pass@1, rl arm, base arm) at one checkpoint of pretraining run `prefix`, RL's first
    seed: the backbone's units where the study branches from it (`chosen`), else the matched experiment's own; None
    until both are evaluated. Read from the store by unit id, so any run's, whichever run `res` is."""
    seed = res.cfg.study.seeds[0]
    base_id, rl_id = (prefix + ("" if chosen else MATCHED) + i
                      for i in (base_unit_id(ckpt), "eval/" + recipe_unit_id("rl", ckpt, seed)))
    b = to_arm({0: scores(res.store.problem_scores([base_id], ckpt, "base", task, res.base_shots, 0), "pass@1")})
    a = to_arm({seed: scores(res.store.problem_scores([rl_id], ckpt, "rl", task, 0, seed), "pass@1")})
    return (paired(a, b, seed=res.cfg.eval.seed), a, b) if a and b else None
