"""Shared fixtures: the smallest settings that still exercise every code path, built in-process."""

from __future__ import annotations

import pytest

# A micro run: a ~20k-parameter model, 40k tokens, a handful of problems. Seconds, not minutes.
MICRO = [
    "world.gsm.train=20", "world.gsm.val=10", "world.gsm.test=20",
    "world.hard.train=20", "world.hard.val=10", "world.hard.test=20",
    "world.general.entities=30", "world.general.mc_test=20", "world.general.heldout_docs=10",
    "data.val_tokens=2000", "tokenizer.vocab_size=320", "tokenizer.train_chars=60000",
    "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.d_ff=64", "model.context=256",
    "pretrain.tokens=40000", "pretrain.seq_len=64", "pretrain.batch_size=8", "pretrain.warmup_tokens=2000",
    "pretrain.first_checkpoint=4000", "pretrain.num_checkpoints=3", "pretrain.save_every=5",
    "pretrain.eval_problems=4", "pretrain.eval_shots=1", "pretrain.threads=1",
]


@pytest.fixture(scope="session")
def micro_overrides() -> list[str]:
    return list(MICRO)


@pytest.fixture(scope="session")
def micro_cfg():
    from excursions.config import load_config

    return load_config("smoke", overrides=MICRO)


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory, micro_cfg):
    """A finished micro pretraining run directory (shared by the tests that only read it)."""
    from excursions.train.pretrain import pretrain

    out = tmp_path_factory.mktemp("micro") / "run"
    pretrain(micro_cfg, out, progress=False)
    return out
