"""Optimizers and learning-rate schedules: small pure functions, tested against exact values.

    lr = cosine_lr(tokens_seen, peak=3e-3, warmup=500_000, total=16_000_000, min_ratio=0.1)
"""

from __future__ import annotations

import math

import torch


def cosine_lr(tokens: float, peak: float, warmup: float, total: float, min_ratio: float) -> float:
    """Linear warmup from 0 to `peak` over `warmup` tokens, then a cosine down to `peak * min_ratio`
    at `total` tokens (and flat after), as in the paper's Table 4 (units: tokens)."""
    if tokens < warmup:
        return peak * tokens / warmup
    progress = min(1.0, (tokens - warmup) / max(1.0, total - warmup))
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; none on embeddings or norm gains (OLMo-2 practice)."""
    embeddings = {id(model.get_input_embeddings().weight)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: torch.nn.Module, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=1e-8)
