"""GRPO updates, an SFT step and a parallel-averaging step of a tiny OLMo-2 on a fixed synthetic rollout batch
(random tokens, real advantages), run as one process (`python dist_worker.py none OUT`) or under torchrun (`... ddp OUT`, `... fsdp OUT`); rank 0 saves the
final weights to OUT. tests/test_dist.py compares them."""

import os
import sys

import torch
from safetensors.torch import save_file
from transformers import Olmo2Config, Olmo2ForCausalLM

from excursions.config import RLConfig, SFTConfig
from excursions.objectives import ADVANTAGES
from excursions.optim import ParallelAveraging
from excursions.train.sft import sft_gradients
from excursions.train import dist
from excursions.train.posttrain import parallel_gradients
from excursions.train.grpo import Rollouts, grpo_update
from excursions.train.logprobs import batch_logprobs


def main(strategy: str, out: str) -> None:
    d = dist.setup(strategy) if strategy != "none" else dist.SINGLE
    cfg = RLConfig(prompts_per_step=8, group_size=4, minibatches=2, micro_batch=4, kl_coef=0.1, lr=1e-3)
    torch.manual_seed(0)
    model = Olmo2ForCausalLM(Olmo2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                         pad_token_id=0, bos_token_id=1, eos_token_id=1))
    P, G, W, T = cfg.prompts_per_step, cfg.group_size, 5, 6
    g = torch.Generator().manual_seed(1)
    ids, att = torch.zeros(P * G, W + T, dtype=torch.long), torch.zeros(P * G, W + T, dtype=torch.long)
    mask = torch.zeros(P * G, T)
    for i in range(P):
        plen = int(torch.randint(2, W + 1, (1,), generator=g))
        prompt = torch.randint(2, 64, (plen,), generator=g)
        for j in range(G):
            r, n = i * G + j, int(torch.randint(1, T + 1, (1,), generator=g))
            ids[r, W - plen : W], att[r, W - plen : W] = prompt, 1
            ids[r, W : W + n], att[r, W : W + n], mask[r, :n] = torch.randint(2, 64, (n,), generator=g), 1, 1
    rewards = torch.randint(0, 2, (P * G,), generator=g).float()
    old = batch_logprobs(model, ids, att, ids[:, W:], mask, W, cfg)
    ref = old + 0.1 * torch.randn(old.shape, generator=g) * mask

    rows = torch.tensor([i * G + j for i in dist.shard(P, d, cfg.minibatches) for j in range(G)])
    local = Rollouts(ids[rows], att[rows], mask[rows], W, rewards[rows], ADVANTAGES["grpo"](rewards, G)[rows],
                     old[rows], ref[rows], {})
    module = dist.wrap(model, d)
    # plain SGD: the update is the gradient itself, so a wrong loss scale shows (Adam would normalise it away)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    if not d.active:
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, out + ".init")
    for _ in range(2):
        grpo_update(module, opt, local, cfg, d, flops_model=model)
    # an SFT batch of 5 rows: 3 on rank 0, 2 on rank 1, different token counts
    sft_ids = torch.randint(2, 64, (5, 7), generator=g)
    sft_mask = (torch.arange(7) < torch.tensor([7, 3, 5, 2, 6])[:, None]).float()
    sft_batch = (sft_ids, sft_mask.long(), torch.randint(2, 64, (5, 7), generator=g), sft_mask)
    sft_gradients(module, sft_batch, d=d)
    opt.step()
    opt.zero_grad(set_to_none=True)
    # parallel averaging: both gradients at the same weights, two AdamW states; a large eps keeps Adam from
    # normalising float noise in near-zero gradients into full-size steps
    avg = ParallelAveraging(module, rl_lr=1e-3, sft_lr=3e-3)
    for group in avg.rl.param_groups + avg.sft.param_groups:
        group["eps"] = 1e-2
    g_rl, g_sft, _, _ = parallel_gradients(module, avg.params, local, sft_batch, cfg, SFTConfig(), d)
    avg.step(g_rl, g_sft, 0.5)
    state = dist.full_state(module, d)
    if d.main:
        save_file({k: v.contiguous() for k, v in state.items()}, out)
    dist.close()


if __name__ == "__main__":  # pytest's doctest collection imports this file
    main(sys.argv[1], sys.argv[2])
    # leave without the interpreter's teardown: gloo's threads can still abort a rank there, after every result is
    # written and the group destroyed ("terminate called without an active exception", ~1 suite run in 10)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
