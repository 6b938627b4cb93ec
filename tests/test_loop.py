"""The one training loop and its hooks, each on its own (no model trained): the order they run in, what each adds
to a step's row, when each fires, and the run directory's choice of the state to resume from."""

from __future__ import annotations

import json
import math

import pytest
import torch

from excursions.checkpoint import META, TRAINER_STATE
from excursions.errors import Diverged
from excursions.train.loop import (Evaluate, FiniteCheck, Hook, Log, RunDir, Save, Timer, Totals, every,
                                   train_loop)


class Record(Hook):
    """Writes down every call, and the row as it reached it."""

    def __init__(self, name: str, calls: list):
        self.name, self.calls = name, calls

    def before(self, step):
        self.calls.append((self.name, "before", step))

    def after(self, row):
        self.calls.append((self.name, "after", dict(row)))

    def end(self):
        self.calls.append((self.name, "end"))


def test_hooks_run_in_order_and_see_what_earlier_hooks_added():
    calls = []

    class Add(Hook):
        def after(self, row):
            row["added"] = row["step"] * 10

    train_loop(2, 4, lambda step: {"loss": float(step)}, [Record("a", calls), Add(), Record("b", calls)])
    assert calls == [("a", "before", 2), ("b", "before", 2),
                     ("a", "after", {"step": 3, "loss": 2.0}), ("b", "after", {"step": 3, "loss": 2.0, "added": 30}),
                     ("a", "before", 3), ("b", "before", 3),
                     ("a", "after", {"step": 4, "loss": 3.0}), ("b", "after", {"step": 4, "loss": 3.0, "added": 40}),
                     ("a", "end"), ("b", "end")]


def test_a_diverged_step_reaches_no_later_hook():
    saved = []
    hooks = [FiniteCheck("rl"), Save(saved.append, every(1))]
    with pytest.raises(Diverged, match=r"^rl: train/loss not finite at step 3"):
        train_loop(0, 5, lambda step: {"train/loss": math.nan if step == 2 else 1.0}, hooks)
    assert saved == [1, 2]  # step 3 diverged: not saved, and the loop stopped there


def test_finite_check_of_the_weights_only_where_asked():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = math.inf
    check = FiniteCheck("pretrain", model, values=False, weights_at=every(5))
    check.after({"step": 4, "lr": math.inf})  # neither the row's numbers nor, at step 4, the weights are checked
    with pytest.raises(Diverged, match="^pretrain: the weights not finite at step 5"):
        check.after({"step": 5})


def test_totals_continue_from_the_last_logged_row():
    totals = Totals(("train_flops", "rollout_tokens"), {"step": 6, "total_train_flops": 100, "total_rollout_tokens": 7})
    row = {"step": 7, "train_flops": 5, "rollout_tokens": 1, "train/reward": 0.5}
    totals.after(row)
    assert row == {"step": 7, "train/reward": 0.5, "total_train_flops": 105, "total_rollout_tokens": 8}
    row = {"step": 8}  # a step without one of the counts adds nothing to it
    totals.after(row)
    assert row == {"step": 8, "total_train_flops": 105, "total_rollout_tokens": 8}


def test_timer_and_periodic_evaluation():
    evaluated, rows = [], []
    evaluate = Evaluate(lambda: evaluated.append(1) or {"eval/gsm/pass@1": 0.25}, every(3, last=7))
    collect = type("Collect", (Hook,), {"after": lambda self, row: rows.append(row)})()
    train_loop(0, 7, lambda step: {}, [Timer(), evaluate, collect])
    assert [r["step"] for r in rows if "eval/gsm/pass@1" in r] == [3, 6, 7] and len(evaluated) == 3
    assert all(r["seconds"] >= 0 for r in rows)


def test_log_writes_each_row_to_metrics_jsonl(tmp_path):
    run = RunDir(tmp_path / "run", {"stage": "rl"}, tracking=None)
    train_loop(0, 3, lambda step: {"train/reward": step / 2}, [Log(run)])
    assert run.rows() == [{"step": 1, "train/reward": 0.0}, {"step": 2, "train/reward": 0.5},
                          {"step": 3, "train/reward": 1.0}]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run").iterdir())  # TensorBoard too


def _state(path, step):
    path.mkdir(parents=True)
    (path / TRAINER_STATE).write_bytes(b"")
    (path / META).write_text(json.dumps({"step": step}))


