"""How each kind of unit runs, when it is done, and what it puts in the store: one entry per kind in `KINDS`.

    execute(unit, cfg, out, progress)    # run, resume or confirm finished; writes only the unit's own path
    is_done(unit, cfg)                   # its output complete on disk (the store may lag behind a kill)
    ingest(store, unit)                  # its numbers into study.db (inside the store's transaction)

Every kind's work is the ordinary command's (pretrain, posttrain, eval), so a unit's output is also what that
command would have written, and either reuses the other's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from excursions.checkpoint import MANIFEST, META, checkpoints, damaged, manifest, read_json, write_json
from excursions.config import Config
from excursions.data.problems import read_jsonl, write_jsonl
from excursions.errors import UserError
from excursions.evals.passk import SPLITS, difficulty
from excursions.recipes import RECIPES
from excursions.study.plan import (Unit, all_checkpoints, configured, continues, pretrain_dir, rollout_prompts,
                                  world_dir)
from excursions.study.store import Store

SKIPPED = "skipped.json"  # a unit with nothing to do (a difficulty split too small to train on), and why


@dataclass(frozen=True)
class Kind:
    run: Callable[[Unit, Config, Path, Path, bool], None]  # (unit, config, study dir, world, progress)
    done: Callable[[Unit, Config], bool]
    ingest: Callable[[Store, Unit], None]
    states: bool = False  # its directory holds training states with checksums (checked before it counts as done)


def execute(unit: Unit, cfg: Config, out: Path, progress: bool) -> None:
    """Run (or resume, or confirm finished) one unit. A damaged source is never loaded: the unit that wrote it is
    checked (and run again) on the study's next run."""
    source = RECIPES[unit.recipe].final(Path(unit.source)) if unit.kind in ("eval", "return") else Path(unit.source)
    bad = damaged(manifest(source)) if unit.source and source.is_dir() else []
    if bad:
        raise UserError(f"{bad[0]} does not match its recorded checksum (truncated or corrupt); run the study again "
                        "to rebuild it")
    KINDS[unit.kind].run(unit, cfg, out, Path(unit.world) if unit.world else world_dir(cfg, out), progress)


def is_done(unit: Unit, cfg: Config) -> bool:
    return KINDS[unit.kind].done(unit, cfg)


def ingest(store: Store, unit: Unit) -> None:
    KINDS[unit.kind].ingest(store, unit)


def damaged_states(unit: Unit, recorded: dict[str, dict]) -> dict[Path, list[Path]]:
    """The training states of a finished unit whose files differ from their checksums (the store's where recorded,
    else each directory's own manifest), with the damaged files."""
    if not KINDS[unit.kind].states or not unit.path.is_dir():
        return {}
    expected = {str(m.parent): manifest(m.parent) for m in unit.path.rglob(MANIFEST)}
    expected.update(recorded)
    return {Path(state): bad for state, files in expected.items() if (bad := damaged(files))}


def _states(store: Store, unit: Unit) -> None:
    if unit.path.is_dir():
        store.add_files(unit, {str(m.parent): manifest(m.parent) for m in unit.path.rglob(MANIFEST)})


# ----------------------------------------------------------------------------------------- pretraining


def _pretrain(unit: Unit, cfg: Config, out: Path, world: Path, progress: bool) -> None:
    from excursions.train.pretrain import pretrain

    pretrain(configured(cfg, cfg.seed, unit.overrides) if unit.overrides else cfg, unit.path, progress)


def _checkpoints_written(path: Path, p, after_tokens: int = 0) -> bool:
    """Every checkpoint of pretraining schedule `p` past `after_tokens` is in run directory `path`."""
    from excursions.checkpoint import checkpoint_name

    return all((path / "checkpoints" / checkpoint_name(st, st * p.tokens_per_step) / META).exists()
               for st in p.checkpoint_steps() if st * p.tokens_per_step > after_tokens)


def _pretrain_done(unit: Unit, cfg: Config) -> bool:
    return _checkpoints_written(unit.path, configured(cfg, cfg.seed, unit.overrides).pretrain)


