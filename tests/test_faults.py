"""Fault hardening (issue 8): a diverged loss stops its run before saving it and fails its unit alone; a damaged
checkpoint is found by its checksums and rebuilt, never loaded; a full disk is one clear line with nothing left
half-written; kill -9 at random moments loses nothing (slow)."""

from __future__ import annotations

import errno
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from excursions import cli
from excursions.config import load_config
from excursions.errors import Diverged
from excursions.study.runner import planned, run_study, status_table
from excursions.study.store import DB
from excursions.train import posttrain
from excursions.checkpoint import MANIFEST, META, TRAINER_STATE, read_json, sha256

from test_posttrain import POST
from test_study import _evaluations

# A small study: one checkpoint, rl and sft from it, gsm evaluations only.
SMALL = ["study.checkpoints=[2]", "study.seed_checkpoint=2", "study.recipes=['rl', 'sft']", "study.extra_seeds=[]",
         "study.experiments=['recipes']", "study.tasks=['gsm']", "eval.problems=8", "eval.n=4", "eval.ks=[1, 2, 4]",
         "eval.bootstrap=20", "eval.shots=1"]
OUT = "s"  # studies run with a relative --out, so a copied study is the same study (its digests name paths)


@pytest.fixture(scope="module")
def small_args(micro_overrides):
    return micro_overrides + POST + SMALL


@pytest.fixture(scope="module")
def small_cfg(small_args):
    return load_config("smoke", overrides=small_args)


@pytest.fixture(scope="module")
def small_ref(tmp_path_factory, small_cfg, micro_run):
    """The small study, finished without faults (its pretraining is the micro run's, copied in)."""
    root = tmp_path_factory.mktemp("small")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        shutil.copytree(micro_run, planned(small_cfg, OUT)[0].path)
        run_study(small_cfg, OUT, progress=False)
    finally:
        os.chdir(cwd)
    return root / OUT


def _unit(cfg, prefix: str):
    """The unit as the study in ./OUT names it, its paths absolute."""
    return next(u for u in planned(cfg, OUT) if u.id.startswith(prefix))


def _copy_without(small_ref: Path, cfg, prefix: str) -> Path:
    """The finished small study, copied into the working directory, with one unit's run directory removed."""
    shutil.copytree(small_ref, OUT)
    shutil.rmtree(_unit(cfg, prefix).path)
    return Path(OUT)


def _completions(out: Path) -> dict[str, int]:
    db = sqlite3.connect(out / DB)
    rows = dict(db.execute("SELECT id, completions FROM units").fetchall())
    db.close()
    return rows


# ------------------------------------------------------------------------------------------ NaN / inf


