"""The study's numbers as the report reads them: every result with its 95% interval, and the rule that turns
intervals into a verdict on a claim.

    res = Results(store, cfg, out, units)
    res.get("gsm", "rl", checkpoint, "pass@1")     # Stat(mean, lo, hi), averaged over seeds; None if not run
    verdict(wins, losses, total)                    # reproduced | not reproduced | inconclusive | not run
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from excursions.config import Config
from excursions.recipes import RECIPES
from excursions.study.plan import Unit, recipe_unit_id
from excursions.study.store import Store


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


def verdict(wins: int, losses: int, total: int) -> str:
    """The rule every claim is judged by, the same both ways: reproduced where the intervals separate in the
    claim's favour at half of its comparisons or more and never against it; not reproduced where they separate
    against it at half or more and never in its favour; inconclusive otherwise.

    >>> verdict(2, 0, 3), verdict(1, 0, 2), verdict(2, 1, 3), verdict(0, 1, 2), verdict(0, 0, 2), verdict(0, 0, 0)
    ('reproduced', 'reproduced', 'inconclusive', 'not reproduced', 'inconclusive', 'not run')
    """
    if total == 0:
        return "not run"
    if wins and 2 * wins >= total and losses == 0:
        return "reproduced"
    if losses and 2 * losses >= total and wins == 0:
        return "not reproduced"
    return "inconclusive"


def tally(signs: list[int]) -> str:
    """The verdict of per-comparison signs (+1 in the claim's favour, -1 against, 0 neither)."""
    return verdict(signs.count(1), signs.count(-1), len(signs))


def not_below(a: Stat, b: Stat) -> int:
    """The sign of a "matches" or "keeps" claim (a is on par with b): +1 unless a's interval lies below b's."""
    return -1 if compare(a, b) < 0 else 1


def jointly(*signs: int) -> int:
    """One comparison's sign over several metrics: in favour where all are, against where any is.

    >>> jointly(1, 1), jointly(1, 0), jointly(1, -1)
    (1, 0, -1)
    """
    return -1 if -1 in signs else 1 if all(s == 1 for s in signs) else 0


def difference(a: Stat, b: Stat) -> Stat:
    """a - b with an approximate 95% interval: the two half-widths added in quadrature (independent estimates).

    >>> str(difference(Stat(0.5, 0.4, 0.6), Stat(0.2, 0.17, 0.23)))
    '30.0 [19.6, 40.4]'
    """
    half = math.hypot((a.hi - a.lo) / 2, (b.hi - b.lo) / 2)
    return Stat(a.mean - b.mean, a.mean - b.mean - half, a.mean - b.mean + half)


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


def separate(a: float, b: float, problems: int) -> int:
    """+1 / -1 where two rates on `problems` problems differ by more than 1.96 standard errors, else 0.

    >>> separate(0.5, 0.3, 100), separate(0.32, 0.3, 100), separate(0.1, 0.3, 100)
    (1, 0, -1)
    """
    se = math.sqrt((a * (1 - a) + b * (1 - b)) / max(problems, 1))
    return 0 if abs(a - b) <= 1.96 * se else 1 if a > b else -1


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

    def __init__(self, store: Store, cfg: Config, out: Path, units: list[Unit]):
        self.store, self.cfg, self.out = store, cfg, Path(out)
        self.base_shots = cfg.eval.shots  # base checkpoints are compared at this exemplar count
        self.stats: dict[tuple, list[Stat]] = {}  # (task, recipe, shots, checkpoint, metric) -> one per seed
        self.seed_stats: dict[tuple, Stat] = {}  # (task, recipe, shots, checkpoint, metric, seed) -> stat
        self.tokens: dict[str, int] = {}
        # not the study's own measurements: units on a world of their own, and evaluations with settings of their own
        self.unit_ids = [u.id for u in units if not u.world and not (u.overrides and u.kind in ("base_eval", "eval"))]
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
        """A checkpoint as the report names it: its pretraining tokens (6.5M)."""
        return f"{self.tokens[ckpt] / 1e6:.1f}M"

    def pairs(self, task: str, a: str, b: str, signs: dict, ckpts: list[str] | None = None) -> tuple[list, list]:
        """Recipe a against recipe b at each checkpoint where both were evaluated, on each metric of `signs` with
        its sign function (`compare`, `not_below`, ...), taken `jointly`: (the signs, the evidence, e.g.
        "6.5M: pass@1 rl 3.5 [2.7, 4.2] vs sft 5.7 [4.7, 6.9]")."""
        out, evidence = [], []
        for c in self.checkpoints if ckpts is None else ckpts:
            got = {m: (self.get(task, a, c, m), self.get(task, b, c, m)) for m in signs}
            if all(x and y for x, y in got.values()):
                out.append(jointly(*(signs[m](x, y) for m, (x, y) in got.items())))
                evidence.append(f"{self.label(c)}: " + ", ".join(f"{m} {a} {x} vs {b} {y}" for m, (x, y) in got.items()))
        return out, evidence

    def training(self, unit: str, stage: str, key: str) -> tuple[list[int], list[float]]:
        """One metric of one training stage of a unit along its steps: (steps, values)."""
        return self.store.training(unit, stage, key)

    def run_curve(self, recipe: str, ckpt: str, seed: int, stage: str, key: str) -> tuple[list[int], list[float]]:
        """A metric along the training of a recipe's run from a checkpoint (a stage of it, for two-stage recipes)."""
        return self.store.training(recipe_unit_id(recipe, ckpt, seed), stage, key)

    def seeds(self, recipe: str, ckpt: str) -> list[int]:
        return sorted({k[5] for k in self.seed_stats if k[1] == recipe and k[3] == ckpt})

    def done(self, units: list[Unit]) -> list[Unit]:
        """The units of this list whose results are in (finished with the settings they have now)."""
        finished = self.store.done_ids()
        return [u for u in units if u.id in finished]
