"""FLOP counts, so runs with different rollout counts or model sizes compare per FLOP.

Training a token costs 6N (forward + backward through the weights) plus attention, 12 * L * d * T
(PaLM's appendix B convention, full T x T scores); generating a token costs 2N plus attention over
the T tokens of context so far, 4 * L * d * T.

    >>> train_flops_per_token(n_params=1_000_000, n_layers=4, d_model=128, seq_len=512)
    9145728
    >>> generate_flops_per_token(n_params=1_000_000, n_layers=4, d_model=128, context=100)
    2204800
"""

from __future__ import annotations


def train_flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> int:
    return 6 * n_params + 12 * n_layers * d_model * seq_len


def generate_flops_per_token(n_params: int, n_layers: int, d_model: int, context: int) -> int:
    return 2 * n_params + 4 * n_layers * d_model * context


def model_dims(model) -> tuple[int, int, int]:
    """(parameters, layers, width) of an HF causal LM, for the counts above."""
    cfg = model.config
    return sum(p.numel() for p in model.parameters()), cfg.num_hidden_layers, cfg.hidden_size


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 FLOP/s of an n x n matmul here: the yardstick a wall time is read against (these machines' speed
    drifts up to 2x from hour to hour)."""
    import time

    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
