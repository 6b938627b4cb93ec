"""Is the testbed fit for the study? Pretrain, evaluate every checkpoint on both math families, run
direct RL from the checkpoints with room for it, and print one table with the targets checked.

    excursions calibrate --preset tiny                       # runs/tiny: reuses what is already done
    excursions calibrate --preset tiny --rl-from 4,5 rl.lr=2e-4 --out runs/tiny

Every stage is the ordinary command's (pretrain, eval, posttrain) and writes where that command would,
so finished work is reused and a killed calibration resumes. The targets are issue 5's: base gsm pass@1
from ~0 to >= 15% on pretraining alone; two earlier checkpoints with pass@1 < 10% and pass@32 > 40% (room
for RL); direct RL raising pass@1 beyond its interval; `hard` pass@32 below `gsm` at the same checkpoint.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

from excursions.checkpoint import META, atomic_write_text, checkpoints, read_json, write_json
from excursions.config import Config, digest, to_dict
from excursions.data.problems import read_jsonl
from excursions.errors import UserError
from excursions.evals.figures import base_curve_figure
from excursions.evals.harness import evaluate_checkpoint, evaluate_run
from excursions.train.posttrain import posttrain
from excursions.train.pretrain import pretrain

ROOM_FOR_RL = (0.10, 0.40)  # base pass@1 below, pass@32 above


def passk(result: dict) -> list[str]:
    """The pass@k keys of a result, in order of k (pass@32 is the largest by default)."""
    return sorted((k for k in result if k.startswith("pass@")), key=lambda k: int(k.split("@")[1]))


def has_room(result: dict) -> bool:
    top = passk(result)[-1]
    return result["pass@1"]["mean"] < ROOM_FOR_RL[0] and result[top]["mean"] > ROOM_FOR_RL[1]


def guess_baseline(train: Sequence[str], test: Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    """pass@k of a blind guesser that samples each answer from the train split's answer distribution.

    A model that has learned which answers are common, and nothing else, scores this: with small-integer
    answers it is far from zero, so base pass@k near it says nothing about skill.

    >>> guess_baseline(["1", "1", "2", "3"], ["1", "4"], [1, 2])   # p = 1/2 and 0: pass@2 = (1 - 1/4) / 2
    {'pass@1': 0.25, 'pass@2': 0.375}
    """
    from collections import Counter

    freq, n = Counter(train), len(train)
    return {f"pass@{k}": sum(1 - (1 - freq[a] / n) ** k for a in test) / len(test) for k in ks}


def choose_rl_checkpoints(curve: Sequence[dict], wanted: str) -> list[int]:
    """Indices into `curve`: `wanted` as comma-separated indices, or "auto": the last two with room for RL
    (or the middle checkpoint when none has it).

    >>> row = lambda p1, p32: {"results": {"gsm": {"pass@1": {"mean": p1}, "pass@32": {"mean": p32}}}}
    >>> choose_rl_checkpoints([row(0.01, 0.2), row(0.03, 0.45), row(0.05, 0.6), row(0.3, 0.8)], "auto")
    [1, 2]
    >>> choose_rl_checkpoints([row(0.01, 0.2), row(0.3, 0.8)], "0,1")
    [0, 1]
    """
    if wanted != "auto":
        try:
            picked = [int(x) for x in wanted.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--rl-from takes checkpoint indices like 4,5 or 'auto', got {wanted!r}") from None
        bad = [i for i in picked if not 0 <= i < len(curve)]
        if bad:
            raise UserError(f"--rl-from {bad[0]}: the run has checkpoints 0..{len(curve) - 1}")
        return picked
    room = [i for i, c in enumerate(curve) if has_room(c["results"]["gsm"])]
    return room[-2:] if room else [len(curve) // 2]


def calibrate(cfg: Config, out: Path, rl_from: str = "auto", hard_problems: int = 200, progress: bool = True) -> dict:
    """Run (or reuse) every stage; returns {"curve": ..., "rl": [...], "targets": [...]}, also written to
    `out/eval/calibration.json`, `.md` and `.png` (base pass@k of both families and general accuracy)."""
    out = Path(out)
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
        before = evaluate_checkpoint(ckpt, ["gsm"], cfg.eval, shots=[0], progress=progress)[0]
        rl_dir = Path(ckpt).parent.parent / "posttrain" / Path(ckpt).name / f"rl-{settings_digest(cfg.rl)}"
        final = posttrain(ckpt, "rl", cfg, rl_dir, out / "world", progress)
        minutes = read_json(final / META)["wall_seconds"] / 60  # the RL run's own, also when reused
        after = evaluate_checkpoint(str(final), ["gsm"], cfg.eval, progress=progress)[0]
        rl_rows.append({"index": i, "checkpoint": Path(ckpt).name, "tokens": ckpts[i]["tokens"],
                        "before": before["metrics"], "after": after["metrics"], "minutes": minutes})
    guess = {}
    for task, c in (("gsm", cfg.eval), ("hard", hard_cfg)):
        train = [p.answer for p in read_jsonl(out / "world" / task / "train.jsonl")]
        test = [p.answer for p in read_jsonl(out / "world" / task / "test.jsonl")[: c.problems or None]]
        guess[task] = guess_baseline(train, test, c.ks)
    result = {"curve": curve, "guess": guess, "rl": rl_rows, "targets": check_targets(curve, rl_rows, guess)}
    write_json(out / "eval" / "calibration.json", result)
    atomic_write_text(out / "eval" / "calibration.md", calibration_table(result) + "\n")
    base_curve_figure(curve, out / "eval" / "calibration.png", baselines=guess)
    return result


def settings_digest(section) -> str:
    """Six hex digits naming a config section's values: RL trials with other settings get their own directory."""
    return digest(to_dict(section), 6)


