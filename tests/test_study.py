"""The study runner: planning, the store, the report, the lock, and resuming after kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import chdir
from dataclasses import replace
from pathlib import Path

import pytest

from excursions.checkpoint import META, read_json
from excursions.config import load_config, to_toml
from excursions.errors import ConfigError, UserError
from excursions.study.plan import Unit
from excursions.study.runner import estimate, plan, preview, run_study, status_table, study_lock
from excursions.study.store import DB

from test_posttrain import POST

STUDY = ["study.checkpoints=[1, 2]", "study.recipes=['rl', 'sft', 'sft_gold', 'sft_rl', 'parallel']",
         "study.extra_seeds=[1]", "study.seed_checkpoint=2", "eval.problems=8", "eval.n=4", "eval.ks=[1, 2, 4]",
         "eval.bootstrap=20", "eval.shots=1", "world.general.mc_test=20", "study.nshot=[0, 1, 2]",
         "study.sft_epochs=2", "study.rollouts=[2, 4]", "study.split_problems=20", "study.split_n=8",
         "study.rollout_steps=2", "study.scale_model=olmo2_3M", "study.scale_targeted=0.5",
         "study.allocators=['uniform', 'adaptive']", "study.large_k=8", "study.large_k_problems=4",
         "study.returns=['rl']", "study.interleaves=['alternate']", "interleave.every=16"]


def micro_study(micro_overrides, *extra):
    return load_config("smoke", overrides=micro_overrides + POST + STUDY + list(extra))


def test_plan_orders_units_and_names_them_by_settings(micro_overrides, tmp_path):
    cfg = micro_study(micro_overrides)
    units = plan(cfg, tmp_path)
    ids = [u.id for u in units]
    assert ids[0] == "pretrain"
    # + each scaling variant's final checkpoint on hard, + the first checkpoint with large_k samples, + the final
    # checkpoint of the pretraining that RL from the first checkpoint returned to, + that of the interleaved run
    assert sum(u.kind == "base_eval" for u in units) == 2 + 3 + 1 + 1 + 1
    # 2 checkpoints x 5 recipes x 1 seed + 1 extra RL seed, each trained then evaluated; one SFT epochs run
    # + the rollouts experiment: one difficulty-split unit, then RL on each split (easy, hard) with 2 and 4 rollouts
    # + the scaling experiment: two more pretraining runs, and RL on hard from each of three final checkpoints
    # + the allocators: RL from the first checkpoint with uniform and with adaptive rollouts (tracked, no eval)
    # + direct RL from the first checkpoint evaluated with large_k samples
    assert sum(u.kind == "posttrain" for u in units) == 16 + 3 + 2 and sum(u.kind == "eval" for u in units) == 11 + 3 + 1
    assert [u.id for u in units if u.kind == "pretrain"] == ["pretrain", "scaling/N/pretrain", "scaling/D/pretrain"]
    from excursions.study.plan import configured

    variant = {u.id.split("/")[1]: configured(cfg, 0, u.overrides) for u in units if u.id.endswith("/pretrain")}
    assert variant["N"].model.size == "olmo2_3M" and variant["N"].data == cfg.data
    d = variant["D"]
    assert d.pretrain.tokens == 60000 and d.model == cfg.model
    assert d.data.targeted * d.pretrain.tokens == pytest.approx(20000)  # the extra half, all of it targeted math
    assert d.data.math * d.pretrain.tokens == pytest.approx(cfg.data.math * 40000)  # the rest as before
    assert all(dict((k, v) for _, k, v in u.overrides).get("family") == "hard"
               for u in units if u.id.startswith("scaling/") and u.kind == "posttrain")
    splits = next(u for u in units if u.kind == "splits")
    rollouts = [u for u in units if u.id.startswith("rollouts/")]
    assert [u.id.split("/")[1:3] for u in rollouts] == [["easy", "n2"], ["easy", "n4"], ["hard", "n2"], ["hard", "n4"]]
    assert all(Path(u.world).parent == splits.path.parent and ids.index(splits.id) < ids.index(u.id) for u in rollouts)
    assert rollouts[1].overrides == (("rl", "group_size", 4), ("rl", "steps", 2), ("rl", "prompts_per_step", 4),
                                     ("rl", "track_every", 1))
    assert splits.checkpoint == units[2].checkpoint  # the last chosen checkpoint (units: pretrain, base x 2, ...)
    epochs = next(u for u in units if u.id.startswith("sft_epochs/"))
    assert epochs.recipe == "sft" and epochs.overrides == (("sft", "epochs", 2), ("sft", "track_every", 3))  # 20 problems / 8
    for i, u in enumerate(units):
        if u.kind == "eval":
            trained = next(j for j, t in enumerate(units) if t.kind == "posttrain" and str(t.path) == u.source)
            assert trained < i  # evaluated after it is trained
    assert any(u.id.startswith("rl/") and u.id.endswith("/s1") for u in units)
    from excursions.study.plan import dependencies

    deps = dependencies(units, cfg, tmp_path)
    (back,) = [u for u in units if u.kind == "return"]
    assert back.id == f"return/rl/{units[1].checkpoint}" and f"rl/{units[1].checkpoint}/s0" in deps[back.id]
    assert back.id in deps[back.id + "/eval"] and ids.index(back.id) < ids.index(back.id + "/eval")
    (mixed,) = [u for u in units if u.kind == "interleave"]
    assert mixed.id == f"interleave/alternate/{units[1].checkpoint}" and "pretrain" in deps[mixed.id]

    # a changed RL setting moves exactly the units that depend on it
    other = {u.id: u.path for u in plan(micro_study(micro_overrides, "rl.lr=2e-3"), tmp_path)}
    moved = {u.id.split("/")[0] for u in units if other[u.id] != u.path}
    assert moved == {"rl", "sft_rl", "parallel", "eval", "rollouts", "allocators", "scaling", "large_k", "return",
                     "interleave"}
    assert all(other[u.id] == u.path for u in units
               if u.id.startswith(("pretrain", "base/", "sft/", "sft_gold/", "sft_epochs/")))


def test_more_pretraining_runs_add_their_own_units_and_leave_the_studys_own_unchanged(micro_overrides, tmp_path):
    from excursions.study.plan import backbone, configured, dependencies

    own = plan(micro_study(micro_overrides), tmp_path)
    cfg = micro_study(micro_overrides, "study.pretrain_seeds=[7]")
    units = plan(cfg, tmp_path)
    assert [u for u in units if not u.id.startswith("p7/")] == own  # same ids, paths, order
    other = [u for u in units if u.id.startswith("p7/")]
    assert [u.id.removeprefix("p7/") for u in other] == [u.id for u in backbone(micro_study(micro_overrides), tmp_path)]
    assert {u.path for u in other}.isdisjoint({u.path for u in own}) and len({u.id for u in units}) == len(units)
    pretraining = other[0]
    assert pretraining.id == "p7/pretrain" and configured(cfg, 0, pretraining.overrides).seed == 7
    deps = dependencies(units, cfg, tmp_path)
    assert all("p7/pretrain" in deps[u.id] for u in other if u.kind == "base_eval")  # its own checkpoints
    with pytest.raises(UserError, match="study's own seed"):
        plan(micro_study(micro_overrides, "study.pretrain_seeds=[0]"), tmp_path)


def test_a_study_over_two_pretraining_runs_reports_each_runs_verdict_and_the_pooled_one(micro_overrides, tmp_path,
                                                                                         monkeypatch):
    """With capability matching: the base's validation scores first, then (the plan made again) direct RL from each
    run's first checkpoint that reaches the target. The micro model scores 0 everywhere, so its scores are read as
    50% once written: the target then picks the first checkpoint, which the study does not branch from."""
    from excursions.study.experiments import matched
    from excursions.study.results import Stat

    monkeypatch.setattr(matched, "val_score", lambda u, cfg: Stat(0.5, 0.4, 0.6) if u.path.is_file() else None)
    cfg = micro_study(micro_overrides, "study.pretrain_seeds=[1]", "study.recipes=['rl']", "study.extra_seeds=[]",
                      "study.checkpoints=[2]", "study.match_targets=[0.3]",
                      "study.experiments=['recipes', 'base_vs_rl', 'runs', 'matched']")
    run_study(cfg, tmp_path / "s", progress=False)
    db = sqlite3.connect(tmp_path / "s" / DB)
    done = {r[0] for r in db.execute("SELECT id FROM units WHERE status = 'done'")}
    db.close()
    assert {"pretrain", "p1/pretrain"} <= done
    assert any(u.startswith("p1/eval/rl/") for u in done) and any(u.startswith("p1/base/") for u in done)
    assert sum(u.startswith(("match/val/", "p1/match/val/")) for u in done) == 6  # every checkpoint of both runs
    first = matched.all_checkpoints(cfg, tmp_path / "s")[0][0]
    assert {f"match/eval/rl/{first}/s0", f"p1/match/eval/rl/{first}/s0"} <= done  # the second round's
    report = (tmp_path / "s" / "report" / "report.md").read_text()
    assert "Pooled over 2 pretraining runs (the multi-bootstrap" in report
    head = next(line for line in report.splitlines() if line.startswith("| claim (paper)"))
    assert head.startswith("| claim (paper) | this run | run 2 | pooled over runs | robust |")
    row = next(line for line in report.splitlines() if line.startswith("| RL is effective early"))
    assert row.count("|") == head.count("|")  # a cell in every column: this run, run 2, pooled, robust, comparison
    matched_row = next(line for line in report.splitlines() if line.startswith("| Beyond the paper: at equal base"))
    assert "base val pass@1 >= 30%" in matched_row and "| not run |" not in matched_row
    assert (tmp_path / "s" / "report" / "figures" / "matched.png").is_file()
    ckpt = matched.token_label(matched.all_checkpoints(cfg, tmp_path / "s")[2][1])  # the runs side by side
    assert f"| {ckpt} | 0.0 / 0.0 (sd 0.0) | 0.0 / 0.0 (sd 0.0) | +0.0 [+0.0, +0.0] (2 runs) |" in report
    assert (tmp_path / "s" / "report" / "figures" / "runs.png").is_file()


def test_capability_matching_picks_each_runs_first_checkpoint_at_or_above_a_target(micro_overrides, tmp_path):
    """Hand-made validation scores: run 1 reaches 5% at its first checkpoint (not one the study branches from: RL
    from it is planned, under match/) and 30% at the second; run 2 reaches both only at its third (a checkpoint the
    study already branches from: nothing more to run). Nothing is chosen before every score of a run is in."""
    from excursions.study.experiments.matched import matches, matched_units, val_units
    from excursions.study.plan import all_checkpoints, pretraining_runs

    cfg = micro_study(micro_overrides, "study.pretrain_seeds=[1]", "study.match_targets=[0.3, 0.05]")
    out = tmp_path / "s"
    assert {u.id for u in matched_units(cfg, out)} == {u.id for p, run in pretraining_runs(cfg)
                                                        for u in val_units(run, out, p)}  # scores not in yet
    curves = {"": [0.1, 0.4, 0.7], "p1/": [0.0, 0.02, 0.35]}
    for prefix, run in pretraining_runs(cfg):
        for u, score in zip(val_units(run, out, prefix), curves[prefix]):
            result = u.path.with_suffix("") / "gsm-val-1shot.json"
            result.parent.mkdir(parents=True, exist_ok=True)
            metrics = {"pass@1": {"mean": score, "lo": score, "hi": score}}
            result.write_text(json.dumps({"task": "gsm", "shots": cfg.eval.shots, "metrics": metrics}))
            u.path.write_text(json.dumps([str(result)]))
    names = [c[0] for c in all_checkpoints(cfg, out)]
    assert len(names) == len(curves[""])
    assert matches(cfg, out, "")[1] == {0.3: names[1], 0.05: names[0]}
    assert matches(replace(cfg, seed=1), out, "p1/")[1] == {0.3: names[2], 0.05: names[2]}
    extra = [u for u in matched_units(cfg, out) if "/val/" not in u.id]
    assert [(u.id, u.kind) for u in extra] == [(f"match/base/{names[0]}", "base_eval"),
                                               (f"match/rl/{names[0]}/s0", "posttrain"),
                                               (f"match/eval/rl/{names[0]}/s0", "eval")]
    backbone_rl = next(u for u in plan(replace(cfg, study=replace(cfg.study, checkpoints=(0,), extra_seeds=())), out)
                       if u.id == f"rl/{names[0]}/s0")
    assert extra[1].path == backbone_rl.path  # the same run a study branching from that checkpoint makes
    with pytest.raises(UserError, match="match_metric pass@3 is not among eval.ks"):
        plan(micro_study(micro_overrides, "study.match_targets=[0.3]", "study.match_metric=pass@3"), tmp_path)


def test_sft_digests_cover_the_tracking_settings_sft_reads(micro_overrides, tmp_path):
    """SFT tracks test pass@k with [rl]'s track_problems and track_n: a change there moves the SFT runs too (a new
    directory, tracked again), not only the RL ones."""
    units = {u.id: u.path for u in plan(micro_study(micro_overrides), tmp_path)}
    other = {u.id: u.path for u in plan(micro_study(micro_overrides, "rl.track_n=7"), tmp_path)}
    moved = {uid.split("/")[0] for uid in units if other[uid] != units[uid]}
    assert {"sft", "sft_gold", "sft_epochs", "rl", "sft_rl", "parallel"} <= moved


def test_bad_study_settings_fail_before_anything_is_written(micro_overrides, tmp_path):
    with pytest.raises(ConfigError, match=r"study.recipes\[0\].*unknown recipe 'grpo'"):
        micro_study(micro_overrides, "study.recipes=['grpo']")
    with pytest.raises(ConfigError, match="study.tasks: needs a math task"):
        micro_study(micro_overrides, "study.tasks=['general']")
    with pytest.raises(ConfigError, match="study.experiments"):
        micro_study(micro_overrides, "study.experiments=['fig99']")
    with pytest.raises(UserError, match="checkpoint index 7 is out of range"):
        run_study(micro_study(micro_overrides, "study.checkpoints=[7]"), tmp_path / "s", progress=False)
    with pytest.raises(UserError, match="seed_checkpoint must be one of study.checkpoints"):
        run_study(micro_study(micro_overrides, "study.seed_checkpoint=0"), tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_every_experiment_file_is_one_registered_experiment():
    """`study.experiments` is checked against the files of study/experiments/ without importing them; each file
    registers the experiment it is named after, at its own place in the report."""
    from excursions.config.runs import experiment_names
    from excursions.study.experiments import EXPERIMENTS, active

    assert sorted(EXPERIMENTS) == experiment_names()
    assert len({e.order for e in EXPERIMENTS.values()}) == len(EXPERIMENTS)
    assert [e.name for e in active(load_config("smoke", overrides=["study.experiments=['nshot', 'recipes']"]))] == \
        ["nshot", "recipes"]
    assert active(load_config("smoke"))[0].name == "recipes"  # () = all, in the paper's order


def test_one_study_per_directory(tmp_path):
    with study_lock(tmp_path):
        with pytest.raises(UserError, match=rf"another study is running in .* \(pid {os.getpid()}\)"):
            with study_lock(tmp_path):
                pass
    with study_lock(tmp_path):  # released on exit
        pass


@pytest.fixture(scope="module")
def micro_study_dir(tmp_path_factory, micro_overrides):
    out = tmp_path_factory.mktemp("study") / "s"
    run_study(micro_study(micro_overrides), out, progress=False)
    return out


def _evaluations(out: Path) -> dict:
    db = sqlite3.connect(out / DB)
    rows = db.execute("SELECT e.unit, e.task, e.shots, m.metric, m.mean FROM evaluations e "
                      "JOIN metrics m ON m.evaluation = e.id").fetchall()
    rows += db.execute("SELECT unit, task, shots, 'acc', acc FROM evaluations WHERE acc IS NOT NULL").fetchall()
    db.close()
    return {r[:4]: r[4] for r in rows}


def test_study_writes_report_and_database(micro_study_dir):
    out = micro_study_dir
    db = sqlite3.connect(out / DB)
    assert {r[0] for r in db.execute("SELECT status FROM units")} == {"done"}
    assert db.execute("SELECT COUNT(*) FROM units").fetchone()[0] == 1 + 2 + 1 + 22 + 1 + 5 + 11 + 2 + 2 + 4  # + allocators, large k, branches
    assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 3
    p1 = {(u, shots): mean for u, shots, mean in db.execute(
        "SELECT e.unit, e.shots, m.mean FROM evaluations e JOIN metrics m ON m.evaluation = e.id "
        "WHERE e.task = 'hard' AND m.metric = 'pass@1'")}
    md = (out / "report" / "report.md").read_text()
    gain = {}
    for v in ("D", "N"):  # the gain is over the base at its better prompt, few-shot or 0-shot
        shots = {k for u, k in p1 if u == f"scaling/{v}/base"}
        assert len(shots) == 2, shots  # few-shot and 0-shot
        gain[v] = p1[f"scaling/{v}/eval", 0] - max(p1[f"scaling/{v}/base", k] for k in shots)
    # the claim compares the gains per problem, paired: its row's two arms are the two gains
    assert f"| D's RL gain vs N's | pass@1 | {100 * gain['D']:.1f} | {100 * gain['N']:.1f} |" in md
    # every recipe at both checkpoints, every base checkpoint few-shot and 0-shot, on gsm and general
    for recipe in ("base", "rl", "sft", "sft_gold", "sft_rl", "parallel"):
        ck = {r[0] for r in db.execute("SELECT checkpoint FROM evaluations WHERE recipe = ? AND task = 'gsm'",
                                       (recipe,))}
        assert len(ck) == 2, recipe
    assert {r[0] for r in db.execute("SELECT shots FROM evaluations WHERE unit LIKE 'base/%' AND task = 'gsm'")} == {0, 1}
    assert {r[0] for r in db.execute("SELECT shots FROM evaluations WHERE unit LIKE 'nshot/%'")} == {0, 1, 2}
    first, last = [r[0] for r in db.execute("SELECT DISTINCT checkpoint FROM evaluations "
                                            "WHERE unit NOT LIKE 'scaling/%' ORDER BY tokens")]
    n_problems = db.execute("SELECT COUNT(*) FROM problems p JOIN evaluations e ON e.id = p.evaluation "
                            "WHERE e.unit = ? AND e.task = 'gsm'", (f"eval/rl/{first}/s0",)).fetchone()[0]
    assert n_problems == 8
    steps = db.execute("SELECT COUNT(DISTINCT step) FROM training WHERE unit = ?", (f"rl/{first}/s0",)).fetchone()
    assert steps[0] == 1 + 3  # step 0 (the start's tracked pass@k), then the 3 steps
    stages = {r[0] for r in db.execute("SELECT DISTINCT stage FROM training WHERE unit LIKE 'sft_rl/%'")}
    assert stages == {"rl"}  # its SFT is the study's sft run, trained once
    path = dict(db.execute("SELECT id, path FROM units"))
    source = json.loads((out / path[f"sft_rl/{first}/s0"] / "rl" / "final" / "excursions.json").read_text())["source"]
    assert Path(source).parts[-2:] == (Path(path[f"sft/{first}/s0"]).name, "final")
    # the SFT epochs run: test pass@1 tracked at the end of each of its 2 epochs
    tracked = db.execute("SELECT t.step, e.value FROM training t JOIN training e ON e.unit = t.unit AND e.step = t.step "
                         "AND e.key = 'epoch' WHERE t.unit LIKE 'sft_epochs/%' AND t.key = 'eval/gsm/pass@1'").fetchall()
    assert [round(epoch, 6) for _, epoch in tracked] == [1.0, 2.0]

    # difficulty splits: the last checkpoint's (n, c) on the sampled training problems; a split holds only
    # problems of its kind, and a split smaller than one RL step's prompts is skipped, not trained on
    from excursions.evals.passk import difficulty

    counts = db.execute("SELECT p.problem, p.n, p.c FROM problems p JOIN evaluations e ON e.id = p.evaluation "
                        "WHERE e.unit LIKE 'splits/%'").fetchall()
    assert len(counts) == 20 and {n for _, n, _ in counts} == {8}
    kind = {pid: difficulty(c, n) for pid, n, c in counts}
    (split_dir,) = (out / "splits").glob("*/")
    for split in ("easy", "hard"):
        trained = db.execute("SELECT COUNT(DISTINCT step) FROM training WHERE unit LIKE ?",
                             (f"rollouts/{split}/n4/%",)).fetchone()[0]
        world = split_dir / split / "gsm" / "train.jsonl"
        if list(kind.values()).count(split) >= 4:  # rl.prompts_per_step
            assert trained == 1 + 2
            assert {json.loads(line)["id"] for line in world.read_text().splitlines()} <= \
                   {pid for pid, k in kind.items() if k == split}
        else:
            assert trained == 0 and not world.exists()
            assert len(list((out / "posttrain").glob(f"*/rollouts-{split}-*/skipped.json"))) == 2
    assert list(kind.values()).count("hard") >= 4  # a micro model solves almost nothing: the hard split trains

    # the report exists, embeds every figure, and states the numbers the database holds
    md = (out / "report" / "report.md").read_text()
    html = (out / "report" / "report.html").read_text()
    for fig in ("recipes", "base-vs-rl", "sharpening", "general", "parallel", "seeds", "nshot", "sft_epochs",
                "rollouts", "allocators", "scaling", "large_k", "returns", "convergence"):
        assert (out / "report" / "figures" / f"{fig}.png").stat().st_size > 1000
        assert f"figures/{fig}.png" in md
    assert html.count("data:image/png;base64,") == 14 + 1  # every section's figure, and the headline one on top
    # every training stage's end, and the claim that every run converged, from the stages' validation curves
    assert "## Convergence of every run" in md and "Every run trained to convergence" in md
    ends = db.execute("SELECT COUNT(*) FROM training WHERE key = 'convergence/checked' AND value = 1").fetchone()[0]
    assert ends >= 11  # the recipes' stages (sft_rl's SFT is the sft run's), the seeds', the splits' and more
    # the allocators: uniform and adaptive from the first checkpoint, tracked from step 0 on
    for allocator in ("uniform", "adaptive"):
        tracked = db.execute("SELECT COUNT(DISTINCT step) FROM training WHERE unit = ? AND key = 'eval/gsm/pass@1'",
                             (f"allocators/{allocator}/{first}",)).fetchone()[0]
        assert tracked == 1 + 2, allocator
    assert "adaptive beats uniform rollouts at equal FLOPs" in md
    # every claim has an experiment behind it; capability matching needs a base that reaches a target (the micro
    # model scores 0: the two-run study above covers it)
    assert [line for line in md.splitlines() if "| not run |" in line and "at equal base capability" not in line] == []
    # scaling: each variant's final checkpoint and its RL result evaluated on hard; the variants' checkpoints
    # stay out of the study's own curves
    hard = db.execute("SELECT u.id FROM evaluations e JOIN units u ON u.id = e.unit WHERE e.task = 'hard'").fetchall()
    assert {r[0] for r in hard} == {f"scaling/{v}/{k}" for v in ("base", "N", "D") for k in ("base", "eval")}
    assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 3
    # large k: the first checkpoint (few-shot and 0-shot) and direct RL from it, 8 samples on 4 problems; the
    # study's own evaluations of the same models (4 samples on 8 problems) stay as they were
    rows = db.execute("SELECT e.unit, p.n FROM problems p JOIN evaluations e ON e.id = p.evaluation "
                      "WHERE e.unit LIKE 'large_k/%'").fetchall()
    assert sorted({u for u, _ in rows}) == [f"large_k/base/{first}", f"large_k/rl/{first}"]
    assert len(rows) == 4 * 3 and {n for _, n in rows} == {8}
    assert {r[0] for r in db.execute("SELECT p.n FROM problems p JOIN evaluations e ON e.id = p.evaluation "
                                     "WHERE e.unit IN (?, ?) AND e.task = 'gsm'", (f"base/{first}",
                                                                                    f"eval/rl/{first}/s0"))} == {4}
    assert "Direct RL's lead over the base holds at the largest k" in md and "| rl vs base 0-shot | pass@8 |" in md
    # excursion and return: RL from the first checkpoint pretrained on to the last checkpoint, which is evaluated
    # as a base checkpoint is, on gsm and general, and kept out of the study's own base results
    (back,) = list((out / "returns").glob("rl-*"))
    assert [p.name for p in sorted((back / "checkpoints").glob("step*"))] == [last]
    shots = {r[0] for r in db.execute(f"SELECT shots FROM evaluations WHERE unit = 'return/rl/{first}/eval' "
                                      "AND task = 'gsm'")}
    assert shots == {0, 1}
    assert "Beyond the paper: from" in md and "does what rl taught persist through more pretraining" in md
    # interleaved RL: the same span of pretraining with GRPO steps mixed in, its FLOPs counted beyond the plain run's
    (mixed,) = list((out / "returns").glob("interleave-alternate-*"))
    assert [p.name for p in sorted((mixed / "checkpoints").glob("step*"))] == [last]
    assert read_json(mixed / "checkpoints" / last / META)["flops"]["extra"] > 0
    assert "does pretraining with RL mixed in (interleaved (alternate)) end above plain pretraining" in md
    # every claim decided by paired comparisons on the same problems: per-problem counts of every kind are stored
    assert db.execute("SELECT COUNT(*) FROM problems WHERE c_verified IS NULL AND n > 1").fetchone()[0] == 0
    general = db.execute("SELECT COUNT(*), MAX(p.n) FROM problems p JOIN evaluations e ON e.id = p.evaluation "
                         "WHERE e.task = 'general' AND e.unit = ?", (f"base/{first}",)).fetchone()
    assert general[0] > 0 and general[1] == 1  # each question's pick, right or not
    assert {r[0] for r in db.execute("SELECT DISTINCT metric FROM item_values")} == {"bits_per_byte", "kl"}
    kl = db.execute("SELECT COUNT(*) FROM item_values v JOIN evaluations e ON e.id = v.evaluation WHERE e.unit = ? "
                    "AND v.metric = 'kl'", (f"eval/rl/{first}/s0",)).fetchone()[0]
    assert kl > 0
    tracked_steps = lambda table, extra: {r[0] for r in db.execute(f"SELECT DISTINCT step FROM {table} WHERE unit = ? "
                                                                    f"{extra}", (f"rl/{first}/s0",))}
    assert tracked_steps("tracked", "") == tracked_steps("training", "AND key = 'eval/gsm/pass@1'")  # every one
    assert 0 in tracked_steps("tracked", "")  # from the start, per problem
    assert md.count("**Verdicts: ") == 1 and "| where | comparison | metric | A | B | A - B [95%] |" in md
    for verdict_line in [line for line in md.splitlines() if line.startswith("| RL is effective early")]:
        assert any(v in verdict_line for v in ("| reproduced |", "| not reproduced |", "| inconclusive |"))
    db.close()

    table = status_table(out)
    assert "done: 51" in table and f"rl/{last}/s1" in table

    from excursions.study.runner import export

    files = export(out)
    units_csv = next(f for f in files if f.name == "units.csv").read_text().splitlines()
    assert len(units_csv) == 1 + 51


def test_every_claim_of_every_experiment_is_decided_with_its_margin_and_quantifier(micro_study_dir, micro_overrides,
                                                                                 tmp_path):
    """Each experiment's claims, on the micro study, are Verdicts of Claims that carry a margin for every metric
    compared and a quantifier, and every comparison row uses its claim's margin: no claim reaches the report decided
    without them (Claim refuses to be built without either: tests/test_verdicts.py)."""
    from excursions.study.experiments import active
    from excursions.study.results import Results
    from excursions.study.store import Store
    from excursions.study.verdicts import QUANTIFIERS, Verdict

    cfg = micro_study(micro_overrides)
    with chdir(micro_study_dir):  # as the runner reads a study: its paths relative to the study directory
        res = Results(Store(Path(DB)), cfg, Path("."), plan(cfg, Path(".")))
        found = [v for e in active(cfg) for v in e.section(res, tmp_path).claims]
    assert len(found) >= 20
    for v in found:
        assert isinstance(v, Verdict) and v.claim.quantifier in QUANTIFIERS and v.claim.margins and v.claim.why
        assert all(r.margin == v.claim.margins[r.metric] for r in v.rows), v.text


def test_rollouts_reading_with_one_rollout_count_says_so(micro_study_dir, micro_overrides, tmp_path):
    """A study whose rollouts runs have a single rollout count gets a reading that says why there is no figure,
    not "no rollouts experiment"."""
    import shutil

    from excursions.study.experiments.rollouts import rollouts_experiment
    from excursions.study.results import Results
    from excursions.study.store import Store

    cfg = micro_study(micro_overrides)
    shutil.copy(micro_study_dir / DB, tmp_path / DB)
    store = Store(tmp_path / DB)
    results = lambda: Results(store, cfg, micro_study_dir, plan(cfg, micro_study_dir))
    with store.db:
        store.db.execute("UPDATE units SET status = 'stale' WHERE id LIKE 'rollouts/%/n4/%'")  # keep only G = 2
    assert "one rollout count (2 per prompt)" in rollouts_experiment(results(), tmp_path).reading
    with store.db:
        store.db.execute("UPDATE units SET status = 'stale' WHERE id LIKE 'rollouts/%'")
    assert "No rollouts experiment" in rollouts_experiment(results(), tmp_path).reading
    store.close()


def test_rerun_is_a_no_op_and_a_changed_setting_reruns_only_its_units(micro_study_dir, micro_overrides):
    out = micro_study_dir
    before = _evaluations(out)
    t0 = time.time()
    run_study(micro_study(micro_overrides), out, progress=False)
    db = sqlite3.connect(out / DB)
    assert db.execute("SELECT MAX(completions) FROM units").fetchone()[0] == 1
    assert db.execute("SELECT COUNT(*) FROM units WHERE finished > ?", (t0,)).fetchone()[0] == 0
    db.close()
    assert _evaluations(out) == before


def test_estimate_takes_a_units_own_time_else_the_median_of_its_kind_and_recipe_else_of_its_kind():
    unit = lambda id, kind, recipe="base": Unit(id, kind, Path(id), recipe=recipe)
    row = lambda id, kind, recipe, s: {"id": id, "kind": kind, "recipe": recipe, "seconds": s}
    measured = [row("rl/a/s0", "posttrain", "rl", 100.0), row("rl/c/s0", "posttrain", "rl", 300.0),
                row("rl/d/s0", "posttrain", "rl", 200.0), row("rl/a/s0", "posttrain", "rl", 110.0)]  # later wins
    got = estimate([unit("rl/a/s0", "posttrain", "rl"), unit("rl/b/s0", "posttrain", "rl"),
                    unit("sft/a/s0", "posttrain", "sft"), unit("eval/x", "eval")], measured)
    # rl/b: median of rl's 100, 300, 200, 110 = 155; sft: no sft run measured, posttrain's median is also 155
    assert got == {"rl/a/s0": 110.0, "rl/b/s0": 155.0, "sft/a/s0": 155.0, "eval/x": None}


def test_dry_run_prints_the_plan_and_its_estimate_and_writes_nothing(micro_study_dir, micro_overrides, tmp_path,
                                                                    capsys, monkeypatch):
    from excursions import cli
    from excursions.study import runner

    fresh = tmp_path / "fresh"
    argv = ["study", "--preset", "smoke", "--out", str(fresh), "--dry-run", *micro_overrides, *POST, *STUDY]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    units = plan(micro_study(micro_overrides), fresh)
    assert f"{len(units)} of {len(units)} units to run" in text
    assert "from unit times measured" in text and "on a 2-core" in text  # presets/smoke.costs.json, by kind
    assert f"{fresh / DB}" in text and not fresh.exists()
    monkeypatch.setattr(runner, "shipped_costs", lambda name: {})  # a preset that ships none
    assert cli.main(argv) == 0
    assert "no estimate: no unit of preset smoke has been timed" in capsys.readouterr().out and not fresh.exists()

    done = preview(micro_study(micro_overrides), micro_study_dir)
    assert f"0 of {len(units)} units to run, {len(units)} done" in done
    changed = preview(micro_study(micro_overrides, "rl.lr=3e-4"), micro_study_dir)  # timed here before: all known
    assert " 0 of " not in changed and "never measured" not in changed and "posttrain" in changed


def test_kill_9_then_rerun_finishes_with_the_same_results(micro_study_dir, micro_overrides, tmp_path):
    """Kill the study while a recipe is mid-run, run it again: same numbers as the uninterrupted study,
    and no unit ran to completion twice."""
    out = tmp_path / "s"
    args = micro_overrides + POST + STUDY
    cmd = [sys.executable, "-m", "excursions.cli", "study", "--preset", "smoke", "--out", str(out), "--quiet", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    target = None
    while time.time() < deadline and proc.poll() is None:  # wait until a recipe has saved a resume state
        resume = list((out / "posttrain").glob("*/*/resume/step*")) if (out / "posttrain").exists() else []
        if resume:
            target = resume[0]
            break
        time.sleep(0.2)
    assert target is not None, "the study never reached a recipe's resume state"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "interrupted" in status_table(out)

    run_study(micro_study(micro_overrides), out, progress=False)
    db = sqlite3.connect(out / DB)
    assert db.execute("SELECT MAX(completions) FROM units").fetchone()[0] == 1
    assert {r[0] for r in db.execute("SELECT status FROM units")} == {"done"}
    db.close()
    got, want = _evaluations(out), _evaluations(micro_study_dir)
    assert got.keys() == want.keys()
    assert got == pytest.approx(want)


def test_a_study_reads_and_resumes_the_same_from_any_directory(micro_study_dir, micro_overrides, tmp_path,
                                                               monkeypatch):
    """Paths in study.db and every digest are relative to the study directory: from another directory, with another
    spelling of DIR, `status` reads the same and a rerun runs nothing; `excursions report` writes the report again."""
    from excursions.cli import main

    before = status_table(micro_study_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spelled = Path(os.path.relpath(micro_study_dir, elsewhere))
    assert status_table(spelled) == before and "pending" not in before
    t0 = time.time()
    run_study(micro_study(micro_overrides), spelled, progress=False)
    db = sqlite3.connect(micro_study_dir / DB)
    assert db.execute("SELECT COUNT(*) FROM units WHERE finished > ?", (t0,)).fetchone()[0] == 0
    assert {p.split("/")[0] for (p,) in db.execute("SELECT path FROM units")} <= {"pretrain", "evals", "posttrain",
                                                                                  "splits", "returns"}
    db.close()
    report = micro_study_dir / "report" / "report.md"
    report.unlink()
    assert main(["report", str(spelled)]) == 0 and report.exists()


def test_a_study_from_before_relative_paths_resumes_with_its_digests(micro_overrides, micro_run, tmp_path,
                                                                      monkeypatch):
    """A study directory written before paths were relative to it (study.db spells them as its --out was given, from
    the directory it ran in, and its digests name those paths) is found done from any directory, reruns nothing,
    and keeps its paths."""
    from excursions.study.executors import run_local
    from excursions.study.plan import dependencies
    from excursions.study.runner import report_study, to_run
    from excursions.study.store import Store

    small_cfg = load_config("smoke", overrides=micro_overrides + POST + [  # one checkpoint, rl and sft, gsm only
        "study.checkpoints=[2]", "study.seed_checkpoint=2", "study.recipes=['rl', 'sft']", "study.extra_seeds=[]",
        "study.experiments=['recipes']", "study.tasks=['gsm']", "eval.problems=8", "eval.n=4", "eval.ks=[1, 2, 4]",
        "eval.bootstrap=20", "eval.shots=1"])
    started = tmp_path / "started-here"
    (started / "runs").mkdir(parents=True)
    monkeypatch.chdir(started)
    out = Path("runs") / "s"
    units = plan(small_cfg, out)  # as the runner planned before: with --out as given, from where it was given
    shutil.copytree(micro_run, units[0].path)
    with study_lock(out):
        store = Store(out / DB)
        run_local(to_run(units, small_cfg, store), dependencies(units, small_cfg, out), small_cfg, out, store, False)
        report_study(small_cfg, out, store, units)
        store.close()
    (out / "study.toml").write_text(to_toml(small_cfg))
    monkeypatch.chdir(tmp_path)
    assert "pending" not in status_table(started / out) and "done: 6" in status_table(started / out)
    t0 = time.time()
    run_study(small_cfg, started / out, progress=False)
    db = sqlite3.connect(started / out / DB)
    assert db.execute("SELECT COUNT(*) FROM units WHERE finished > ?", (t0,)).fetchone()[0] == 0
    assert all(p.startswith("runs/s/") for (p,) in db.execute("SELECT path FROM units"))
    db.close()
    moved = tmp_path / "moved"
    shutil.move(started / "runs", moved)
    with pytest.raises(UserError, match="was started as --out runs/s and its paths say so; it has been moved"):
        status_table(moved / "s")
