"""Several processes, one result: GRPO under `torchrun` with DDP or FSDP2 (gloo, on CPUs so far).

    torchrun --nproc_per_node 2 $(which excursions) posttrain CKPT --recipe rl distributed.strategy=fsdp

Each rank samples its share of a step's prompts (per-sample random streams make the shards' completions
those of the whole batch, see `sampling.sample_keys`), computes its share of the loss against the global
normaliser, and the engine (`DistributedDataParallel`, or FSDP2's `fully_shard`) reduces the gradients:
the update is the single-process one (tested on CPU: 2 gloo ranks equal 1 process). Rollouts and tracking
run on a plain copy of the weights on every rank (with DDP the wrapped module itself; with FSDP2 a copy
refreshed from the full state after each update, as an inference engine would be). Only rank 0 writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from excursions.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    strategy: str = "none"  # none | ddp | fsdp
    device: str = "cpu"  # this process's device: the model's, and the reductions' (NCCL reduces on the GPU)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def setup(strategy: str, device: str = "cpu") -> Dist:
    """Join the process group `torchrun` describes in the environment (one process: nothing to join).
    On GPUs each process takes the one its LOCAL_RANK names and the group reduces with NCCL; on CPUs, gloo."""
    from excursions.model import pick_device

    dev = pick_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=str(dev))
    if strategy not in ("ddp", "fsdp"):
        raise UserError(f"distributed.strategy {strategy!r}: choose ddp or fsdp for a run of {world} processes")
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), strategy, str(dev))


def shard(n: int, d: Dist, parts: int = 1) -> list[int]:
    """The indices of `n` items (a step's prompts) this rank takes. The batch is cut into `parts` mini-batches
    first and each is split over the ranks, so a rank's k-th local mini-batch is its slice of the k-th global
    one (mini-batch updates stay those of one process).

    >>> shard(8, Dist(1, 2), parts=2)   # mini-batches [0..3], [4..7]; rank 1 takes the second half of each
    [2, 3, 6, 7]
    """
    if n % (parts * d.world):
        raise UserError(f"{n} prompts per step do not split into {parts} mini-batches over {d.world} ranks; "
                        f"make rl.prompts_per_step a multiple of {parts * d.world}")
    per, each = n // parts, n // parts // d.world
    return [m * per + d.rank * each + i for m in range(parts) for i in range(each)]


def wrap(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """The module forward and backward run through: DDP's wrapper, or the model sharded in place by FSDP2
    (each decoder layer, then the root)."""
    if not d.active:
        return model
    if d.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def full_state(model: torch.nn.Module, d: Dist) -> dict:
    """The full (unsharded) state dict on CPU, on every rank. A collective under FSDP: all ranks call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    inner = model.module if d.strategy == "ddp" and d.active else model
    if d.strategy != "fsdp" or not d.active:
        return {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    # without cpu_offload every rank gets the gathered tensors (with it, only rank 0 does)
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def optimizer_state(model, opt, d: Dist) -> dict:
    """The optimizer's full state (a collective under FSDP; only rank 0 receives it), for rank 0 to save."""
    if d.strategy != "fsdp" or not d.active:
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, opt, state: dict, d: Dist) -> None:
    if d.strategy != "fsdp" or not d.active:
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def sum_stats(stats: dict, d: Dist) -> dict:
    """Numeric stats summed over the ranks, in one reduction."""
    if not d.active or not stats:
        return stats
    keys = sorted(k for k, v in stats.items() if isinstance(v, (int, float)))
    t = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return {**stats, **dict(zip(keys, t.tolist()))}


def mean_stats(stats: dict, d: Dist) -> dict:
    """Per-rank means of equally sized shards, averaged over the ranks (what one process would log);
    totals (tokens, FLOPs) add up."""
    totals = ("rollout_tokens", "rollout_flops", "train_flops")
    summed = sum_stats(stats, d)
    return {k: v / d.world if k not in totals and isinstance(v, float) else v for k, v in summed.items()}


def global_sum(x: float, d: Dist) -> float:
    if not d.active:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t.item())


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def close() -> None:
    """Leave the process group once a run's work is done: a rank that exits with it still open can be aborted at
    interpreter shutdown by the backend's threads ("terminate called without an active exception", gloo)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