def _pretrain_ingest(store: Store, unit: Unit) -> None:
    _states(store, unit)
    for c in checkpoints(unit.path) if not unit.overrides else ():  # the study's own run's checkpoints
        store.add_checkpoint(Path(c["path"]).name, c["step"], c["tokens"], c.get("val_loss"), c["path"])
    store.add_training(unit.id, "pretrain", unit.path / "metrics.jsonl")


def _return(unit: Unit, cfg: Config, out: Path, world: Path, progress: bool) -> None:
    """Excursion and return: the study's pretraining continued from `unit.source`'s (a recipe run's) weights."""
    from excursions.train.pretrain import Return, pretrain

    checkpoint = pretrain_dir(cfg, out) / "checkpoints" / unit.checkpoint
    pretrain(cfg, unit.path, progress, branch=Return(checkpoint, RECIPES[unit.recipe].final(Path(unit.source))))


def _interleave(unit: Unit, cfg: Config, out: Path, world: Path, progress: bool) -> None:
    """Interleaved RL: the study's pretraining continued from `unit.source` (a checkpoint) with RL mixed in."""
    from excursions.train.pretrain import Interleave, pretrain

    pretrain(configured(cfg, unit.seed, unit.overrides), unit.path, progress, branch=Interleave(Path(unit.source)))


def _return_done(unit: Unit, cfg: Config) -> bool:  # a branch writes the checkpoints after the one it starts from
    return _checkpoints_written(unit.path, cfg.pretrain, after_tokens=unit.tokens)


def _return_ingest(store: Store, unit: Unit) -> None:
    _states(store, unit)
    store.add_training(unit.id, unit.kind, unit.path / "metrics.jsonl")


# ----------------------------------------------------------------------------------------- post-training


def _posttrain(unit: Unit, cfg: Config, out: Path, world: Path, progress: bool) -> None:
    from excursions.train.posttrain import posttrain

    if unit.world and not (Path(unit.world) / cfg.rl.family / "train.jsonl").exists():
        write_json(unit.path / SKIPPED, {"reason": f"the {Path(unit.world).name} split has fewer problems than one "
                                                  "RL step's prompts"})
    else:
        # a recipe that continues another of the study's (sft_rl after sft) starts from that one's result
        skip = 1 if continues(unit.recipe, cfg.study.recipes) and Path(unit.source).name == "final" else 0
        posttrain(unit.source, unit.recipe, configured(cfg, unit.seed, unit.overrides), unit.path, world, progress,
                  skip=skip)


def _posttrain_done(unit: Unit, cfg: Config) -> bool:
    return (RECIPES[unit.recipe].final(unit.path) / META).exists() or (unit.path / SKIPPED).exists()


def _posttrain_ingest(store: Store, unit: Unit) -> None:
    """Its checksums and each stage's metrics (a two-stage recipe's stages by their directory names)."""
    _states(store, unit)
    store.clear_training(unit.id)
    stages = [p for p in sorted(unit.path.iterdir()) if (p / "metrics.jsonl").exists()] or [unit.path]
    for stage_dir in stages:
        stage = unit.recipe if stage_dir == unit.path else stage_dir.name
        store.add_training(unit.id, stage, stage_dir / "metrics.jsonl")
        if (stage_dir / "final" / META).exists():
            store.add_convergence(unit.id, stage, read_json(stage_dir / "final" / META).get("convergence", {}))


# ----------------------------------------------------------------------------------------- evaluations


