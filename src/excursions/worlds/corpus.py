"""The world as splits, and the pretraining corpus mixed from it.

- `build_world(cfg)`: post-training train / val / test problems of each math family, the general
  world's entities, its multiple-choice test and held-out articles. Deterministic from the seed.
- `documents(...)`: pretraining documents — encyclopedia pages, math textbook pages (gsm and hard),
  extra targeted math pages — drawn so that the token shares match the configured mixture.

No post-training problem (train, val or test) may occur in the pretraining text: held-out problems
are drawn first, and the pretraining stream skips any problem whose structural key (numbers and
operations, not names) is held out. `tests/test_worlds.py` checks it on the produced text.
"""

from __future__ import annotations

import random
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterator

from excursions.config import Config, WorldConfig
from excursions.data.problems import MCItem, Problem, format_example
from excursions.errors import UserError
from excursions.worlds.arithmetic import apply, make_problem, marker
from excursions.worlds.knowledge import MC_KINDS, Entity, article, make_entities, make_mc_item

FAMILIES = ("gsm", "hard")
SPLITS = ("train", "val", "test")


@dataclass
class World:
    problems: dict[str, dict[str, list[Problem]]]  # family -> split -> problems
    entities: list[Entity]
    mc_test: list[MCItem]
    heldout: list[str]  # held-out encyclopedia articles (bits-per-byte)

    @property
    def heldout_keys(self) -> set[str]:
        return {p.key for fam in self.problems.values() for split in fam.values() for p in split}


def build_world(cfg: WorldConfig) -> World:
    """All post-training and evaluation data of the world, a pure function of `cfg`."""
    problems: dict[str, dict[str, list[Problem]]] = {}
    for family in FAMILIES:
        fam = getattr(cfg, family)
        rng = random.Random(f"{cfg.seed}/{family}/heldout")
        seen: set[str] = set()
        problems[family] = {}
        for split in ("test", "val", "train"):  # test first: its draw never depends on the train size
            out, draws = [], 0
            while len(out) < getattr(fam, split):
                p = make_problem(family, rng, fam, cfg.solutions, f"{family}-{split}-{len(out)}")
                draws += 1
                if p.key not in seen:
                    seen.add(p.key)
                    out.append(p)
                elif draws > 20 * (fam.train + fam.val + fam.test) + 1000:
                    raise _too_small(family, f"only {len(seen)} distinct problems found")
            problems[family][split] = out
    entities = make_entities(random.Random(f"{cfg.seed}/entities"), cfg.general.entities)
    rng = random.Random(f"{cfg.seed}/mc")
    mc = [make_mc_item(rng, entities, MC_KINDS[i % len(MC_KINDS)], f"world-mc-{i}") for i in range(cfg.general.mc_test)]
    by_name = {e.name: e for e in entities}
    rng = random.Random(f"{cfg.seed}/heldout-articles")
    heldout = [article(rng, rng.choice(entities), by_name) for _ in range(cfg.general.heldout_docs)]
    return World(problems, entities, mc, heldout)


# ------------------------------------------------------------------------------- pretraining pages

def _too_small(family: str, what: str) -> UserError:
    return UserError(f"world.{family} is too small for its splits ({what}): lower world.{family}.train/val/test, "
                     f"or raise world.{family}.max_steps / max_operand / max_value")


HEADERS = ("", "", "Worked examples.\n\n", "Practice problems with solutions.\n\n", "Exercises.\n\n")


