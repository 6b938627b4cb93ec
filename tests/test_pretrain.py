"""Pretraining end to end on the micro setting: outputs where the docs say, and exact resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from excursions.config import load_config
from excursions.errors import UserError
from excursions.checkpoint import META, checkpoints, read_json, write_json
from excursions.train.pretrain import Batches, Interleave, Return, pretrain


def test_run_directory_has_every_documented_output(micro_run, micro_cfg):
    assert (micro_run / "config.toml").exists()
    for family in ("gsm", "hard"):
        for split in ("train", "val", "test"):
            assert (micro_run / "world" / family / f"{split}.jsonl").exists()
    assert (micro_run / "world" / "general" / "mc_test.jsonl").exists()
    assert (micro_run / "tokenizer" / "tokenizer.json").exists()
    ckpts = checkpoints(micro_run)
    assert [c["step"] for c in ckpts] == micro_cfg.pretrain.checkpoint_steps()
    assert not list((micro_run / "resume").glob("*"))  # resume states are pruned once finished
    for c in ckpts:
        path = Path(c["path"])
        model = AutoModelForCausalLM.from_pretrained(path)  # every checkpoint is a standard HF dir
        tok = AutoTokenizer.from_pretrained(path)
        assert model.config.vocab_size == len(tok)
        assert c["tokens"] == c["step"] * micro_cfg.pretrain.tokens_per_step
        assert 0.0 <= c["gsm_greedy"] <= 1.0


def test_training_reduces_the_loss(micro_run):
    rows = [json.loads(line) for line in (micro_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(map(lambda r: r["loss"] == r["loss"], rows))  # finite (no NaN)
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first - 1.0
    ckpts = checkpoints(micro_run)
    assert ckpts[-1]["val_loss"] < ckpts[0]["val_loss"]


def test_rerunning_a_finished_run_changes_nothing(micro_run, micro_cfg, capsys):
    final = sorted((micro_run / "checkpoints").glob("step*"))[-1] / "model.safetensors"
    before = final.stat().st_mtime_ns
    pretrain(micro_cfg, micro_run, progress=False)
    assert final.stat().st_mtime_ns == before
    assert "val loss" in capsys.readouterr().out


def test_a_different_config_in_the_same_directory_is_refused(micro_run):
    other = load_config("smoke", overrides=["pretrain.lr=1e-4"])
    with pytest.raises(UserError, match="different settings"):
        pretrain(other, micro_run, progress=False)


def test_batches_are_a_pure_function_of_the_step():
    import numpy as np

    ids = np.arange(1000, dtype=np.uint16)
    a, b = Batches(ids, 10, 4, seed=0), Batches(ids, 10, 4, seed=0)
    assert torch.equal(a.batch(30), b.batch(30))  # epoch 1, no history needed
    assert torch.equal(a.batch(3), b.batch(3))
    seen = torch.cat([a.batch(s) for s in range(a.per_epoch)]).flatten().tolist()
    assert len(seen) == len(set(seen))  # an epoch never repeats a window


def _final_weights(run: Path) -> dict:
    final = sorted((run / "checkpoints").glob("step*"))[-1]
    return load_file(final / "model.safetensors")


def test_resume_after_kill_9_ends_with_identical_weights(tmp_path, micro_run, micro_overrides):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "excursions.cli", "pretrain", "--preset", "smoke", "--out", str(run), "--quiet",
           *micro_overrides]
    kills = 0
    for wait_for in ("resume", "checkpoints"):  # kill once after a resume state, once after a checkpoint
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            states = list((run / wait_for).glob("step*")) if (run / wait_for).exists() else []
            if states and (wait_for == "resume" or len(states) >= 2):
                break
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1, "the run finished before it could be killed; make the micro run longer"
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed, straight = _final_weights(run), _final_weights(micro_run)
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # no step logged twice


def test_the_same_command_gives_the_same_weights(tmp_path, micro_run, micro_overrides):
    """The default study is reproducible on one machine: its preset pretrains eagerly, and a fresh run in another
    process ends at exactly the weights of the fixture's run (compiled kernels would not: they part at step 14)."""
    assert load_config("tiny").pretrain.compile is False
    run = tmp_path / "again"
    done = subprocess.run([sys.executable, "-m", "excursions.cli", "pretrain", "--preset", "smoke", "--out", str(run),
                           "--quiet", *micro_overrides], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    again, first = _final_weights(run), _final_weights(micro_run)
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


# ------------------------------------------------------------------------------------ excursion and return


def _excursion(tmp_path: Path, checkpoint: Path, scale: float = 1.0) -> Path:
    """An excursion's final/ directory off `checkpoint`: its weights unchanged (what an excursion at LR 0 leaves;
    the configs refuse lr = 0) or scaled, and a meta.json naming its source as posttrain's does."""
    final = tmp_path / f"excursion-{scale}" / "final"
    final.mkdir(parents=True)
    save_file({k: v * scale for k, v in load_file(checkpoint / "model.safetensors").items()}, final / "model.safetensors")
    write_json(final / META, {"source": str(checkpoint)})
    return final


def test_a_return_after_a_zero_lr_excursion_ends_at_the_plain_runs_weights(tmp_path, micro_run, micro_cfg):
    first = sorted((micro_run / "checkpoints").glob("step*"))[0]
    out = tmp_path / "returned"
    pretrain(micro_cfg, out, progress=False, branch=Return(first, _excursion(tmp_path, first)))
    kept = [c["step"] for c in checkpoints(out)]
    assert kept == [c["step"] for c in checkpoints(micro_run)][1:]  # the run's later checkpoints, none before
    returned, straight = _final_weights(out), _final_weights(micro_run)
    for name in straight:  # same AdamW moments, LR schedule and data order from the checkpoint's step on
        assert torch.equal(returned[name], straight[name]), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == read_json(first / META)["step"] + 1
    assert not (out / "corpus").exists()  # it reads the run's data, it does not build its own


def test_a_return_continues_from_the_excursions_weights(tmp_path, micro_run, micro_overrides):
    first = sorted((micro_run / "checkpoints").glob("step*"))[0]
    excursion = _excursion(tmp_path, first, scale=0.5)
    out = tmp_path / "returned"
    cmd = [sys.executable, "-m", "excursions.cli", "pretrain", "--return-from", str(excursion), "--out", str(out),
           "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)  # the config is the run's own config.toml
    assert done.returncode == 0, done.stderr
    returned, straight = _final_weights(out), _final_weights(micro_run)
    assert any(not torch.equal(returned[k], straight[k]) for k in straight)
    # finished: the same command again changes nothing; another excursion in the same directory is refused
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    assert torch.equal(_final_weights(out)[next(iter(straight))], returned[next(iter(straight))])
    other = subprocess.run([*cmd[:5], str(_excursion(tmp_path, first, scale=0.25)), *cmd[6:]], capture_output=True,
                           text=True)
    assert other.returncode != 0 and "different settings" in other.stderr


def test_a_return_with_other_pretraining_settings_is_refused(tmp_path, micro_run, micro_overrides):
    first = sorted((micro_run / "checkpoints").glob("step*"))[0]
    other = load_config("smoke", overrides=micro_overrides + ["pretrain.lr=1e-4"])
    with pytest.raises(UserError, match="pretrained with other settings"):
        pretrain(other, tmp_path / "x", progress=False, branch=Return(first, _excursion(tmp_path, first)))
    assert not (tmp_path / "x").exists()  # nothing half-written


# ------------------------------------------------------------------------------------------ interleaved RL

INTERLEAVE = ["rl.prompts_per_step=4", "rl.group_size=4", "rl.max_new_tokens=24", "interleave.every=4"]


def test_interleaving_at_weight_0_is_plain_pretraining_exactly(tmp_path, micro_run, micro_overrides):
    first = sorted((micro_run / "checkpoints").glob("step*"))[0]
    cfg = load_config("smoke", overrides=micro_overrides + INTERLEAVE + ["interleave.mode=average",
                                                                         "interleave.weight=0"])
    out = tmp_path / "interleaved"
    pretrain(cfg, out, progress=False, branch=Interleave(first))
    mixed, plain = _final_weights(out), _final_weights(micro_run)
    for name in plain:  # the RL update is computed, its AdamW steps, and none of it reaches the weights
        assert torch.equal(mixed[name], plain[name]), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    start = read_json(first / META)["step"]
    assert [r["step"] for r in rows if r["rl/step"] >= 0] == list(range(start + 4, rows[-1]["step"] + 1, 4))
    assert all("rl/reward" in r for r in rows if r["rl/step"] >= 0)
    flops = [read_json(Path(c["path"]) / META)["flops"] for c in checkpoints(out)]
    assert 0 < flops[0]["extra"] < flops[-1]["extra"]  # RL's rollouts and updates, counted apart


def test_interleaved_rl_resumes_after_kill_9_to_the_uninterrupted_result(tmp_path, micro_run, micro_overrides):
    first = sorted((micro_run / "checkpoints").glob("step*"))[0]
    straight = tmp_path / "straight"
    pretrain(load_config("smoke", overrides=micro_overrides + INTERLEAVE), straight, progress=False,
             branch=Interleave(first))
    assert any(not torch.equal(a, b) for a, b in zip(_final_weights(straight).values(),
                                                     _final_weights(micro_run).values()))
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "excursions.cli", "pretrain", "--interleave-from", str(first), "--out", str(run),
           "--quiet", *INTERLEAVE]  # the config is the run's own, with the overrides on it
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    after_rl = read_json(first / META)["step"] + 4  # killed once a resume state holds an RL step's AdamW moments
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and \
            not any(int(s.name[4:]) > after_rl for s in run.glob("resume/step*")):
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed, "the run finished before it could be killed; make the micro run longer"
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed, uninterrupted = _final_weights(run), _final_weights(straight)
    for name in uninterrupted:  # both AdamW states, the RL steps' prompts and samples: all resumed
        assert torch.equal(resumed[name], uninterrupted[name]), name
