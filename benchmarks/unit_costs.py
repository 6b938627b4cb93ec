"""Ship a finished study's unit wall times with its preset, so that `excursions study --dry-run` (and the study's
progress bar) can say how long a fresh run takes on a machine like the one that measured them.

    python benchmarks/unit_costs.py runs/study-tiny --machine "2-core x86 CPU, fp32" \\
        > src/excursions/presets/tiny.costs.json

Writes {machine, measured, probe_gflops, total_minutes, units: [{id, kind, recipe, seconds}]}: every unit the study
ran and timed (a unit found done on disk has no time and is left out), and the fp32 matmul probe at the start of
its last call, so a reader can compare their machine's (`python -c "from excursions.flops import matmul_peak;
print(matmul_peak() / 1e9)"`).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path


def costs(study: Path, machine: str) -> dict:
    con = sqlite3.connect(f"file:{study / 'study.db'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT id, kind, recipe, seconds, finished FROM units WHERE status = 'done' "
                           "AND seconds IS NOT NULL ORDER BY started").fetchall()
        probes = con.execute("SELECT value FROM meta WHERE key = 'probes'").fetchone()
    finally:
        con.close()
    if not rows:
        sys.exit(f"{study}/study.db has no timed unit: run the study there first")
    probes = json.loads(probes[0]) if probes else []
    return {"machine": machine,
            "measured": time.strftime("%Y-%m-%d", time.gmtime(max(r[4] for r in rows))),
            "probe_gflops": round(probes[0]["gflops"]) if probes else None,
            "total_minutes": round(sum(r[3] for r in rows) / 60, 1),
            "units": [{"id": r[0], "kind": r[1], "recipe": r[2], "seconds": round(r[3], 1)} for r in rows]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", type=Path, help="a study directory whose units ran (its study.db)")
    p.add_argument("--machine", required=True, help="what measured them, e.g. '2-core x86 CPU, fp32'")
    args = p.parse_args()
    json.dump(costs(args.study, args.machine), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
