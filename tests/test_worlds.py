"""Synthetic worlds: deterministic, correct by construction, and the splits never leak into pretraining."""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import pytest

from excursions.config import MathFamilyConfig, load_config
from excursions.evals.math import verified
from excursions.worlds.arithmetic import apply, make_problem, marker
from excursions.worlds.corpus import FAMILIES, build_world, documents, sources
from excursions.worlds.knowledge import MC_KINDS, make_entities, make_mc_item

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def test_world_is_a_pure_function_of_the_seed(micro_cfg):
    a, b = build_world(micro_cfg.world), build_world(micro_cfg.world)
    assert a.problems == b.problems and a.mc_test == b.mc_test and a.heldout == b.heldout
    other = build_world(load_config("smoke", overrides=["world.seed=1"]).world)
    assert other.problems["gsm"]["test"][0].question != a.problems["gsm"]["test"][0].question
    take = lambda: [d for _, d in itertools.islice(documents(micro_cfg, a, "train", {"general": 1, "math": 1}), 20)]
    assert take() == take()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_solution_is_correct_arithmetic_ending_in_the_marker(family):
    cfg = load_config("tiny").world
    rng = random.Random(7)
    for i in range(300):
        p = make_problem(family, rng, getattr(cfg, family), k=4, pid=str(i))
        assert len(set(p.solutions)) == 4, p
        for s in p.solutions:
            assert s.endswith(marker(family, p.answer)) and s.count(marker(family, p.answer)) == 1
            eqs = EQUATION.findall(s)
            assert eqs, s
            for a, op, b, c in eqs:
                assert apply(int(a), op, int(b)) == int(c), s
            assert verified(s, p.question, p.answer), s  # the verified scorer accepts every worked solution
            first = eqs[0]  # and rejects it once one step's result is off by one
            wrong = s.replace(f"{first[0]} {first[1]} {first[2]} = {first[3]}",
                              f"{first[0]} {first[1]} {first[2]} = {int(first[3]) + 1}", 1)
            assert not verified(wrong, p.question, p.answer), wrong
            assert int(eqs[-1][3]) == int(p.answer)
            assert max(int(c) for *_, c in eqs) <= getattr(cfg, family).max_value


def test_depth_is_a_knob_and_pretraining_pages_are_mostly_shallow():
    fam = MathFamilyConfig(min_steps=2, max_steps=5, max_value=999, start_min=100, start_max=899,
                           pretrain_decay=0.5, schemas=("chain",))
    rng = random.Random(0)
    depth = lambda pretrain: [make_problem("gsm", rng, fam, 1, "", pretrain=pretrain).meta["depth"] for _ in range(800)]
    post, pre = depth(False), depth(True)
    assert set(post) == set(pre) == {2, 3, 4, 5}
    share = lambda ds, d: ds.count(d) / len(ds)
    assert 0.18 < share(post, 5) < 0.32  # uniform over 2..5
    # weights 1, 1/2, 1/4, 1/8: depth 2 is 8/15 of the pages, depth 5 1/15
    assert 0.45 < share(pre, 2) < 0.62 and 0.03 < share(pre, 5) < 0.11
    assert all(100 <= int(re.search(r"has (\d+)", make_problem("gsm", rng, fam, 1, "").question)[1]) <= 899
               for _ in range(50))


def test_marker_share_turns_pretraining_endings_into_prose():
    def math_pages(share):
        cfg = load_config("smoke", overrides=[f"world.marker_share={share}"])
        world = build_world(cfg.world)
        pages = (d for name, d in documents(cfg, world, "train", {n: 1.0 for n in sources(cfg, world)})
                 if name.startswith("math"))
        return list(itertools.islice(pages, 40))

    none, every = math_pages(0.0), math_pages(1.0)
    assert not any("####" in d for d in none) and sum("answer is" in d.lower() for d in none) >= 10
    assert all("####" in d or "\\boxed" in d for d in every)


def test_number_ranges_follow_the_config():
    fam = MathFamilyConfig(min_steps=2, max_steps=2, max_operand=5, max_value=30)
    rng = random.Random(0)
    for _ in range(200):
        p = make_problem("gsm", rng, fam, k=1, pid="x")
        assert int(p.answer) <= 30


