"""GRPO, the paper's RL (Table 1, VeRL semantics): rollout -> rewards -> advantages -> clipped loss -> update.

    batch = rollout(policy, ref, tok, problems, cfg.rl, seed=step)       # sample G per prompt, score, advantages
    stats = grpo_update(policy, opt, batch, cfg.rl)                       # one optimizer step per mini-batch

The maths are pure functions in `objectives.py` (advantages, KL estimators, aggregations, the clipped loss);
the log-probs come from `logprobs.py` (the OLMo-2 fast path where it applies); the sampler is the evaluator's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from excursions.config import RLConfig
from excursions.data.problems import STOP_STRINGS, Problem, format_prompt
from excursions.flops import generate_flops_per_token, model_dims, train_flops_per_token
from excursions.objectives import ADVANTAGES, ROLLOUTS, adaptive_groups, chunk_share, grpo_loss, normaliser
from excursions.rewards import math_rewards
from excursions.sampling import Samples, sample
from excursions.train.dist import SINGLE, Dist, global_sum, sum_stats
from excursions.train.logprobs import batch_logprobs, completion_logprobs, micro_batches


@dataclass(frozen=True)
class Rollouts:
    """One rollout batch, G completions per prompt grouped contiguously (N = groups * G; a prompt drawn more than
    once, under `until_positive` or `adaptive`, has several groups, which share its advantages' statistics)."""

    input_ids: torch.Tensor  # [N, P + T] left-padded prompt, then the completion (right-padded)
    attention: torch.Tensor  # [N, P + T] 1 on real tokens
    response_mask: torch.Tensor  # [N, T] 1 on completion tokens
    prompt_width: int  # P
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    old_logp: torch.Tensor | None  # [N, T] under the policy that sampled them (None: on-policy, one update)
    ref_logp: torch.Tensor | None  # [N, T] under the frozen reference (None without KL)
    stats: dict
    counts: list[tuple[int, int]] = ()  # (rollouts drawn, right) of each problem asked, kept or not

    @property
    def responses(self) -> torch.Tensor:  # [N, T]
        return self.input_ids[:, self.prompt_width :]


@torch.no_grad()
def rollout(policy, ref, tok, problems: list[Problem], cfg: RLConfig, seed: int,
            stop: Sequence[str] = STOP_STRINGS, prompt_index: Sequence[int] | None = None, sampler=None,
            seen: Sequence[tuple[int, int]] = ()) -> Rollouts:
    """Sample G completions per problem, score them, keep the groups `cfg.rollouts` trains on (all of them; under
    `filter` up to `cfg.prompts_per_step` with both a right and a wrong rollout; under `until_positive` G more
    for each problem without a right one, up to `cfg.rounds` draws; under `adaptive` cfg.prompts_per_step
    groups spread over the problems by `adaptive_groups`), and compute advantages and old / ref
    log-probs of those. `prompt_index`: the problems' places in the step's whole batch when this is a shard of
    it. `sampler`: a `VLLMSampler` holding the policy's weights, to sample with instead of the policy itself.
    `seen`: under `adaptive`, (rollouts, right) of each problem in earlier steps (`PassRates`), which decide how
    many groups each problem gets. The stats (accuracy, FLOPs) cover every rollout sampled, kept or not."""
    G, t0 = cfg.group_size, time.perf_counter()
    index = list(range(len(problems))) if prompt_index is None else list(prompt_index)
    prompts = [format_prompt(p.question, tok=tok) for p in problems]

    def draw(rows: list[int], r: int) -> tuple[Samples, torch.Tensor, list[float]]:
        """G samples of each of `rows` (draw r has its own random streams), their rewards and verified rewards."""
        s = sample(sampler or policy, tok, [prompts[i] for i in rows], n=G, max_new_tokens=cfg.max_new_tokens,
                   temperature=cfg.temperature, seed=seed, stop=stop,
                   prompt_index=[r * len(problems) + index[i] for i in rows])
        answers = [problems[i].answer for i in rows for _ in range(G)]
        questions = [problems[i].question for i in rows for _ in range(G)]
        finished = [f != "length" for f in s.finish]
        # the verified rewards are computed either way: their rate of 1s is logged (under reward = "answer" the
        # gap between the two accuracies is luck)
        checked = math_rewards(s.texts, answers, finished, cfg.format_score, questions)
        rewards = torch.tensor(checked if cfg.reward == "verified"
                               else math_rewards(s.texts, answers, finished, cfg.format_score))
        return s, rewards, checked

    allocator = ROLLOUTS[cfg.rollouts]
    given = (adaptive_groups(seen or [(0, 0)] * len(problems), cfg.prompts_per_step, G, cfg.rounds)
             if allocator.by_rates else None)
    parts, owner, solved = _rounds(draw, len(problems), G, cfg.rounds, given)
    s = Samples.concat([p[0] for p in parts], tok.pad_token_id) if len(parts) > 1 else parts[0][0]
    rewards, checked = torch.cat([p[1] for p in parts]), [c for p in parts for c in p[2]]
    per_problem = torch.zeros(len(problems), 2, dtype=torch.long)  # (rollouts, right) of each problem
    per_problem.index_add_(0, torch.tensor(owner).repeat_interleave(G),
                           torch.stack([torch.ones_like(rewards), (rewards == 1.0).float()], -1).long())
    sample_seconds = time.perf_counter() - t0
    stats = {**rollout_stats(s, rewards, sample_seconds, policy, max(len(p) for p in s.prompt_ids)),
             "train/verified_accuracy": sum(r == 1.0 for r in checked) / len(s.texts),
             "train/solved_groups": (solved[sorted(set(owner))]).float().mean().item(),  # sampled problems
             "train/rollouts_per_prompt": len(s.texts) / len(set(owner))}
    keep = cfg.prompts_per_step if cfg.rounds == 1 else len(owner)  # groups: under the rounds, every one drawn
    kept = allocator.keep((rewards == 1.0).view(-1, G), keep)
    stats["train/kept_groups"] = len({owner[k] for k in kept})
    if len(kept) < len(owner):
        s, rewards, owner = s.prompts(kept), rewards.view(-1, G)[kept].flatten(), [owner[k] for k in kept]
    counts = [tuple(c) for c in per_problem.tolist()]
    if not kept:  # nothing to learn from in this step's rollouts: the update is skipped
        return Rollouts(torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long), s.mask, 0,
                        rewards, rewards, None, None, stats, counts)
    dev = next(policy.parameters()).device  # assembled on the CPU, trained on the policy's device
    ids, attention, P = pack(s, tok.pad_token_id)
    ids, attention, response_mask, tokens, rewards = (t.to(dev) for t in (ids, attention, s.mask, s.tokens, rewards))
    # With one update per rollout batch the policy that sampled is the one being updated: the ratio is
    # exactly 1 and the old log-probs are the current ones, detached (no extra forward pass).
    old = batch_logprobs(policy, ids, attention, tokens, response_mask, P, cfg) if cfg.minibatches > 1 else None
    use_ref = ref is not None and cfg.kl_coef > 0
    ref_lp = batch_logprobs(ref, ids, attention, tokens, response_mask, P, cfg) if use_ref else None
    # advantages within each problem's rollouts (a problem drawn more than once has them all in one group)
    adv = ADVANTAGES[cfg.advantage](rewards, torch.tensor(owner, device=dev).repeat_interleave(G))
    return Rollouts(ids, attention, response_mask, P, rewards, adv, old, ref_lp, stats, counts)


