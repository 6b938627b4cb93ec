"""Every recipe from one checkpoint, then pass@k of each on the gsm test: the issue-4 table.

    python benchmarks/recipes_table.py runs/tiny/checkpoints/step000930-tokens7618560
    python benchmarks/recipes_table.py CKPT --recipes rl,sft --out runs/post/mid rl.lr=1e-4

Runs `excursions posttrain` for each recipe (resumable: finished runs are reused), evaluates each final
model 0-shot and the base checkpoint 0-shot and n-shot with the preset's [eval] settings, and prints one
Markdown table with wall time per recipe.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--recipes", default="rl,sft,sft_gold,sft_rl,parallel")
    ap.add_argument("--out", type=Path, default=Path("runs/post/mid"))
    ap.add_argument("--limit", type=int, default=None, help="test problems (default: eval.problems)")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides for posttrain")
    args = ap.parse_args()
    exe = [sys.executable, "-m", "excursions.cli"]
    limit = ["--limit", str(args.limit)] if args.limit else []
    rows = []
    for shots in ("0", None):  # base: 0-shot (the post-trained format) and the preset's n-shot
        out = args.out / "base-eval"
        run(exe + ["eval", str(args.checkpoint), "--task", "gsm", "--out", str(out), "--quiet"] + limit
            + (["--shots", shots] if shots else []))
    for f in sorted((args.out / "base-eval").glob("gsm-*shot.json")):
        rows.append(("base " + f.stem.split("-")[1], json.loads(f.read_text()), None))
    for recipe in args.recipes.split(","):
        out = args.out / recipe
        run(exe + ["posttrain", str(args.checkpoint), "--recipe", recipe, "--out", str(out), "--quiet"] + args.overrides)
        # every stage's own wall time (sft_rl has two), as recorded when it ran (a rerun reuses them)
        wall = sum(json.loads(p.read_text())["wall_seconds"] for p in out.rglob("final/excursions.json"))
        final = out / "final" if (out / "final").exists() else out / "rl" / "final"  # two-stage: the RL stage's
        run(exe + ["eval", str(final), "--task", "gsm", "--quiet"] + limit)
        rows.append((recipe, json.loads((final / "eval" / "gsm-0shot.json").read_text()),
                     wall))
    ks = sorted(rows[0][1]["metrics"], key=lambda k: int(k.split("@")[1]))
    print(f"\nfrom {args.checkpoint}, gsm test, n={rows[0][1]['n']}, T={rows[0][1]['temperature']}, "
          f"{rows[0][1]['problems']} problems\n")
    print("| model | " + " | ".join(ks) + " | format | post-training wall |")
    print("|---|" + "---:|" * (len(ks) + 2))
    for name, r, wall in rows:
        cells = " | ".join(f"{100 * r['metrics'][k]['mean']:.1f} [{100 * r['metrics'][k]['lo']:.1f}, "
                           f"{100 * r['metrics'][k]['hi']:.1f}]" for k in ks)
        print(f"| {name} | {cells} | {100 * r['format_rate']:.0f}% | {'-' if wall is None else f'{wall / 60:.1f} min'} |")


if __name__ == "__main__":
    main()