def test_start_max_spreads_the_starting_amounts_and_so_the_answers():
    narrow = MathFamilyConfig(max_operand=9, max_value=200)
    wide = MathFamilyConfig(max_operand=9, max_value=200, start_max=99)
    rng_n, rng_w = random.Random(0), random.Random(0)
    first = re.compile(r"^\w+ has (\d+) ")  # chain and compare problems open with a starting amount
    starts_n = [int(m.group(1)) for p in (make_problem("gsm", rng_n, narrow, 1, "x") for _ in range(300))
                if (m := first.match(p.question))]
    probs_w = [make_problem("gsm", rng_w, wide, 1, "x") for _ in range(300)]
    starts_w = [int(m.group(1)) for p in probs_w if (m := first.match(p.question))]
    assert max(starts_n) <= 9 and max(starts_w) > 50 and all(2 <= s <= 99 for s in starts_w)
    assert all(int(p.answer) <= 200 for p in probs_w)
    assert len({p.answer for p in probs_w}) > 2 * len({int(s) for s in starts_n})


def test_splits_are_disjoint_and_absent_from_pretraining_text(micro_cfg):
    """By content: no held-out question (train/val/test) appears in the pretraining stream."""
    world = build_world(micro_cfg.world)
    held = [p for fam in world.problems.values() for split in fam.values() for p in split]
    assert len({p.key for p in held}) == len(held)  # splits are disjoint from each other
    assert len({p.question for p in held}) == len(held)
    weights = {name: 1.0 for name in sources(micro_cfg, world)}
    text = "\n".join(d for _, d in itertools.islice(documents(micro_cfg, world, "train", weights), 3000))
    pretrain_questions = set(re.findall(r"Question: (.*)\n", text))
    assert len(pretrain_questions) > 2000  # the check below looked at many problems
    assert not pretrain_questions & {p.question for p in held}
    for p in held:
        assert p.question not in text


def test_mc_items_are_well_formed_for_every_kind():
    ents = make_entities(random.Random(0), 60)
    assert len({e.name for e in ents}) == 60
    rng = random.Random(0)
    for kind in MC_KINDS:
        for i in range(30):
            item = make_mc_item(rng, ents, kind, f"q{i}")
            assert 2 <= len(item.options) <= 4 and len(set(item.options)) == len(item.options)
            assert 0 <= item.label < len(item.options)
            assert all(o.startswith(" ") for o in item.options)


def test_mc_answers_are_true_in_the_world():
    ents = make_entities(random.Random(3), 60)
    by_name = {e.name: e for e in ents}
    rng = random.Random(0)
    for i in range(50):
        item = make_mc_item(rng, ents, "relation", str(i))
        person = by_name[item.context.split(" was born")[0]]
        assert item.options[item.label].strip(" .") == by_name[person.attrs["birthplace"]].attrs["country"]
        item = make_mc_item(rng, ents, "compare", str(i))
        a, b = re.match(r"Of (\w+) and (\w+),", item.context).groups()
        older = min((by_name[a], by_name[b]), key=lambda e: e.attrs["founded"])
        assert item.options[item.label].strip(" .") == older.name


def test_a_world_too_small_for_its_splits_is_a_clear_error():
    from excursions.errors import UserError

    cfg = load_config("smoke", overrides=["world.gsm.min_steps=1", "world.gsm.max_steps=1", "world.gsm.max_operand=2",
                                          "world.gsm.max_value=4", "world.gsm.train=500"]).world
    with pytest.raises(UserError, match="world.gsm is too small for its splits"):
        build_world(cfg)


TESTBED = Path(__file__).parent.parent / "docs" / "testbed"
TESTBEDS = sorted(TESTBED.glob("*.toml"))


@pytest.mark.parametrize("path", TESTBEDS, ids=lambda p: p.stem)
def test_every_testbed_candidate_still_loads(path):
    """The candidate worlds in docs/testbed/ are the LOG's record: a renamed or removed key must not strand them."""
    assert load_config(path=path).world.gsm.train > 0


def test_v3a_is_guess_proof_on_both_families():
    """v3a's answer range was chosen so that blind guessing (answers drawn from the train split's) scores <= 5%
    pass@32 on val (docs/LOG.md, 2026-12-03: 3.3% gsm, 4.1% hard); v2f, the range it replaced, gives 23.6%."""
    from excursions.evals.passk import guess_baseline

    world = build_world(load_config(path=TESTBED / "v3a.toml").world)
    for family in FAMILIES:
        split = world.problems[family]
        guess = guess_baseline([p.answer for p in split["train"]], [p.answer for p in split["val"]], [32])
        assert guess["pass@32"] <= 0.05, (family, guess)