class PassRates:
    """What earlier rollouts (and an optional prior evaluation) saw of each training problem: (rollouts, right) by
    problem id, for `adaptive`'s allocation. Kept in the run's resume states, so a resumed run allocates the same."""

    def __init__(self, seen: dict | None = None):
        self.seen: dict[str, list[int]] = {k: list(v) for k, v in (seen or {}).items()}

    @classmethod
    def from_eval(cls, path: str) -> "PassRates":
        """From an evaluation JSON's per-problem (n, c) (e.g. the study's splits unit's base.json of train problems)."""
        from excursions.checkpoint import read_json

        return cls({r["id"]: [r["n"], r["c"]] for r in read_json(path).get("per_problem", [])})

    def counts(self, ids: Sequence[str]) -> list[tuple[int, int]]:
        return [tuple(self.seen.get(i, (0, 0))) for i in ids]

    def update(self, ids: Sequence[str], counts: Sequence[tuple[int, int]]) -> None:
        for i, (n, c) in zip(ids, counts):
            old = self.seen.get(i, [0, 0])
            self.seen[i] = [old[0] + n, old[1] + c]


def _rounds(draw, n: int, G: int, rounds: int, given: list[int] | None):
    """The step's draws of G: every problem once (uniform, filter, until_positive), then (until_positive) those
    still without a right rollout; or (adaptive) each problem as many times as it was `given`. Returns the draws,
    the problem each group of G rows belongs to, and which problems got a right rollout."""
    solved = torch.zeros(n, dtype=torch.bool)
    parts, owner = [], []
    for r in range(rounds):
        todo = ([i for i in range(n) if given[i] > r] if given is not None
                else (~solved).nonzero().flatten().tolist() if r else list(range(n)))
        if not todo:
            break
        part = draw(todo, r)
        solved[todo] |= (part[1].view(-1, G) == 1.0).any(-1)
        parts.append(part)
        owner += todo
    return parts, owner, solved


