"""The study's SQLite database (`study.db`): each unit's status and wall time, the checkpoints with their files'
sha256, every evaluation with per-problem (n, c), and the training metrics per step. No SQL lives outside this
file: the runner, the unit kinds and the report call the methods below.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Callable

from excursions.study.plan import Unit

DB = "study.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    id TEXT PRIMARY KEY, kind TEXT, path TEXT, checkpoint TEXT, tokens INTEGER, recipe TEXT, seed INTEGER,
    status TEXT, started REAL, finished REAL, seconds REAL, error TEXT, completions INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS checkpoints (
    name TEXT PRIMARY KEY, step INTEGER, tokens INTEGER, val_loss REAL, path TEXT);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY, unit TEXT, checkpoint TEXT, tokens INTEGER, recipe TEXT, seed INTEGER, task TEXT,
    shots INTEGER, n INTEGER, problems INTEGER, format_rate REAL, acc REAL, acc_norm REAL, bits_per_byte REAL,
    seconds REAL, path TEXT);
CREATE TABLE IF NOT EXISTS metrics (
    evaluation INTEGER, metric TEXT, mean REAL, lo REAL, hi REAL, PRIMARY KEY (evaluation, metric));
CREATE TABLE IF NOT EXISTS problems (
    evaluation INTEGER, problem TEXT, n INTEGER, c INTEGER, c_verified INTEGER, PRIMARY KEY (evaluation, problem));
CREATE TABLE IF NOT EXISTS item_values (
    evaluation INTEGER, item TEXT, metric TEXT, value REAL, PRIMARY KEY (evaluation, item, metric));
CREATE TABLE IF NOT EXISTS tracked (
    unit TEXT, stage TEXT, step INTEGER, problem TEXT, n INTEGER, c INTEGER, c_verified INTEGER,
    PRIMARY KEY (unit, stage, step, problem));
CREATE TABLE IF NOT EXISTS training (
    unit TEXT, stage TEXT, step INTEGER, key TEXT, value REAL, PRIMARY KEY (unit, stage, step, key));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (
    unit TEXT, state TEXT, file TEXT, bytes INTEGER, sha256 TEXT, PRIMARY KEY (unit, file));
"""
VAL = "@val"  # a stage's validation counts in `tracked`: the convergence rule's, kept apart from the test curves
VALUED = ("bits_per_byte", "kl")  # per-item values a result may list as per_<metric>: [{"id", <metric>}, ...]
TABLES = ("units", "checkpoints", "evaluations", "metrics", "problems", "item_values", "tracked", "training", "files")
# Columns added after studies were stored: a database without one gets it (NULL in old rows) when it is opened
ADDED = {"problems": (("c_verified", "INTEGER"),)}