def _evaluate(unit: Unit, cfg: Config, out: Path, world: Path, progress: bool) -> None:
    """Results land next to the model (as `excursions eval` writes them, so either reuses the other's); the unit's
    record lists them. Base checkpoints are evaluated few-shot (the exemplars carry the answer format) and 0-shot
    (where RL starts), post-trained models 0-shot, and the n-shot sweep at each of its shots on the first math task."""
    from excursions.evals.harness import drift_record, evaluate_checkpoint

    spec = str(RECIPES[unit.recipe].final(Path(unit.source))) if unit.kind == "eval" else unit.source
    tasks = list(unit.tasks or cfg.study.tasks)
    shots = {"base_eval": sorted({cfg.eval.shots, 0}), "eval": [0]}.get(unit.kind)
    if unit.kind == "nshot":
        tasks, shots = [next(t for t in cfg.study.tasks if t != "general")], sorted(cfg.study.nshot)
    # An evaluation with settings of its own (more samples: the large-k curves) keeps its results beside its record,
    # not next to the model, where the study's own evaluation of that model lives
    ecfg = configured(cfg, unit.seed, unit.overrides).eval if unit.overrides else cfg.eval
    out_dir = (unit.path.with_suffix("") if unit.overrides else None if Path(spec).exists()
               else out / "evals" / "hub" / unit.checkpoint)
    rows = evaluate_checkpoint(spec, tasks, ecfg, shots=shots, world_dir=world, out_dir=out_dir,
                               progress=progress, runtime=cfg.distributed, chat=cfg.prompt.chat_template)
    if unit.kind == "eval" and not unit.overrides and not unit.world:  # a recipe's result on the study's own
        # checkpoints: how far it moved from where it started (general capability against this KL)
        start = {name: src for name, _, src in all_checkpoints(cfg, out)}.get(unit.checkpoint)
        if start:
            rows.append(drift_record(spec, start, world, cfg.rl.family, ecfg, Path(spec) / "eval", cfg.distributed))
    write_json(unit.path, [r["path"] for r in rows])


def _record_done(unit: Unit, cfg: Config) -> bool:
    """A record, with every result it lists (results next to a checkpoint go when the checkpoint is rebuilt)."""
    return unit.path.exists() and all(Path(f).exists() for f in read_json(unit.path))


def _record_ingest(store: Store, unit: Unit) -> None:
    store.replace_evaluations(unit, [(Path(f), read_json(f)) for f in read_json(unit.path)])


def _splits(unit: Unit, cfg: Config, out: Path, world: Path, progress: bool) -> None:
    """Sample the checkpoint `study.split_n` times on `study.split_problems` training problems (0-shot, at the RL
    temperature: how RL will meet them) and write an easy and a hard world of equal size, each with the
    study's val and test problems. The base's per-problem counts are the unit's evaluation record."""
    from excursions.evals.harness import evaluate_math, save_samples
    from excursions.model import load_model, parse_checkpoint, pick_device
    from excursions.tokenizer import load_tokenizer

    s, family, split_dir = cfg.study, cfg.rl.family, unit.path.parent
    train = read_jsonl(world / family / "train.jsonl")
    rng = random.Random(cfg.rl.seed)
    chosen = rng.sample(train, min(s.split_problems, len(train)))
    path, revision = parse_checkpoint(unit.source)
    ecfg = replace(cfg.eval, n=s.split_n, ks=(1,), temperature=cfg.rl.temperature, max_new_tokens=cfg.rl.max_new_tokens)
    model = load_model(path, revision, device=pick_device(cfg.distributed.device))
    tok = load_tokenizer(path, revision, chat=cfg.prompt.chat_template)
    result = evaluate_math(model, tok, chosen, [], ecfg, shots=0, progress=progress, desc="difficulty splits")
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
    write_json(split_dir / "base.json", save_samples(split_dir / "base.json", result))
    write_json(unit.path, [str(split_dir / "base.json")])  # last: the unit is done when its record exists


KINDS: dict[str, Kind] = {
    "pretrain": Kind(_pretrain, _pretrain_done, _pretrain_ingest, states=True),
    "posttrain": Kind(_posttrain, _posttrain_done, _posttrain_ingest, states=True),
    "return": Kind(_return, _return_done, _return_ingest, states=True),  # pretraining resumed after an excursion
    "interleave": Kind(_interleave, _return_done, _return_ingest, states=True),  # pretraining with RL mixed in
    "base_eval": Kind(_evaluate, _record_done, _record_ingest),
    "nshot": Kind(_evaluate, _record_done, _record_ingest),
    "eval": Kind(_evaluate, _record_done, _record_ingest),
    "splits": Kind(_splits, _record_done, _record_ingest),  # difficulty splits of training problems (Fig. 18)
}
