"""Training objectives as pure functions, and their variants in name -> function registries.

    adv = ADVANTAGES["grpo"](rewards, 8)                                   # [B*G], groups of 8 (or group ids)
    kept = ROLLOUTS["filter"].keep(correct.view(-1, 8), 32)                # the groups trained on
    loss, stats = grpo_loss(logp, old_logp, ref_logp, adv, mask, kl="k3", agg="token-mean")
    loss = sft_loss(logits, labels, mask)

Shapes: B*G rollouts (G per prompt, grouped contiguously), T response tokens, V vocabulary. GRPO
follows VeRL's semantics (the paper's Table 1): PPO-clipped ratio against the rollout policy,
"low-variance" k3 KL to the frozen reference added to the loss, token-mean aggregation.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from excursions.registry import lookup


# ------------------------------------------------------------------------------------ advantages


def group_labels(n: int, groups: int | torch.Tensor) -> torch.Tensor:
    """Each rollout's group id: `groups` itself, or for an int G contiguous groups of G."""
    return groups if isinstance(groups, torch.Tensor) else torch.arange(n) // groups


def _group_mean_std(rewards: torch.Tensor, groups: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per rollout, its group's mean reward and standard deviation (Bessel's correction; 1 for a group of one)."""
    labels = group_labels(rewards.numel(), groups).to(rewards.device)
    k = int(labels.max()) + 1 if labels.numel() else 0
    count = torch.zeros(k, dtype=rewards.dtype, device=rewards.device).index_add_(0, labels, torch.ones_like(rewards))
    mean = torch.zeros_like(count).index_add_(0, labels, rewards) / count.clamp(min=1)
    sq = torch.zeros_like(count).index_add_(0, labels, (rewards - mean[labels]).square())
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.ones_like(count))
    return mean[labels], std[labels]


def grpo_advantages(rewards: torch.Tensor, groups: int | torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean(group)) / (std(group) + eps), std with Bessel's correction; equal groups get 0. `groups`: G for
    contiguous groups of G, or each rollout's group id (groups of any size, as `until_positive` draws them).

    >>> grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1, 1])).round(decimals=4)
    tensor([ 0.7071, -0.7071, -0.5773, -0.5773,  1.1547])
    """
    mean, std = _group_mean_std(rewards, groups)
    return (rewards - mean) / (std + eps)


