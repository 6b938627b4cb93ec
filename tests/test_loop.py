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
