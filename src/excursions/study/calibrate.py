"""Is the testbed fit for the study? Pretrain, evaluate every checkpoint on both math families, run
direct RL (over several seeds) from the checkpoint where the base still fails, and print one table with the
targets checked.

    excursions calibrate --preset tiny eval.split=val         # runs/tiny: reuses what is already done
    excursions calibrate --preset tiny --rl-from 4 --rl-seeds 0,1,2 rl.lr=2e-4 --out runs/tiny

Every stage is the ordinary command's (pretrain, eval, posttrain) and writes where that command would,
so finished work is reused and a killed calibration resumes. Choose settings with `eval.split=val` and
confirm them once on test. The testbed's targets:
- T1 RL early: from a checkpoint whose base few-shot pass@1 is < 10%, direct RL's 0-shot pass@1 is >= 2x the
  base's and above both of its intervals (few-shot and 0-shot), and verified pass@1 rises beyond its
  intervals too, in at least two thirds of the RL seeds;
- T2 (its calibration half) direct RL's top pass@k is not below the base's;
- T4 a capable testbed: base pass@1 ~0 (< 2%) at the first checkpoint and >= 25% at the last; blind guessing's
  top pass@k <= 5% on both families; `hard` below `gsm` beyond the intervals wherever gsm's is above 0.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from excursions.checkpoint import META, atomic_write_text, checkpoints, read_json, write_json
from excursions.config import Config, digest, to_dict
from excursions.errors import UserError
from excursions.evals.figures import base_curve_figure
from excursions.evals.harness import evaluate_checkpoint, evaluate_run, headline, world_guess
from excursions.train.posttrain import posttrain
from excursions.train.pretrain import pretrain

EARLY = 0.10  # T1's checkpoint: base few-shot pass@1 below this
CAPABLE = 0.25  # T4: base pass@1 at the last checkpoint
GUESSPROOF = 0.05  # T4: blind guessing's top pass@k at most this


def passk(result: dict) -> list[str]:
    """The pass@k keys of a result, in order of k (pass@32 is the largest by default)."""
    return sorted((k for k in result if k.startswith("pass@")), key=lambda k: int(k.split("@")[1]))


def choose_rl_checkpoints(curve: Sequence[dict], wanted: str) -> list[int]:
    """Indices into `curve`: `wanted` as comma-separated indices, or "auto": the last checkpoint whose base gsm
    pass@1 is below 10% (T1's), or the middle one when none is.

    >>> row = lambda p1: {"results": {"gsm": {"pass@1": {"mean": p1}}}}
    >>> choose_rl_checkpoints([row(0.01), row(0.03), row(0.09), row(0.3)], "auto")
    [2]
    >>> choose_rl_checkpoints([row(0.01), row(0.3)], "0,1"), choose_rl_checkpoints([row(0.2), row(0.3), row(0.4)], "auto")
    ([0, 1], [1])
    """
    if wanted != "auto":
        picked = _indices(wanted, "--rl-from", "checkpoint indices like 4,5 or 'auto'")
        bad = [i for i in picked if not 0 <= i < len(curve)]
        if bad:
            raise UserError(f"--rl-from {bad[0]}: the run has checkpoints 0..{len(curve) - 1}")
        return picked
    early = [i for i, c in enumerate(curve) if c["results"]["gsm"]["pass@1"]["mean"] < EARLY]
    return early[-1:] if early else [len(curve) // 2]


def _indices(text: str, flag: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} takes {what}, got {text!r}") from None


def calibrate(cfg: Config, out: Path, rl_from: str = "auto", hard_problems: int = 200, rl_seeds: str = "",
              progress: bool = True) -> dict:
    """Run (or reuse) every stage; returns {"curve", "guess", "rl", "targets"}, also written to
    `out/eval/calibration.json`, `.md` and `.png` (base pass@k of both families and general accuracy).
    `rl_seeds`: comma-separated RL seeds (default: [rl].seed alone)."""
    out = Path(out)
    seeds = _indices(rl_seeds, "--rl-seeds", "seeds like 0,1,2") if rl_seeds else [cfg.rl.seed]
    pretrain(cfg, out, progress)
    # hard samples are slower (longer solutions; early checkpoints never stop): fewer problems than gsm
    hard_cfg = replace(cfg.eval, problems=min(cfg.eval.problems or hard_problems, hard_problems))
    hard = evaluate_run(out, ["hard"], hard_cfg, progress=progress)
    curve = evaluate_run(out, ["gsm", "general"], cfg.eval, progress=progress)  # writes eval/curve.json
    for row, h in zip(curve, hard):
        r = row["results"]
        row["results"] = {"gsm": r["gsm"], "hard": h["results"]["hard"], "general": r["general"]}
    ckpts = checkpoints(out)
    rl_rows = []
    for i in choose_rl_checkpoints(curve, rl_from):
        ckpt = ckpts[i]["path"]
        before = headline(evaluate_checkpoint(ckpt, ["gsm"], cfg.eval, shots=[0], progress=progress)[0])
        for seed in seeds:
            rl = replace(cfg.rl, seed=seed)
            rl_dir = Path(ckpt).parent.parent / "posttrain" / Path(ckpt).name / f"rl-{settings_digest(rl)}"
            final = posttrain(ckpt, "rl", replace(cfg, rl=rl), rl_dir, out / "world", progress)
            minutes = read_json(final / META)["wall_seconds"] / 60  # the RL run's own, also when reused
            after = headline(evaluate_checkpoint(str(final), ["gsm"], cfg.eval, progress=progress)[0])
            rl_rows.append({"index": i, "checkpoint": Path(ckpt).name, "tokens": ckpts[i]["tokens"], "seed": seed,
                            "base": curve[i]["results"]["gsm"], "before": before, "after": after, "minutes": minutes})
    guess = {task: world_guess(out / "world", task, c) for task, c in (("gsm", cfg.eval), ("hard", hard_cfg))}
    result = {"split": cfg.eval.split, "curve": curve, "guess": guess, "rl": rl_rows,
              "targets": check_targets(curve, rl_rows, guess)}
    write_json(out / "eval" / "calibration.json", result)
    atomic_write_text(out / "eval" / "calibration.md", calibration_table(result) + "\n")
    base_curve_figure(curve, out / "eval" / "calibration.png", baselines=guess)
    return result


def settings_digest(section) -> str:
    """Six hex digits naming a config section's values: RL trials with other settings get their own directory."""
    return digest(to_dict(section), 6)


def check_targets(curve: Sequence[dict], rl_rows: Sequence[dict], guess: dict) -> list[tuple[str, bool, str]]:
    """(target, met, the numbers behind it) for T1, T2's calibration half and T4 (see the module's docstring)."""
    gsm = [c["results"]["gsm"] for c in curve]
    top = passk(gsm[0])[-1]
    out = []
    for i in sorted({r["index"] for r in rl_rows}):
        runs = [r for r in rl_rows if r["index"] == i]
        if runs[0]["base"]["pass@1"]["mean"] >= EARLY:
            continue  # T1 is about a checkpoint where the base still fails
        wins, lines = [], []
        for r in runs:
            b, b0, a = r["base"], r["before"], r["after"]
            won = (a["pass@1"]["mean"] >= 2 * b["pass@1"]["mean"]
                   and a["pass@1"]["lo"] > max(b["pass@1"]["hi"], b0["pass@1"]["hi"])
                   and a["verified_pass@1"]["lo"] > max(b["verified_pass@1"]["hi"], b0["verified_pass@1"]["hi"]))
            wins.append(won)
            lines.append(f"seed {r['seed']}: pass@1 {_cell(a['pass@1'])}, verified {_cell(a['verified_pass@1'])}")
        need = math.ceil(2 * len(runs) / 3)
        b, b0 = runs[0]["base"], runs[0]["before"]
        out.append((f"T1 RL from checkpoint {i} (base pass@1 < {EARLY:.0%}): 0-shot pass@1 >= 2x the base's and "
                    f"above both intervals, verified pass@1 too, in {need} of {len(runs)} seeds", sum(wins) >= need,
                    f"base {_cell(b['pass@1'])} ({_cell(b0['pass@1'])} 0-shot), verified {_cell(b['verified_pass@1'])}"
                    f" ({_cell(b0['verified_pass@1'])}); " + "; ".join(lines)))
        held = [r["after"][top]["hi"] >= r["base"][top]["lo"] for r in runs]
        out.append((f"T2 RL from checkpoint {i}: {top} not below the base's", all(held),
                    f"base {_cell(b[top])}; " + "; ".join(f"seed {r['seed']}: {_cell(r['after'][top])}" for r in runs)))
    p1 = [g["pass@1"]["mean"] for g in gsm]
    out.append(("T4 base pass@1 ~0 at the first checkpoint (< 2%)", p1[0] < 0.02, _cell(gsm[0]["pass@1"])))
    out.append((f"T4 base pass@1 >= {CAPABLE:.0%} at the last checkpoint", p1[-1] >= CAPABLE, _cell(gsm[-1]["pass@1"])))
    out.append((f"T4 blind guessing {top} <= {GUESSPROOF:.0%} on both families",
                all(g[top] <= GUESSPROOF for g in guess.values()),
                ", ".join(f"{task} {100 * g[top]:.1f}%" for task, g in guess.items())))
    where = [i for i, g in enumerate(gsm) if g[top]["mean"] > 0]
    below = [i for i in where if curve[i]["results"]["hard"][top]["hi"] < gsm[i][top]["lo"]]
    out.append((f"T4 hard {top} below gsm beyond the intervals wherever gsm's is above 0", bool(where) and below == where,
                f"{len(below)} of {len(where)} checkpoints"))
    return out


def _cell(metric: dict) -> str:
    return f"{100 * metric['mean']:.1f} [{100 * metric['lo']:.1f}, {100 * metric['hi']:.1f}]"


def calibration_table(result: dict) -> str:
    """Markdown: the base curve on both families (pass@k, verified pass@1, format rate), RL before/after per
    seed, and the targets."""
    ks = passk(result["curve"][0]["results"]["gsm"])
    cols = [(task, k) for task in ("gsm", "hard") for k in (*ks, "verified_pass@1", "format_rate")]
    name = lambda task, k: f"{task} {k.replace('verified_', 'verified ').replace('format_rate', 'format')}"
    lines = [f"Scored on the {result.get('split', 'test')} problems.", "",
             "| # | tokens | val loss | " + " | ".join(name(*c) for c in cols) + " | general acc |",
             "|---:" * (len(cols) + 4) + "|"]
    for i, c in enumerate(result["curve"]):
        r = c["results"]
        cells = [_cell(r[task][k]) if k != "format_rate" else f"{100 * r[task][k]:.0f}%" for task, k in cols]
        lines.append(f"| {i} | {c['tokens'] / 1e6:.2f}M | {c['val_loss']:.3f} | " + " | ".join(cells)
                     + f" | {100 * r['general']['acc']:.1f} |")
    if "guess" in result:
        g = result["guess"]
        lines.append("| guess | | | " + " | ".join(f"{100 * g[task][k]:.1f}" if k in g[task] else "0" if "verified" in k
                                                  else "" for task, k in cols) + " | |")
    if result["rl"]:
        top = ks[-1]
        lines += ["", f"| # | tokens | seed | base pass@1 (0-shot) | rl pass@1 | base verified@1 (0-shot) | rl verified@1 "
                      f"| base {top} | rl {top} | format 0-shot base, rl | RL wall |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["rl"]:
            b, b0, a = r.get("base", r["before"]), r["before"], r["after"]
            lines.append(f"| {r['index']} | {r['tokens'] / 1e6:.2f}M | {r.get('seed', '')} | {_cell(b['pass@1'])} "
                         f"({_cell(b0['pass@1'])}) | {_cell(a['pass@1'])} | {_cell(b['verified_pass@1'])} "
                         f"({_cell(b0['verified_pass@1'])}) | {_cell(a['verified_pass@1'])} | {_cell(b[top])} | "
                         f"{_cell(a[top])} | {100 * b0['format_rate']:.0f}%, {100 * a['format_rate']:.0f}% | "
                         f"{r['minutes']:.1f} min |")
    lines += ["", "| target | met | numbers |", "|---|:---:|---|"]
    lines += [f"| {name} | {'yes' if met else 'NO'} | {numbers} |" for name, met, numbers in result["targets"]]
    return "\n".join(lines)
