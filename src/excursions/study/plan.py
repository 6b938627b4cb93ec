"""The study's units: what each is, the directory its settings name, and what it waits for.

    units = backbone(cfg, out)          # pretraining, base evaluations, every recipe x checkpoint x seed
    deps = dependencies(units, cfg, out)

A unit is one piece of work whose output path is named by a digest of the settings it depends on: the
pretraining run, a base checkpoint's evaluation, one recipe from one checkpoint with one seed, and that result's
evaluation. The backbone is what every experiment reads; an experiment adds its own units (study/experiments/)
with the helpers here, and `runner.plan` lists them all. A changed setting changes the digests of exactly the
units that depend on it, so only those run again (tests/test_plan_snapshot.py pins the shipped presets' plans).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from excursions.checkpoint import checkpoint_name
from excursions.config import PRETRAIN_SECTIONS, Config, RLConfig, digest, prompt_settings, to_dict
from excursions.errors import UserError
from excursions.recipes import RECIPES


@dataclass(frozen=True)
class Unit:
    """One piece of work. `id` is stable across settings (for status); `path` carries the settings digest."""

    id: str  # e.g. "rl/step000338-tokens2768896/s0"
    kind: str  # pretrain | base_eval | nshot | posttrain | eval | splits | return | interleave (study/units.py)
    path: Path  # a run directory, or an evaluation's record (the result files it wrote); named by digest
    checkpoint: str = ""  # the source checkpoint's name
    tokens: int = 0  # its pretraining tokens
    recipe: str = "base"
    seed: int = 0
    source: str = ""  # what the unit reads: a checkpoint directory or hub id
    overrides: tuple[tuple[str, str, int], ...] = ()  # (section, key, value) laid over the study's config
    world: str = ""  # the unit's own world/ directory (a difficulty split, a scaling variant), not the study's
    tasks: tuple[str, ...] = ()  # an evaluation's tasks, when not the study's


Checkpoint = tuple[str, int, str]  # (name, pretraining tokens, source: a directory or hub id)
# the id part of the matched experiment's units (after a run's prefix): the base on validation problems and RL from
# checkpoints chosen by capability, not the study's own checkpoints (Results leaves them out)
MATCHED = "match/"


# ----------------------------------------------------------------------------------------- settings


def configured(cfg: Config, seed: int, overrides: tuple[tuple[str, str, int], ...] = ()) -> Config:
    """The config a unit runs with: the study's, seeded, with the unit's overrides (section "" for a top-level key:
    another pretraining run's `seed`)."""
    cfg = seeded(cfg, seed)
    by_section: dict[str, dict] = {}
    for section, key, value in overrides:  # a section's keys at once: its checks may relate them (data shares)
        by_section.setdefault(section, {})[key] = value
    cfg = replace(cfg, **by_section.pop("", {}))
    return replace(cfg, **{sec: replace(getattr(cfg, sec), **kv) for sec, kv in by_section.items()})


def seeded(cfg: Config, seed: int) -> Config:
    """The config a recipe runs with for one seed: rollouts, SFT order and exemplars all follow it."""
    return replace(cfg, rl=replace(cfg.rl, seed=seed), sft=replace(cfg.sft, seed=seed))


def recipe_settings(cfg: Config, recipe: str) -> dict:
    """The config sections a recipe's result depends on (what its directory digest covers)."""
    return {"recipe": recipe, **{s: to_dict(getattr(cfg, s)) for s in RECIPES[recipe].sections},
            **tracking_settings(cfg, recipe), **prompt_settings(cfg)}


def tracking_settings(cfg: Config, recipe: str) -> dict:
    """What a recipe's tracked test pass@k reads outside its sections: SFT tracks on [rl]'s `track_problems` with
    `track_n` samples. Enters the digest only where they differ from the defaults, so that results from before
    it did keep their names (as `prompt_settings`)."""
    if "rl" in RECIPES[recipe].sections:
        return {}
    track, default = {"problems": cfg.rl.track_problems, "n": cfg.rl.track_n}, RLConfig()
    return {} if track == {"problems": default.track_problems, "n": default.track_n} else {"track": track}


def eval_digest(cfg: Config) -> str:
    """What names an evaluation's record: the evaluation settings and tasks."""
    return digest({"eval": to_dict(cfg.eval), "tasks": list(cfg.study.tasks), **prompt_settings(cfg)})


def posttrain_dir(out: Path, folder: str, prefix: str, settings: dict) -> Path:
    """A post-training run, named by its settings (with what it starts from): out/posttrain/FOLDER/PREFIX-digest."""
    return out / "posttrain" / folder / f"{prefix}-{digest(settings)}"


# ----------------------------------------------------------------------------------------- paths


def pretrain_dir(cfg: Config, out: Path) -> Path:
    """Named by the settings pretraining depends on (the ones its run directory is claimed for)."""
    keep = {k: v for k, v in to_dict(cfg).items() if k in PRETRAIN_SECTIONS}
    return out / "pretrain" / f"{cfg.name}-{digest(keep)}"


def world_dir(cfg: Config, out: Path) -> Path:
    return Path(cfg.study.world) if cfg.study.external else pretrain_dir(cfg, out) / "world"


def all_checkpoints(cfg: Config, out: Path) -> list[Checkpoint]:
    """Every checkpoint the study could branch from, known before pretraining runs."""
    if cfg.study.external:
        from excursions.model import revision_tokens

        return [(spec.replace("/", "--").replace("@", "--"), revision_tokens(spec), spec) for spec in cfg.study.external]
    p, root = cfg.pretrain, pretrain_dir(cfg, out) / "checkpoints"
    names = [(checkpoint_name(st, st * p.tokens_per_step), st * p.tokens_per_step) for st in p.checkpoint_steps()]
    return [(name, tokens, str(root / name)) for name, tokens in names]


def chosen_checkpoints(cfg: Config, out: Path) -> tuple[list[Checkpoint], Checkpoint | None]:
    """The checkpoints the study branches from (`study.checkpoints`), and the one its extra RL seeds start from."""
    s, every = cfg.study, all_checkpoints(cfg, out)
    for i in s.checkpoints + ((s.seed_checkpoint,) if s.extra_seeds else ()):  # unused without extra seeds
        if not -len(every) <= i < len(every):
            raise UserError(f"config: study: checkpoint index {i} is out of range; there are {len(every)} "
                            f"checkpoints (0..{len(every) - 1}, or negative from the end)")
    chosen = sorted({every[i] for i in s.checkpoints}, key=every.index) if s.checkpoints else every
    seed_ckpt = every[s.seed_checkpoint] if s.extra_seeds else None
    if seed_ckpt is not None and seed_ckpt not in chosen:
        raise UserError("config: study.seed_checkpoint must be one of study.checkpoints (the extra seeds branch "
                        "from a checkpoint the study already evaluates)")
    return chosen, seed_ckpt


def first_at(curve: list[tuple[str, float]], target: float) -> str | None:
    """Capability matching: the first checkpoint, in pretraining order, whose base score (validation pass@k, say)
    is at or above `target`; None where none reaches it. Each pretraining run gets its own, so runs are compared at
    equal capability rather than at equal token counts (the paper's Sec. 3.4: the base's pass@k predicts RL's effect).

    >>> first_at([("4M", 0.01), ("8M", 0.04), ("10.5M", 0.09), ("12M", 0.21)], 0.05), first_at([("4M", 0.01)], 0.5)
    ('10.5M', None)
    """
    return next((name for name, score in curve if score >= target), None)


def train_size(cfg: Config) -> int:
    """Training problems of the post-training family (known from the config for a tiny world)."""
    if not cfg.study.external:
        return getattr(cfg.world, cfg.sft.family).train
    path = Path(cfg.study.world) / cfg.sft.family / "train.jsonl"
    return sum(1 for line in path.open() if line.strip()) if path.is_file() else 1


def rollout_prompts(cfg: Config) -> int:
    """Prompts per RL step of the rollouts experiment's runs: also the smallest split worth training on."""
    return cfg.study.rollout_prompts or cfg.rl.prompts_per_step


# ----------------------------------------------------------------------------------------- the backbone


def continues(recipe: str, recipes: tuple[str, ...]) -> str:
    """The recipe whose result `recipe` continues in a study that runs both: a recipe of several stages whose first
    stage is itself one of `recipes` (sft_rl after sft, sft_gold_rl after sft_gold). Its SFT is then trained once,
    and SFT->RL continues from the very SFT model the report compares; "" where there is none."""
    stages = RECIPES[recipe].stages
    return stages[0] if len(stages) > 1 and stages[0] in recipes else ""


def recipe_unit_id(recipe: str, checkpoint: str, seed: int) -> str:
    """The id of a recipe's run from a checkpoint with a seed (its evaluation: `eval/` + this)."""
    return f"{recipe}/{checkpoint}/s{seed}"


def base_unit_id(checkpoint: str) -> str:
    """The id of the base's evaluation at a checkpoint."""
    return f"base/{checkpoint}"


def pretraining_runs(cfg: Config) -> list[tuple[str, Config]]:
    """The study's pretraining runs as (unit id prefix, config): its own (no prefix), and one per
    `study.pretrain_seeds` (`p{seed}/`, the config with that seed), all on the same world."""
    if cfg.seed in cfg.study.pretrain_seeds:
        raise UserError(f"config: study.pretrain_seeds holds {cfg.seed}, the study's own seed: list the other runs' "
                        "seeds only")
    return [("", cfg)] + [(f"p{k}/", replace(cfg, seed=k)) for k in cfg.study.pretrain_seeds]


def backbone(cfg: Config, out: Path) -> list[Unit]:
    """The units every experiment reads, in the order they run: for each pretraining run (`pretraining_runs`), the
    pretraining (unless the checkpoints are external), each chosen checkpoint's evaluation, then every recipe from
    every chosen checkpoint for every seed (and the extra RL seeds at `study.seed_checkpoint`), each trained, then
    evaluated. Another run's units are its own run's, with its id prefix."""
    return [u for prefix, run in pretraining_runs(cfg) for u in run_backbone(run, out, prefix, cfg.seed)]


def run_backbone(cfg: Config, out: Path, prefix: str, study_seed: int) -> list[Unit]:
    """One pretraining run's backbone (`backbone`): `prefix` its unit ids', `study_seed` the study's own seed."""
    s = cfg.study
    chosen, seed_ckpt = chosen_checkpoints(cfg, out)
    top = (("", "seed", cfg.seed),) if cfg.seed != study_seed else ()  # how the study's config becomes this run's
    units = [] if s.external else [Unit(f"{prefix}pretrain", "pretrain", pretrain_dir(cfg, out), overrides=top)]
    ev, evals = eval_digest(cfg), out / "evals" / prefix if prefix else out / "evals"
    for name, tokens, source in chosen:
        units.append(Unit(prefix + base_unit_id(name), "base_eval", evals / "base" / f"{name}-{ev}.json", name, tokens,
                          source=source))
    for ckpt in chosen:
        name, tokens, source = ckpt
        run_of = lambda recipe, seed, start: posttrain_dir(out, name, f"{recipe}-s{seed}", {
            **recipe_settings(seeded(cfg, seed), recipe), "source": start})
        for recipe in s.recipes:
            for seed in s.seeds + (s.extra_seeds if recipe == "rl" and ckpt == seed_ckpt else ()):
                after = continues(recipe, s.recipes)  # sft_rl: from the study's own sft result, not a second SFT
                start = str(RECIPES[after].final(run_of(after, seed, source))) if after else source
                run = run_of(recipe, seed, start)
                uid = prefix + recipe_unit_id(recipe, name, seed)
                units.append(Unit(uid, "posttrain", run, name, tokens, recipe, seed, start))
                record = evals / recipe / name / f"s{seed}-{run.name.rsplit('-', 1)[1]}-{ev}.json"
                units.append(Unit(f"{prefix}eval/{uid.removeprefix(prefix)}", "eval", record, name, tokens, recipe,
                                  seed, str(run)))
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