class Store:
    """The study's SQLite database. Each unit's results go in with its `done` status in one transaction,
    so a kill leaves either all of a unit's rows or none. Every query the study makes is a method here."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)
        for table, columns in ADDED.items():
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------------------- where paths start

    def spelling(self) -> Path | None:
        """How the study's paths spell its directory: "." for a study started by this version (paths relative to the
        study directory); for an older one the --out it was started with, read off its units' paths; None when no
        unit was ever recorded."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'out'").fetchone()
        if row is not None:
            return Path(row[0])
        row = self.db.execute("SELECT path FROM units LIMIT 1").fetchone()
        if row is None:
            return None
        parts = Path(row[0]).parts  # out/{pretrain,evals,posttrain,splits}/...: the last such name starts the rest
        cut = max((i for i, part in enumerate(parts) if part in ("pretrain", "evals", "posttrain", "splits")), default=0)
        return Path(*parts[:cut]) if cut else Path(".")

    def set_spelling(self, out: Path) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('out', ?)", (str(out),))

    def add_probe(self, when: str, gflops: float) -> None:
        """An fp32 matmul probe (GFLOP/s) at the start or end of a `run_study` call, kept in order in `meta`."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('probes', ?)",
                            (json.dumps(self.probes() + [{"when": when, "at": time.time(), "gflops": gflops}]),))

    def probes(self) -> list[dict]:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'probes'").fetchone()
        return json.loads(row[0]) if row else []

    # ------------------------------------------------------------------------------------- unit status

    def status(self) -> dict[str, sqlite3.Row]:
        return {r["id"]: r for r in self.db.execute("SELECT * FROM units")}

    def retire(self, units: list[Unit]) -> None:
        """Mark units that are no longer in the plan (or ran with other settings) stale: the report skips them."""
        current = {u.id: str(u.path) for u in units}
        with self.db:
            for r in self.db.execute("SELECT id, path FROM units WHERE status = 'done'").fetchall():
                if current.get(r["id"]) != r["path"]:
                    self.db.execute("UPDATE units SET status = 'stale' WHERE id = ?", (r["id"],))

    def start(self, unit: Unit) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO units (id, kind, path, checkpoint, tokens, recipe, seed, status, started) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?) ON CONFLICT(id) DO UPDATE SET path = excluded.path, "
                "status = 'running', started = excluded.started, finished = NULL, seconds = NULL, error = NULL",
                (unit.id, unit.kind, str(unit.path), unit.checkpoint, unit.tokens, unit.recipe, unit.seed, time.time()))

    def fail(self, unit: Unit, error: str, status: str = "failed") -> None:
        """Mark a unit failed, or `blocked` (it reads the output of a unit that failed), with the reason."""
        with self.db:
            self.db.execute(
                "INSERT INTO units (id, kind, path, checkpoint, tokens, recipe, seed, status, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET path = excluded.path, "
                "status = excluded.status, error = excluded.error, finished = NULL, seconds = NULL",
                (unit.id, unit.kind, str(unit.path), unit.checkpoint, unit.tokens, unit.recipe, unit.seed, status,
                 error))

    def failures(self, units: list[Unit]) -> list[sqlite3.Row]:
        """The plan's units that failed or are blocked, in plan order."""
        rows = self.status()
        return [rows[u.id] for u in units if u.id in rows and rows[u.id]["path"] == str(u.path)
                and rows[u.id]["status"] in ("failed", "blocked")]

    def finish(self, unit: Unit, seconds: float | None, ingest: Callable[["Store", Unit], None]) -> None:
        """`ingest` the unit's outputs and mark it done, atomically. `seconds` is None for a unit found done
        on disk (finished before a kill): it was not run again, so its completions count stays."""
        with self.db:
            self.db.execute("DELETE FROM files WHERE unit = ?", (unit.id,))
            ingest(self, unit)
            row = self.db.execute("SELECT seconds FROM units WHERE id = ?", (unit.id,)).fetchone()
            self.db.execute(
                "INSERT INTO units (id, kind, path, checkpoint, tokens, recipe, seed, status, finished, seconds, "
                "completions) VALUES (?, ?, ?, ?, ?, ?, ?, 'done', ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "status = 'done', path = excluded.path, finished = excluded.finished, seconds = excluded.seconds, "
                "error = NULL, completions = completions + excluded.completions",
                (unit.id, unit.kind, str(unit.path), unit.checkpoint, unit.tokens, unit.recipe, unit.seed, time.time(),
                 seconds if seconds is not None else (row["seconds"] if row else None), int(seconds is not None)))

    # ------------------------------------------------------------------------------------- what units add

    def add_files(self, unit: Unit, manifests: dict[str, dict]) -> None:
        """The checksums of the unit's states: {state directory: {file: {bytes, sha256}}}."""
        self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                            [(unit.id, state, file, want["bytes"], want["sha256"])
                             for state, files in manifests.items() for file, want in files.items()])

    def files(self, unit: Unit) -> dict[str, dict]:
        """The checksums recorded when the unit finished: {state directory: {file: {bytes, sha256}}}."""
        out: dict[str, dict] = {}
        for r in self.db.execute("SELECT state, file, bytes, sha256 FROM files WHERE unit = ?", (unit.id,)):
            out.setdefault(r["state"], {})[r["file"]] = {"bytes": r["bytes"], "sha256": r["sha256"]}
        return out

    def add_checkpoint(self, name: str, step: int, tokens: int, val_loss: float | None, path: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)", (name, step, tokens, val_loss, path))

    def clear_training(self, unit: str) -> None:
        self.db.execute("DELETE FROM training WHERE unit = ?", (unit,))
        self.db.execute("DELETE FROM tracked WHERE unit = ?", (unit,))

    def add_training(self, unit: str, stage: str, metrics: Path) -> None:
        """Every number of a run's metrics.jsonl, by step, and the per-problem counts of its tracked evaluations
        (`eval/<family>/per_problem`: {problem: [n, c, c_verified]}), so tracked curves can be compared paired; the
        convergence rule's validation counts (`val/...`) under the stage named `<stage>@val`."""
        if not metrics.exists():
            return
        rows, counts = [], []
        for line in metrics.read_text().splitlines():
            r = json.loads(line)
            rows += [(unit, stage, r["step"], k, float(v)) for k, v in r.items()
                     if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]
            counts += [(unit, stage if k.startswith("eval/") else f"{stage}{VAL}", r["step"], p, *ncv)
                       for k, v in r.items() if k.endswith("/per_problem") for p, ncv in v.items()]
        self.db.execute("DELETE FROM tracked WHERE unit = ? AND stage IN (?, ?)", (unit, stage, f"{stage}{VAL}"))
        self.db.executemany("INSERT OR REPLACE INTO training VALUES (?, ?, ?, ?, ?)", rows)
        self.db.executemany("INSERT OR REPLACE INTO tracked VALUES (?, ?, ?, ?, ?, ?, ?)", counts)

    def add_convergence(self, unit: str, stage: str, record: dict) -> None:
        """A finished stage's convergence record (its metadata's, `loop.Converge.record`) as training numbers at its
        last step, under convergence/: checked (0 for a fixed step count), converged, cap, and the last window's
        change with its interval."""
        if not record:
            return
        change = record.get("change") or {}
        numbers = {"checked": record.get("until") == "converged", "converged": bool(record.get("converged")),
                   "cap": record.get("cap", record["steps"]), "threshold": record.get("threshold"),
                   "window": record.get("window"),
                   "change": change.get("diff"), "change_lo": change.get("lo"), "change_hi": change.get("hi")}
        self.db.executemany("INSERT OR REPLACE INTO training VALUES (?, ?, ?, ?, ?)",
                            [(unit, stage, record["steps"], f"convergence/{k}", float(v))
                             for k, v in numbers.items() if v is not None])

    def replace_evaluations(self, unit: Unit, results: list[tuple[Path, dict]]) -> None:
        """The unit's evaluation results (file, record), with per-problem (n, c), instead of any it had."""
        db = self.db
        for (e,) in db.execute("SELECT id FROM evaluations WHERE unit = ?", (unit.id,)).fetchall():
            db.execute("DELETE FROM metrics WHERE evaluation = ?", (e,))
            db.execute("DELETE FROM problems WHERE evaluation = ?", (e,))
            db.execute("DELETE FROM item_values WHERE evaluation = ?", (e,))
        db.execute("DELETE FROM evaluations WHERE unit = ?", (unit.id,))
        for file, r in results:
            cur = db.execute(
                "INSERT INTO evaluations (unit, checkpoint, tokens, recipe, seed, task, shots, n, problems, "
                "format_rate, acc, acc_norm, bits_per_byte, seconds, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?)",
                (unit.id, unit.checkpoint, unit.tokens, unit.recipe, unit.seed, r["task"], r.get("shots"), r.get("n"),
                 r.get("problems"), r.get("format_rate"), r.get("acc"), r.get("acc_norm"), r.get("bits_per_byte"),
                 r.get("seconds"), str(file)))
            db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                           [(cur.lastrowid, k, v["mean"], v["lo"], v["hi"]) for k, v in r.get("metrics", {}).items()]
                           + [(cur.lastrowid, f"verified_{k}", v["mean"], v["lo"], v["hi"])
                              for k, v in r.get("verified", {}).items()])
            # per problem: math (n, c, c_verified); a multiple-choice question as one sample, right or not
            db.executemany("INSERT INTO problems VALUES (?, ?, ?, ?, ?)",
                           [(cur.lastrowid, p["id"], p["n"], p["c"], p.get("c_verified"))
                            for p in r.get("per_problem", [])]
                           + [(cur.lastrowid, q["id"], 1, int(q["pick"] == q["label"]), None)
                              for q in r.get("per_item", [])])
            db.executemany("INSERT INTO item_values VALUES (?, ?, ?, ?)",
                           [(cur.lastrowid, str(a["id"]), metric, a[metric]) for metric in VALUED
                            for a in r.get(f"per_{metric}", [])])

    # ------------------------------------------------------------------------------------- what the report reads

    def evaluations(self, units: list[str], task: str | None = None) -> list[sqlite3.Row]:
        """Every evaluation of these units that are done, one row per metric (pass@k; none for multiple choice):
        the evaluation's columns and `metric`, `mean`, `lo`, `hi`."""
        marks = ", ".join("?" * len(units))
        where = f"u.status = 'done' AND u.id IN ({marks})" + (" AND e.task = ?" if task else "")
        return self.db.execute(f"SELECT e.*, m.metric, m.mean, m.lo, m.hi FROM evaluations e JOIN units u ON u.id = "
                               f"e.unit LEFT JOIN metrics m ON m.evaluation = e.id WHERE {where}",
                               (*units, *([task] if task else []))).fetchall()

    def problem_table(self, units: list[str], checkpoint: str, recipe: str, task: str, shots: int | None,
                      seed: int | None) -> dict[str, tuple[int, int]]:
        """{problem: (n, c)} of one evaluation: a recipe's (of one seed) from a checkpoint, on a task at a shot
        count, among these units' done ones; empty if there is none."""
        where, args = _one_evaluation(units, checkpoint, recipe, task, shots, seed)
        rows = self.db.execute(f"SELECT p.problem, p.n, p.c FROM problems p JOIN evaluations e ON e.id = p.evaluation "
                               f"JOIN units u ON u.id = e.unit WHERE {where}", args)
        return {r[0]: (r[1], r[2]) for r in rows}

    def problem_scores(self, units: list[str], checkpoint: str, recipe: str, task: str, shots: int | None,
                       seed: int | None) -> dict[str, tuple[int, int, int | None]]:
        """{problem: (n, c, c_verified)} of one evaluation (as `problem_table`); a multiple-choice question is
        (1, right or not, None)."""
        where, args = _one_evaluation(units, checkpoint, recipe, task, shots, seed)
        rows = self.db.execute(f"SELECT p.problem, p.n, p.c, p.c_verified FROM problems p JOIN evaluations e ON "
                               f"e.id = p.evaluation JOIN units u ON u.id = e.unit WHERE {where}", args)
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def item_values(self, units: list[str], checkpoint: str, recipe: str, task: str, seed: int | None,
                    metric: str) -> dict[str, float]:
        """{item: value} of one evaluation's per-item `metric` (bits per byte of each held-out article, KL of each
        training prompt)."""
        where, args = _one_evaluation(units, checkpoint, recipe, task, None, seed)
        rows = self.db.execute(f"SELECT v.item, v.value FROM item_values v JOIN evaluations e ON e.id = v.evaluation "
                               f"JOIN units u ON u.id = e.unit WHERE {where} AND v.metric = ?", (*args, metric))
        return {r[0]: r[1] for r in rows}

    def convergence(self, unit: str, stage: str) -> dict[str, float]:
        """A finished stage's convergence record (`add_convergence`): {"steps", "checked", "converged", "cap",
        "threshold", "window", "change", "change_lo", "change_hi"}; empty for a run stored without one."""
        rows = self.db.execute("SELECT step, key, value FROM training WHERE unit = ? AND stage = ? AND "
                               "substr(key, 1, 12) = 'convergence/'", (unit, stage)).fetchall()
        return {"steps": rows[0][0], **{r[1].split("/", 1)[1]: r[2] for r in rows}} if rows else {}

    def stages(self, unit: str) -> set[str]:
        """The training stages a unit's metrics are stored under."""
        return {r[0] for r in self.db.execute("SELECT DISTINCT stage FROM training WHERE unit = ?", (unit,))}

    def tracked_steps(self, unit: str, stage: str) -> list[int]:
        """The steps at which a run's stage has tracked per-problem counts (`<stage>@val`: its validation's)."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT step FROM tracked WHERE unit = ? AND stage = ? "
                                              "ORDER BY step", (unit, stage))]

    def tracked(self, unit: str, stage: str, step: int) -> dict[str, tuple[int, int, int]]:
        """{problem: (n, c, c_verified)} of a run's tracked evaluation at a step."""
        rows = self.db.execute("SELECT problem, n, c, c_verified FROM tracked WHERE unit = ? AND stage = ? AND "
                               "step = ?", (unit, stage, step))
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def record_path(self, units: list[str], checkpoint: str, recipe: str, task: str, shots: int | None,
                    seed: int | None) -> str | None:
        """The result file of the evaluation `problem_table` reads (per-problem diversity is kept there), or None."""
        where, args = _one_evaluation(units, checkpoint, recipe, task, shots, seed)
        row = self.db.execute(f"SELECT e.path FROM evaluations e JOIN units u ON u.id = e.unit WHERE {where}",
                              args).fetchone()
        return row[0] if row else None

    def problem_counts(self, unit: str) -> list[tuple[int, int]]:
        """(n, c) of every problem the unit's evaluations sampled."""
        return [tuple(r) for r in self.db.execute("SELECT p.n, p.c FROM problems p JOIN evaluations e ON "
                                                   "e.id = p.evaluation WHERE e.unit = ?", (unit,))]

    def training(self, unit: str, stage: str, key: str) -> tuple[list[int], list[float]]:
        """One metric of one training stage of a unit along its steps: (steps, values)."""
        rows = self.db.execute("SELECT step, value FROM training WHERE unit = ? AND stage = ? AND key = ? "
                               "ORDER BY step", (unit, stage, key)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def training_keys(self, prefix: str, unit: str | None = None) -> list[str]:
        """The metrics logged along training whose names start with `prefix` (by any unit, or by `unit`)."""
        where, args = "substr(key, 1, ?) = ?", [len(prefix), prefix]
        if unit is not None:
            where, args = where + " AND unit = ?", args + [unit]
        rows = self.db.execute(f"SELECT DISTINCT key FROM training WHERE {where}", args)
        return [r[0] for r in rows]

    def done_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM units WHERE status = 'done'")}

    def unit_times(self) -> list[tuple[str, int, float | None, int]]:
        """Per kind of unit done: (kind, count, seconds, how many were timed), in the order they started."""
        return [tuple(r) for r in self.db.execute(
            "SELECT kind, COUNT(*), SUM(seconds), COUNT(seconds) FROM units WHERE status = 'done' GROUP BY kind "
            "ORDER BY MIN(started)")]

    def dump(self, table: str) -> tuple[list[str], list[tuple]]:
        """A whole table: (column names, rows)."""
        if table not in TABLES:
            raise ValueError(f"no table {table!r}")
        cur = self.db.execute(f"SELECT * FROM {table}")
        return [d[0] for d in cur.description], [tuple(r) for r in cur.fetchall()]


def _one_evaluation(units: list[str], checkpoint: str, recipe: str, task: str, shots: int | None,
                    seed: int | None) -> tuple[str, tuple]:
    """The WHERE clause (over evaluations e joined with units u) and its arguments that pick one evaluation: a
    recipe's (of one seed) from a checkpoint, on a task at a shot count, among these units' done ones."""
    marks = ", ".join("?" * len(units))
    return (f"u.status = 'done' AND u.id IN ({marks}) AND e.checkpoint = ? AND e.recipe = ? AND e.task = ? AND "
            f"e.shots IS ? AND e.seed IS ?", (*units, checkpoint, recipe, task, shots, seed))
