"""The study: the paper's experiments planned as units, run in order, every number kept in one SQLite file.

    excursions study                                  # the tiny study into runs/study-tiny
    excursions study --preset smoke --out runs/study-smoke
    excursions status runs/study-tiny

A unit is one piece of work whose output directory is named by a digest of the settings it depends on:
the pretraining run, a base checkpoint's evaluation, one recipe from one checkpoint with one seed, and
that result's evaluation. Each unit is resumable on its own (pretraining and recipes keep resume states,
evaluations write one JSON per result and reuse it), so the runner only runs units in order: a finished
unit is skipped, an interrupted one resumes, and a changed setting gets a new directory, so only what
depends on it runs again. The database (`study.db`) records each unit's status and every number the
report draws from: checkpoints (with their files' sha256), evaluations with per-problem (n, c), training
metrics per step.

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
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from excursions.config import Config, digest, prompt_settings, to_dict, to_toml
from excursions.errors import UnitsFailed, UserError
from excursions.train.checkpoint import (MANIFEST, META, atomic_write_text, damaged, manifest, read_json,
                                         report_damage, write_json)

DB = "study.db"
LOCK = "study.lock"
SKIPPED = "skipped.json"  # a unit with nothing to do (a difficulty split too small to train on), and why


# ----------------------------------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    """One piece of work. `id` is stable across settings (for status); `path` carries the settings digest."""

    id: str  # e.g. "rl/step000338-tokens2768896/s0"
    kind: str  # pretrain | base_eval | nshot | posttrain | eval
    path: Path  # a run directory, or an evaluation's record (the result files it wrote); named by digest
    checkpoint: str = ""  # the source checkpoint's name
    tokens: int = 0  # its pretraining tokens
    recipe: str = "base"
    seed: int = 0
    source: str = ""  # what the unit reads: a checkpoint directory or hub id
    overrides: tuple[tuple[str, str, int], ...] = ()  # (section, key, value) laid over the study's config
    world: str = ""  # the unit's own world/ directory (a difficulty split, a scaling variant), not the study's
    tasks: tuple[str, ...] = ()  # an evaluation's tasks, when not the study's


def configured(cfg: Config, seed: int, overrides: tuple[tuple[str, str, int], ...] = ()) -> Config:
    """The config a unit runs with: the study's, seeded, with the unit's overrides."""
    cfg = seeded(cfg, seed)
    by_section: dict[str, dict] = {}
    for section, key, value in overrides:  # a section's keys at once: its checks may relate them (data shares)
        by_section.setdefault(section, {})[key] = value
    return replace(cfg, **{sec: replace(getattr(cfg, sec), **kv) for sec, kv in by_section.items()})


def seeded(cfg: Config, seed: int) -> Config:
    """The config a recipe runs with for one seed: rollouts, SFT order and exemplars all follow it."""
    return replace(cfg, rl=replace(cfg.rl, seed=seed), sft=replace(cfg.sft, seed=seed))


def recipe_settings(cfg: Config, recipe: str) -> dict:
    """The config sections a recipe's result depends on (what its directory digest covers)."""
    sections = {"rl": ("rl",), "sft": ("sft",), "sft_gold": ("sft",), "sft_rl": ("sft", "rl"),
                "sft_gold_rl": ("sft", "rl"), "parallel": ("parallel", "rl", "sft")}[recipe]
    return {"recipe": recipe, **{s: to_dict(getattr(cfg, s)) for s in sections}, **prompt_settings(cfg)}


def pretrain_dir(cfg: Config, out: Path) -> Path:
    """Named by the settings pretraining depends on (the ones its run directory is claimed for)."""
    from excursions.train.pretrain import PRETRAIN_SECTIONS

    keep = {k: v for k, v in to_dict(cfg).items() if k in PRETRAIN_SECTIONS}
    return out / "pretrain" / f"{cfg.name}-{digest(keep)}"


