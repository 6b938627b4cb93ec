"""Optimizers and learning-rate schedules: small pure functions, tested against exact values.

    lr = cosine_lr(tokens_seen, peak=3e-3, warmup=500_000, total=16_000_000, min_ratio=0.1)
    lr = pretrain_lr("wsd", tokens_seen, 3e-3, 500_000, 16_000_000, 0.1, decay=0.2)
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


def wsd_lr(tokens: float, peak: float, warmup: float, total: float, min_ratio: float, decay: float) -> float:
    """Warmup-stable-decay: the same linear warmup, `peak` held, then a linear decay to `peak * min_ratio`
    over the last `decay` share of `total` tokens (flat after). Every checkpoint before the decay is taken
    at the peak LR, so "how far along" and "how annealed" are separate (Hagele et al. 2024, MiniCPM).

    >>> [round(wsd_lr(t, 1.0, 10, 100, 0.1, 0.2), 4) for t in (5, 10, 80, 90, 100, 120)]
    [0.5, 1.0, 1.0, 0.55, 0.1, 0.1]
    """
    if tokens < warmup:
        return peak * tokens / warmup
    start = total * (1.0 - decay)
    progress = min(1.0, max(0.0, tokens - start) / max(1.0, total - start))
    return peak * (1.0 - (1.0 - min_ratio) * progress)


SCHEDULES = {
    "cosine": lambda tokens, peak, warmup, total, min_ratio, decay: cosine_lr(tokens, peak, warmup, total, min_ratio),
    "wsd": wsd_lr,
}


def pretrain_lr(schedule: str, tokens: float, peak: float, warmup: float, total: float, min_ratio: float,
                decay: float) -> float:
    """The pretraining LR after `tokens` under a named schedule (`pretrain.schedule`)."""
    return SCHEDULES[schedule](tokens, peak, warmup, total, min_ratio, decay)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; none on embeddings or norm gains (OLMo-2 practice)."""
    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    get = getattr(model, "get_input_embeddings", None)
    embeddings = {id(get().weight)} if get is not None and get() is not None else set()
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: torch.nn.Module, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=1e-8)


def constant_with_warmup(step: int, peak: float, warmup: int) -> float:
    """`peak` after a linear warmup over `warmup` steps (post-training's schedule).

    >>> constant_with_warmup(0, 1e-4, 4), constant_with_warmup(3, 1e-4, 4), constant_with_warmup(9, 1e-4, 4)
    (2.5e-05, 0.0001, 0.0001)
    """
    return peak * min(1.0, (step + 1) / warmup) if warmup > 0 else peak


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


class ParallelAveraging:
    """The paper's Algorithm 1: RL and SFT updates from two independent AdamW states, averaged.

    Per step: snapshot theta_bar; each optimizer turns its own gradient (both computed at theta_bar)
    into an update delta from theta_bar; then theta <- theta_bar + w * delta_RL + (1 - w) * delta_SFT
    (w = 1/2 in the paper). The two optimizers never share first or second moments.
    """

    def __init__(self, model: torch.nn.Module, rl_lr: float, sft_lr: float, rl_betas=(0.9, 0.999),
                 rl_weight_decay: float = 0.01, sft_betas=(0.9, 0.999), sft_weight_decay: float = 0.01):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.rl = adamw(model, rl_lr, rl_betas, rl_weight_decay)
        self.sft = adamw(model, sft_lr, sft_betas, sft_weight_decay)

    @classmethod
    def of(cls, model: torch.nn.Module, rl: torch.optim.Optimizer, sft: torch.optim.Optimizer) -> "ParallelAveraging":
        """Over two optimizers made elsewhere (interleaved pretraining: the "SFT" side is the run's own AdamW)."""
        avg = cls.__new__(cls)
        avg.params, avg.rl, avg.sft = [p for p in model.parameters() if p.requires_grad], rl, sft
        return avg

    @torch.no_grad()
    def step(self, g_rl: list[torch.Tensor], g_sft: list[torch.Tensor], w: float = 0.5) -> None:
        snapshot = [p.detach().clone() for p in self.params]
        for p, g in zip(self.params, g_rl):
            p.grad = g
        self.rl.step()
        after_rl = [p.detach().clone() for p in self.params]
        for p, s, g in zip(self.params, snapshot, g_sft):
            p.copy_(s)
            p.grad = g
        self.sft.step()
        # theta_bar + w delta_RL + (1 - w) delta_SFT, written from the SFT side's result so that w = 0 is exactly
        # the SFT side's update (plain pretraining, where that side is the run's own optimizer)
        for p, a in zip(self.params, after_rl):
            p.add_(a - p, alpha=w)
            p.grad = None

    def state_dict(self) -> dict:
        return {"rl": self.rl.state_dict(), "sft": self.sft.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rl.load_state_dict(state["rl"])
        self.sft.load_state_dict(state["sft"])
