"""The study: the paper's experiments planned as units, run in order, every number kept in one SQLite file.

    excursions study                                  # the tiny study into runs/study-tiny
    excursions study --preset smoke --out runs/study-smoke
    excursions status runs/study-tiny

`plan` lists the units (the backbone of `plan.py`, then each experiment's own); the runner skips what is done,
runs what is not with an executor (`executors.py`), and writes the report. Each unit is resumable on its own
(pretraining and recipes keep resume states, evaluations write one JSON per result and reuse it), and a changed
setting gets a new directory, so only what depends on it runs again.

Faults: a unit that fails (a diverged loss, a bug) is marked failed and the units that read its output are
marked blocked; the others run, the report is written, and the command ends with an error naming the failed
units. A finished unit whose checkpoint files no longer match their checksums is reported and run again.
A full disk or an unwritable directory stops the study with one line; every write is atomic.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import sqlite3
import statistics
import sys
from collections import Counter
from contextlib import chdir, contextmanager, nullcontext
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Iterator

from excursions.checkpoint import atomic_write_text, report_damage
from excursions.config import Config, load_config, to_toml
from excursions.errors import UnitsFailed, UserError
from excursions.flops import matmul_peak
from excursions.registry import lookup
from excursions.study.executors import EXECUTORS
from excursions.study.experiments import active
from excursions.study.plan import MATCHED, Unit, backbone, dependencies, pretraining_runs, world_dir
from excursions.study.report import setup_section, write_report
from excursions.study.results import Results
from excursions.study.store import DB, TABLES, Store
from excursions.study.units import damaged_states, ingest, is_done
from excursions.study.verdicts import across_runs

LOCK = "study.lock"


def plan(cfg: Config, out: Path) -> list[Unit]:
    """Every unit of the study, in the order they run (each after the units it reads): the backbone, then what
    each experiment adds, in the experiments' order."""
    units = backbone(cfg, out)
    for experiment in active(cfg):
        units += experiment.units(cfg, out) if experiment.units else []
    return units


@contextmanager
def study_lock(out: Path) -> Iterator[None]:
    """One study per directory: an OS lock, released by the kernel however the process ends (kill -9 too)."""
    out.mkdir(parents=True, exist_ok=True)
    f = (out / LOCK).open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise UserError(f"another study is running in {out} (pid {pid}); wait for it to finish, or pass another --out")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def is_locked(out: Path) -> bool:
    if not (out / LOCK).exists():
        return False
    with (out / LOCK).open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def anchor(out: Path) -> tuple[Path, Path]:
    """Where a study's relative paths start, and how they spell the study directory: (root, spelling), root /
    spelling being the study directory. A study started by this version spells it "." (every path in study.db,
    every digest, relative to the study directory itself: it works from anywhere, and moved); one started before
    spells it as its --out was given then, from the directory it was started in, found from where it is now."""
    out = Path(out).resolve()
    store = Store(out / DB) if (out / DB).is_file() else None
    try:
        spelling = store.spelling() if store else None
    finally:
        if store:
            store.close()
    if spelling is None or spelling == Path("."):
        return out, Path(".")
    root = Path("/") if spelling.is_absolute() else Path(*out.parts[: len(out.parts) - len(spelling.parts)])
    if len(spelling.parts) >= len(out.parts) or (root / spelling).resolve() != out:
        raise UserError(f"{out}'s study was started as --out {spelling} and its paths say so; it has been moved since: "
                        "run it from the directory it was started in, or move it back")
    return root, spelling


def localized(cfg: Config, root: Path) -> Config:
    """The config with its local paths (study.world, local study.external checkpoints) relative to `root`, where the
    study works from, instead of to wherever the command was given: the same study whatever the directory."""
    s = cfg.study
    rel = lambda p: os.path.relpath(Path(p).resolve(), root) if p and Path(p).exists() else p
    return replace(cfg, study=replace(s, world=rel(s.world), external=tuple(rel(e) for e in s.external)))


def planned(cfg: Config, out: Path | str) -> list[Unit]:
    """The units `run_study(cfg, out)` runs, their paths as they are on disk from here (absolute)."""
    root, spelling = anchor(Path(out))
    cfg = localized(cfg, root)
    with chdir(root) if root.is_dir() else nullcontext():
        units = plan(cfg, spelling)
    here = lambda p: str(root / p) if p and (root / p).resolve().is_relative_to(root / spelling) else p
    return [replace(u, path=Path(here(u.path)), source=here(u.source), world=here(u.world)) for u in units]