def all_checkpoints(cfg: Config, out: Path) -> list[tuple[str, int, str]]:
    """(name, tokens, source) of every checkpoint the study could branch from, known before pretraining runs."""
    from excursions.train.pretrain import checkpoint_name

    if cfg.study.external:
        from excursions.model import revision_tokens

        return [(spec.replace("/", "--").replace("@", "--"), revision_tokens(spec), spec) for spec in cfg.study.external]
    p, root = cfg.pretrain, pretrain_dir(cfg, out) / "checkpoints"
    names = [(checkpoint_name(st, st * p.tokens_per_step), st * p.tokens_per_step) for st in p.checkpoint_steps()]
    return [(name, tokens, str(root / name)) for name, tokens in names]


def plan(cfg: Config, out: Path) -> list[Unit]:
    """Every unit of the study, in the order they run (each after the units it reads)."""
    s = cfg.study
    every = all_checkpoints(cfg, out)
    for i in s.checkpoints + (s.seed_checkpoint,):
        if not -len(every) <= i < len(every):
            raise UserError(f"config: study: checkpoint index {i} is out of range; there are {len(every)} "
                            f"checkpoints (0..{len(every) - 1}, or negative from the end)")
    chosen = sorted({every[i] for i in s.checkpoints}, key=every.index) if s.checkpoints else every
    seed_ckpt = every[s.seed_checkpoint] if s.extra_seeds else None
    if seed_ckpt is not None and seed_ckpt not in chosen:
        raise UserError("config: study.seed_checkpoint must be one of study.checkpoints (the extra seeds branch "
                        "from a checkpoint the study already evaluates)")
    units = [] if s.external else [Unit("pretrain", "pretrain", pretrain_dir(cfg, out))]
    ev = digest({"eval": to_dict(cfg.eval), "tasks": list(s.tasks), **prompt_settings(cfg)})
    for name, tokens, source in chosen:
        units.append(Unit(f"base/{name}", "base_eval", out / "evals" / "base" / f"{name}-{ev}.json", name, tokens,
                          source=source))
    if "nshot" in s.experiments and s.nshot:
        name, tokens, source = chosen[-1]
        shots = digest({"eval": to_dict(cfg.eval), "shots": sorted(s.nshot), **prompt_settings(cfg)})
        units.append(Unit(f"nshot/{name}", "nshot", out / "evals" / "nshot" / f"{name}-{shots}.json", name, tokens,
                          source=source))
    for ckpt in chosen:
        name, tokens, source = ckpt
        for recipe in s.recipes:
            for seed in s.seeds + (s.extra_seeds if recipe == "rl" and ckpt == seed_ckpt else ()):
                settings = recipe_settings(seeded(cfg, seed), recipe)
                run = out / "posttrain" / name / f"{recipe}-s{seed}-{digest({**settings, 'source': source})}"
                units.append(Unit(f"{recipe}/{name}/s{seed}", "posttrain", run, name, tokens, recipe, seed, source))
                record = out / "evals" / recipe / name / f"s{seed}-{run.name.rsplit('-', 1)[1]}-{ev}.json"
                units.append(Unit(f"eval/{recipe}/{name}/s{seed}", "eval", record, name, tokens, recipe, seed,
                                  str(run)))
    if "sft_epochs" in s.experiments and s.sft_epochs:
        # Fig. 15: does SFT converge in the study's epochs? One longer run, test pass@k tracked after every epoch.
        name, tokens, source = seed_ckpt or chosen[0]
        seed, per_epoch = s.seeds[0], -(-train_size(cfg, out) // cfg.sft.batch_size)
        overrides = (("sft", "epochs", s.sft_epochs), ("sft", "track_every", per_epoch))
        settings = recipe_settings(configured(cfg, seed, overrides), "sft")
        run = out / "posttrain" / name / f"sft-epochs-s{seed}-{digest({**settings, 'source': source})}"
        units.append(Unit(f"sft_epochs/{name}/s{seed}", "posttrain", run, name, tokens, "sft", seed, source, overrides))
    if "rollouts" in s.experiments and s.rollouts:
        units += rollout_units(cfg, out, chosen[-1])
    if "scaling" in s.experiments and (s.scale_model or s.scale_targeted):
        units += scaling_units(cfg, out, ev)
    return units


def dependencies(units: list[Unit], cfg: Config, out: Path) -> dict[str, list[str]]:
    """For each unit, the units whose output it reads: A before B when A's output directory holds (or is) B's
    source, B's world, or the study's world. Read off the paths, so every experiment's units are covered alike."""
    def output(u: Unit) -> str:  # a record's directory holds what the unit made (a difficulty split's worlds)
        return str(u.path.parent if u.path.suffix == ".json" else u.path)

    def under(path: str, root: str) -> bool:
        return path == root or path.startswith(root + os.sep)

    deps = {}
    for b in units:
        reads = [r for r in (b.source, b.world or str(world_dir(cfg, out))) if r]
        deps[b.id] = [a.id for a in units if a is not b and any(under(r, output(a)) for r in reads)]
    return deps


def scaling_variants(cfg: Config) -> dict[str, tuple]:
    """The pretraining runs compared by the scaling experiment, as overrides of the study's config: the study's
    own, a bigger model (N), and the same model with `scale_targeted` x tokens more, all of it targeted math (D)."""
    s, d, t = cfg.study, cfg.data, cfg.study.scale_targeted
    variants: dict[str, tuple] = {"base": ()}
    if s.scale_model:
        variants["N"] = (("model", "size", s.scale_model),)
    if t:
        variants["D"] = (("pretrain", "tokens", round(cfg.pretrain.tokens * (1 + t))),
                         ("data", "general", d.general / (1 + t)), ("data", "math", d.math / (1 + t)),
                         ("data", "targeted", (d.targeted + t) / (1 + t)))
    return variants


def scaling_units(cfg: Config, out: Path, ev: str) -> list[Unit]:
    """Per variant: its pretraining (the study's own for `base`), then its final checkpoint evaluated on `hard`,
    direct RL on `hard` problems, and that result evaluated."""
    units = []
    for v, overrides in scaling_variants(cfg).items():
        vcfg = configured(cfg, 0, overrides)
        run = pretrain_dir(vcfg, out)
        if v != "base":
            units.append(Unit(f"scaling/{v}/pretrain", "pretrain", run, overrides=overrides))
        name, tokens, source = all_checkpoints(vcfg, out)[-1]  # the variant's final checkpoint
        world, seed = str(run / "world"), cfg.study.seeds[0]
        units.append(Unit(f"scaling/{v}/base", "base_eval", out / "evals" / "scaling" / f"{v}-{name}-{ev}.json", name,
                          tokens, source=source, world=world, tasks=("hard",)))
        rl_overrides = overrides + (("rl", "family", "hard"),)
        settings = recipe_settings(configured(cfg, seed, rl_overrides), "rl")
        post = out / "posttrain" / f"scaling-{v}" / f"rl-hard-s{seed}-{digest({**settings, 'source': source})}"
        units.append(Unit(f"scaling/{v}/rl", "posttrain", post, name, tokens, "rl", seed, source, rl_overrides, world))
        units.append(Unit(f"scaling/{v}/eval", "eval", out / "evals" / "scaling" / f"{v}-rl-{post.name}-{ev}.json",
                          name, tokens, "rl", seed, str(post), world=world, tasks=("hard",)))
    return units


SPLITS = ("easy", "hard")


def rollout_units(cfg: Config, out: Path, ckpt: tuple[str, int, str]) -> list[Unit]:
    """Fig. 18: the last chosen checkpoint's training problems split by its own success rate, then direct RL on
    each split with each rollout count of `study.rollouts`, test pass@k tracked along training."""
    s, (name, tokens, source) = cfg.study, ckpt
    seed, steps, prompts = s.seeds[0], s.rollout_steps or cfg.rl.steps, rollout_prompts(cfg)
    split_settings = {"source": source, "world": str(world_dir(cfg, out)), "family": cfg.rl.family,
                      "problems": s.split_problems, "n": s.split_n, "temperature": cfg.rl.temperature,
                      "max_new_tokens": cfg.rl.max_new_tokens, "min_size": prompts, **prompt_settings(cfg)}
    split_dir = out / "splits" / f"{name}-{digest(split_settings)}"
    units = [Unit(f"splits/{name}", "splits", split_dir / "record.json", name, tokens, source=source)]
    for split in SPLITS:
        for g in s.rollouts:
            overrides = (("rl", "group_size", g), ("rl", "steps", steps), ("rl", "prompts_per_step", prompts),
                         ("rl", "track_every", max(1, steps // 4)))
            settings = recipe_settings(configured(cfg, seed, overrides), "rl")
            world = split_dir / split
            run = out / "posttrain" / name / f"rollouts-{split}-n{g}-{digest({**settings, 'source': source, 'world': str(world)})}"
            units.append(Unit(f"rollouts/{split}/n{g}/{name}", "posttrain", run, name, tokens, "rl", seed, source,
                              overrides, str(world)))
    return units


def rollout_prompts(cfg: Config) -> int:
    """Prompts per RL step of the rollouts experiment's runs: also the smallest split worth training on."""
    return cfg.study.rollout_prompts or cfg.rl.prompts_per_step


def difficulty(c: int, n: int) -> str | None:
    """The paper's split of a problem by its base model's successes in n samples (App. D, n = 64): easy with
    16..64 correct, hard with at most 8, neither in between; the same fractions at other n.

    >>> [difficulty(c, 64) for c in (0, 8, 9, 15, 16, 64)]
    ['hard', 'hard', None, None, 'easy', 'easy']
    """
    return "easy" if 4 * c >= n else "hard" if 8 * c <= n else None


def make_splits(unit: Unit, cfg: Config, world: Path, progress: bool) -> None:
    """Sample the checkpoint `study.split_n` times on `study.split_problems` training problems (0-shot, at the RL
    temperature: how RL will meet them) and write an easy and a hard world of equal size, each with the
    study's val and test problems. The base's per-problem counts are the unit's evaluation record."""
    import random

    from excursions.data.problems import read_jsonl, write_jsonl
    from excursions.evals.harness import evaluate_math
    from excursions.model import load_model, parse_checkpoint, pick_device
    from excursions.tokenizer import load_tokenizer

    s, family, split_dir = cfg.study, cfg.rl.family, unit.path.parent
    train = read_jsonl(world / family / "train.jsonl")
    rng = random.Random(cfg.rl.seed)
    chosen = rng.sample(train, min(s.split_problems, len(train)))
    path, revision = parse_checkpoint(unit.source)
    ecfg = replace(cfg.eval, n=s.split_n, ks=(1,), temperature=cfg.rl.temperature, max_new_tokens=cfg.rl.max_new_tokens)
    model = load_model(path, revision, device=pick_device(cfg.distributed.device))
    result = evaluate_math(model, load_tokenizer(path, revision, chat=cfg.prompt.chat_template), chosen, [], ecfg, shots=0,
                           progress=progress, desc="difficulty splits")
    by_id = {p.id: p for p in chosen}
    groups = {k: [by_id[r["id"]] for r in result["per_problem"] if difficulty(r["c"], r["n"]) == k] for k in SPLITS}
    # Equal sizes, as the paper's 10K each: the splits differ in difficulty, not in amount. A split smaller than
    # one RL step's prompts (an early checkpoint solves almost nothing: no easy split) gets no world; its runs
    # are skipped and the report says so.
    usable = [k for k in SPLITS if len(groups[k]) >= rollout_prompts(cfg)]
    size = min((len(groups[k]) for k in usable), default=0)
    for k in usable:
        write_jsonl(split_dir / k / family / "train.jsonl", rng.sample(groups[k], size))
        for part in ("val", "test"):
            write_jsonl(split_dir / k / family / f"{part}.jsonl", read_jsonl(world / family / f"{part}.jsonl"))
    result.update(task=f"{family}_train", sizes={k: len(g) for k, g in groups.items()}, used=size, metrics={})
    write_json(split_dir / "base.json", result)
    write_json(unit.path, [str(split_dir / "base.json")])  # last: the unit is done when its record exists


def train_size(cfg: Config, out: Path) -> int:
    """Training problems of the post-training family (known from the config for a tiny world)."""
    if not cfg.study.external:
        return getattr(cfg.world, cfg.sft.family).train
    path = Path(cfg.study.world) / cfg.sft.family / "train.jsonl"
    return sum(1 for line in path.open() if line.strip()) if path.is_file() else 1


def world_dir(cfg: Config, out: Path) -> Path:
    return Path(cfg.study.world) if cfg.study.external else pretrain_dir(cfg, out) / "world"


def final_dir(run: Path) -> Path:
    """A recipe run's result: `final/`, or the RL stage's for two-stage recipes."""
    return run / "rl" / "final" if (run / "rl").exists() else run / "final"


def execute(unit: Unit, cfg: Config, out: Path, progress: bool) -> None:
    """Run (or resume, or confirm finished) one unit."""
    from excursions.evals.harness import evaluate_checkpoint
    from excursions.train.pretrain import pretrain
    from excursions.train.recipes import posttrain

    world = Path(unit.world) if unit.world else world_dir(cfg, out)
    source = final_dir(Path(unit.source)) if unit.kind == "eval" else Path(unit.source)
    bad = damaged(manifest(source)) if unit.source and source.is_dir() else []
    if bad:  # never load a damaged checkpoint; the unit that wrote it is checked (and re-run) on the next run
        raise UserError(f"{bad[0]} does not match its recorded checksum (truncated or corrupt); run the study again "
                        "to rebuild it")
    if unit.kind == "pretrain":
        pretrain(configured(cfg, cfg.seed, unit.overrides) if unit.overrides else cfg, unit.path, progress)
    elif unit.kind == "posttrain" and unit.world and not (Path(unit.world) / cfg.rl.family / "train.jsonl").exists():
        write_json(unit.path / SKIPPED, {"reason": f"the {Path(unit.world).name} split has fewer problems than one "
                                                  "RL step's prompts"})
    elif unit.kind == "posttrain":
        posttrain(unit.source, unit.recipe, configured(cfg, unit.seed, unit.overrides), unit.path, world, progress)
    elif unit.kind == "splits":
        make_splits(unit, cfg, world, progress)
    else:
        # Results land next to the model (as `excursions eval` writes them, so either reuses the other's);
        # the unit's record lists them. Base checkpoints are evaluated few-shot (the exemplars carry the
        # answer format) and 0-shot (where RL starts); post-trained models 0-shot.
        spec = str(final_dir(Path(unit.source))) if unit.kind == "eval" else unit.source
        local = Path(spec).exists()
        tasks = list(unit.tasks or cfg.study.tasks)
        shots = {"base_eval": sorted({cfg.eval.shots, 0}), "eval": [0]}.get(unit.kind)
        if unit.kind == "nshot":  # the n-shot sweep of a base checkpoint, on the first math task
            tasks, shots = [next(t for t in cfg.study.tasks if t != "general")], sorted(cfg.study.nshot)
        rows = evaluate_checkpoint(spec, tasks, cfg.eval, shots=shots, world_dir=world,
                                   out_dir=None if local else out / "evals" / "hub" / unit.checkpoint, progress=progress,
                                   runtime=cfg.distributed, chat=cfg.prompt.chat_template)
        write_json(unit.path, [r["path"] for r in rows])


def is_done(unit: Unit, cfg: Config) -> bool:
    """Whether the unit's output is complete on disk (the database may lag behind a kill)."""
    if unit.kind == "pretrain":
        from excursions.train.pretrain import checkpoint_name

        p = configured(cfg, cfg.seed, unit.overrides).pretrain
        return all((unit.path / "checkpoints" / checkpoint_name(st, st * p.tokens_per_step) / META).exists()
                   for st in p.checkpoint_steps())
    if unit.kind == "posttrain":
        return (final_dir(unit.path) / META).exists() or (unit.path / SKIPPED).exists()
    # a record, with every result it lists (results next to a checkpoint go when the checkpoint is rebuilt)
    return unit.path.exists() and all(Path(f).exists() for f in read_json(unit.path))


def damaged_states(unit: Unit, recorded: dict[str, dict]) -> dict[Path, list[Path]]:
    """The checkpoints of a finished unit whose files differ from their checksums (the store's where recorded,
    else each directory's own manifest), with the damaged files."""
    if unit.kind not in ("pretrain", "posttrain") or not unit.path.is_dir():
        return {}
    expected = {str(m.parent): manifest(m.parent) for m in unit.path.rglob(MANIFEST)}
    expected.update(recorded)
    return {Path(state): bad for state, files in expected.items() if (bad := damaged(files))}


# ----------------------------------------------------------------------------------------- store


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
    evaluation INTEGER, problem TEXT, n INTEGER, c INTEGER, PRIMARY KEY (evaluation, problem));
CREATE TABLE IF NOT EXISTS training (
    unit TEXT, stage TEXT, step INTEGER, key TEXT, value REAL, PRIMARY KEY (unit, stage, step, key));
CREATE TABLE IF NOT EXISTS files (
    unit TEXT, state TEXT, file TEXT, bytes INTEGER, sha256 TEXT, PRIMARY KEY (unit, file));
"""
TABLES = ("units", "checkpoints", "evaluations", "metrics", "problems", "training", "files")


class Store:
    """The study's SQLite database. Each unit's results go in with its `done` status in one transaction,
    so a kill leaves either all of a unit's rows or none."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

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

    def files(self, unit: Unit) -> dict[str, dict]:
        """The checksums recorded when the unit finished: {state directory: {file: {bytes, sha256}}}."""
        out: dict[str, dict] = {}
        for r in self.db.execute("SELECT state, file, bytes, sha256 FROM files WHERE unit = ?", (unit.id,)):
            out.setdefault(r["state"], {})[r["file"]] = {"bytes": r["bytes"], "sha256": r["sha256"]}
        return out

    def finish(self, unit: Unit, seconds: float | None) -> None:
        """Ingest the unit's outputs and mark it done, atomically. `seconds` is None for a unit found done
        on disk (finished before a kill): it was not run again, so its completions count stays."""
        with self.db:
            self._ingest(unit)
            row = self.db.execute("SELECT seconds FROM units WHERE id = ?", (unit.id,)).fetchone()
            self.db.execute(
                "INSERT INTO units (id, kind, path, checkpoint, tokens, recipe, seed, status, finished, seconds, "
                "completions) VALUES (?, ?, ?, ?, ?, ?, ?, 'done', ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "status = 'done', path = excluded.path, finished = excluded.finished, seconds = excluded.seconds, "
                "error = NULL, completions = completions + excluded.completions",
                (unit.id, unit.kind, str(unit.path), unit.checkpoint, unit.tokens, unit.recipe, unit.seed, time.time(),
                 seconds if seconds is not None else (row["seconds"] if row else None), int(seconds is not None)))

    def _ingest(self, unit: Unit) -> None:
        db = self.db
        db.execute("DELETE FROM files WHERE unit = ?", (unit.id,))
        if unit.kind in ("pretrain", "posttrain") and unit.path.is_dir():
            db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                           [(unit.id, str(m.parent), file, want["bytes"], want["sha256"])
                            for m in unit.path.rglob(MANIFEST) for file, want in manifest(m.parent).items()])
        if unit.kind == "pretrain":
            from excursions.train.pretrain import checkpoints

            for c in checkpoints(unit.path) if not unit.overrides else ():  # the study's own run's checkpoints
                db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                           (Path(c["path"]).name, c["step"], c["tokens"], c.get("val_loss"), c["path"]))
            self._training(unit.id, "pretrain", unit.path / "metrics.jsonl")
        elif unit.kind == "posttrain":
            db.execute("DELETE FROM training WHERE unit = ?", (unit.id,))
            stages = [p for p in sorted(unit.path.iterdir()) if (p / "metrics.jsonl").exists()] or [unit.path]
            for stage_dir in stages:
                self._training(unit.id, unit.recipe if stage_dir == unit.path else stage_dir.name,
                               stage_dir / "metrics.jsonl")
        else:
            old = [r[0] for r in db.execute("SELECT id FROM evaluations WHERE unit = ?", (unit.id,))]
            for e in old:
                db.execute("DELETE FROM metrics WHERE evaluation = ?", (e,))
                db.execute("DELETE FROM problems WHERE evaluation = ?", (e,))
            db.execute("DELETE FROM evaluations WHERE unit = ?", (unit.id,))
            for file in read_json(unit.path):
                self._evaluation(unit, read_json(file), Path(file))

    def _training(self, unit: str, stage: str, metrics: Path) -> None:
        if not metrics.exists():
            return
        rows = []
        for line in metrics.read_text().splitlines():
            r = json.loads(line)
            rows += [(unit, stage, r["step"], k, float(v)) for k, v in r.items()
                     if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.db.executemany("INSERT OR REPLACE INTO training VALUES (?, ?, ?, ?, ?)", rows)

    def _evaluation(self, unit: Unit, r: dict, file: Path) -> None:
        cur = self.db.execute(
            "INSERT INTO evaluations (unit, checkpoint, tokens, recipe, seed, task, shots, n, problems, format_rate, "
            "acc, acc_norm, bits_per_byte, seconds, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (unit.id, unit.checkpoint, unit.tokens, unit.recipe, unit.seed, r["task"], r.get("shots"), r.get("n"),
             r.get("problems"), r.get("format_rate"), r.get("acc"), r.get("acc_norm"), r.get("bits_per_byte"),
             r.get("seconds"), str(file)))
        e = cur.lastrowid
        self.db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                            [(e, k, v["mean"], v["lo"], v["hi"]) for k, v in r.get("metrics", {}).items()])
        self.db.executemany("INSERT INTO problems VALUES (?, ?, ?, ?)",
                            [(e, p["id"], p["n"], p["c"]) for p in r.get("per_problem", [])])


