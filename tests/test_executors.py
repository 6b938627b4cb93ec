"""Executors: the units' dependencies read off their paths; the shared scheduler (plan order, what fits, blocking);
the study in two worker processes, and on a local Ray cluster (2 CPUs), giving the local executor's results."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from excursions.errors import UserError
from excursions.study.executors import dispatch, executor_options
from excursions.study.plan import Unit, dependencies
from excursions.study.runner import plan, planned, run_study
from excursions.study.store import DB

from test_faults import OUT, small_args, small_cfg, small_ref  # noqa: F401 (fixtures)
from test_study import _evaluations, micro_study


def test_each_executor_takes_only_its_own_flags():
    assert executor_options("local", 2, None, 1, 0) == {"jobs": 2}
    assert executor_options("ray", 1, "auto", 2, 1) == {"address": "auto", "cpus": 2, "gpus": 1}
    for args, says in [(("local", 0, None, 1, 0), "1 or more"), (("ray", 2, None, 1, 0), "--unit-cpus"),
                       (("local", 1, "auto", 1, 0), "--executor ray"), (("local", 1, None, 1, 1), "--executor ray")]:
        with pytest.raises(UserError, match=says):
            executor_options(*args)


def test_dependencies_are_read_off_the_paths(micro_overrides, tmp_path):
    units = plan(micro_study(micro_overrides), tmp_path)
    deps = dependencies(units, micro_study(micro_overrides), tmp_path)
    by_id = {u.id: u for u in units}
    order = {u.id: i for i, u in enumerate(units)}
    assert all(order[d] < order[u] for u, ds in deps.items() for d in ds)  # the plan's order respects them
    assert deps["pretrain"] == []
    for u in units:
        if u.kind == "posttrain" and not u.id.startswith(("scaling/N", "scaling/D")):
            assert "pretrain" in deps[u.id], u.id  # its checkpoint and world are under the pretraining run
        if u.kind == "eval":  # an evaluation waits for the run it evaluates
            assert next(t.id for t in units if str(t.path) == u.source) in deps[u.id]
    splits = next(u.id for u in units if u.kind == "splits")
    assert all(splits in deps[u.id] for u in units if u.id.startswith("rollouts/"))
    assert set(deps["scaling/N/rl"]) == {"scaling/N/pretrain"}  # its own pretraining and world, not the study's
    assert "pretrain" not in deps["scaling/N/base"] and "scaling/N/pretrain" in deps["scaling/N/base"]
    sft_rl = next(u for u in by_id if u.startswith("sft_rl/"))  # it continues the study's own sft run
    assert set(deps[sft_rl]) == {"pretrain", sft_rl.replace("sft_rl/", "sft/")}


class _Store:
    """What `dispatch` writes, in order."""

    def __init__(self):
        self.log = []

    def start(self, unit):
        self.log.append(("start", unit.id))

    def finish(self, unit, seconds, ingest):
        self.log.append(("done", unit.id))

    def fail(self, unit, error, status="failed"):
        self.log.append((status, unit.id))


def test_dispatch_starts_in_plan_order_what_fits_and_blocks_what_reads_a_failure():
    u = {n: Unit(n, "pretrain" if n == "p" else "posttrain", Path(n)) for n in ("p", "a", "b", "c", "d")}
    deps = {"p": [], "a": ["p"], "b": ["p"], "c": ["a"], "d": ["p"]}
    running, store = [], _Store()
    fits = lambda unit, now: not now or (len(now) < 2 and unit.kind != "pretrain" and "p" not in [r.id for r in now])

    def wait_one(handles):  # the oldest running unit ends; "a" fails
        store.log.append(("running", tuple(sorted(h for h in handles))))
        h = handles[0]
        return h, 1.0, RuntimeError("boom") if h == "a" else None

    dispatch(list(u.values()), deps, store, False, lambda unit: unit.id, wait_one, running.extend, fits)
    assert store.log == [
        ("start", "p"), ("running", ("p",)), ("done", "p"),  # pretraining alone; nothing else was ready
        ("start", "a"), ("start", "b"), ("running", ("a", "b")), ("failed", "a"),  # two at a time
        ("blocked", "c"), ("start", "d"), ("running", ("b", "d")), ("done", "b"),  # c reads a: blocked, not run
        ("running", ("d",)), ("done", "d")]
    assert running == []  # nothing left to cancel


def test_dispatch_cancels_what_runs_when_the_study_stops():
    u = [Unit(n, "posttrain", Path(n)) for n in ("a", "b")]
    cancelled, store = [], _Store()

    def wait_one(handles):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dispatch(u, {"a": [], "b": []}, store, False, lambda unit: unit.id, wait_one, cancelled.extend)
    assert cancelled == ["a", "b"] and store.log == [("start", "a"), ("start", "b")]


def test_the_study_bar_advances_by_estimated_seconds_and_an_unknown_unit_counts_as_the_known_mean(monkeypatch):
    from excursions.study import executors

    class Bar:
        def __init__(self, total, **kw):
            self.total, self.steps = total, []

        def update(self, n):
            self.steps.append(n)

        def set_postfix_str(self, s):
            pass

        def close(self):
            pass

    bars = []
    monkeypatch.setattr(executors, "progress_bar", lambda **kw: bars.append(Bar(**kw)) or bars[-1])
    u = [Unit(n, "posttrain", Path(n)) for n in ("pretrain", "eval", "new")]
    ready = lambda handles: (handles[0], 1.0, None)
    dispatch(u, {n.id: [] for n in u}, _Store(), True, lambda unit: unit.id, ready, lambda h: None,
             weights={"pretrain": 1200.0, "eval": 20.0, "new": None})
    # "new" has no estimate: it counts as the mean of the known two, (1200 + 20) / 2 = 610
    assert bars[0].total == 1830 and bars[0].steps == [1200.0, 20.0, 610.0]
    dispatch(u, {n.id: [] for n in u}, _Store(), True, lambda unit: unit.id, ready, lambda h: None,
             weights={"pretrain": 0.4, "eval": 0.4, "new": 0.4})
    assert sum(bars[1].steps) == bars[1].total  # not rounded to 1: the bar ends at 100%, not past it


def test_the_study_in_two_worker_processes_gives_the_local_results(small_ref, small_cfg, micro_run, tmp_path,
                                                                   monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(micro_run, planned(small_cfg, OUT)[0].path)  # the pretraining is the reference's
    t0 = time.perf_counter()
    run_study(small_cfg, OUT, progress=False, jobs=2)
    seconds = time.perf_counter() - t0
    db = sqlite3.connect(Path(OUT) / DB)
    assert {r[0] for r in db.execute("SELECT status FROM units")} == {"done"}
    spans = db.execute("SELECT started, finished FROM units WHERE started IS NOT NULL ORDER BY started").fetchall()
    db.close()
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "no two units ran at once"
    got, want = _evaluations(Path(OUT)), _evaluations(small_ref)
    with capsys.disabled():
        print(f"\njobs=2: {len(got)} numbers, {sum(got[k] == want.get(k) for k in got)} identical to the local run's, "
              f"{seconds:.1f} s")
    assert got.keys() == want.keys() and got == want


def test_ray_missing_is_a_clear_error(small_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"--executor ray needs Ray: pip install 'excursions\[ray\]'"):
        run_study(small_cfg, OUT, progress=False, executor="ray")


@pytest.mark.slow
def test_the_study_on_a_local_ray_cluster_gives_the_local_results(small_ref, small_cfg, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    run_study(small_cfg, OUT, progress=False, executor="ray", local_cpus=2, cpus=1)  # pretraining included
    seconds = time.perf_counter() - t0
    db = sqlite3.connect(Path(OUT) / DB)
    assert {r[0] for r in db.execute("SELECT status FROM units")} == {"done"}
    assert db.execute("SELECT COUNT(*) FROM units").fetchone()[0] == len(plan(small_cfg, Path(OUT)))
    db.close()
    got, want = _evaluations(Path(OUT)), _evaluations(small_ref)
    with capsys.disabled():
        print(f"\nray: {len(got)} numbers, {sum(got[k] == want.get(k) for k in got)} identical to the local run's, "
              f"{seconds:.1f} s")
    assert got.keys() == want.keys() and got == want