def pack(s: Samples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Prompts left-padded to one width P, each followed by its completions: (ids [N, P + T], attention, P)."""
    P = max(len(p) for p in s.prompt_ids)
    N, T = s.tokens.shape
    ids = torch.full((N, P + T), pad_id, dtype=torch.long)
    attention = torch.zeros(N, P + T, dtype=torch.long)
    for i in range(N):
        p = s.prompt_ids[i // s.n]
        ids[i, P - len(p) : P], attention[i, P - len(p) : P] = torch.tensor(p), 1
    ids[:, P:], attention[:, P:] = s.tokens, s.mask.long()
    return ids, attention, P


def rollout_stats(s: Samples, rewards: torch.Tensor, sample_seconds: float, policy, P: int) -> dict:
    """What a step logs of its rollouts, and the tokens and FLOPs they cost."""
    n_params, layers, d = model_dims(policy)
    gen_tokens, T = int(s.mask.sum()), s.tokens.shape[1]
    return {
        "train/reward": rewards.mean().item(),
        "train/accuracy": (rewards == 1.0).float().mean().item(),
        "train/format_rate": (rewards > 0).float().mean().item(),
        "train/response_length": s.lengths.float().mean().item(),
        "train/sample_seconds": sample_seconds,  # generation alone (with the step's seconds: tokens / s)
        "rollout_tokens": gen_tokens,
        "rollout_flops": gen_tokens * generate_flops_per_token(n_params, layers, d, P + T // 2),
    }


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
                                      batch.advantages[chunk], mask, cfg.clip_eps, cfg.kl_coef, cfg.kl, cfg.aggregation,
                                      cfg.dual_clip)
        share = chunk_share(cfg.aggregation, mask, full_mask, total)
        (loss * share * d.world).backward()
        chunk_stats["entropy"] = ent.sum() / max(1, ent.numel())  # the token mean (a statistic)
        for k, v in chunk_stats.items():
            stats[k] = stats.get(k, 0.0) + share * float(v)
    return sum_stats(stats, d)  # shares of the global normaliser add up over the ranks


def grpo_update(policy, opt, batch: Rollouts, cfg: RLConfig, d: Dist = SINGLE, flops_model=None) -> dict:
    """One optimizer step per mini-batch (whole groups each), as VeRL's actor update. `policy` may be a DDP
    or FSDP2 module holding this rank's shard of the batch (`dist.shard` cuts it mini-batch by mini-batch).
    A batch of fewer groups than `cfg.minibatches` (under `rl.rollouts = filter`) takes one step per group;
    one of none takes no step."""
    G = cfg.group_size
    groups = batch.rewards.numel() // G
    if groups == 0:
        return {"train_flops": 0}
    M = min(cfg.minibatches, groups)
    ends = [round(m * groups / M) for m in range(M + 1)]  # equal cuts (m * groups / M when M divides groups)
    collected: list[dict] = []
    for m in range(M):
        rows = torch.arange(ends[m] * G, ends[m + 1] * G, device=batch.rewards.device)
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