# ----------------------------------------------------------------------------------------- the plan, before it runs


def shipped_costs(name: str) -> dict:
    """The unit wall times a full run of preset `name` measured (presets/<name>.costs.json: {machine, measured,
    units: [{id, kind, recipe, seconds}]}), written by `benchmarks/unit_costs.py STUDY`; {} if none shipped."""
    f = resources.files("excursions.presets").joinpath(f"{name}.costs.json")
    return json.loads(f.read_text()) if f.is_file() else {}


def recorded_costs(db: Path) -> list[dict]:
    """The wall times this study directory recorded for its units, read without writing anything."""
    if not db.is_file():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT id, kind, recipe, seconds FROM units WHERE seconds IS NOT NULL").fetchall()
    finally:
        con.close()
    return [dict(zip(("id", "kind", "recipe", "seconds"), r)) for r in rows]


def estimate(units: list[Unit], measured: list[dict]) -> dict[str, float | None]:
    """Each unit's expected seconds from `measured` rows ({id, kind, recipe, seconds}; a later row of the same id
    wins): the same unit's time, else the median of its kind and recipe, else of its kind, else None (unknown).
    Units of one kind and recipe cost alike within a preset (an RL run until converged: 2 to 17 minutes in the
    tiny study), so a unit measured under its own id is what makes a plan's total right."""
    by_id = {m["id"]: m["seconds"] for m in measured}
    groups: dict[tuple, list[float]] = {}
    for m in measured:
        groups.setdefault((m["kind"], m["recipe"]), []).append(m["seconds"])
        groups.setdefault((m["kind"],), []).append(m["seconds"])
    guess = lambda key: statistics.median(groups[key]) if key in groups else None
    return {u.id: next((s for s in (by_id.get(u.id), guess((u.kind, u.recipe)), guess((u.kind,))) if s is not None),
                       None) for u in units}


def plan_costs(cfg: Config, todo: list[Unit], db: Path) -> tuple[dict[str, float | None], dict]:
    """The units' estimated seconds (`estimate`) from the preset's shipped times and this directory's recorded ones,
    and the shipped file (what `describe` names as the estimate's basis)."""
    shipped = shipped_costs(cfg.name)
    return estimate(todo, shipped.get("units", []) + recorded_costs(db)), shipped


def clock(seconds: float) -> str:
    """A wall time as people read it.

    >>> clock(90), clock(5400), clock(16_740)
    ('1.5 min', '1 h 30 min', '4 h 39 min')
    """
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def describe(cfg: Config, out: Path, units: list[Unit], todo: list[Unit], costs: dict[str, float | None],
             shipped: dict) -> str:
    """The plan in a few lines: units to run by kind with their estimated time, the total, where it all goes."""
    counts, seconds = Counter(u.kind for u in todo), Counter()
    for u in todo:
        seconds[u.kind] += costs[u.id] or 0.0
    unknown = sum(costs[u.id] is None for u in todo)
    lines = [f"study {out} (preset {cfg.name}): {len(todo)} of {len(units)} units to run"
             + (f", {len(units) - len(todo)} done" if len(todo) < len(units) else "")]
    known = {u.kind for u in todo if costs[u.id] is not None}
    lines += [f"  {kind:<12} {counts[kind]:>4}  {clock(seconds[kind]) if kind in known else '?':>12}" for kind in counts]
    if unknown == len(todo) and todo:
        lines.append(f"  no estimate: no unit of preset {cfg.name} has been timed (a run records each unit's time, "
                     "and a later --dry-run estimates from them)")
    else:
        basis = (f"unit times measured {shipped['measured']} on {shipped['machine']}" if shipped else
                 "unit times this directory recorded")
        lines.append(f"  estimated {clock(sum(seconds.values()))} from {basis}"
                     + (f"; {unknown} unit(s) never measured, not counted" if unknown else ""))
    if any(f"{MATCHED}val/" in u.id for u in todo):
        lines.append("  then direct RL from each run's capability-matched checkpoints (study.match_targets), planned "
                     "once the base's validation scores are in")
    lines.append(f"  writes {out / DB} (every number), {out / 'report' / 'report.html'} (the report)")
    return "\n".join(lines)


