"""The study's wall time with units run one at a time against `--jobs N` at once, measured in the same run.

    python benchmarks/jobs.py runs/v2f/checkpoints/step001282-tokens10502144
    python benchmarks/jobs.py CKPT --jobs 1,2 --steps 10 --problems 50

From CKPT (a pretraining checkpoint whose run holds its world/), each setting runs the same small study into a
fresh directory under --out: the base evaluation, then direct RL, SFT, SFT-Gold and parallel averaging for --steps
steps (`study.external`, the tiny preset otherwise), each result evaluated on --problems gsm test problems. The
table gives each setting's wall time, the sum of its units' own times (above the wall time when units overlap: how
much each slowed the other), its speed-up over the first, and how many of its numbers equal the first's
(a unit's thread count changes float sums, so sampled results may differ in the last digits and then diverge).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import time
from pathlib import Path

from excursions.config import load_config
from excursions.study.runner import run_study
from excursions.study.store import DB


def numbers(out: Path) -> dict:
    db = sqlite3.connect(out / DB)
    rows = db.execute("SELECT e.unit, e.task, e.shots, m.metric, m.mean FROM evaluations e "
                      "JOIN metrics m ON m.evaluation = e.id").fetchall()
    db.close()
    return {r[:4]: r[4] for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--jobs", default="1,2", help="settings compared, the first as reference (default 1,2)")
    ap.add_argument("--steps", type=int, default=10, help="RL and parallel-averaging steps (default 10)")
    ap.add_argument("--problems", type=int, default=50, help="gsm test problems per evaluation (default 50)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-jobs"))
    args = ap.parse_args()
    ckpt = args.checkpoint.resolve()
    world = ckpt.parent.parent / "world"
    if not (ckpt / "config.json").is_file() or not world.is_dir():
        raise SystemExit(f"{args.checkpoint} is not a pretraining checkpoint next to a world/ (RUN/checkpoints/NAME)")
    settings = lambda copy: load_config("tiny", overrides=[
        f"study.external=['{copy}']", f"study.world={world}", "study.recipes=['rl','sft','sft_gold','parallel']",
        "study.experiments=['recipes']", "study.tasks=['gsm']", "study.checkpoints=[0]", "study.extra_seeds=[]",
        f"rl.steps={args.steps}", f"parallel.steps={args.steps}", f"eval.problems={args.problems}", "sft.epochs=1"])
    rows, ref = [], None
    for jobs in map(int, args.jobs.split(",")):
        out = args.out / f"jobs{jobs}"
        shutil.rmtree(out, ignore_errors=True)  # each setting runs every unit itself: a copy of the checkpoint
        copy = out / "checkpoint" / ckpt.name  # without its eval/, which a base evaluation would reuse
        shutil.copytree(ckpt, copy, ignore=shutil.ignore_patterns("eval"))
        t0 = time.perf_counter()
        try:
            run_study(settings(copy.resolve()), out, progress=False, jobs=jobs)
        except Exception as e:  # the report's figures may fail on so small a study; the units are what is timed
            print(f"jobs={jobs}: {type(e).__name__}: {e}")
        seconds = time.perf_counter() - t0
        name = str(copy.resolve()).replace("/", "--").replace("@", "--")  # units name the copy they read
        got = {(unit.replace(name, "CKPT"), *k): v for (unit, *k), v in numbers(out).items()}
        db = sqlite3.connect(out / DB)
        busy = db.execute("SELECT SUM(seconds) FROM units").fetchone()[0] or 0.0
        db.close()
        ref = ref or (seconds, got)
        same = sum(got.get(k) == v for k, v in ref[1].items())
        rows.append(f"| {jobs} | {seconds / 60:.1f} min | {busy / 60:.1f} min | {ref[0] / seconds:.2f}x | "
                    f"{same} of {len(ref[1])} |")
        print(rows[-1], flush=True)
    print("\n| jobs | wall | units' own times, summed | speed-up | numbers equal to the first's |\n"
          "|---:|---:|---:|---:|---:|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
