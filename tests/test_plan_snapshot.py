"""The study's plan is the contract with every study directory on disk: a unit's id, kind, output path (named by
the digest of its settings), what it reads and what it waits for. This test pins them for the shipped presets, so
a refactoring that changed one (and would re-run, or orphan, finished work) fails here.

A deliberate change (a setting that now enters a digest) rewrites the snapshot with
`python tests/test_plan_snapshot.py`; the commit says which units changed and why.
"""

import json
import sys
from pathlib import Path

import pytest

from excursions.config import load_config

SNAPSHOT = Path(__file__).parent / "data" / "plan_snapshot.json"
CASES = {  # name -> (preset, overrides)
    "smoke": ("smoke", []),
    "tiny": ("tiny", []),
    "tiny-scaling": ("tiny", ["study.scale_model=olmo2_3M", "study.scale_targeted=0.25"]),
    "tiny-robust": ("tiny-robust", []),
    "paper-olmo2-1b": ("paper-olmo2-1b", []),
    "olmo2-1b-public": ("olmo2-1b-public", []),
}


def planned(name: str) -> dict:
    from excursions.study.runner import plan
    from excursions.study.plan import dependencies

    preset, overrides = CASES[name]
    cfg = load_config(preset, overrides=overrides)
    out = Path("runs") / f"study-{name}"
    units = plan(cfg, out)
    deps = dependencies(units, cfg, out)
    return {u.id: {"kind": u.kind, "path": str(u.path), "source": u.source, "world": u.world,
                   "recipe": u.recipe, "seed": u.seed, "checkpoint": u.checkpoint, "tokens": u.tokens,
                   "waits_for": sorted(deps[u.id])} for u in units}


@pytest.mark.parametrize("name", sorted(CASES))
def test_plan_matches_snapshot(name):
    want = json.loads(SNAPSHOT.read_text())[name]
    got = planned(name)
    assert sorted(got) == sorted(want), "units added or removed"
    changed = [u for u in want if got[u] != want[u]]
    assert not changed, f"{len(changed)} units changed, first {changed[0]}: {want[changed[0]]} -> {got[changed[0]]}"


if __name__ == "__main__":
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps({name: planned(name) for name in sorted(CASES)}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}", file=sys.stderr)
