"""LR schedule, optimizer groups and the checkpoint schedule against hand-computed values."""

from __future__ import annotations

import math

import pytest

from excursions.config import PretrainConfig
from excursions.model import build_model
from excursions.config import ModelConfig
from excursions.optim import cosine_lr, param_groups, pretrain_lr

PEAK, WARM, TOTAL, RATIO = 1e-3, 100, 1100, 0.1


@pytest.mark.parametrize(
    "tokens, expected",
    [
        (0, 0.0),
        (50, 0.5e-3),  # half way up the warmup
        (100, 1e-3),  # end of warmup: the peak
        (600, 1e-3 * (0.1 + 0.9 * 0.5)),  # half way down the cosine: cos(pi/2) = 0
        (350, 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))),  # a quarter of the way
        (1100, 1e-4),  # the end: peak * min_ratio
        (5000, 1e-4),  # flat after the end
    ],
)
def test_cosine_lr_exact_values(tokens, expected):
    assert cosine_lr(tokens, PEAK, WARM, TOTAL, RATIO) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_cosine_lr_without_warmup_starts_at_peak():
    assert cosine_lr(0, PEAK, 0, TOTAL, RATIO) == PEAK


@pytest.mark.parametrize(
    "tokens, expected",
    [
        (50, 0.5e-3),  # the same warmup as the cosine
        (100, 1e-3),
        (880, 1e-3),  # held at the peak until the decay starts at 1100 * (1 - 0.2) = 880 tokens
        (880 + 110, 1e-3 * (1 - 0.9 * 0.5)),  # half way down the linear decay
        (1100, 1e-4),  # the end: peak * min_ratio
        (5000, 1e-4),
    ],
)
def test_wsd_lr_exact_values(tokens, expected):
    assert pretrain_lr("wsd", tokens, PEAK, WARM, TOTAL, RATIO, 0.2) == pytest.approx(expected, rel=1e-12)


def test_the_schedule_is_chosen_by_name_and_cosine_ignores_the_decay_share():
    assert pretrain_lr("cosine", 350, PEAK, WARM, TOTAL, RATIO, 0.2) == cosine_lr(350, PEAK, WARM, TOTAL, RATIO)
    assert pretrain_lr("wsd", 350, PEAK, WARM, TOTAL, RATIO, 0.2) == PEAK


def test_no_weight_decay_on_embeddings_and_norms():
    model = build_model(ModelConfig(size="olmo2_500K"), 512, 0, 0, 1, seed=0)
    decay, no_decay = param_groups(model, 0.1)
    emb = model.get_input_embeddings().weight
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert any(p is emb for p in no_decay["params"]) and not any(p is emb for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"] if p is not emb)
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_geometric_checkpoint_steps():
    # 1000 tokens per step; 1k .. 64k tokens geometric over 4 checkpoints: 1k, 4k, 16k, 64k.
    p = PretrainConfig(tokens=64_000, seq_len=100, batch_size=10, warmup_tokens=0, first_checkpoint=1000,
                       num_checkpoints=4, eval_problems=0)
    assert p.checkpoint_steps() == [1, 4, 16, 64]


def test_linear_and_explicit_checkpoint_steps():
    # 100 tokens per step, 100 steps.
    p = PretrainConfig(tokens=10_000, seq_len=20, batch_size=5, warmup_tokens=0, first_checkpoint=100,
                       checkpoints="linear", num_checkpoints=4)
    assert p.checkpoint_steps() == [25, 50, 75, 100]
    p = PretrainConfig(tokens=10_000, seq_len=20, batch_size=5, warmup_tokens=0, first_checkpoint=100,
                       checkpoint_tokens=(260, 5000))
    assert p.checkpoint_steps() == [3, 50, 100]  # 260 tokens rounds to step 3; the end is always kept