def test_a_diverged_unit_fails_alone_and_the_study_goes_on(small_ref, small_cfg, small_args, tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.chdir(tmp_path)
    out = _copy_without(small_ref, small_cfg, "rl/")
    rl, rl_eval = _unit(small_cfg, "rl/"), _unit(small_cfg, "eval/rl/")
    real, calls = posttrain.grpo_update, []

    def nan_at_step_2(*args, **kwargs):
        stats = real(*args, **kwargs)
        calls.append(1)
        return {**stats, "train/pg_loss": math.nan} if len(calls) == 2 else stats

    monkeypatch.setattr(posttrain, "grpo_update", nan_at_step_2)
    code = cli.main(["study", "--preset", "smoke", "--out", OUT, "--quiet", *small_args])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"{rl.id} failed: rl: train/pg_loss not finite at step 2" in err
    assert re.search(rf"1 unit\(s\) failed: {re.escape(rl.id)} \(1 more blocked", err)
    # the run kept its last good resume state and saved nothing of the diverged step
    assert [p.name for p in (rl.path / "resume").iterdir()] == ["step000001"] and not (rl.path / "final").exists()
    assert all(torch.isfinite(t).all() for t in load_file(rl.path / "resume/step000001/model.safetensors").values())
    steps = [json.loads(line)["step"] for line in (rl.path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]  # 0: the starting model's tracked pass@k
    # status lists the failure with its error, and the unit that reads it as blocked; the rest is done
    lines = {line.split()[0]: line for line in status_table(out).splitlines()[1:-1]}
    assert "failed" in lines[rl.id] and "not finite at step 2" in lines[rl.id]
    assert "blocked" in lines[rl_eval.id] and f"waits for {rl.id}" in lines[rl_eval.id]
    assert sum("done" in line for line in lines.values()) == 4
    assert (out / "report" / "report.md").exists()

    monkeypatch.setattr(posttrain, "grpo_update", real)  # the fault gone, a rerun resumes the unit and finishes
    run_study(small_cfg, out, progress=False)
    assert _evaluations(out) == pytest.approx(_evaluations(small_ref))


@pytest.mark.parametrize("recipe, fault", [("sft", "inf gradient"), ("parallel", "nan loss")])
def test_every_loop_stops_before_saving_a_diverged_step(recipe, fault, micro_run, small_cfg, tmp_path, monkeypatch):
    source = sorted((micro_run / "checkpoints").glob("step*"))[-1]
    real, calls = posttrain.sft_gradients, []

    def faulty(model, *args, **kwargs):
        loss = real(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2 and fault == "inf gradient":  # a finite loss whose update breaks the weights
            next(model.parameters()).grad.fill_(math.inf)
        return math.nan if len(calls) == 2 and fault == "nan loss" else loss

    monkeypatch.setattr(posttrain, "sft_gradients", faulty)
    what = "the weights" if fault == "inf gradient" else "train/loss"
    with pytest.raises(Diverged, match=rf"^{recipe}: {what} not finite at step 2; stopped without saving"):
        posttrain.posttrain(str(source), recipe, small_cfg, tmp_path / "run", micro_run / "world", progress=False)
    assert [p.name for p in (tmp_path / "run" / "resume").iterdir()] == ["step000001"]
    assert not (tmp_path / "run" / "final").exists()


def test_pretraining_stops_at_an_infinite_learning_rate_and_keeps_its_good_states(micro_cfg, tmp_path, monkeypatch):
    from excursions.train import pretrain as pt

    tokens_per_step, real = micro_cfg.pretrain.tokens_per_step, pt.pretrain_lr
    infinite_from_step_7 = lambda name, tokens, *a: math.inf if tokens > 6 * tokens_per_step else real(name, tokens, *a)
    monkeypatch.setattr(pt, "pretrain_lr", infinite_from_step_7)
    with pytest.raises(Diverged, match=r"^pretrain: (loss|grad_norm|the weights) not finite at step (7|8)"):
        pt.pretrain(micro_cfg, tmp_path / "run", progress=False)
    saved = list((tmp_path / "run").glob("*/step*/model.safetensors"))
    assert [p.parent.name for p in saved] == ["step000005"]  # save_every = 5; nothing saved from step 7 on
    assert all(torch.isfinite(t).all() for t in load_file(saved[0]).values())


# ------------------------------------------------------------------------------------------ checksums


def test_a_damaged_checkpoint_is_reported_and_its_unit_rerun(small_ref, small_cfg, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(small_ref, OUT)
    rl = _unit(small_cfg, "rl/")
    weights = rl.path / "final" / "model.safetensors"
    with weights.open("r+b") as f:  # truncated, as by a full disk or a copy cut short
        f.truncate(weights.stat().st_size // 2)
    capfd.readouterr()
    run_study(small_cfg, OUT, progress=False)
    err = capfd.readouterr().err
    assert f"excursions: {weights}: does not match its recorded checksum (truncated or corrupt); " \
           f"re-running {rl.id}" in err
    runs = _completions(Path(OUT))
    assert runs[rl.id] == 2 and runs[f"eval/{rl.id}"] == 2  # rebuilt, then evaluated again (its results went with it)
    assert runs[_unit(small_cfg, "sft/").id] == 1
    assert _evaluations(Path(OUT)) == pytest.approx(_evaluations(small_ref))
    # rebuilt byte for byte, but for what is no result: its metadata (wall time, absolute world path) and the
    # process's global RNG state at the end (saved for resuming; it depends on what ran before in the process)
    want = read_json(small_ref / rl.path.relative_to(Path(OUT).resolve()) / "final" / MANIFEST)
    got = read_json(rl.path / "final" / MANIFEST)
    assert {k: v for k, v in got.items() if k not in (META, TRAINER_STATE)} == \
           {k: v for k, v in want.items() if k not in (META, TRAINER_STATE)}
    db = sqlite3.connect(Path(OUT) / DB)
    stored = db.execute("SELECT sha256 FROM files WHERE unit = ? AND file = ?",  # paths relative to the study
                        (rl.id, str(weights.relative_to(Path(OUT).resolve())))).fetchone()
    assert stored == (sha256(weights),) == (want["model.safetensors"]["sha256"],)


def test_a_damaged_pretraining_checkpoint_is_written_again(micro_run, micro_cfg, tmp_path, capfd):
    from excursions.train.pretrain import pretrain

    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    middle = sorted((run / "checkpoints").glob("step*"))[1]
    before = read_json(middle / MANIFEST)
    (middle / "model.safetensors").write_bytes(b"\0" * before["model.safetensors"]["bytes"])  # same size, wrong bytes
    pretrain(micro_cfg, run, progress=False)
    assert f"{middle / 'model.safetensors'}: does not match its recorded checksum" in capfd.readouterr().err
    # the same run again from the checkpoint before: the same weights and metadata (the optimizer's pickle may
    # differ in layout after a resume, not in content: the final weights equal an uninterrupted run's, tested)
    after = read_json(middle / MANIFEST)
    assert {k: v for k, v in after.items() if k != "trainer_state.pt"} == \
           {k: v for k, v in before.items() if k != "trainer_state.pt"}
    assert sha256(middle / "model.safetensors") == before["model.safetensors"]["sha256"]


def test_a_study_never_loads_a_damaged_source(small_ref, small_cfg, tmp_path, monkeypatch):
    from excursions.errors import UserError
    from excursions.study.units import execute

    monkeypatch.chdir(tmp_path)
    shutil.copytree(small_ref, OUT)
    ev = _unit(small_cfg, "eval/rl/")
    (Path(ev.source) / "final" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"final/config.json does not match its recorded checksum"):
        execute(ev, small_cfg, Path(OUT), progress=False)


# ------------------------------------------------------------------------------------------ full disk


def test_a_full_disk_is_one_clear_line_and_leaves_nothing_half_written(small_ref, small_cfg, small_args, tmp_path,
                                                                       monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = _copy_without(small_ref, small_cfg, "rl/")
    rl = _unit(small_cfg, "rl/")
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"\0" * 100)  # part of the file made it before the disk filled
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", disk_full)
    code = cli.main(["study", "--preset", "smoke", "--out", OUT, "--quiet", *small_args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert re.fullmatch(r"excursions: error: cannot write \S+/trainer_state.pt: No space left on device; free some "
                        r"space, then run the same command again .*", err)
    assert not [p for p in out.rglob("*") if p.name.startswith((".tmp-", ".old-"))]  # no half-written state
    assert not (rl.path / "resume").exists() or not list((rl.path / "resume").iterdir())
    assert "No space left on device" in next(line for line in status_table(out).splitlines() if line.startswith(rl.id))

    monkeypatch.setattr(torch, "save", real_save)  # space again: the same command finishes the study
    assert cli.main(["study", "--preset", "smoke", "--out", OUT, "--quiet", *small_args]) == 0
    assert _evaluations(out) == pytest.approx(_evaluations(small_ref))


def test_an_unwritable_output_directory_is_one_clear_line(small_args, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes into it anyway (tests may run as root): it refuses as for anyone else
        real_mkdir = Path.mkdir

        def refuse(self, *args, **kwargs):
            if ro in self.parents:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", refuse)
    code = cli.main(["study", "--preset", "smoke", "--out", str(ro / "s"), "--quiet", *small_args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith(f"excursions: error: cannot write {ro / 's'}: Permission denied; choose a writable --out")
    assert not (ro / "s").exists()


# ------------------------------------------------------------------------------------------ kill -9


def _progress(out: Path) -> int:
    """Training steps logged plus evaluation records written: grows as a study works (a resume may take back a
    few steps)."""
    try:
        steps = sum(len(p.read_text().splitlines()) for p in out.rglob("metrics.jsonl"))
        return steps + len(list((out / "evals").rglob("*.json")))
    except FileNotFoundError:  # a directory renamed into place under the walk: ask again
        return _progress(out) if out.exists() else 0


@pytest.mark.slow
def test_kill_9_at_random_moments_ten_times_then_the_same_results(small_args, tmp_path):
    """A study from scratch (pretraining, rl, sft, sft_rl, parallel and evaluations) killed at ten seeded random
    moments in a row, each time run again, then run to the end: every unit completed once, and the results equal
    an uninterrupted run's. A moment is a random amount of progress (steps logged, records written) into each run
    plus a random fraction of a second, so the kills land in the work, not in the imports, however fast the
    machine is that day."""
    args = small_args + ["study.recipes=['rl', 'sft', 'sft_rl', 'parallel']", "rl.steps=6", "parallel.steps=6",
                         "sft.epochs=3"]
    cmd = [sys.executable, "-m", "excursions.cli", "study", "--preset", "smoke", "--out", OUT, "--quiet", *args]
    (tmp_path / "ref").mkdir()
    assert subprocess.run(cmd, cwd=tmp_path / "ref", capture_output=True).returncode == 0
    total = _progress(tmp_path / "ref" / OUT)
    (tmp_path / "killed").mkdir()
    out, rng, trials = tmp_path / "killed" / OUT, random.Random(8), []
    for _ in range(10):
        proc = subprocess.Popen(cmd, cwd=tmp_path / "killed", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = _progress(out) + rng.randint(2, total // 8)
        while proc.poll() is None and _progress(out) < target:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        db = out / DB
        rows = sqlite3.connect(db).execute("SELECT id, status FROM units").fetchall() if db.exists() else []
        running = [i for i, status in rows if status == "running"]  # where the kill landed
        trials.append((proc.returncode, running[0] if running else "-", sum(status == "done" for _, status in rows)))
    final = subprocess.run(cmd, cwd=tmp_path / "killed", capture_output=True, text=True)
    ref = tmp_path / "ref" / OUT
    killed = sum(t[0] == -signal.SIGKILL for t in trials)
    recovered = sum(t[0] in (-signal.SIGKILL, 0) for t in trials) + (final.returncode == 0)
    identical = _evaluations(out).keys() == _evaluations(ref).keys() and _evaluations(out) == _evaluations(ref)
    print(f"\nkill -9: {len(trials)} trials (exit code, unit killed in, units done): {trials}; killed {killed}, "
          f"runs that went on from where the last stopped {recovered} of {len(trials) + 1}, identical: {identical}")
    assert final.returncode == 0, final.stderr
    assert killed >= 8 and recovered == len(trials) + 1
    assert max(_completions(out).values()) == 1  # no unit ran to completion twice
    assert identical