def test_the_state_to_resume_from(tmp_path):
    run = RunDir(tmp_path, {"stage": "pretrain"})
    assert run.latest() is None
    for step in (10, 30):
        _state(tmp_path / "checkpoints" / f"step{step:06d}-tokens{step * 8}", step)
    _state(tmp_path / "resume" / "step000025", 25)
    assert run.latest().name == "step000030-tokens240"  # the newest state of either kind
    # the checkpoint at step 20 is missing: resume before it, so that it is written (again)
    assert run.latest(schedule=[10, 20, 30]).name == "step000010-tokens80"
    assert run.latest(schedule=[10, 30]).name == "step000030-tokens240"
    run.prune(keep=0)
    assert not list((tmp_path / "resume").iterdir())


def test_a_run_directory_refuses_other_settings(tmp_path):
    RunDir(tmp_path, {"pretrain": {"lr": 1e-3}, "eval": {"n": 8}}, compared=("pretrain",))
    RunDir(tmp_path, {"pretrain": {"lr": 1e-3}, "eval": {"n": 32}}, compared=("pretrain",))  # eval is not compared
    with pytest.raises(Exception, match=r"different settings \(pretrain.lr: 0.001 -> 0.002\)"):
        RunDir(tmp_path, {"pretrain": {"lr": 2e-3}, "eval": {"n": 8}}, compared=("pretrain",))


# ------------------------------------------------------------------------------------------ the convergence rule


def _curve(level, problems: int = 300, n: int = 16, seed: int = 0):
    """A synthetic validation curve: at step s each problem's pass rate is its difficulty times `level(s)`, scored
    from n independent samples, a fresh draw at every evaluation (the noise a real evaluation has, and more: the
    harness's fixed sampling seed makes two evaluations' samples share their random numbers)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ease = rng.uniform(0.2, 1.0, problems)
    ids = [f"gsm-val-{i}" for i in range(problems)]
    step = {"at": 0}

    def evaluate():
        p = np.clip(ease * level(step["at"]), 0, 1)
        c = rng.binomial(n, p)
        return dict(zip(ids, c / n)), {"val/gsm/pass@1": float((c / n).mean())}

    return evaluate, step


def _run_until_converged(level, cap: int, seed: int = 0, **rule):
    from excursions.config import ConvergeConfig
    from excursions.train.loop import Converge

    c = ConvergeConfig(**{"every": 10, "window": 3, "min_steps": 20, "threshold": 0.03, **rule})
    evaluate, at = _curve(level, seed=seed)
    conv = Converge(evaluate, c, cap, [], "val/gsm/per_problem")
    rows = [{"step": 0, **conv.first()}]

    def step_fn(s):
        at["at"] = s + 1
        return {}

    class Keep(Hook):
        def after(self, row):
            rows.append(row)

    train_loop(0, cap, step_fn, [conv, Keep()])
    return conv.record(), rows


@pytest.mark.parametrize("seed", range(5))
def test_a_curve_that_rises_then_flattens_stops_within_a_window_of_the_plateau(seed):
    """pass@1 rises 2 points every 10 steps (6% to 18%) to step 60, then stays: the run stops once a window of W = 3
    evaluations lies on the plateau, and no later than W evaluations after that (steps 90-120), long before its cap."""
    record, rows = _run_until_converged(lambda s: 0.1 + 0.2 * min(s, 60) / 60, cap=300, seed=seed)
    assert record["converged"] and 90 <= record["steps"] <= 120, record
    assert rows[-1]["step"] == record["steps"]  # the loop ended at the stop
    assert record["change"]["hi"] < 0.03 and record["evaluations"] == record["steps"] // 10 + 1
    assert all(r["val/gsm/change_hi"] >= 0.03 for r in rows[:-1] if "val/gsm/change_hi" in r)  # the first such


@pytest.mark.parametrize("seed", range(3))
def test_a_curve_still_rising_runs_to_its_cap_and_is_marked_capped(seed):
    """pass@1 still rising 1.5 points every 10 steps at the cap: no window ever shows a gain below 3 points with
    confidence, so the run takes every step and says it was capped, with the last window's change."""
    record, rows = _run_until_converged(lambda s: 0.1 + 0.0025 * s, cap=150, seed=seed)
    assert not record["converged"] and record["steps"] == 150 and rows[-1]["step"] == 150
    assert record["change"]["lo"] > 0 and record["change"]["hi"] >= 0.03


def test_the_rule_waits_for_min_steps_and_a_full_window():
    """A flat curve from the start: nothing to compare before W + 1 evaluations, no stop before min_steps."""
    record, _ = _run_until_converged(lambda s: 0.3, cap=200, min_steps=50)
    assert record["converged"] and record["steps"] == 50
    record, _ = _run_until_converged(lambda s: 0.3, cap=200, min_steps=0, window=4)
    assert record["converged"] and record["steps"] == 40  # evaluations at 0, 10, 20, 30, 40: the first full window
