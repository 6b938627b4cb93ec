"""Rollout allocators against uniform GRPO at equal FLOPs: test pass@1 each reaches for the same compute.

    python benchmarks/allocators.py runs/v2f/checkpoints/step001099-tokens9003008
    python benchmarks/allocators.py CKPT --allocators uniform,adaptive,until_positive --steps 40 --config FILE

Each allocator runs direct RL from CKPT (`excursions posttrain --recipe rl`, rl.rollouts = the allocator, the
config's [rl] otherwise, tracked every --track steps from step 0); the table gives each run's final FLOPs and
tracked pass@1, and every run's pass@1 interpolated at the smallest final FLOPs among them (equal compute), with
its binomial standard error over the tracked problems. Run directories stay under --out: a rerun reuses them.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from excursions.config import load_config
from excursions.study.experiments.rollouts import value_at
from excursions.train.posttrain import posttrain
from excursions.worlds.corpus import find_world


def curve(run: Path, task: str) -> tuple[list[float], list[float], int]:
    """(FLOPs, tracked test pass@1, tracked problems) along a run, from its metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tracked = [r for r in rows if f"eval/{task}/pass@1" in r]
    flops = [r.get("total_train_flops", 0) + r.get("total_rollout_flops", 0) for r in tracked]
    return flops, [r[f"eval/{task}/pass@1"] for r in tracked], int(tracked[0][f"eval/{task}/problems"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--allocators", default="uniform,adaptive")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--track", type=int, default=5, help="steps between tracked test evaluations")
    ap.add_argument("--config", help="a config file (default: the tiny preset)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-allocators"))
    args, overrides = ap.parse_known_args()
    base = [f"rl.steps={args.steps}", f"rl.track_every={args.track}", *overrides]
    world = find_world(args.checkpoint)
    lines = {}
    for name in args.allocators.split(","):
        cfg = load_config(None if args.config else "tiny", args.config, base + [f"rl.rollouts='{name}'"])
        out = args.out / f"{args.checkpoint.name}-{name}"
        posttrain(str(args.checkpoint), "rl", cfg, out, world, progress=True)
        lines[name] = curve(out, cfg.rl.family)
    budget = min(fl[-1] for fl, _, _ in lines.values())
    print(f"\nRL from {args.checkpoint} ({args.steps} steps); equal compute: {budget:.3e} FLOPs\n")
    print("| allocator | final FLOPs | final pass@1 | pass@1 at equal FLOPs (+- 1 s.e.) |")
    print("|---|---|---|---|")
    for name, (flops, vals, problems) in lines.items():
        at = value_at(flops, vals, budget)
        se = math.sqrt(at * (1 - at) / problems)
        print(f"| {name} | {flops[-1]:.3e} | {100 * vals[-1]:.1f} | {100 * at:.1f} +- {100 * se:.1f} |")


if __name__ == "__main__":
    main()
