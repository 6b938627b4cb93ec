"""Objectives, rewards and parallel averaging against hand-derived values (derivations in comments)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from excursions.objectives import (AGGREGATIONS, adaptive_groups, drgrpo_advantages, grpo_advantages, grpo_loss,
                                   kl_k1, kl_k2, kl_k3, logprob_entropy, mixed_chance, sft_loss)
from excursions.errors import UserError
from excursions.optim import ParallelAveraging
from excursions.registry import lookup


def test_grpo_advantage_hand_values():
    # group 1: rewards 1,0,0,1 -> mean 0.5; Bessel std = sqrt(4 * 0.25 / 3) = sqrt(1/3); adv = +-0.5 * sqrt(3)
    # group 2: all equal -> 0 (no learning signal from a group that all agree)
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.1, 0.1, 0.1, 0.1]), 4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert torch.allclose(adv, torch.tensor([a, -a, -a, a, 0, 0, 0, 0]), atol=1e-6)
    assert torch.equal(drgrpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4), torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_advantages_over_groups_of_any_size_and_order():
    # until_positive's groups: problem 0 drew [1, 0] (mean 1/2, Bessel std sqrt(1/2): +-1/sqrt(2)); problem 1
    # drew [0, 0] then [1, 0] in a second draw, its rows apart (mean 1/4, std sqrt((3 * 1/16 + 9/16) / 3) = 1/2:
    # -1/2 three times and 3/2); problem 2 one rollout (mean itself: 0)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1, 1, 1, 2])
    b = 1 / math.sqrt(2)
    want = torch.tensor([b, -b, -0.5, -0.5, 1.5, -0.5, 0.0])
    assert torch.allclose(grpo_advantages(rewards, groups, eps=0.0), want, atol=1e-6)
    assert torch.allclose(drgrpo_advantages(rewards, groups), torch.tensor([0.5, -0.5, -0.25, -0.25, 0.75, -0.25, 0.0]))
    order = torch.tensor([6, 2, 0, 4, 1, 5, 3])  # the same rollouts shuffled: each keeps its advantage
    assert torch.allclose(grpo_advantages(rewards[order], groups[order], eps=0.0), want[order], atol=1e-6)


def test_clipped_loss_values_and_gradient_signs():
    old = torch.log(torch.tensor([[0.2]]))
    mask = torch.ones(1, 1)
    for adv, ratio, want_loss, want_grad in [
        (1.0, 1.0, -1.0, -1.0),  # on-policy: loss -A, d/dlogp = -A * rho = -1 (descent raises logp)
        (1.0, 1.5, -1.2, 0.0),  # A > 0, rho above 1 + eps: clipped at 1.2, no gradient
        (-1.0, 1.5, 1.5, 1.5),  # A < 0, rho large: the unclipped term is the max, d/dlogp = -A * rho
        (-1.0, 0.5, 0.8, 0.0),  # A < 0, rho below 1 - eps: clipped at 0.8
    ]:
        logp = (old + math.log(ratio)).clone().requires_grad_(True)
        loss, stats = grpo_loss(logp, old, None, torch.tensor([adv]), mask, clip_eps=0.2, kl_coef=0.0)
        loss.backward()
        assert loss.item() == pytest.approx(want_loss, abs=1e-6)
        assert logp.grad.item() == pytest.approx(want_grad, abs=1e-6)
        assert stats["clip_frac"].item() == (1.0 if want_grad == 0.0 else 0.0)


def test_dual_clip_caps_the_loss_of_a_negative_advantage():
    """VeRL's dual clip (c = 3): with A < 0 the clipped loss max(-A rho, -A clip(rho)) grows with rho; past rho = c
    it is held at -c A, with no gradient. A positive advantage is clipped as before."""
    old, mask = torch.log(torch.tensor([[0.1]])), torch.ones(1, 1)
    for adv, ratio, dual, want_loss, want_grad in [
        (-1.0, 5.0, 3.0, 3.0, 0.0),  # -A rho = 5 > -c A = 3: the loss is -3A = 3, no gradient
        (-2.0, 5.0, 3.0, 6.0, 0.0),  # -3A = 6
        (-1.0, 5.0, 0.0, 5.0, 5.0),  # dual clip off: the unclipped -A rho, d/dlogp = -A rho
        (-1.0, 2.0, 3.0, 2.0, 2.0),  # rho below c: untouched
        (1.0, 5.0, 3.0, -1.2, 0.0),  # A > 0: the ordinary clip at 1 + eps
    ]:
        logp = (old + math.log(ratio)).clone().requires_grad_(True)
        loss, stats = grpo_loss(logp, old, None, torch.tensor([adv]), mask, clip_eps=0.2, kl_coef=0.0, dual_clip=dual)
        loss.backward()
        assert loss.item() == pytest.approx(want_loss, abs=1e-5)
        assert logp.grad.item() == pytest.approx(want_grad, abs=1e-5)
        assert stats.get("dual_clip_frac", torch.tensor(0.0)).item() == (1.0 if dual and adv < 0 and ratio > dual else 0.0)


def test_the_log_ratio_is_clamped_to_20():
    """exp(25) would be 7e10; VeRL clamps the log-ratio to +-20 first (exp(20) = 4.85e8)."""
    loss, stats = grpo_loss(torch.tensor([[25.0]]), torch.zeros(1, 1), None, torch.tensor([1.0]), torch.ones(1, 1),
                            clip_eps=0.2, kl_coef=0.0)
    assert stats["ratio"].item() == pytest.approx(math.exp(20), rel=1e-6) and loss.item() == pytest.approx(-1.2)


def test_kl_estimators_and_clamps():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    # d = ref - logp = log(1/2): k3 = 1/2 - log(1/2) - 1 = log 2 - 1/2
    assert kl_k3(logp, ref).item() == pytest.approx(math.log(2) - 0.5, abs=1e-6)
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2), abs=1e-6)
    assert kl_k2(logp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2, abs=1e-6)
    # d = 100 is clamped to 20, and exp(20) - 21 to 10
    assert kl_k3(torch.tensor([-100.0]), torch.tensor([0.0])).item() == 10.0
    # d = -100 clamped to -20: exp(-20) + 20 - 1 = 19.000000002 -> clamped to 10
    assert kl_k3(torch.tensor([0.0]), torch.tensor([-100.0])).item() == 10.0
    assert kl_k3(torch.tensor([-1.3]), torch.tensor([-1.3])).item() == 0.0


def test_kl_term_is_added_with_its_coefficient():
    logp = torch.log(torch.tensor([[0.5]]))
    ref = torch.log(torch.tensor([[0.25]]))
    loss, stats = grpo_loss(logp, logp, ref, torch.tensor([0.0]), torch.ones(1, 1), kl_coef=0.1, kl="k3")
    assert loss.item() == pytest.approx(0.1 * (math.log(2) - 0.5), abs=1e-6)
    assert stats["kl"].item() == pytest.approx(math.log(2) - 0.5, abs=1e-6)


def test_aggregation_modes_hand_values():
    x = torch.tensor([[1.0, 1.0, 1.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert AGGREGATIONS["token-mean"](x, mask).item() == pytest.approx((3 + 4) / 4)
    assert AGGREGATIONS["seq-mean-token-mean"](x, mask).item() == pytest.approx((1 + 4) / 2)
    assert AGGREGATIONS["seq-mean-token-sum"](x, mask).item() == pytest.approx((3 + 4) / 2)
    assert AGGREGATIONS["seq-mean-token-sum-norm"](x, mask).item() == pytest.approx(7 / 8)
    with pytest.raises(UserError, match="choose one of token-mean"):
        lookup(AGGREGATIONS, "token-sum", "loss aggregation")


def test_sft_loss_counts_only_masked_tokens():
    labels = torch.tensor([[0, 1, 1]])
    logits = torch.zeros(1, 3, 2)  # uniform over 2 tokens: cross-entropy ln 2 per token
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    assert sft_loss(logits, labels, mask).item() == pytest.approx(math.log(2))
    logits[0, 0] = torch.tensor([-50.0, 50.0])  # a terrible prediction at the masked (prompt) position
    assert sft_loss(logits, labels, mask).item() == pytest.approx(math.log(2))
    logits[0, 2] = torch.tensor([0.0, math.log(3)])  # p(label 1) = 3/4 at a counted position
    assert sft_loss(logits, labels, mask).item() == pytest.approx((math.log(2) - math.log(0.75)) / 2)


def _adamw_hand(p, g, state, lr, t, b1=0.9, b2=0.999, eps=1e-8, wd=0.01):
    """torch.optim.AdamW written out: decoupled decay, then the bias-corrected Adam step."""
    m, v = state
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p * (1 - lr * wd)
    p = p - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    return p, (m, v)


def test_logprob_entropy_hand_values_and_gradient():
    """Logits ln(1/2, 1/4, 1/4): log p(token 1) = ln 1/4, entropy 1.5 ln 2; d log p(t) / d logits = onehot(t) - p,
    so a weight g on that log-prob gives g * (onehot - p). Rows are independent."""
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])).requires_grad_()
    lp, h = logprob_entropy(logits, torch.tensor([1, 2]))
    assert torch.allclose(lp, torch.log(torch.tensor([0.25, 0.7])))
    h1 = -(0.1 * math.log(0.1) + 0.2 * math.log(0.2) + 0.7 * math.log(0.7))
    assert torch.allclose(h, torch.tensor([1.5 * math.log(2), h1])) and not h.requires_grad
    (lp * torch.tensor([2.0, -1.0])).sum().backward()
    expect = torch.tensor([[2 * -0.5, 2 * 0.75, 2 * -0.25], [-1 * -0.1, -1 * -0.2, -1 * 0.3]])
    assert torch.allclose(logits.grad, expect, atol=1e-6)


def test_logprob_entropy_matches_log_softmax_on_random_logits():
    torch.manual_seed(0)
    x = (3 * torch.randn(4, 5, 11)).requires_grad_()
    t = torch.randint(0, 11, (4, 5))
    g = torch.randn(4, 5)
    lp, h = logprob_entropy(x, t)
    (lp * g).sum().backward()
    y = x.detach().clone().requires_grad_()
    ref = y.log_softmax(-1)
    (ref.gather(-1, t[..., None]).squeeze(-1) * g).sum().backward()
    assert torch.allclose(lp, ref.gather(-1, t[..., None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(h, -(ref.exp() * ref).sum(-1), atol=1e-5)
    assert torch.allclose(x.grad, y.grad, atol=1e-6)


def test_parallel_averaging_equals_algorithm_1_by_hand():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    x_rl, x_sft = torch.randn(4, 3), torch.randn(4, 3)
    y_rl, y_sft = torch.randn(4, 1), torch.randn(4, 1)
    theta = model.weight.detach().clone()
    avg = ParallelAveraging(model, rl_lr=0.1, sft_lr=0.03)
    s_rl = s_sft = (torch.zeros_like(theta), torch.zeros_like(theta))
    for t in range(1, 4):
        # both gradients at the same snapshot theta_bar
        bar = model.weight.detach().clone()
        grads = []
        for x, y in ((x_rl, y_rl), (x_sft, y_sft)):
            model.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            grads.append([model.weight.grad.clone()])
        avg.step(*grads, w=0.5)
        # by hand: each optimizer's update from theta_bar with its own state, then the mean of the two
        g_rl = 2 * ((x_rl @ bar.T - y_rl) * x_rl).mean(0, keepdim=True)
        g_sft = 2 * ((x_sft @ bar.T - y_sft) * x_sft).mean(0, keepdim=True)
        p_rl, s_rl = _adamw_hand(bar, g_rl, s_rl, 0.1, t)
        p_sft, s_sft = _adamw_hand(bar, g_sft, s_sft, 0.03, t)
        theta = bar + 0.5 * ((p_rl - bar) + (p_sft - bar))
        assert torch.allclose(model.weight.detach(), theta, atol=1e-6), t
    p = avg.params[0]
    assert not torch.allclose(avg.rl.state[p]["exp_avg"], avg.sft.state[p]["exp_avg"])  # independent moments
    assert torch.allclose(avg.rl.state[p]["exp_avg"], s_rl[0], atol=1e-6)
    assert torch.allclose(avg.sft.state[p]["exp_avg_sq"], s_sft[1], atol=1e-8)


def test_parallel_weight_one_is_pure_rl():
    torch.manual_seed(1)
    a, b = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    b.load_state_dict(a.state_dict())
    avg = ParallelAveraging(a, 0.1, 0.1)
    opt = torch.optim.AdamW(b.parameters(), lr=0.1, weight_decay=0.01)
    g = [torch.tensor([[1.0, -2.0]])]
    avg.step(g, [torch.tensor([[5.0, 5.0]])], w=1.0)
    b.weight.grad = g[0].clone()
    opt.step()
    assert torch.allclose(a.weight, b.weight, atol=1e-7)


def test_mixed_chance_and_the_adaptive_allocation_by_hand():
    # Beta(1, 1) (never seen): E[p^k] = 1 / (k + 1), so k = 2 rollouts are mixed with chance 1 - 1/3 - 1/3 = 1/3.
    # Beta(2, 1) (seen once, right): E[p^2] = 2 / 4, E[(1 - p)^2] = 2 / 12: 1 - 1/2 - 1/6 = 1/3 as well.
    assert mixed_chance(0, 0, 2) == pytest.approx(1 / 3) and mixed_chance(1, 1, 2) == pytest.approx(1 / 3)
    assert mixed_chance(100, 0, 8) < 0.1 and mixed_chance(100, 100, 8) < 0.1  # known hopeless, known solved
    # the budget exactly, the cap per problem, and nothing to long-settled problems while open ones can take it
    given = adaptive_groups([(1000, 1000), (0, 0), (1000, 0), (20, 10)], budget=5, group=8, cap=3)
    assert sum(given) == 5 and given[0] == given[2] == 0 and max(given) <= 3
    # greedy is the best split of the budget: every split of 5 groups over these 4 problems (cap 3) checked
    counts = [(64, 64), (0, 0), (8, 1), (20, 10)]
    total = lambda g: sum(mixed_chance(*c, 8 * m) for c, m in zip(counts, g))
    splits = [g for g in itertools.product(range(4), repeat=4) if sum(g) == 5]
    assert total(adaptive_groups(counts, budget=5, group=8, cap=3)) == pytest.approx(max(map(total, splits)))
    assert adaptive_groups([(100, 100)] * 3, budget=3, group=8, cap=4) == [1, 1, 1]  # settled alone: spread evenly
    assert sum(adaptive_groups([(0, 0)] * 2, budget=9, group=8, cap=2)) == 4  # no more than cap x problems
