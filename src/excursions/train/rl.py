"""GRPO: rollouts with the evaluator's sampler, verifiable rewards, clipped updates with a KL to the start.

    batch = rollout(policy, ref, tok, problems, cfg.rl, seed=step)       # generate -> score
    stats = grpo_update(policy, opt, batch, cfg.rl)                       # update (mini-batches)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from excursions.config import RLConfig
from excursions.data.problems import STOP_STRINGS, Problem, format_prompt
from excursions.flops import generate_flops_per_token, model_dims, train_flops_per_token
from excursions.objectives import ADVANTAGES, entropy, grpo_loss, token_logprobs, token_mean
from excursions.rewards import math_rewards
from excursions.sampling import sample


@dataclass(frozen=True)
class Rollouts:
    """One rollout batch, G completions per prompt grouped contiguously (N = prompts * G)."""

    input_ids: torch.Tensor  # [N, P + T] left-padded prompt, then the completion (right-padded)
    attention: torch.Tensor  # [N, P + T] 1 on real tokens
    response_mask: torch.Tensor  # [N, T] 1 on completion tokens
    prompt_width: int  # P
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    old_logp: torch.Tensor  # [N, T] under the policy that sampled them
    ref_logp: torch.Tensor | None  # [N, T] under the frozen reference (None without KL)
    stats: dict

    @property
    def responses(self) -> torch.Tensor:  # [N, T]
        return self.input_ids[:, self.prompt_width :]


def position_ids(attention: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: [N, L] -> [N, L]."""
    return (attention.cumsum(-1) - 1).clamp(min=0)


def response_logits(model, input_ids: torch.Tensor, attention: torch.Tensor, prompt_width: int, temperature: float):
    """Logits that predict each completion token, divided by the rollout temperature: [N, T, V]."""
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids(attention))
    return out.logits[:, prompt_width - 1 : -1] / temperature


@torch.no_grad()
def rollout(policy, ref, tok, problems: list[Problem], cfg: RLConfig, seed: int,
            stop: Sequence[str] = STOP_STRINGS) -> Rollouts:
    """Sample G completions per problem, score them, and compute advantages and old / ref log-probs."""
    prompts = [format_prompt(p.question) for p in problems]
    G = cfg.group_size
    s = sample(policy, tok, prompts, n=G, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed,
               stop=stop)
    answers = [p.answer for p in problems for _ in range(G)]
    rewards = torch.tensor(math_rewards(s.texts, answers, [f != "length" for f in s.finish], cfg.format_score))
    P = max(len(p) for p in s.prompt_ids)
    N, T = s.tokens.shape
    ids = torch.full((N, P + T), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros(N, P + T, dtype=torch.long)
    for i in range(N):
        p = s.prompt_ids[i // G]
        ids[i, P - len(p) : P], attention[i, P - len(p) : P] = torch.tensor(p), 1
    ids[:, P:], attention[:, P:] = s.tokens, s.mask.long()
    policy.eval()
    old = token_logprobs(response_logits(policy, ids, attention, P, cfg.temperature), s.tokens)
    ref_lp = None
    if ref is not None and cfg.kl_coef > 0:
        ref_lp = token_logprobs(response_logits(ref, ids, attention, P, cfg.temperature), s.tokens)
    policy.train()
    n_params, layers, d = model_dims(policy)
    gen_tokens = int(s.mask.sum())
    stats = {
        "train/reward": rewards.mean().item(),
        "train/accuracy": (rewards == 1.0).float().mean().item(),
        "train/format_rate": (rewards > 0).float().mean().item(),
        "train/response_length": s.lengths.float().mean().item(),
        "train/solved_groups": (rewards.view(-1, G).max(-1).values == 1.0).float().mean().item(),
        "rollout_tokens": gen_tokens,
        "rollout_flops": gen_tokens * generate_flops_per_token(n_params, layers, d, P + T // 2),
    }
    adv = ADVANTAGES[cfg.advantage](rewards, G)
    return Rollouts(ids, attention, s.mask, P, rewards, adv, old, ref_lp, stats)


def grpo_gradients(policy, batch: Rollouts, rows: torch.Tensor, cfg: RLConfig, scale: float = 1.0) -> dict:
    """Backpropagate the GRPO loss of `rows` of the batch (gradients accumulate); returns its stats."""
    logits = response_logits(policy, batch.input_ids[rows], batch.attention[rows], batch.prompt_width, cfg.temperature)
    mask = batch.response_mask[rows]
    logp = token_logprobs(logits, batch.responses[rows])
    loss, stats = grpo_loss(logp, batch.old_logp[rows], None if batch.ref_logp is None else batch.ref_logp[rows],
                            batch.advantages[rows], mask, cfg.clip_eps, cfg.kl_coef, cfg.kl, cfg.aggregation)
    (loss * scale).backward()
    with torch.no_grad():
        stats["entropy"] = token_mean(entropy(logits), mask)
    return {k: float(v) for k, v in stats.items()}


def grpo_update(policy, opt, batch: Rollouts, cfg: RLConfig) -> dict:
    """One optimizer step per mini-batch (whole groups each), as VeRL's actor update."""
    groups = batch.rewards.numel() // cfg.group_size
    per = groups // cfg.minibatches
    collected: list[dict] = []
    for m in range(cfg.minibatches):
        rows = torch.arange(m * per * cfg.group_size, (m + 1) * per * cfg.group_size)
        collected.append(grpo_gradients(policy, batch, rows, cfg))
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    stats = {f"train/{k}": sum(c[k] for c in collected) / len(collected) for k in collected[0]}
    stats["train_flops"] = training_flops(policy, batch.attention)
    return stats


def training_flops(model, attention: torch.Tensor) -> int:
    """FLOPs of one forward + backward over the real tokens of a padded batch [N, L]."""
    n_params, layers, d = model_dims(model)
    return int(attention.sum()) * train_flops_per_token(n_params, layers, d, attention.shape[1])