def _drill_page(rng: random.Random, fam) -> str:
    """Arithmetic facts in the families' number range, one per line (a times-table page)."""
    lines = []
    for _ in range(rng.randint(8, 24)):
        op = rng.choice("+-*")
        a, b = rng.randint(0, fam.max_value // 2 if op != "*" else fam.max_operand), rng.randint(0, fam.max_operand)
        if op == "-" and a < b:
            a, b = b, a
        lines.append(f"{a} {op} {b} = {apply(a, op, b)}")
    return "Arithmetic practice.\n\n" + "\n".join(lines)


# How a pretraining page's solution ends when not in the post-training format (`world.marker_share`).
ENDINGS = {
    "gsm": ("So the answer is {a}.", "The answer is {a}.", "Answer: {a}", "That makes {a}.", "{a} is the answer."),
    "hard": ("So the value is {a}.", "The answer is {a}.", "Hence the result is {a}.", "Answer: {a}"),
}


def _ending(rng: random.Random, p: Problem, marker_share: float) -> str:
    """The problem's first solution, its answer marker turned into prose with probability 1 - marker_share."""
    solution = p.solutions[0]
    if marker_share >= 1 or rng.random() < marker_share:
        return solution
    return solution[: -len(marker(p.family, p.answer))] + rng.choice(ENDINGS[p.family]).format(a=p.answer)


def _math_page(rng: random.Random, cfg: WorldConfig, families: tuple[str, ...], weights: tuple[float, ...],
               excluded: set[str], drills: float = 0.0) -> str:
    """A textbook page: a few worked problems in the shared Question/Answer format (or a drill)."""
    family = rng.choices(families, weights)[0]
    if drills and rng.random() < drills:
        return _drill_page(rng, getattr(cfg, family))
    blocks = []
    for _ in range(rng.randint(2, 8)):
        for _ in range(1000):
            p = make_problem(family, rng, getattr(cfg, family), 1, "", cfg.pretrain_styles, pretrain=True)
            if p.key not in excluded:
                break
        else:
            raise _too_small(family, "1000 draws in a row were held-out problems")
        blocks.append(format_example(p.question, _ending(rng, p, cfg.marker_share)))
    return rng.choice(HEADERS) + "\n\n".join(blocks)


def _general_page(rng: random.Random, entities: list[Entity], by_name: dict[str, Entity]) -> str:
    return "\n\n".join(article(rng, rng.choice(entities), by_name) for _ in range(rng.randint(1, 4)))


def sources(cfg: Config, world: World) -> dict[str, tuple[float, Callable[[random.Random], str]]]:
    """Mixture source name -> (token share, page maker)."""
    w, d = cfg.world, cfg.data
    excluded = world.heldout_keys
    by_name = {e.name: e for e in world.entities}
    out = {
        "general": (d.general, lambda rng: _general_page(rng, world.entities, by_name)),
        "math": (d.math, lambda rng: _math_page(rng, w, FAMILIES, (1 - d.hard_share, d.hard_share), excluded, d.drills)),
        "targeted": (d.targeted, lambda rng: _math_page(rng, w, ("hard",), (1.0,), excluded)),
    }
    return {k: v for k, v in out.items() if v[0] > 0}


def documents(cfg: Config, world: World, stream: str, doc_weights: dict[str, float]) -> Iterator[tuple[str, str]]:
    """An endless, deterministic stream of (source, document) for `stream` ("train", "val", "sample").

    `doc_weights` are per-document draw probabilities: token share / mean tokens per document, so
    that the token mixture matches the config (see `pretraining.build_corpus`).
    """
    rng = random.Random(f"{cfg.seed}/{cfg.world.seed}/corpus/{stream}")
    srcs = sources(cfg, world)
    names = list(srcs)
    weights = [doc_weights[n] for n in names]
    while True:
        name = rng.choices(names, weights)[0]
        yield name, srcs[name][1](rng)


def _pilot_weights(cfg: Config, world: World, length: Callable[[str], int], n: int = 64) -> dict[str, float]:
    """Per-document draw weights that turn token shares into document counts: share / mean length."""
    out = {}
    for name, (share, make) in sources(cfg, world).items():
        rng = random.Random(f"{cfg.seed}/pilot/{name}")
        mean = sum(length(make(rng)) for _ in range(n)) / n
        out[name] = share / mean
    return out


def tokenizer_sample(cfg: Config, world: World) -> Iterator[str]:
    """Documents for training the tokenizer: `tokenizer.train_chars` characters of the mixture."""
    weights = _pilot_weights(cfg, world, len)
    total = 0
    for _, doc in documents(cfg, world, "tokenizer", weights):
        yield doc
        total += len(doc)
        if total >= cfg.tokenizer.train_chars:
            return


def tokenize_stream(cfg: Config, world: World, tok, stream: str, n_tokens: int, progress=None):
    """`n_tokens` tokens of the mixture (documents joined by EOS) as uint16, with per-source counts."""
    import numpy as np

    weights = _pilot_weights(cfg, world, lambda s: len(tok(s).input_ids))
    counts = {name: 0 for name in weights}
    chunks, total = [], 0
    start = progress.n if progress is not None else 0
    docs = documents(cfg, world, stream, weights)
    while total < n_tokens:
        batch = [next(docs) for _ in range(512)]
        for (name, _), ids in zip(batch, tok([d for _, d in batch]).input_ids):
            ids.append(tok.eos_token_id)
            counts[name] += len(ids)
            chunks.append(np.asarray(ids, dtype=np.uint16))
            total += len(ids)
        if progress is not None:
            progress.update(start + min(total, n_tokens) - progress.n)
    return np.concatenate(chunks)[:n_tokens], counts


def find_world(checkpoint: str) -> Path | None:
    """The `world/` directory of the run a local checkpoint belongs to (its meta, else a parent's)."""
    import json

    path = Path(checkpoint)
    meta = path / "excursions.json"
    if meta.is_file():
        recorded = json.loads(meta.read_text()).get("world_dir")
        if recorded and (Path(recorded) / "gsm" / "test.jsonl").is_file():
            return Path(recorded)
    for parent in [path, *path.resolve().parents]:
        if (parent / "world" / "gsm" / "test.jsonl").is_file():
            return parent / "world"
    return None


def require_world(checkpoint: str, given: Path | str | None = None) -> Path:
    """`given`, else the `world/` of the run `checkpoint` belongs to. Neither: one clear error, and a
    mistyped checkpoint path (the likelier mistake) is named as such rather than as a missing world."""

    from excursions.model import check_checkpoint, parse_checkpoint

    path, _ = parse_checkpoint(checkpoint)
    world = given or (find_world(path) if Path(path).exists() else None)
    if world is None:
        check_checkpoint(checkpoint)
        raise UserError(f"no world/ directory found for {checkpoint}; pass --world DIR (a pretraining run's world/)")
    return Path(world)