def drgrpo_advantages(rewards: torch.Tensor, groups: int | torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: r - mean(group), no division by the standard deviation."""
    return rewards - _group_mean_std(rewards, groups)[0]


ADVANTAGES: dict[str, Callable] = {"grpo": grpo_advantages, "drgrpo": drgrpo_advantages}


# ------------------------------------------------------------------------- which groups are trained on


def all_groups(correct: torch.Tensor, keep: int) -> list[int]:
    """`uniform`: the first `keep` groups of a [B, G] table of right (1) / wrong (0) rollouts, whatever they hold.

    >>> all_groups(torch.tensor([[0, 0], [1, 0], [1, 1]]), 2)
    [0, 1]
    """
    return list(range(min(keep, correct.shape[0])))


def mixed_groups(correct: torch.Tensor, keep: int) -> list[int]:
    """`filter` (DAPO's dynamic sampling): the first `keep` groups holding both a right and a wrong rollout. An
    all-right or all-wrong group has advantage 0 everywhere (no policy gradient), yet under token-mean it still
    counts in the loss's normaliser, so a batch of mostly such groups takes a step that much smaller.

    >>> mixed_groups(torch.tensor([[0, 0], [1, 0], [1, 1], [0, 1], [1, 0]]), 2)
    [1, 3]
    >>> mixed_groups(torch.tensor([[0, 0, 0], [1, 1, 1]]), 2)
    []
    """
    right = correct.sum(-1)
    mixed = ((right > 0) & (right < correct.shape[-1])).nonzero().flatten().tolist()
    return mixed[:keep]


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def mixed_chance(seen: int, right: int, k: int) -> float:
    """The chance that k rollouts of a problem hold both a right and a wrong one (a GRPO signal), its pass rate p
    unknown: E[1 - p^k - (1 - p)^k] under the posterior Beta(1 + right, 1 + seen - right) of a uniform prior.

    >>> round(mixed_chance(0, 0, 8), 4)   # never seen: 1 - 2 / 9
    0.7778
    >>> mixed_chance(0, 0, 0), mixed_chance(0, 0, 1)
    (0.0, 0.0)
    """
    if k < 2:
        return 0.0
    a, b = 1.0 + right, 1.0 + seen - right
    ab = _log_beta(a, b)
    return max(0.0, 1.0 - math.exp(_log_beta(a + k, b) - ab) - math.exp(_log_beta(a, b + k) - ab))


def adaptive_groups(counts: Sequence[tuple[int, int]], budget: int, group: int, cap: int) -> list[int]:
    """`adaptive`: how many groups of `group` rollouts each candidate problem gets, `budget` groups in all (at most
    `cap` each), from what earlier rollouts saw of it ((seen, right) per problem). Greedy on the gain in
    `mixed_chance` of one more group, which is optimal because each problem's gains shrink as it gets more: an
    unseen problem's first group is worth more than a problem seen failing 40 times, or solving 40 of 40.

    >>> adaptive_groups([(0, 0), (40, 0), (40, 40), (16, 8)], budget=4, group=4, cap=4)
    [2, 0, 0, 2]
    >>> sum(adaptive_groups([(0, 0)] * 10, budget=7, group=8, cap=2))
    7
    """
    gain = lambda i, m: (mixed_chance(*counts[i], (m + 1) * group) - mixed_chance(*counts[i], m * group))
    given = [0] * len(counts)
    heap = [(-gain(i, 0), i) for i in range(len(counts))]
    heapq.heapify(heap)
    for _ in range(min(budget, cap * len(counts))):
        _, i = heapq.heappop(heap)
        given[i] += 1
        if given[i] < cap:
            heapq.heappush(heap, (-gain(i, given[i]), i))
    return given


@dataclass(frozen=True)
class Allocator:
    """How an `rl.rollouts` allocator spends a step's rollouts: the groups it trains on (`keep`: all_groups or
    mixed_groups), whether it samples filter_over times the step's prompts to choose from (`widens`), whether a
    prompt may get more than one draw of G in a step, up to rl.max_rollouts (`rounds`), and whether the draws
    follow what earlier rollouts saw of each problem (`by_rates`: `PassRates`, `adaptive_groups`)."""

    keep: Callable[[torch.Tensor, int], list[int]]
    widens: bool = False
    rounds: bool = False
    by_rates: bool = False


# rl.rollouts: `uniform` samples and trains on rl.prompts_per_step groups; `filter` (DAPO's dynamic sampling) keeps
# up to prompts_per_step mixed groups out of filter_over times the prompts; `until_positive` (the paper's authors'
# adaptive rollouts) draws G more for every prompt without a right rollout yet, up to max_rollouts, and trains on
# all; `adaptive` spreads prompts_per_step groups over filter_over times as many candidates by `adaptive_groups`.
ROLLOUTS: dict[str, Allocator] = {"uniform": Allocator(all_groups), "filter": Allocator(mixed_groups, widens=True),
                                  "until_positive": Allocator(all_groups, rounds=True),
                                  "adaptive": Allocator(all_groups, widens=True, rounds=True, by_rates=True)}


# ------------------------------------------------------------------------------------- KL to ref


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp).square()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's low-variance estimator exp(d) - d - 1, d = ref - logp, with VeRL's clamps."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (d.exp() - d - 1.0).clamp(-10.0, 10.0)


KL_ESTIMATORS: dict[str, Callable] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# ----------------------------------------------------------------------------------- aggregation


def token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over every response token of the batch (long responses weigh more)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def seq_mean_token_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum(-1).mean()


def seq_mean_token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each sequence's token mean, then the mean over sequences (the original GRPO)."""
    return ((x * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def seq_mean_token_sum_norm(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: token sum divided by a constant horizon (the padded length), mean over sequences."""
    return (x * mask).sum() / (mask.shape[0] * mask.shape[-1])


@dataclass(frozen=True)
class Aggregation:
    """A loss aggregation: a sum over response tokens divided by a normaliser, the batch's token count or its
    sequence count (what `chunk_share` splits over micro-batches)."""

    reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [N, T], mask [N, T]) -> scalar
    per: str  # "token" | "sequence": what the normaliser counts

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.reduce(x, mask)

    def normaliser(self, mask: torch.Tensor) -> float:
        return float(mask.sum()) if self.per == "token" else float(mask.shape[0])


AGGREGATIONS: dict[str, Aggregation] = {
    "token-mean": Aggregation(token_mean, "token"),
    "seq-mean-token-sum": Aggregation(seq_mean_token_sum, "sequence"),
    "seq-mean-token-mean": Aggregation(seq_mean_token_mean, "sequence"),
    # every micro-batch keeps the batch's padded width, so the horizon cancels: a chunk's share is its rows'
    "seq-mean-token-sum-norm": Aggregation(seq_mean_token_sum_norm, "sequence"),
}


def normaliser(agg: str, mask: torch.Tensor) -> float:
    """What an aggregation divides its token sum by: the token count (token-mean) or the sequence count."""
    return lookup(AGGREGATIONS, agg, "loss aggregation").normaliser(mask)


def chunk_share(agg: str, chunk_mask: torch.Tensor, full_mask: torch.Tensor, total: float | None = None) -> float:
    """Weight of a chunk's aggregated loss so that the chunks' weighted sum equals the whole batch's loss.

    Every aggregation is a sum over tokens divided by a normaliser: the token count (token-mean) or the
    sequence count (the others), so a micro-batch's share is its part of that normaliser. `total` replaces
    the full mask's normaliser (the global one, when the batch is sharded over processes).

    >>> m = torch.tensor([[1., 1., 0.], [1., 0., 0.], [1., 1., 1.]])
    >>> chunk_share("token-mean", m[:1], m), chunk_share("seq-mean-token-mean", m[:1], m)  # 2 of 6 tokens, 1 of 3 rows
    (0.3333333333333333, 0.3333333333333333)
    >>> chunk_share("token-mean", m[1:2], m), chunk_share("token-mean", m[1:2], m, total=12.0)  # 1 of 6; of 12
    (0.16666666666666666, 0.08333333333333333)
    """
    full = normaliser(agg, full_mask) if total is None else total
    return normaliser(agg, chunk_mask) / max(1.0, full)


# ---------------------------------------------------------------------------------------- losses


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, adv: torch.Tensor,
              mask: torch.Tensor, clip_eps: float = 0.2, kl_coef: float = 1e-3, kl: str = "k3",
              agg: str = "token-mean", dual_clip: float = 3.0) -> tuple[torch.Tensor, dict]:
    """Clipped policy-gradient loss plus kl_coef * KL(policy || ref); returns (loss, stats). As VeRL's vanilla
    policy loss: the log-ratio is clamped to +-20, and with `dual_clip` c > 1 (VeRL's clip_ratio_c = 3) the loss
    of a negative advantage is capped at -c * A, however far the ratio has run (0 turns the cap off).

    logp, old_logp, ref_logp, mask: [N, T]; adv: [N] (one advantage per sequence).
    """
    aggregate = lookup(AGGREGATIONS, agg, "loss aggregation")
    a = adv[:, None]  # [N, 1] broadcast over tokens
    ratio = (logp - old_logp).clamp(-20.0, 20.0).exp()  # [N, T]
    unclipped = -a * ratio
    clipped = -a * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    pg = torch.maximum(unclipped, clipped)  # = -min(rho A, clip(rho) A)
    stats = {"clip_frac": token_mean((clipped > unclipped).float(), mask), "ratio": token_mean(ratio.detach(), mask)}
    if dual_clip:
        capped = (a < 0) & (pg > -a * dual_clip)  # [N, T]: a negative advantage's ratio above c
        pg = torch.where(capped, -a * dual_clip, pg)
        stats["dual_clip_frac"] = token_mean(capped.float(), mask)
    loss = aggregate(pg, mask)
    stats["pg_loss"] = loss.detach()
    if ref_logp is not None and kl_coef:
        kl_tok = lookup(KL_ESTIMATORS, kl, "KL estimator")(logp, ref_logp)
        kl_value = aggregate(kl_tok, mask)
        loss = loss + kl_coef * kl_value
        stats["kl"] = kl_value.detach()
    return loss, stats


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on response tokens only; logits [N, T, V] predict labels [N, T] (already shifted)."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none").view_as(labels)  # [N, T]
    return token_mean(nll, mask.float())


class _LogProbEntropy(torch.autograd.Function):
    """log p(target) and the entropy of each row of logits [M, V], in four passes over the vocabulary.

    `log_softmax` then `gather` then an entropy from the log-probs walks the [M, V] array ~8 times forward
    and backward (and allocates three copies of it); here one softmax is kept and the backward is
    `-g * p` plus `g` at the target, written into that kept softmax. The entropy is a statistic (no gradient).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor):
        top = logits.amax(-1, keepdim=True)  # [M, 1]
        e = (logits - top).exp_()  # the softmax, unnormalised: four passes over [M, V] in all
        total = e.sum(-1, keepdim=True)
        lse = (top + total.log()).squeeze(-1)
        logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
        ent = lse - torch.einsum("mv,mv->m", e, logits) / total.squeeze(-1)  # H = lse - E_p[logit]
        ctx.save_for_backward(e, total, targets)
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g: torch.Tensor, _unused):
        e, total, targets = ctx.saved_tensors
        grad = e.mul_(-g[:, None] / total)  # the kept softmax becomes the gradient: one backward per forward
        grad.scatter_add_(-1, targets[:, None], g[:, None])
        return grad, None


def logprob_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(token), entropy) under `logits` [..., V] for `tokens` [...]; the entropy carries no gradient.

    >>> lp, h = logprob_entropy(torch.log(torch.tensor([[0.5, 0.25, 0.25]])), torch.tensor([1]))
    >>> round(float(lp), 6), round(float(h), 6)  # ln 1/4; -(1/2 ln 1/2 + 2 * 1/4 ln 1/4) = 1.5 ln 2
    (-1.386294, 1.039721)
    """
    V = logits.shape[-1]
    logp, ent = _LogProbEntropy.apply(logits.float().reshape(-1, V), tokens.reshape(-1))
    return logp.view(tokens.shape), ent.view(tokens.shape)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits`: [..., V], [...] -> [...]."""
    return logprob_entropy(logits, tokens)[0]
