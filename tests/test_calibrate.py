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
    for r in result["rl"]:
        assert r["minutes"] > 0 and 0 <= r["after"]["pass@1"]["mean"] <= 1
        assert r["before"]["pass@1"]["lo"] <= r["before"]["pass@1"]["mean"] <= r["before"]["pass@1"]["hi"]
    names = [t[0] for t in result["targets"]]
    assert len(names) == 3 + 2 + 2 and "hard pass@4 below gsm at the same checkpoint" in names
    assert 0 < result["guess"]["gsm"]["pass@1"] <= result["guess"]["gsm"]["pass@4"] < 1
    table = calibration_table(result)
    assert table.count("\n| 0 | ") == 2 and "\n| guess | | | " in table and "| gsm pass@4 |" in table
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
