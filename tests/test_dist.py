"""GRPO, SFT and parallel averaging under torchrun: 2 gloo ranks (DDP, and FSDP2's fully_shard) end where one process ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from excursions.config import load_config
from excursions.train.dist import Dist, shard
from excursions.train.posttrain import posttrain

RL = ["rl.until=steps", "rl.steps=3", "rl.prompts_per_step=4", "rl.group_size=4", "rl.minibatches=2", "rl.micro_batch=4",
      "rl.max_new_tokens=12", "rl.track_every=0", "rl.track_problems=4", "rl.track_n=2", "rl.save_every=2",
      "rl.lr=1e-3", "rl.kl_coef=0.01", "rl.temperature=1.0"]


def test_shard_takes_each_ranks_slice_of_every_minibatch():
    assert [shard(8, Dist(r, 2), parts=2) for r in (0, 1)] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert sorted(shard(12, Dist(0, 3)) + shard(12, Dist(1, 3)) + shard(12, Dist(2, 3))) == list(range(12))
    with pytest.raises(Exception, match="multiple of 4"):
        shard(6, Dist(0, 2), parts=2)


WORKER = Path(__file__).with_name("dist_worker.py")


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_grpo_update_on_two_ranks_equals_one_process(strategy, tmp_path):
    """Two GRPO updates with two mini-batches each (clipped ratio, KL, token-mean over micro-batches of uneven
    length) from a fixed rollout batch, each rank holding half of every mini-batch; then an SFT step whose rows
    split 3 / 2 over the ranks; then a parallel-averaging step (both gradients, two AdamW states). The engine
    reduces the gradients; the weights must be one process's."""
    one = subprocess.run([sys.executable, str(WORKER), "none", str(tmp_path / "one.safetensors")],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(str(WORKER), strategy, str(tmp_path / "two.safetensors"))
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    init = load_file(tmp_path / "one.safetensors.init")
    assert a.keys() == b.keys()
    moved = max((a[k] - init[k]).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-3 and diff < 1e-6, (moved, diff)


def test_weight_decay_groups_see_through_the_ddp_wrapper(tmp_path):
    """No decay on embeddings: the wrapper hides `get_input_embeddings`, the groups must not change."""
    import torch.distributed as td
    from torch.nn.parallel import DistributedDataParallel
    from transformers import Olmo2Config, Olmo2ForCausalLM

    from excursions.optim import param_groups

    td.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = Olmo2ForCausalLM(Olmo2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2))
        ids = lambda groups: [[id(p) for p in g["params"]] for g in groups]
        assert ids(param_groups(DistributedDataParallel(model), 0.1)) == ids(param_groups(model, 0.1))
        assert id(model.get_input_embeddings().weight) in ids(param_groups(model, 0.1))[1]
    finally:
        td.destroy_process_group()


@pytest.fixture(scope="module")
def single(micro_run, micro_overrides, tmp_path_factory):
    ckpt = sorted((micro_run / "checkpoints").glob("step*"))[-1]
    cfg = load_config("smoke", overrides=micro_overrides + RL)
    out = tmp_path_factory.mktemp("single") / "rl"
    posttrain(str(ckpt), "rl", cfg, out, micro_run / "world", progress=False)
    return ckpt, out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_posttrain_under_torchrun_samples_the_whole_batch_and_writes_once(single, micro_run, micro_overrides,
                                                                          tmp_path, strategy):
    """`torchrun ... excursions posttrain --recipe rl`: ranks share the prompts, rank 0 writes. The micro model
    never earns a reward, so the weights move by Adam-normalised float noise and are not compared here (the
    update itself is, above); the first step's rollouts, drawn from identical weights, must equal one process's."""
    ckpt, one = single
    out = tmp_path / "rl"
    proc = _torchrun("-m", "excursions.cli", "posttrain", str(ckpt), "--recipe", "rl", "--world",
                     str(micro_run / "world"), "--out", str(out), "--preset", "smoke", "--quiet", *micro_overrides,
                     *RL, f"distributed.strategy={strategy}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = lambda p: [json.loads(line) for line in (p / "metrics.jsonl").read_text().split("\n") if line]
    first_one, first_two = rows(one)[0], rows(out)[0]
    for k in ("train/reward", "train/format_rate", "train/response_length", "total_rollout_tokens"):
        assert first_one[k] == pytest.approx(first_two[k], rel=1e-5), k
    assert len(rows(out)) == 3 and (out / "final" / "model.safetensors").exists()
    assert json.loads((out / "final" / "excursions.json").read_text())["distributed"] == {"strategy": strategy,
                                                                                         "world_size": 2}
    assert not list(out.rglob("*.tmp*")) and not (out / "resume").exists()
