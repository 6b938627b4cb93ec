"""`excursions calibrate`: every stage runs (or is reused) and the table checks the targets."""

from __future__ import annotations

import json
import shutil

from excursions.study.calibrate import calibrate, calibration_table
from excursions.config import load_config
from excursions.cli import main

SMALL = ["eval.n=4", "eval.ks=[1,4]", "eval.problems=6", "eval.mc_items=8", "eval.max_new_tokens=24", "eval.shots=1",
         "eval.bootstrap=20", "rl.steps=2", "rl.prompts_per_step=4", "rl.group_size=4", "rl.minibatches=1",
         "rl.max_new_tokens=24", "rl.track_every=0", "rl.save_every=1"]


def test_calibrate_runs_every_stage_then_reuses_them(micro_run, micro_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)  # the shared micro run stays untouched
    cfg = load_config("smoke", overrides=micro_overrides + SMALL)
    result = calibrate(cfg, run, rl_from="0,2", progress=False)

    assert len(result["curve"]) == 3 and [r["index"] for r in result["rl"]] == [0, 2]
    for row in result["curve"]:
        assert set(row["results"]) == {"gsm", "hard", "general"}
        assert 0 <= row["results"]["gsm"]["verified_pass@1"]["mean"] <= row["results"]["gsm"]["pass@1"]["mean"]
    for r in result["rl"]:
        assert r["minutes"] > 0 and 0 <= r["after"]["pass@1"]["mean"] <= 1 and r["seed"] == cfg.rl.seed
        assert r["before"]["pass@1"]["lo"] <= r["before"]["pass@1"]["mean"] <= r["before"]["pass@1"]["hi"]
        assert 0 <= r["after"]["verified_pass@1"]["mean"] <= r["after"]["pass@1"]["mean"]
    names = [t[0] for t in result["targets"]]
    assert sum(n.startswith("T2 ") for n in names) == 2 and sum(n.startswith("T4 ") for n in names) == 4
    assert "T4 hard pass@4 below gsm beyond the intervals wherever gsm's is above 0" in names
    assert 0 < result["guess"]["gsm"]["pass@1"] <= result["guess"]["gsm"]["pass@4"] < 1
    table = calibration_table(result)
    assert table.count("\n| 0 | ") == 2 and "\n| guess | | | " in table and "| gsm pass@4 |" in table
    assert "| gsm verified pass@1 | gsm format |" in table and "Scored on the test problems." in table
    assert (run / "eval" / "calibration.png").stat().st_size > 10_000
    saved = json.loads((run / "eval" / "calibration.json").read_text())
    assert saved["targets"] == [list(t) for t in result["targets"]]

    # the same command again: every stage is reused (no RL run or evaluation is redone)
    finals = sorted(run.glob("posttrain/*/rl-*/final/model.safetensors"))
    evals = sorted(p for p in run.glob("**/eval/*.json") if p.parent != run / "eval")  # per-model results
    stamps = [p.stat().st_mtime_ns for p in finals + evals]
    assert len(finals) == 2 and len(evals) >= 3 * 3 + 2 * 2
    assert main(["calibrate", "--preset", "smoke", "--out", str(run), "--rl-from", "0,2", "--quiet",
                 *micro_overrides, *SMALL]) == 0
    out = capsys.readouterr().out
    assert "| target | met | numbers |" in out and out.count(" min |") == 2
    assert [p.stat().st_mtime_ns for p in finals + evals] == stamps


def test_calibrate_rejects_a_bad_checkpoint_index(micro_run, micro_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    code = main(["calibrate", "--preset", "smoke", "--out", str(run), "--rl-from", "7", "--quiet",
                 *micro_overrides, *SMALL])
    assert code != 0 and "--rl-from 7: the run has checkpoints 0..2" in capsys.readouterr().err


def _m(mean, half=0.01):
    return {"mean": mean, "lo": mean - half, "hi": mean + half}


def _scores(p1, v1, top, fmt=1.0):
    return {"pass@1": _m(p1), "pass@8": _m(top), "verified_pass@1": _m(v1), "format_rate": fmt}


def test_t1_needs_two_of_three_seeds_above_both_intervals_on_answer_and_verified():
    from excursions.study.calibrate import check_targets

    base, zero = _scores(0.05, 0.04, 0.3), _scores(0.02, 0.01, 0.2, fmt=0.3)
    curve = [{"results": {"gsm": base, "hard": _scores(0.0, 0.0, 0.1)}}]
    guess = {"gsm": {"pass@8": 0.01}, "hard": {"pass@8": 0.06}}
    row = lambda seed, after: {"index": 0, "seed": seed, "base": base, "before": zero, "after": after}
    won, lost = _scores(0.12, 0.10, 0.35), _scores(0.12, 0.04, 0.35)  # the second: answers up, verified not
    not_double = _scores(0.09, 0.08, 0.35)  # above both intervals but < 2x the base's 5%
    targets = {name[:2] + str(i): met for i, (name, met, _) in enumerate(check_targets(curve, [
        row(0, won), row(1, won), row(2, lost)], guess))}
    assert targets == {"T10": True, "T21": True, "T42": False, "T43": False, "T44": False, "T45": True}
    t1 = lambda runs: check_targets(curve, runs, guess)[0][1]
    assert not t1([row(0, won), row(1, lost), row(2, not_double)])
    assert t1([row(0, won)]) and not t1([row(0, not_double)])
    # T2: pass@8 below the base's interval in one seed
    assert not check_targets(curve, [row(0, won), row(1, _scores(0.12, 0.1, 0.2))], guess)[1][1]
