"""Less variance at the source (issue 44): how far the base's validation pass@1 at the study's checkpoints spreads
over pretraining seeds, for the preset's pretraining recipe and for others, on the same world.

    python benchmarks/pretrain_spread.py --out /work/runs/spread --seeds 0 1 2 \\
        --variant current --variant lr3e-3 pretrain.lr=3e-3 --variant clip0.3 pretrain.grad_clip=0.3

Each (variant, seed) is one `excursions pretrain` run (the seed sets initialisation and data order; the world keeps the
preset's `world.seed`), then `excursions eval` of each of the study's checkpoints on validation problems only
(`eval.split=val`, the base's few-shot count), so the recipe chosen here leaves the test problems unseen. Prints, per
variant and checkpoint, each seed's pass@1, the mean and the standard deviation over seeds; `--json` writes them.
Runs and evaluations resume; a finished one is read back, not redone. A variant is a name and its overrides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from excursions.checkpoint import checkpoint_name
from excursions.config import load_config
from excursions.evals.figures import token_label


def checkpoints(preset: str, overrides: list[str]) -> list[str]:
    """The names of the study's checkpoints (`study.checkpoints`, all when empty) under these settings."""
    cfg = load_config(preset, overrides=overrides)
    p, s = cfg.pretrain, cfg.study
    names = [checkpoint_name(st, st * p.tokens_per_step) for st in p.checkpoint_steps()]
    return [names[i] for i in s.checkpoints] if s.checkpoints else names


def base_val(run: Path, ckpt: str, preset: str, overrides: list[str], shots: int) -> float:
    """The base's validation pass@1 at one checkpoint (`excursions eval`, cached beside the checkpoint)."""
    path = run / "checkpoints" / ckpt
    result = path / "eval" / f"gsm-val-{shots}shot.json"
    if not result.is_file():
        subprocess.run([sys.executable, "-m", "excursions.cli", "eval", str(path), "--task", "gsm", "--shots",
                        str(shots), "--preset", preset, "--quiet", "eval.split=val", *overrides], check=True,
                       stdout=sys.stderr)  # the commands' own tables to stderr: stdout is this script's table
    return json.loads(result.read_text())["metrics"]["pass@1"]["mean"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"))
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args()
    shots = load_config(args.preset).eval.shots
    rows = []
    print(f"| variant | checkpoint | val pass@1 ({shots}-shot), seeds {', '.join(map(str, args.seeds))} | mean | sd |\n"
          "|---|---|---|---:|---:|", flush=True)
    for name, *overrides in args.variant:
        values: dict[str, list[float]] = {}
        for seed in args.seeds:
            run = args.out / name / f"seed{seed}"
            subprocess.run([sys.executable, "-m", "excursions.cli", "pretrain", "--preset", args.preset, "--out",
                            str(run), "--quiet", f"seed={seed}", *overrides], check=True, stdout=sys.stderr)
            for ckpt in checkpoints(args.preset, overrides):
                values.setdefault(ckpt, []).append(base_val(run, ckpt, args.preset, overrides, shots))
        for ckpt, vals in values.items():
            tokens = int(ckpt.rsplit("tokens", 1)[1])
            sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            rows.append({"variant": name, "overrides": overrides, "checkpoint": ckpt, "seeds": args.seeds,
                         "val_pass@1": vals, "mean": statistics.mean(vals), "sd": sd})
            print(f"| {name} | {token_label(tokens)} | {' / '.join(f'{100 * v:.1f}' for v in vals)} | "
                  f"{100 * statistics.mean(vals):.1f} | {100 * sd:.1f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
