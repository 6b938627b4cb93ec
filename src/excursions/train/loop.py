"""The one training loop and what every training run shares: its directory (claimed for its settings, resumed,
pruned), its metrics log and trackers, and the hooks the loop calls out to.

    run = RunDir(out, settings, tracking=cfg.tracking)
    start, optimizer_state = run.resume(model, run.latest())   # the newest intact state; (0, {}) when fresh
    train_loop(start, steps, step_fn, [FiniteCheck("rl", model), Log(run), Progress(bar, postfix),
                                       Save(lambda step: run.save(step, ...), every(10))])

Pretraining and every post-training stage run through `train_loop`: `step_fn(step)` trains one step and returns
its numbers; each hook then sees the step's row in order (a hook may add to it for the ones after it): the
finite check comes before anything logs or saves, periodic evaluation before the log, saving last.

A run directory holds `config.toml` (the settings it depends on), `metrics.jsonl` (one JSON line per step),
TensorBoard event files of the same metrics, `resume/step*/` (the newest resume state; pretraining also keeps
`checkpoints/`) and, when a post-training run is done, `final/`: an HF checkpoint whose `excursions.json` names
the recipe, the source checkpoint and the world it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import tomllib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tomli_w
import torch

from excursions.checkpoint import (META, TRAINER_STATE, atomic_write_text, clean_temporaries, intact,
                                   load_trainer_state, read_json, save_state)
from excursions.config import EvalConfig, TrackingConfig, diff
from excursions.data.problems import Problem
from excursions.errors import Diverged, UserError
from excursions.evals.harness import evaluate_math


def check_finite(step: int, recipe: str, values: dict, model=None) -> None:
    """Stop a run whose loss, gradient norm (or, given `model`, weights) went NaN / inf, before anything of it is
    saved or logged: the newest resume state on disk stays the last good one."""
    bad = [k for k, v in values.items() if isinstance(v, (int, float)) and not math.isfinite(v)]
    if not bad and model is not None and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        bad = ["the weights"]
    if bad:
        raise Diverged(f"{recipe}: {', '.join(bad)} not finite at step {step}; stopped without saving it (the newest "
                       "resume state is the last good one); lower the learning rate, or rerun to retry from there")


# ------------------------------------------------------------------------------------------ the loop


class Hook:
    """A place where the loop calls out: before a step, after it (with the step's row of numbers), at the end. A
    hook that sets `stop` ends the run after the step's hooks (`Converge`)."""

    stop = False

    def before(self, step: int) -> None:
        pass

    def after(self, row: dict) -> None:
        pass

    def end(self) -> None:
        pass


def train_loop(start: int, steps: int, step_fn: Callable[[int], dict], hooks: Sequence[Hook]) -> None:
    """Steps `start` .. `steps - 1`: row = {"step": step + 1, **step_fn(step)}, then every hook's `after(row)` in
    order; each hook's `end()` once the last step is done, or once a hook has set `stop`."""
    for step in range(start, steps):
        for hook in hooks:
            hook.before(step)
        row = {"step": step + 1, **step_fn(step)}
        for hook in hooks:
            hook.after(row)
        if any(hook.stop for hook in hooks):
            break
    for hook in hooks:
        hook.end()


def every(n: int, last: int | None = None) -> Callable[[int], bool]:
    """A step predicate: every `n` steps (never for n = 0), and at step `last` when given.

    >>> [s for s in range(1, 8) if every(3)(s)], [s for s in range(1, 8) if every(0, last=7)(s)]
    ([3, 6], [7])
    """
    return lambda step: step == last or (n > 0 and step % n == 0)


class FiniteCheck(Hook):
    """Stop at a step whose numbers (`values`) or, at the steps `weights_at` picks, the model's weights are NaN / inf.
    Placed before the hooks that log and save, so nothing of a diverged step is kept."""

    def __init__(self, name: str, model=None, values: bool = True, weights_at: Callable[[int], bool] = every(1)):
        self.name, self.model, self.values, self.weights_at = name, model, values, weights_at

    def after(self, row: dict) -> None:
        model = self.model if self.model is not None and self.weights_at(row["step"]) else None
        check_finite(row["step"], self.name, row if self.values else {}, model)


class Totals(Hook):
    """Running totals of per-step counts: each `keys` entry leaves the row and `total_<key>` since the run's start
    joins it (a resumed run continues from its last logged row)."""

    def __init__(self, keys: Sequence[str], last_row: dict):
        self.totals = {k: last_row.get(f"total_{k}", 0) for k in keys}

    def after(self, row: dict) -> None:
        for k in self.totals:
            self.totals[k] += row.pop(k, 0)
        row.update({f"total_{k}": v for k, v in self.totals.items()})


class Timer(Hook):
    """The step's wall time, as `seconds`."""

    def before(self, step: int) -> None:
        self.t0 = time.perf_counter()

    def after(self, row: dict) -> None:
        row["seconds"] = time.perf_counter() - self.t0


class Evaluate(Hook):
    """At the steps `when` picks, `evaluate()`'s numbers join the row (test pass@k along training)."""

    def __init__(self, evaluate: Callable[[], dict], when: Callable[[int], bool]):
        self.evaluate, self.when = evaluate, when

    def after(self, row: dict) -> None:
        if self.when(row["step"]):
            row.update(self.evaluate())


def mean_score(per_problem: dict[str, float]) -> float:
    """An evaluation's score: the mean over its problems (what "best" ranks evaluations by)."""
    return sum(per_problem.values()) / len(per_problem)


def window_arms(history: Sequence[tuple[int, dict[str, float]]], window: int):
    """(the best of the last `window` evaluations, the best before them) as `verdicts.Arm`s, each evaluation a step
    and {problem: score} and "best" by mean score; None until there are window + 1 evaluations."""
    from excursions.study.verdicts import Arm

    if len(history) <= window:
        return None
    best = lambda part: max(part, key=lambda h: mean_score(h[1]))
    arm = lambda h: Arm(tuple(h[1]), np.array([list(h[1].values())], dtype=float))
    return arm(best(history[-window:])), arm(best(history[:-window]))


def window_change(history: Sequence[tuple[int, dict[str, float]]], window: int, seed: int = 0):
    """The convergence rule's reading: the paired change (`verdicts.Paired`, 95% bootstrap interval over problems) of
    the best of the last `window` evaluations over the best before them (`window_arms`); None until there are
    window + 1 evaluations.

    >>> flat = {"a": 0.5, "b": 0.5}
    >>> window_change([(0, {"a": 0.0, "b": 0.5}), (10, flat), (20, flat)], window=2).diff   # still rising
    0.25
    >>> window_change([(0, {"a": 0.0, "b": 0.5}), (10, flat), (20, flat), (30, flat)], window=2).hi   # flat
    0.0
    """
    from excursions.study.verdicts import paired

    arms = window_arms(history, window)
    return paired(*arms, seed=seed) if arms else None


class Converge(Hook):
    """`until = "converged"` (config.ConvergeConfig): at every `every`-th step and at the cap, `evaluate()` scores
    validation problems ({problem: pass@1}, with the row numbers to log); `stop` is set at the first evaluation from
    `min_steps` on whose window change (`window_change`) has its upper end below `threshold`. The history comes back
    from a resumed run's logged rows (its `key` per step), so a rerun after a kill stops where the first would have."""

    def __init__(self, evaluate: Callable[[], tuple[dict[str, float], dict]], c, cap: int, rows: Sequence[dict],
                 key: str):
        self.evaluate, self.c, self.cap, self.key = evaluate, c, cap, key
        self.history = [(r["step"], scores(r[key])) for r in rows if key in r]
        self.change = None

    def first(self) -> dict:
        """The starting model's evaluation (step 0), before any update: the numbers to log."""
        return self._evaluate(0)

    def after(self, row: dict) -> None:
        if row["step"] % self.c.every == 0 or row["step"] == self.cap:
            row.update(self._evaluate(row["step"]))
            self.stop = (self.change is not None and row["step"] >= self.c.min_steps
                         and self.change.hi < self.c.threshold)

    def _evaluate(self, step: int) -> dict:
        per_problem, numbers = self.evaluate()
        self.history.append((step, per_problem))
        self.change = window_change(self.history, self.c.window)
        if self.change is not None:
            prefix = self.key.rsplit("/", 1)[0]
            numbers |= {f"{prefix}/change": self.change.diff, f"{prefix}/change_lo": self.change.lo,
                        f"{prefix}/change_hi": self.change.hi}
        return numbers

    def record(self) -> dict:
        """What a finished run's metadata says of it: steps run (its last evaluation's: the stop or the cap),
        converged or capped, the last window's change with its interval."""
        ch = self.change
        return {"until": "converged", "steps": self.history[-1][0], "cap": self.cap, "converged": self.stop,
                "evaluations": len(self.history), "every": self.c.every, "window": self.c.window,
                "threshold": self.c.threshold, "min_steps": self.c.min_steps, "returns": "last",
                "change": None if ch is None else {"diff": ch.diff, "lo": ch.lo, "hi": ch.hi, "problems": ch.problems},
                "best": max((mean_score(h) for _, h in self.history), default=None)}


def scores(per_problem: dict) -> dict[str, float]:
    """{problem: [n, c, c_verified]} (a logged per_problem entry) as {problem: pass@1}."""
    return {p: ncv[1] / ncv[0] for p, ncv in per_problem.items()}


class Log(Hook):
    """Each row to the run's metrics.jsonl and its trackers."""

    def __init__(self, run: "RunDir"):
        self.run = run

    def after(self, row: dict) -> None:
        self.run.log(row)

    def end(self) -> None:
        self.run.tracker.close()


class Progress(Hook):
    """A progress bar, one tick a step, with `postfix(row)` beside it."""

    def __init__(self, bar, postfix: Callable[[dict], dict]):
        self.bar, self.postfix = bar, postfix

    def after(self, row: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(self.postfix(row))

    def end(self) -> None:
        self.bar.close()


class Save(Hook):
    """`save(step)` at the steps `when` picks: a resume state (or a kept checkpoint)."""

    def __init__(self, save: Callable[[int], None], when: Callable[[int], bool]):
        self.save, self.when = save, when

    def after(self, row: dict) -> None:
        if self.when(row["step"]):
            self.save(row["step"])


# ------------------------------------------------------------------------------------------ tracking


def tag(key: str) -> str:
    """One metric naming for every run: `section/name`; pretraining's bare keys go under train/.

    >>> tag("loss"), tag("train/reward"), tag("eval/gsm/pass@1")
    ('train/loss', 'train/reward', 'eval/gsm/pass@1')
    """
    return key if "/" in key else f"train/{key}"


class Tracker:
    """A run's per-step metrics, as in metrics.jsonl, to TensorBoard event files in the run directory and to W&B
    when configured. Opened at the first step it logs: a resumed run logs its steps again from there, so the
    events a killed run wrote at those steps are purged instead of shown twice."""

    def __init__(self, out: Path, cfg: TrackingConfig | None, settings: dict | None = None):
        self.out, self.cfg, self.settings = Path(out), cfg or TrackingConfig(), settings or {}
        self.tb = self.wandb = None

    def log(self, row: dict) -> None:
        step = row["step"]
        scalars = {tag(k): float(v) for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.cfg.tensorboard:
            if self.tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out), purge_step=step)
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.cfg.wandb != "off":
            if self.wandb is None:
                self.wandb = _wandb_run(self.out, self.cfg, self.settings)
            self.wandb.log(scalars, step=step)

    def flush(self) -> None:
        """With every saved state: what a resume will not log again must be on disk."""
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.tb = self.wandb = None


def _wandb_run(out: Path, cfg: TrackingConfig, settings: dict):
    try:
        import wandb
    except ImportError:
        raise UserError("tracking.wandb is set but wandb is not installed; pip install 'excursions[wandb]', "
                        "or set tracking.wandb=off") from None
    # One W&B run per run directory, resumed by id: steps a killed run logged again are not shown twice.
    run_id = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
    return wandb.init(project=cfg.wandb_project, name=str(out), id=run_id, resume="allow", mode=cfg.wandb,
                      dir=str(out), config=settings, reinit="create_new")


# ------------------------------------------------------------------------------------------ run directory


class RunDir:
    """One training run's directory: claim it for its settings, resume, log, save, finish.

    `compared`: the top-level keys of `settings` a run with the same directory must share (default all);
    pretraining writes its whole config but is the same run whatever its evaluation settings say."""

    def __init__(self, out: Path | str, settings: dict, write: bool = True, tracking: TrackingConfig | None = None,
                 compared: Sequence[str] | None = None):
        self.out, self.write = Path(out), write  # write=False: a distributed run's other ranks only read
        self.tracker = Tracker(self.out, tracking, settings)
        if write:
            self.out.mkdir(parents=True, exist_ok=True)
            clean_temporaries(self.out)
        path = self.out / "config.toml"
        if path.exists():
            pick = (lambda d: {k: v for k, v in d.items() if k in compared}) if compared else (lambda d: d)
            changed = diff(pick(tomllib.loads(path.read_text())), pick(settings))
            if changed:
                raise UserError(f"{self.out} holds a run with different settings ({'; '.join(changed[:5])}); "
                                "use another --out, or delete the directory to start over")
        elif write:
            atomic_write_text(path, tomli_w.dumps(settings))
        self.metrics = self.out / "metrics.jsonl"

    @property
    def final(self) -> Path:
        return self.out / "final"

    @property
    def done(self) -> bool:
        return (self.final / META).exists()

    def latest(self, schedule: Sequence[int] = ()) -> Path | None:
        """The newest state to continue from (`resume/`, and pretraining's `checkpoints/`). Damaged states are
        reported and removed; with a checkpoint `schedule`, the state is older than the first scheduled checkpoint
        that is missing, so every checkpoint gets written (again, identical: a run is a pure function of the step)."""
        kept = [s.parent for s in sorted(self.out.glob(f"*/step*/{TRAINER_STATE}"))
                if intact(s.parent, "removed; the run resumes from an earlier state and writes what came after again")]
        step = {s: read_json(s / META)["step"] for s in kept}
        have = {step[s] for s in kept if s.parent.name == "checkpoints"}
        gap = min((st for st in schedule if st not in have), default=math.inf)
        usable = sorted((s for s in kept if step[s] < gap), key=step.get)
        return usable[-1] if usable else None

    def resume(self, model, latest: Path | None) -> tuple[int, dict]:
        """Load the weights of state `latest` (from `latest()`) into `model`, and its RNG: (the step to continue
        from, the optimizer state it saved; (0, {}) for None, a fresh start). Metrics logged after that step are
        dropped (logged again)."""
        if latest is None:
            self._truncate(-1)  # a fresh start: not even a step-0 row of an earlier try stays
            return 0, {}
        from safetensors.torch import load_file

        model.load_state_dict(load_file(latest / "model.safetensors"), strict=False)
        state = load_trainer_state(latest)
        torch.set_rng_state(state["torch_rng"])
        self._truncate(state["step"])
        return state["step"], state["optimizer"]

    def save(self, step: int, model, tok, optimizer_state: dict) -> None:
        """A resume state at `step` (the older ones go); what the trackers hold reaches the disk first."""
        self.tracker.flush()
        save_state(self.out / "resume" / f"step{step:06d}", model, tok, _State(optimizer_state), {"step": step},
                   {"step": step})
        self.prune(keep=1)

    def prune(self, keep: int) -> None:
        """Keep the newest `keep` resume states (pretraining keeps none once a checkpoint holds the same step)."""
        states = sorted((self.out / "resume").glob("step*")) if (self.out / "resume").exists() else []
        for old in states[: max(0, len(states) - keep)]:
            shutil.rmtree(old, ignore_errors=True)

    def log(self, row: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.tracker.log(row)

    def finish(self, model, tok, meta: dict) -> Path:
        steps = meta.get("steps", 0)
        save_state(self.final, model, tok, _State({}), {"step": steps}, {"step": steps, **meta})
        shutil.rmtree(self.out / "resume", ignore_errors=True)
        self.tracker.close()
        return self.final

    def rows(self) -> list[dict]:
        return [json.loads(line) for line in self.metrics.read_text().splitlines()] if self.metrics.exists() else []

    def _truncate(self, step: int) -> None:
        if self.write and self.metrics.exists():
            keep = [json.dumps(r) + "\n" for r in self.rows() if r["step"] <= step]
            atomic_write_text(self.metrics, "".join(keep))


class _State:
    """An optimizer state as `save_state` takes it (one optimizer's, or several by name)."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state


def track(model, tok, test: list[Problem], eval_cfg: EvalConfig, n: int, family: str, prefix: str = "eval") -> dict:
    """Test pass@k (0-shot, k <= n) during training: the sharpening-vs-expansion curves, each point with its 95%
    bootstrap interval (eval/<family>/lo/pass@k, .../hi/pass@k). With `prefix="val"`, the same of validation
    problems, as the convergence rule reads them (val/<family>/...)."""
    cfg = EvalConfig(**{**eval_cfg.__dict__, "n": n, "ks": tuple(k for k in eval_cfg.ks if k <= n) or (1,),
                        "bootstrap": 200})
    result = evaluate_math(model, tok, test, [], cfg, shots=0, progress=False)
    at = f"{prefix}/{family}"
    out = {f"{at}/{k}": v["mean"] for k, v in result["metrics"].items()}
    out |= {f"{at}/{end}/{k}": v[end] for k, v in result["metrics"].items() for end in ("lo", "hi")}
    out |= {f"{at}/verified_{k}": v["mean"] for k, v in result["verified"].items()}
    out[f"{at}/format_rate"] = result["format_rate"]
    out[f"{at}/problems"] = len(test)  # the size behind the tracked rates' uncertainty
    # per problem, so two points of a curve (or two runs' curves) compare paired on the same problems
    out[f"{at}/per_problem"] = {r["id"]: [r["n"], r["c"], r["c_verified"]] for r in result["per_problem"]}
    return out