# ----------------------------------------------------------------------------------------- runner


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


def run_study(cfg: Config, out: Path | str, progress: bool = True, executor: str = "local", **options) -> Path:
    """Run every unit that is not done with `executor` (local: here, one at a time; ray: as Ray tasks), then write
    the report; returns its path. Raises UnitsFailed, after writing the report, when some units failed."""
    from excursions.executors import EXECUTORS
    from excursions.objectives import lookup
    from excursions.report import write_report

    run_units = lookup(EXECUTORS, executor, "executor")
    out = Path(out)
    units = plan(cfg, out)  # a bad study section fails here, before anything is written
    if cfg.study.external and not (world_dir(cfg, out) / "gsm" / "test.jsonl").is_file():
        raise UserError(f"study.world {cfg.study.world} has no gsm/test.jsonl; point it at a pretraining run's world/")
    if cfg.study.external:  # a missing revision or unreadable directory fails now, not an hour in
        from excursions.model import check_checkpoint

        for spec in cfg.study.external:
            check_checkpoint(spec)
    with study_lock(out):
        atomic_write_text(out / "study.toml", to_toml(cfg))
        store = Store(out / DB)
        try:
            store.retire(units)
            run_units(to_run(units, cfg, store), dependencies(units, cfg, out), cfg, out, store, progress, **options)
            report = write_report(cfg, out, store)
            failed = store.failures(units)
        finally:
            store.close()
    if failed:
        names = [r["id"] for r in failed if r["status"] == "failed"]
        raise UnitsFailed(f"{len(names)} unit(s) failed: {', '.join(names)} ({len(failed) - len(names)} more blocked "
                          f"behind them); the other units are done and the report is written ({report}); "
                          f"`excursions status {out}` shows each error")
    return report


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
            store.finish(unit, None)
    return todo


def status_table(out: Path) -> str:
    """What `excursions status DIR` prints: each unit of the study's plan with its state and wall time, then a
    count by state. A unit whose settings changed since it ran is pending again (its old result is stale)."""
    from excursions.config import load_config

    out = _require_study(out)
    store = Store(out / DB)
    try:
        rows = store.status()
    finally:
        store.close()
    running = is_locked(out)
    lines = [f"{'unit':<52} {'status':<12} {'time':>8}"]
    counts: dict[str, int] = {}
    for unit in plan(load_config(path=out / "study.toml"), out):
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


def _require_study(out: Path | str) -> Path:
    out = Path(out)
    if not (out / DB).exists() or not (out / "study.toml").exists():
        raise UserError(f"{out} holds no study (no {DB}); run `excursions study --out {out}` first")
    return out


def export(out: Path, dest: Path | None = None) -> list[Path]:
    """Every table of the study database as CSV (and Parquet where pyarrow is installed)."""
    out = _require_study(out)
    dest = Path(dest) if dest else out / "export"
    dest.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(out / DB)
    written = []
    try:
        for table in TABLES:
            cur = db.execute(f"SELECT * FROM {table}")
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
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
        db.close()
    return written
