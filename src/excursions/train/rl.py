"""GRPO: rollouts with the evaluator's sampler, verifiable rewards, clipped updates with a KL to the start.

    batch = rollout(policy, ref, tok, problems, cfg.rl, seed=step)       # generate -> score
    stats = grpo_update(policy, opt, batch, cfg.rl)                       # update (mini-batches)
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from excursions.config import RLConfig
from excursions.data.problems import STOP_STRINGS, Problem, format_prompt
from excursions.flops import generate_flops_per_token, model_dims, train_flops_per_token
from excursions.objectives import ADVANTAGES, chunk_share, grpo_loss, logprob_entropy, normaliser
from excursions.rewards import math_rewards
from excursions.sampling import (is_olmo2, olmo2_forward, olmo2_heads, olmo2_weights, position_ids, prompt_mask,
                                 sample)
from excursions.train.dist import SINGLE, Dist, global_sum, sum_stats


@dataclass(frozen=True)
class Rollouts:
    """One rollout batch, G completions per prompt grouped contiguously (N = prompts * G)."""

    input_ids: torch.Tensor  # [N, P + T] left-padded prompt, then the completion (right-padded)
    attention: torch.Tensor  # [N, P + T] 1 on real tokens
    response_mask: torch.Tensor  # [N, T] 1 on completion tokens
    prompt_width: int  # P
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    old_logp: torch.Tensor | None  # [N, T] under the policy that sampled them (None: on-policy, one update)
    ref_logp: torch.Tensor | None  # [N, T] under the frozen reference (None without KL)
    stats: dict

    @property
    def responses(self) -> torch.Tensor:  # [N, T]
        return self.input_ids[:, self.prompt_width :]


def response_logits(model, input_ids: torch.Tensor, attention: torch.Tensor, prompt_width: int, temperature: float):
    """Logits that predict each completion token, divided by the rollout temperature: [N, T, V]."""
    L = input_ids.shape[1]
    extra = {}
    if _accepts_logits_to_keep(type(model)):  # the LM head only at the positions that predict completions
        extra["logits_to_keep"] = torch.arange(prompt_width - 1, L - 1, device=input_ids.device)
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids(attention), **extra)
    logits = out.logits if extra else out.logits[:, prompt_width - 1 : L - 1]
    return logits if temperature == 1.0 else logits / temperature


def shared_prefix_hidden(model, input_ids: torch.Tensor, attention: torch.Tensor, prompt_width: int,
                         group: int) -> torch.Tensor:
    """The final (normed) hidden states that predict each completion token, for rows in groups of `group`
    completions of one prompt, each prompt run once: [N, T, d] (zero where the completion is padding);
    `model.lm_head` of it is `response_logits`. OLMo-2 only (`is_olmo2`).

    The prompt's layers run once per group and its keys / values are shared by the group's completions
    (gradients from all of them flow back through the one copy): with G = 16 completions of ~100 tokens
    after a ~50-token prompt this skips a quarter of the forward and backward. The completions' real
    tokens run packed ([1, M] instead of [N, T - 1]): everything but attention is per position, so only
    attention sees the padded layout, and right padding (a sixth of a tiny GRPO batch, more where lengths
    vary) costs no projection, MLP or norm, forward or backward.
    """
    P, (N, L) = prompt_width, input_ids.shape
    T, (H, KVH, hd) = L - P, olmo2_heads(model)
    pvalid = attention[::group, :P].bool()  # [g, P]
    ppos = position_ids(pvalid)
    R = T - 1  # completion tokens 0..T-2 predict 1..T-1; the prompt's last position predicts token 0
    dev = input_ids.device
    rpos = pvalid.sum(-1).repeat_interleave(group)[:, None] + torch.arange(R, device=dev)  # [N, R]
    weights = olmo2_weights(model)
    pmask = prompt_mask(pvalid)
    # a completion token attends to its prompt's real tokens and causally to its own completion
    rmask = torch.cat([pvalid.repeat_interleave(group, 0)[:, None, :].expand(N, R, P),
                       torch.ones(R, R, dtype=torch.bool, device=dev).tril().expand(N, R, R)], -1)[:, None]
    real = attention[:, P:-1].bool().flatten().nonzero().squeeze(-1)  # packed index of real inputs in [N * R]
    cache: list = []

    def attend_prompt(layer, q, k, v):
        cache.append((k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=pmask, scale=1.0, enable_gqa=H != KVH)

    def unpack(x):  # packed [1, h, M, hd] -> [N, h, R, hd], zero on padding (no real query attends to it)
        rows = x.new_zeros(N * R, x.shape[1], hd).index_copy(0, real, x[0].transpose(0, 1))
        return rows.view(N, R, -1, hd).transpose(1, 2)

    def attend_response(layer, q, k, v):
        kp, vp = cache[layer]
        out = F.scaled_dot_product_attention(unpack(q), torch.cat([kp, unpack(k)], 2), torch.cat([vp, unpack(v)], 2),
                                             attn_mask=rmask, scale=1.0, enable_gqa=H != KVH)
        return out.transpose(1, 2).reshape(N * R, H, hd).index_select(0, real).transpose(0, 1)[None]  # packed

    last = olmo2_forward(model, weights, input_ids[::group, :P], ppos, attend_prompt, last_only=True, head=False)
    hidden = last.repeat_interleave(group, 0)  # [N, 1, d]
    if R > 0:
        packed = olmo2_forward(model, weights, input_ids[:, P:-1].flatten()[real][None], rpos.flatten()[real][None],
                               attend_response, head=False)[0]  # [M, d]
        body = packed.new_zeros(N * R, packed.shape[-1]).index_copy(0, real, packed).view(N, R, -1)
        hidden = torch.cat([hidden, body], 1)
    return hidden


@functools.cache
def _accepts_logits_to_keep(model_type: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_type.forward).parameters


def trim(ids: torch.Tensor, attention: torch.Tensor, prompt_width: int, response_mask: torch.Tensor):
    """Drop the columns of a micro-batch that are padding in every row (left of the prompts, right of
    the completions): (ids, attention, prompt_width, response columns kept)."""
    start = int(attention[:, :prompt_width].argmax(-1).min()) if prompt_width else 0
    width = int(response_mask.sum(-1).max())
    return ids[:, start : prompt_width + width], attention[:, start : prompt_width + width], prompt_width - start, width


@torch.no_grad()
def rollout(policy, ref, tok, problems: list[Problem], cfg: RLConfig, seed: int,
            stop: Sequence[str] = STOP_STRINGS, prompt_index: Sequence[int] | None = None, sampler=None) -> Rollouts:
    """Sample G completions per problem, score them, and compute advantages and old / ref log-probs.
    `prompt_index`: the problems' places in the step's whole batch when this is a shard of it. `sampler`: a
    `VLLMSampler` holding the policy's weights, to sample with instead of the policy itself."""
    prompts = [format_prompt(p.question, tok=tok) for p in problems]
    G = cfg.group_size
    t0 = time.perf_counter()
    s = sample(sampler or policy, tok, prompts, n=G, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
               seed=seed, stop=stop, prompt_index=prompt_index)
    sample_seconds = time.perf_counter() - t0
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
    dev = next(policy.parameters()).device  # assembled on the CPU, trained on the policy's device
    ids, attention, response_mask, rewards = ids.to(dev), attention.to(dev), s.mask.to(dev), rewards.to(dev)
    tokens = s.tokens.to(dev)
    # With one update per rollout batch the policy that sampled is the one being updated: the ratio is
    # exactly 1 and the old log-probs are the current ones, detached (no extra forward pass).
    old = _logprobs(policy, ids, attention, tokens, response_mask, P, cfg) if cfg.minibatches > 1 else None
    use_ref = ref is not None and cfg.kl_coef > 0
    ref_lp = _logprobs(ref, ids, attention, tokens, response_mask, P, cfg) if use_ref else None
    n_params, layers, d = model_dims(policy)
    gen_tokens = int(s.mask.sum())
    stats = {
        "train/reward": rewards.mean().item(),
        "train/accuracy": (rewards == 1.0).float().mean().item(),
        "train/format_rate": (rewards > 0).float().mean().item(),
        "train/response_length": s.lengths.float().mean().item(),
        "train/solved_groups": (rewards.view(-1, G).max(-1).values == 1.0).float().mean().item(),
        "train/sample_seconds": sample_seconds,  # generation alone (with the step's seconds: tokens / s)
        "rollout_tokens": gen_tokens,
        "rollout_flops": gen_tokens * generate_flops_per_token(n_params, layers, d, P + T // 2),
    }
    adv = ADVANTAGES[cfg.advantage](rewards, G)
    return Rollouts(ids, attention, response_mask, P, rewards, adv, old, ref_lp, stats)


def completion_logits(model, ids, attention, response_mask, prompt_width: int, temperature: float, group: int):
    """Logits of a micro-batch's real completion tokens only, divided by the temperature: ([M, V], mask [n, w]).

    The micro-batch's all-padding columns are dropped (`trim`), and the vocabulary-sized work (LM head,
    softmax, their backward) runs only where `mask` is set: ~16% of a padded batch's positions are padding.
    OLMo-2 models run each group's prompt once (`shared_prefix_hidden`)."""
    ids, attention, prompt_width, width = trim(ids, attention, prompt_width, response_mask)
    mask = response_mask[:, :width].bool()
    if group > 1 and is_olmo2(model):
        logits = model.lm_head(shared_prefix_hidden(model, ids, attention, prompt_width, group)[mask])
    else:
        logits = response_logits(model, ids, attention, prompt_width, 1.0)[mask]
    return (logits if temperature == 1.0 else logits / temperature), mask


def completion_logprobs(model, ids, attention, response_mask, tokens, prompt_width: int, temperature: float,
                        group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion `tokens` [n, T] (0 on padding) and the entropies at the real tokens [M],
    from `completion_logits`: what both the old / reference log-probs and the GRPO loss need."""
    logits, m = completion_logits(model, ids, attention, response_mask, prompt_width, temperature, group)
    lp, ent = logprob_entropy(logits, tokens[:, : m.shape[1]][m])
    real = F.pad(m, (0, response_mask.shape[1] - m.shape[1]))
    return torch.zeros(response_mask.shape, device=lp.device).masked_scatter(real, lp), ent


def micro_batches(rows: torch.Tensor, lengths: torch.Tensor, group: int, micro_batch: int) -> list[torch.Tensor]:
    """Split `rows` (whole groups of `group` consecutive rows) into micro-batches of whole groups, about
    `micro_batch` rows each, groups with shorter completions first (less padding per micro-batch).

    >>> [c.tolist() for c in micro_batches(torch.arange(6), torch.tensor([5, 9, 1, 2, 3, 3]), 2, 4)]
    [[2, 3, 4, 5], [0, 1]]
    """
    groups = rows.view(-1, group)
    longest = lengths.view(-1, group).max(-1).values
    return [g.flatten() for g in groups[longest.argsort(stable=True)].split(max(1, micro_batch // group))]


@torch.no_grad()
def _logprobs(model, ids, attention, tokens, mask, prompt_width: int, cfg: RLConfig) -> torch.Tensor:
    """Log-probs of the sampled tokens under `model` (eval mode), micro-batch by micro-batch: [N, T]."""
    was_training = model.training
    model.eval()
    out = torch.zeros(tokens.shape, device=tokens.device)
    for c in micro_batches(torch.arange(len(ids), device=ids.device), mask.sum(-1), cfg.group_size, cfg.micro_batch):
        out[c] = completion_logprobs(model, ids[c], attention[c], mask[c], tokens[c], prompt_width, cfg.temperature,
                                     cfg.group_size)[0]
    model.train(was_training)
    return out


def grpo_gradients(policy, batch: Rollouts, rows: torch.Tensor, cfg: RLConfig, d: Dist = SINGLE) -> dict:
    """Backpropagate the GRPO loss of `rows` of the batch (gradients accumulate); returns its stats.

    `rows` are whole groups. Runs about `cfg.micro_batch` rows at a time, each chunk's loss weighted by its
    share of the aggregation's normaliser, so the gradient equals that of the whole `rows` at once (tested)
    at a fraction of the memory. Sharded over `d.world` processes, the normaliser is the global one and the
    loss is scaled by the world size, which the engine's gradient averaging divides out again.
    """
    full_mask = batch.response_mask[rows]
    total = global_sum(normaliser(cfg.aggregation, full_mask), d)
    stats: dict[str, float] = {}
    for chunk in micro_batches(rows, full_mask.sum(-1), cfg.group_size, cfg.micro_batch):
        mask = batch.response_mask[chunk]
        logp, ent = completion_logprobs(policy, batch.input_ids[chunk], batch.attention[chunk], mask,
                                        batch.responses[chunk], batch.prompt_width, cfg.temperature, cfg.group_size)
        old = logp.detach() if batch.old_logp is None else batch.old_logp[chunk]
        loss, chunk_stats = grpo_loss(logp, old, None if batch.ref_logp is None else batch.ref_logp[chunk],
                                      batch.advantages[chunk], mask, cfg.clip_eps, cfg.kl_coef, cfg.kl, cfg.aggregation)
        share = chunk_share(cfg.aggregation, mask, full_mask, total)
        (loss * share * d.world).backward()
        chunk_stats["entropy"] = ent.sum() / max(1, ent.numel())  # the token mean (a statistic)
        for k, v in chunk_stats.items():
            stats[k] = stats.get(k, 0.0) + share * float(v)
    return sum_stats(stats, d)  # shares of the global normaliser add up over the ranks


def grpo_update(policy, opt, batch: Rollouts, cfg: RLConfig, d: Dist = SINGLE, flops_model=None) -> dict:
    """One optimizer step per mini-batch (whole groups each), as VeRL's actor update. `policy` may be a DDP
    or FSDP2 module holding this rank's shard of the batch (`dist.shard` cuts it mini-batch by mini-batch)."""
    groups = batch.rewards.numel() // cfg.group_size
    per = groups // cfg.minibatches
    collected: list[dict] = []
    for m in range(cfg.minibatches):
        rows = torch.arange(m * per * cfg.group_size, (m + 1) * per * cfg.group_size, device=batch.rewards.device)
        collected.append(grpo_gradients(policy, batch, rows, cfg, d))
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    stats = {f"train/{k}": sum(c[k] for c in collected) / len(collected) for k in collected[0]}
    stats["train_flops"] = global_sum(training_flops(flops_model or policy, batch.attention), d)
    return stats


def training_flops(model, attention: torch.Tensor) -> int:
    """FLOPs of one forward + backward over the real tokens of a padded batch [N, L]."""
    n_params, layers, d = model_dims(model)
    return int(attention.sum()) * train_flops_per_token(n_params, layers, d, attention.shape[1])