def preview(cfg: Config, out: Path | str) -> str:
    """What `excursions study --dry-run` prints: the plan and its estimate; nothing is written."""
    out = Path(out)
    plan(cfg, out)  # a bad study section fails here
    root, spelling = anchor(out)
    cfg = localized(cfg, root)
    with chdir(root) if root.is_dir() else nullcontext():
        units = plan(cfg, spelling)
        todo = [u for u in units if not is_done(u, cfg)]
        costs, shipped = plan_costs(cfg, todo, spelling / DB)
    return describe(cfg, out, units, todo, costs, shipped)


def run_study(cfg: Config, out: Path | str, progress: bool = True, executor: str = "local", **options) -> Path:
    """Run every unit that is not done with `executor` (local: here, one at a time; ray: as Ray tasks), then write
    the report; returns its path. Raises UnitsFailed, after writing the report, when some units failed."""
    run_units = lookup(EXECUTORS, executor, "executor")
    out = Path(out)
    plan(cfg, out)  # a bad study section fails here, before anything is written
    if cfg.study.external and not (world_dir(cfg, out) / "gsm" / "test.jsonl").is_file():
        from excursions.data.real import build_commands

        raise UserError(f"study.world {cfg.study.world} has no gsm/test.jsonl; build it from the paper's data with\n"
                        f"{build_commands(cfg.study.world)}\nor point study.world at a pretraining run's world/")
    if cfg.study.external:  # a missing revision or unreadable directory fails now, not an hour in
        from excursions.model import check_checkpoint

        for spec in cfg.study.external:
            check_checkpoint(spec)
    root, spelling = anchor(out)
    cfg = localized(cfg, root)
    out.mkdir(parents=True, exist_ok=True)
    with chdir(root), study_lock(spelling):
        units = plan(cfg, spelling)
        atomic_write_text(spelling / "study.toml", to_toml(cfg))
        store = Store(spelling / DB)
        try:
            if store.spelling() is None:
                store.set_spelling(spelling)
            planned_before: set[str] = set()
            store.retire(units)
            # in rounds: a unit chosen by earlier results (the matched experiment's RL from the checkpoint its base's
            # validation scores pick) enters the plan once they are in, and the next round runs the units that are new
            while todo := to_run([u for u in units if u.id not in planned_before], cfg, store):
                costs, shipped = plan_costs(cfg, todo, spelling / DB)
                if progress:
                    print(describe(cfg, out, units, todo, costs, shipped), file=sys.stderr)
                if not planned_before:  # the machine's speed at the start and end of the work: a time is read against it
                    store.add_probe("start", matmul_peak() / 1e9)
                planned_before |= {u.id for u in units}
                run_units(todo, dependencies(units, cfg, spelling), cfg, spelling, store, progress, weights=costs,
                          **options)
                units = plan(cfg, spelling)
                store.retire(units)
            if planned_before:
                store.add_probe("end", matmul_peak() / 1e9)
            report_study(cfg, spelling, store, units)
            failed = store.failures(units)
        finally:
            store.close()
    report = out / "report" / "report.html"
    if failed:
        names = [r["id"] for r in failed if r["status"] == "failed"]
        raise UnitsFailed(f"{len(names)} unit(s) failed: {', '.join(names)} ({len(failed) - len(names)} more blocked "
                          f"behind them); the other units are done and the report is written ({report}); "
                          f"`excursions status {out}` shows each error")
    return report


def report_study(cfg: Config, out: Path, store: Store, units: list[Unit]) -> Path:
    """The report of what the store holds: the setup, then each experiment's section, drawn from the study's own
    pretraining run. With more runs (`study.pretrain_seeds`) each experiment's claims are decided in every run too
    (their figures under figures/p{seed}/), and pooled over the runs (`across_runs`)."""
    runs = pretraining_runs(cfg)
    others = tuple(prefix for prefix, _ in runs[1:])
    res = Results(store, cfg, out, [u for u in units if not (others and u.id.startswith(others))])
    sections = [setup_section(cfg, store, res)]
    if res.math_tasks:
        figdir = out / "report" / "figures"
        sections += [e.section(res, figdir) for e in active(cfg)]
        found = []  # each other run's claims, by sentence
        for prefix, run in runs[1:]:
            other = Results(store, run, out, [u for u in units if u.id.startswith(prefix)], prefix)
            found.append({v.text: v for e in active(cfg) if other.math_tasks
                          for v in e.section(other, figdir / prefix.rstrip("/")).claims})
        for v in (v for section in sections for v in section.claims) if found else ():
            theirs = [f[v.text] for f in found if v.text in f]
            v.runs = [f[v.text].verdict if v.text in f else "not run" for f in found]
            v.pooled = across_runs([v, *theirs], seed=cfg.eval.seed) if theirs else None
    return write_report(cfg, out, sections)


