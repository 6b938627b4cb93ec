"""Pretraining throughput and MFU on this machine: the fp32 matmul peak, then a training step of the
OLMo-2 size presets, eager and under torch.compile, measured in the same run.

    python benchmarks/pretrain_throughput.py                      # 1M and 3M, seq 512, batch 64
    python benchmarks/pretrain_throughput.py --sizes olmo2_1M --steps 6

MFU = achieved training FLOP/s (6N + attention, see excursions.flops) / measured fp32 matmul peak.
"""

from __future__ import annotations

import argparse
import time

import torch

from excursions.runtime import reuse_freed_memory
from excursions.config import ModelConfig
from excursions.flops import model_dims, train_flops_per_token
from excursions.flops import matmul_peak
from excursions.model import build_model
from excursions.optim import adamw


def step_rate(size: str, compiled: bool, seq_len: int, batch: int, steps: int) -> tuple[float, float]:
    """(tokens/s, training FLOP/s): median over `steps` timed steps after warm-up."""
    model = build_model(ModelConfig(size=size), 2048, 0, 0, 1, seed=0)
    opt = adamw(model, 1e-3, (0.9, 0.95), 0.1)
    fn = torch.compile(model) if compiled else model
    x = torch.randint(0, 2048, (batch, seq_len))
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        fn(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
    dt = sorted(times)[len(times) // 2]
    n, layers, d = model_dims(model)
    tps = batch * seq_len / dt
    return tps, tps * train_flops_per_token(n, layers, d, seq_len)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["olmo2_1M", "olmo2_3M"])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    reuse_freed_memory()  # as the CLI does; process-wide, so both sides of the comparison get it
    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads)\n")
    print(f"| model | mode | tokens/s | GFLOP/s | MFU |\n|---|---|---:|---:|---:|")
    for size in args.sizes:
        for compiled in (False, True):
            tps, flops = step_rate(size, compiled, args.seq_len, args.batch, args.steps)
            mode = "torch.compile" if compiled else "eager"
            print(f"| {size} | {mode} | {tps:,.0f} | {flops / 1e9:.0f} | {100 * flops / peak:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
