"""The cheapest way to converge (issue 41, paper App. D): post-training runs from one checkpoint, each until
converged on validation problems, under several settings; per run, the steps it took, the validation pass@1 it
reached, and that pass@1 per PFLOP and per minute.

    python benchmarks/converge.py CKPT --out /tmp/converge --recipe rl \\
        --variant g8p32 rl.group_size=8 rl.prompts_per_step=32 --variant g4p32 rl.group_size=4

Every run reads validation problems only (`eval.split=val`: its tracked curve and its final numbers are val's too),
so settings chosen here leave the test problems unseen. A variant is a name and its overrides; `--common` overrides
apply to every variant. Runs resume; a finished one is read back, not redone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run(ckpt: str, recipe: str, out: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "excursions.cli", "posttrain", ckpt, "--recipe", recipe, "--out", str(out), "--quiet",
           "eval.split=val", *overrides]
    subprocess.run(cmd, check=True)


def summary(out: Path, recipe: str) -> dict:
    """The run's convergence record, its best validation pass@1, FLOPs (training + rollouts) and wall minutes."""
    stage = out / "rl" if recipe.endswith("_rl") else out
    meta = json.loads((stage / "final" / "excursions.json").read_text())
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    key = f"val/{meta['family']}/pass@1"
    val = [(r["step"], r[key]) for r in rows if key in r]
    conv, last = meta["convergence"], rows[-1]
    flops = last.get("total_train_flops", 0) + last.get("total_rollout_flops", 0)
    return {"steps": conv["steps"], "converged": conv.get("converged"), "start": val[0][1] if val else None,
            "best": max(v for _, v in val) if val else None, "final": val[-1][1] if val else None,
            "change": conv.get("change"), "pflops": flops / 1e15, "minutes": meta["wall_seconds"] / 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipe", default="rl")
    ap.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"))
    ap.add_argument("--common", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    print("| variant | steps | ended | val pass@1 start -> best (final) | last window [95%] | PFLOPs | minutes | "
          "gain per PFLOP | gain per minute |\n|---|---:|---|---|---|---:|---:|---:|---:|", flush=True)
    for name, *overrides in args.variant:
        out = args.out / name
        run(args.checkpoint, args.recipe, out, [*args.common, *overrides])
        s = summary(out, args.recipe)
        gain = 100 * (s["best"] - s["start"])
        ch = s["change"] or {}
        window = f"{100 * ch['diff']:+.1f} [{100 * ch['lo']:+.1f}, {100 * ch['hi']:+.1f}]" if ch else "-"
        print(f"| {name} | {s['steps']} | {'converged' if s['converged'] else 'capped'} | {100 * s['start']:.1f} -> "
              f"{100 * s['best']:.1f} ({100 * s['final']:.1f}) | {window} | {s['pflops']:.3f} | {s['minutes']:.1f} | "
              f"{gain / s['pflops']:.1f} | {gain / s['minutes']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
