"""Tracking: every training run's metrics.jsonl also goes to TensorBoard event files in its run directory (and to
W&B when configured), under one naming; a resumed run does not show its re-logged steps twice."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from excursions.config import TrackingConfig
from excursions.errors import UserError
from excursions.train.loop import Tracker, tag


def events(run_dir: Path) -> dict[str, dict[int, float]]:
    """The scalars of a run directory's event files: {tag: {step: value}} (a purged step keeps its last value)."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: {e.step: e.value for e in acc.Scalars(t)} for t in acc.Tags()["scalars"]}


def assert_events_match_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every number of metrics.jsonl is in the event files under its tag, at its step, once; nothing else is."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    want: dict[str, dict[int, float]] = {}
    for r in rows:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                want.setdefault(tag(k), {})[r["step"]] = float(v)
    got = events(run_dir)
    assert got.keys() == want.keys()
    for t in want:
        assert got[t] == pytest.approx(want[t], rel=1e-6), t  # event files hold float32
    return got


def test_pretraining_logs_its_metrics_to_tensorboard(micro_run):
    got = assert_events_match_metrics(micro_run)
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens"} <= got.keys()  # loss named as SFT's


def test_a_resumed_run_replaces_the_steps_it_logs_again(tmp_path):
    first = Tracker(tmp_path, TrackingConfig())
    for step in range(1, 6):
        first.log({"step": step, "train/reward": float(step)})
    first.flush()  # killed here: resumed from the state at step 2, steps 3.. are logged again
    again = Tracker(tmp_path, TrackingConfig())
    for step in range(3, 8):
        again.log({"step": step, "train/reward": 10.0 + step})
    again.close()
    assert events(tmp_path)["train/reward"] == {1: 1.0, 2: 2.0, 3: 13.0, 4: 14.0, 5: 15.0, 6: 16.0, 7: 17.0}
    # Each writer marks the step it starts from (purge_step), so every reader drops the older events from there on,
    # not only those that, like EventAccumulator above, also guess a restart from a step going back.
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    starts = [e.step for f in tmp_path.glob("events.out.tfevents.*") for e in EventFileLoader(str(f)).Load()
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert sorted(starts) == [1, 3]


def test_tensorboard_can_be_turned_off(tmp_path):
    t = Tracker(tmp_path, TrackingConfig(tensorboard=False))
    t.log({"step": 1, "loss": 1.0})
    t.close()
    assert not list(tmp_path.iterdir())


def test_wandb_configured_but_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    t = Tracker(tmp_path, TrackingConfig(tensorboard=False, wandb="offline"))
    with pytest.raises(UserError, match=r"tracking.wandb is set but wandb is not installed; pip install "
                                        r"'excursions\[wandb\]'"):
        t.log({"step": 1, "loss": 1.0})


def test_wandb_offline_logs_without_a_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    t = Tracker(tmp_path, TrackingConfig(tensorboard=False, wandb="offline"), {"rl": {"lr": 1e-3}})
    for step in (1, 2):
        t.log({"step": step, "train/reward": 0.5 * step, "eval/gsm/pass@1": 0.25})
    t.close()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")  # for `wandb sync` later
    (log,) = run.glob("run-*.wandb")
    # protobuf records: the history's keys and the config are in there as text. W&B's service process writes
    # them; `finish` can return before it has (seen in 2 of 4 runs of this file), so wait for it a while.
    deadline = time.monotonic() + 30
    while b"eval/gsm/pass@1" not in (data := log.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"train/reward" in data and b"eval/gsm/pass@1" in data and b"lr" in data