def check_targets(curve: Sequence[dict], rl_rows: Sequence[dict], guess: dict) -> list[tuple[str, bool, str]]:
    """(target, met, the numbers behind it) for each of issue 5's targets, plus whether the checkpoints with
    room for RL sample correct answers more often than blind guessing does (else the room is illusory)."""
    gsm = [c["results"]["gsm"] for c in curve]
    p1 = [g["pass@1"]["mean"] for g in gsm]
    room = [i for i, g in enumerate(gsm[:-1]) if has_room(g)]
    out = [
        ("gsm pass@1 ~0 at the first checkpoint (< 5%)", p1[0] < 0.05, f"{100 * p1[0]:.1f}%"),
        ("gsm pass@1 >= 15% at the last checkpoint (stretch 30%)", p1[-1] >= 0.15, f"{100 * p1[-1]:.1f}%"),
        (f"two earlier checkpoints with pass@1 < 10% and {passk(gsm[0])[-1]} > 40%", len(room) >= 2,
         f"checkpoints {room}" if room else "none"),
    ]
    for r in rl_rows:
        b, a = r["before"]["pass@1"], r["after"]["pass@1"]
        out.append((f"RL from checkpoint {r['index']} raises pass@1 beyond its interval", a["lo"] > b["hi"],
                    f"{100 * b['mean']:.1f} [{100 * b['lo']:.1f}, {100 * b['hi']:.1f}] -> "
                    f"{100 * a['mean']:.1f} [{100 * a['lo']:.1f}, {100 * a['hi']:.1f}]"))
    top = passk(gsm[0])[-1]
    above = [i for i in room if gsm[i][top]["lo"] > guess["gsm"][top]]
    out.append((f"checkpoints with room have {top} above blind guessing ({100 * guess['gsm'][top]:.1f}%)",
                bool(room) and above == room, f"{len(above)} of {len(room)}: {above}"))
    lower = [c["results"]["hard"][top]["mean"] < c["results"]["gsm"][top]["mean"] for c in curve]
    out.append((f"hard {top} below gsm at the same checkpoint", all(lower), f"{sum(lower)} of {len(lower)} checkpoints"))
    return out


def _cell(metric: dict) -> str:
    return f"{100 * metric['mean']:.1f} [{100 * metric['lo']:.1f}, {100 * metric['hi']:.1f}]"


def calibration_table(result: dict) -> str:
    """Markdown: the base curve on both families, RL before/after, and the targets."""
    ks = passk(result["curve"][0]["results"]["gsm"])
    head = [f"{task} {k}" for task in ("gsm", "hard") for k in ks]
    lines = ["| # | tokens | val loss | " + " | ".join(head) + " | general acc |", "|---:" * (len(head) + 4) + "|"]
    for i, c in enumerate(result["curve"]):
        r = c["results"]
        cells = [_cell(r[task][k]) for task in ("gsm", "hard") for k in ks]
        lines.append(f"| {i} | {c['tokens'] / 1e6:.2f}M | {c['val_loss']:.3f} | " + " | ".join(cells)
                     + f" | {100 * r['general']['acc']:.1f} |")
    if "guess" in result:
        g = result["guess"]
        lines.append("| guess | | | " + " | ".join(f"{100 * g[task][k]:.1f}" for task in ("gsm", "hard") for k in ks)
                     + " | |")
    if result["rl"]:
        top = ks[-1]
        lines += ["", f"| # | tokens | base 0-shot pass@1 | rl pass@1 | base 0-shot {top} | rl {top} | RL wall |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["rl"]:
            lines.append(f"| {r['index']} | {r['tokens'] / 1e6:.2f}M | {_cell(r['before']['pass@1'])} | "
                         f"{_cell(r['after']['pass@1'])} | {_cell(r['before'][top])} | {_cell(r['after'][top])} | {r['minutes']:.1f} min |")
    lines += ["", "| target | met | numbers |", "|---|:---:|---|"]
    lines += [f"| {name} | {'yes' if met else 'NO'} | {numbers} |" for name, met, numbers in result["targets"]]
    return "\n".join(lines)