def to_run(units: list[Unit], cfg: Config, store: Store) -> list[Unit]:
    """The units that are not done, in plan order. A unit done on disk but not recorded (finished before a kill) is
    recorded; a finished unit whose checkpoints fail their checksums is reported, loses them, and runs again."""
    status, todo = store.status(), []
    for unit in units:
        row = status.get(unit.id)
        recorded = row is not None and row["status"] == "done" and row["path"] == str(unit.path)
        on_disk = is_done(unit, cfg)
        broken = damaged_states(unit, store.files(unit) if recorded else {}) if on_disk else {}
        for state, files in broken.items():
            for file in files:
                report_damage(file, f"re-running {unit.id}")
            shutil.rmtree(state, ignore_errors=True)
        if broken or not on_disk:
            todo.append(unit)
        elif not recorded:
            store.finish(unit, None, ingest)
    return todo


def status_table(out: Path) -> str:
    """What `excursions status DIR` prints: each unit of the study's plan with its state and wall time, then a
    count by state. A unit whose settings changed since it ran is pending again (its old result is stale)."""
    root, spelling = anchor(_require_study(out))
    with chdir(root):
        store = Store(spelling / DB)
        try:
            rows = store.status()
        finally:
            store.close()
        running = is_locked(spelling)
        units = plan(load_config(path=spelling / "study.toml"), spelling)
    lines = [f"{'unit':<52} {'status':<12} {'time':>8}"]
    counts: dict[str, int] = {}
    for unit in units:
        r = rows.get(unit.id)
        state, secs, error = "pending", "", ""
        if r is not None and r["path"] == str(unit.path):
            state = r["status"] if r["status"] != "running" or running else "interrupted"
            secs = f"{r['seconds'] / 60:.1f} min" if r["seconds"] is not None else ""
            error = f"  {r['error']}" if r["error"] else ""
        counts[state] = counts.get(state, 0) + 1
        lines.append(f"{unit.id:<52} {state:<12} {secs:>8}{error}")
    lines.append("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())) +
                 ("  (a study is running in this directory)" if running else ""))
    return "\n".join(lines)


def rewrite_report(out: Path) -> Path:
    """`excursions report DIR`: the report again from what study.db holds (after a change to the report's code,
    say), nothing run; returns its path."""
    root, spelling = anchor(_require_study(out))
    with chdir(root), study_lock(spelling):
        cfg = load_config(path=spelling / "study.toml")
        store = Store(spelling / DB)
        try:
            report_study(cfg, spelling, store, plan(cfg, spelling))
        finally:
            store.close()
    return Path(out) / "report" / "report.html"


def _require_study(out: Path | str) -> Path:
    out = Path(out)
    if out.is_file():
        raise UserError(f"{out} is a file, not a study directory; pass the directory a study wrote (its --out, "
                        f"e.g. {out.parent if out.name == DB else 'runs/study-tiny'})")
    if not (out / DB).exists() or not (out / "study.toml").exists():
        raise UserError(f"{out} holds no study (no {DB}); run `excursions study --out {out}` first")
    return out


def export(out: Path, dest: Path | None = None) -> list[Path]:
    """Every table of the study database as CSV (and Parquet where pyarrow is installed)."""
    out = _require_study(out)
    dest = Path(dest) if dest else out / "export"
    dest.mkdir(parents=True, exist_ok=True)
    store = Store(out / DB)
    written = []
    try:
        for table in TABLES:
            cols, rows = store.dump(table)
            text = io.StringIO()
            csv.writer(text).writerows([cols, *rows])
            atomic_write_text(dest / f"{table}.csv", text.getvalue())
            written.append(dest / f"{table}.csv")
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                continue
            pq.write_table(pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)}), dest / f"{table}.parquet")
            written.append(dest / f"{table}.parquet")
    finally:
        store.close()
    return written
