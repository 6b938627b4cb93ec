"""Post-training on the micro run: a GRPO step learns, SFT masks the prompt, every recipe runs and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from excursions.config import RLConfig, load_config
from excursions.data.problems import format_prompt, read_jsonl
from excursions.errors import UserError
from excursions.objectives import grpo_advantages, token_logprobs
from excursions.optim import adamw
from excursions.recipes import RECIPES
from excursions.train.grpo import Rollouts, grpo_update
from excursions.train.logprobs import response_logits
from excursions.train.posttrain import posttrain
from excursions.train.sft import SFTBatches, demonstrations

from test_tracking import assert_events_match_metrics

POST = ["rl.steps=3", "rl.prompts_per_step=4", "rl.group_size=4", "rl.minibatches=2", "rl.max_new_tokens=24",
        "rl.track_every=2", "rl.track_problems=4", "rl.track_n=2", "rl.save_every=1", "rl.lr=1e-3",
        "sft.epochs=1", "sft.batch_size=8", "sft.save_every=1", "parallel.steps=2", "eval.max_new_tokens=24"]


@pytest.fixture(scope="module")
def source(micro_run):
    return sorted((micro_run / "checkpoints").glob("step*"))[-1]


@pytest.fixture(scope="module")
def post_cfg(micro_overrides):
    return load_config("smoke", overrides=micro_overrides + POST)


def _batch(model, tok, completions: list[str], rewards: list[float], cfg: RLConfig) -> Rollouts:
    """A hand-made rollout batch: one prompt, the given completions as its group."""
    prompt = tok(format_prompt("Ada has 1 cat and gets 1 more. How many cats?")).input_ids
    comps = [tok(c, add_special_tokens=False).input_ids + [tok.eos_token_id] for c in completions]
    P, T = len(prompt), max(map(len, comps))
    ids = torch.full((len(comps), P + T), tok.pad_token_id)
    att = torch.zeros(len(comps), P + T, dtype=torch.long)
    for i, c in enumerate(comps):
        ids[i, :P], ids[i, P : P + len(c)] = torch.tensor(prompt), torch.tensor(c)
        att[i, : P + len(c)] = 1
    mask = att[:, P:].float()
    with torch.no_grad():
        old = token_logprobs(response_logits(model, ids, att, P, 1.0), ids[:, P:])
    r = torch.tensor(rewards)
    from excursions.objectives import grpo_advantages

    return Rollouts(ids, att, mask, P, r, grpo_advantages(r, len(r)), old, old.clone(), {})


def test_a_grpo_step_raises_the_probability_of_rewarded_completions(source):
    model, tok = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    cfg = RLConfig(group_size=4, prompts_per_step=1, minibatches=1, lr=3e-3, kl_coef=0.0)
    batch = _batch(model, tok, [" 1 + 1 = 2\n#### 2", " 1 + 1 = 3\n#### 3"] * 2, [1.0, 0.1, 1.0, 0.1], cfg)

    # The completions share every token but the two answers; on the shared tokens the group's advantages cancel,
    # and Adam's normalisation turns what is left (rounding) into full-size steps that move them either way. The
    # GRPO property is about the tokens that differ: the rewarded answer's up, the other's down.
    differ = (batch.responses[0] != batch.responses[1]) & batch.response_mask[0].bool()

    def answer_logp():
        with torch.no_grad():
            lp = token_logprobs(response_logits(model, batch.input_ids, batch.attention, batch.prompt_width, 1.0),
                                batch.responses)
        return lp[:, differ].sum(-1)

    before = answer_logp()
    opt = adamw(model, cfg.lr, cfg.betas, 0.0)
    for _ in range(3):
        grpo_update(model, opt, batch, cfg)
    after = answer_logp()
    assert differ.sum() == 2  # the answer after "=" and after "####"
    assert after[0] > before[0] and after[2] > before[2]  # rewarded: up
    assert after[1] < before[1] and after[3] < before[3]  # format-only reward (below the mean): down


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batched_gradients_equal_the_whole_batch(source, agg):
    """Chunks of different token counts, each weighted by its share: the same gradient as one big backward."""
    from excursions.train.grpo import grpo_gradients

    model, tok = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    comps = [" 1 + 1 = 2\n#### 2", " 3", " 1 + 1 = 3 and then some more\n#### 3", " 2\n#### 2", " no", " 7 + 1"]
    rewards = [1.0, 0.0, 0.1, 1.0, 0.0, 0.1]

    def grads(micro: int) -> list[torch.Tensor]:
        cfg = RLConfig(group_size=2, prompts_per_step=3, minibatches=1, micro_batch=micro, kl_coef=0.1,
                       aggregation=agg)
        batch = _batch(model, tok, comps, rewards, cfg)
        # an off-policy batch, so that the ratio and the KL both carry gradient
        batch = Rollouts(**{**batch.__dict__, "old_logp": batch.old_logp - 0.05, "ref_logp": batch.ref_logp + 0.1})
        model.zero_grad(set_to_none=True)
        grpo_gradients(model, batch, torch.arange(6), cfg)
        return [p.grad.clone() for p in model.parameters()]

    whole, chunked = grads(6), grads(4)  # three groups of 2 rows: chunks of 4 and 2 rows
    assert any(g.abs().sum() > 0 for g in whole)
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_sft_batches_mask_exactly_the_completion(source, micro_run):
    tok = AutoTokenizer.from_pretrained(source)
    problems = read_jsonl(micro_run / "world/gsm/train.jsonl")[:5]
    pairs = demonstrations(problems, "one", seed=0)
    assert len(pairs) == 5 and len(demonstrations(problems, "all", seed=0)) == sum(len(p.solutions) for p in problems)
    assert pairs == demonstrations(problems, "one", seed=0)  # fixed by the seed
    first = demonstrations(problems, "one", seed=0, pick="first")  # the authors' data: each question's first row
    assert [c for _, c in first] == [" " + p.solutions[0] for p in problems] != [c for _, c in pairs]
    batches = SFTBatches(tok, pairs, batch_size=5, seed=0)
    ids, att, labels, mask = batches.batch(0)
    for r, row in enumerate(batches.rows(0)):
        prompt, completion = pairs[row]
        target = labels[r][mask[r] == 1].tolist()
        assert target[-1] == tok.eos_token_id
        assert tok.decode(target[:-1]) == completion
        assert tok.decode(ids[r][att[r] == 1][: len(tok(prompt).input_ids)].tolist()) == prompt


@pytest.mark.parametrize("name", sorted(RECIPES) + ["rl/filter", "rl/until_positive", "rl/adaptive"])
def test_every_recipe_runs_end_to_end(name, source, micro_run, post_cfg, tmp_path):
    if name.startswith("rl/"):  # filter: GRPO on the groups with a right and a wrong rollout (the micro model:
        # often none); until_positive: up to 2 G rollouts a problem; adaptive: prompts_per_step groups spread
        name, post_cfg = "rl", replace(post_cfg, rl=replace(post_cfg.rl, rollouts=name[3:],
                                                            max_rollouts=2 * post_cfg.rl.group_size))
    final = posttrain(str(source), name, post_cfg, tmp_path / name, micro_run / "world", progress=False)
    meta = json.loads((final / "excursions.json").read_text())
    assert meta["recipe"] == name and meta["source"].endswith(str(source.name)) or meta["recipe"] == name
    model = AutoModelForCausalLM.from_pretrained(final)
    start = AutoModelForCausalLM.from_pretrained(source)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(start.named_parameters())[n])]
    rows = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(v == v for r in rows for v in r.values() if isinstance(v, float))  # no NaN
    assert any(k.startswith("eval/gsm/pass@1") for k in rows[-1])
    if "rl" in name or name == "parallel":  # tracked from the starting model on, each point with its interval
        first = rows[0]
        assert first["step"] == 0
        assert first["eval/gsm/lo/pass@1"] <= first["eval/gsm/pass@1"] <= first["eval/gsm/hi/pass@1"]
    kept = [r["train/kept_groups"] for r in rows if "train/kept_groups" in r]
    if post_cfg.rl.rollouts == "filter":  # 4 x 4 prompts drawn a step, at most 4 kept; a step keeping none is skipped
        assert len(kept) == post_cfg.rl.steps and all(0 <= k <= 4 for k in kept)
        assert bool(changed) == any(kept), "filter: the weights move exactly when a step kept a group"
        return
    assert changed, "post-training left every parameter unchanged"
    G = post_cfg.rl.group_size
    if post_cfg.rl.rollouts in ("until_positive", "adaptive"):  # until_positive: the micro model is rarely right
        assert all(G <= r["train/rollouts_per_prompt"] <= 2 * G for r in rows if "train/rollouts_per_prompt" in r)
    if post_cfg.rl.rollouts == "adaptive":  # the budget exactly: prompts_per_step groups a step
        drawn = [r["train/rollouts_per_prompt"] * r["train/kept_groups"] for r in rows if "train/kept_groups" in r]
        assert drawn == [post_cfg.rl.prompts_per_step * G] * post_cfg.rl.steps
    if "rl" in name or name == "parallel":
        assert {"train/reward", "train/kl", "train/entropy", "train/clip_frac", "total_rollout_flops"} <= set(rows[-1])
    # every stage's metrics in TensorBoard too, under the same names in every recipe
    for stage in [final.parent] + ([tmp_path / name / name.removesuffix("_rl")] if name.endswith("_rl") else []):
        tags = assert_events_match_metrics(stage)
        assert "eval/gsm/pass@1" in tags and ("train/reward" in tags or "train/loss" in tags)


def test_filter_trains_on_the_mixed_groups_of_the_same_samples(source, micro_run, monkeypatch):
    """`rl.rollouts = filter` keeps, of exactly the rollouts `uniform` draws for the same prompts and seed, the
    first prompts_per_step groups holding a right and a wrong answer; its stats and FLOPs count every rollout."""
    import excursions.train.grpo as grpo

    model, tok = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    problems = read_jsonl(micro_run / "world" / "gsm" / "train.jsonl")[:5]
    right = [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1]  # groups: none, mixed, all, mixed, mixed
    monkeypatch.setattr(grpo, "math_rewards", lambda texts, *a, **k: [float(r) for r in right[: len(texts)]])
    base = dict(group_size=4, max_new_tokens=12, kl_coef=0.0, minibatches=1, temperature=1.0)
    every = grpo.rollout(model, None, tok, problems, RLConfig(prompts_per_step=5, **base), seed=3)
    kept = grpo.rollout(model, None, tok, problems, RLConfig(prompts_per_step=2, rollouts="filter", **base), seed=3)
    assert kept.stats["train/kept_groups"] == 2 and kept.rewards.tolist() == [1, 0, 0, 0, 0, 1, 1, 0]
    for k in ("rollout_tokens", "rollout_flops", "train/accuracy", "train/solved_groups"):
        assert kept.stats[k] == every.stats[k]
    completion = lambda b, i: b.responses[i][b.response_mask[i].bool()].tolist()
    for j, i in enumerate([4, 5, 6, 7, 12, 13, 14, 15]):  # groups 1 and 3 of the uniform batch, in order
        assert completion(kept, j) == completion(every, i)
    assert kept.advantages.view(2, 4)[0].tolist() == pytest.approx(every.advantages.view(5, 4)[1].tolist())

    monkeypatch.setattr(grpo, "math_rewards", lambda texts, *a, **k: [0.0] * len(texts))
    empty = grpo.rollout(model, None, tok, problems, RLConfig(prompts_per_step=2, rollouts="filter", **base), seed=3)
    before = [p.clone() for p in model.parameters()]
    cfg = RLConfig(prompts_per_step=2, rollouts="filter", **{**base, "minibatches": 2})
    assert empty.stats["train/kept_groups"] == 0 and grpo_update(model, adamw(model, 1e-2, (0.9, 0.999), 0.0), empty, cfg) == {
        "train_flops": 0}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no step without a group


def test_until_positive_draws_again_for_the_unsolved_and_trains_on_every_draw(source, micro_run, monkeypatch):
    """`rl.rollouts = until_positive` (the authors' adaptive rollouts): the first draw is uniform's; each problem
    without a right rollout draws G more (new random streams), until one is right or max_rollouts are drawn; every
    rollout is trained on, with advantages over all of its problem's draws."""
    import excursions.train.grpo as grpo

    model, tok = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    problems = read_jsonl(micro_run / "world" / "gsm" / "train.jsonl")[:5]
    draws = {20: [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0],  # problems 0 and 3 unsolved
             8: [0, 0, 0, 0, 0, 1, 0, 0],  # problem 0 still unsolved, problem 3 solved
             4: [0, 0, 0, 0]}  # problem 0's last draw (max_rollouts = 3 G)
    monkeypatch.setattr(grpo, "math_rewards", lambda texts, *a, **k: [float(r) for r in draws[len(texts)]])
    base = dict(group_size=4, max_new_tokens=12, kl_coef=0.0, minibatches=1, temperature=1.0, prompts_per_step=5)
    every = grpo.rollout(model, None, tok, problems, RLConfig(**base), seed=3)
    more = grpo.rollout(model, None, tok, problems, RLConfig(rollouts="until_positive", max_rollouts=12, **base),
                        seed=3)
    assert more.rewards.tolist() == draws[20] + draws[8] + draws[4]  # groups: problems 0-4, then 0, 3, then 0
    completion = lambda b, i: b.responses[i][b.response_mask[i].bool()].tolist()
    assert all(completion(more, i) == completion(every, i) for i in range(20))
    assert [completion(more, i) for i in range(20, 24)] != [completion(more, i) for i in range(4)]  # a new draw
    assert more.stats["train/rollouts_per_prompt"] == 32 / 5
    assert more.stats["train/solved_groups"] == pytest.approx(4 / 5)
    assert more.stats["train/kept_groups"] == 5 and every.stats["train/rollouts_per_prompt"] == 4
    third = [12, 13, 14, 15, 24, 25, 26, 27]  # problem 3's two draws: one group of 8
    assert more.advantages[third].tolist() == pytest.approx(
        grpo_advantages(torch.tensor(draws[20][12:16] + draws[8][4:], dtype=torch.float), 8).tolist())
    assert more.advantages[[0, 1, 2, 3, 20, 21, 22, 23, 28, 29, 30, 31]].abs().max() == 0  # never right: no signal
    assert more.advantages[4:12].tolist() == pytest.approx(every.advantages[4:12].tolist())
    before = [p.clone() for p in model.parameters()]
    grpo_update(model, adamw(model, 1e-2, (0.9, 0.999), 0.0), more, RLConfig(rollouts="until_positive", **base))
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_adaptive_spends_the_step_budget_exactly_where_the_record_says(source, micro_run):
    """`adaptive`: prompts_per_step groups of G, in all, over the candidates as `adaptive_groups` gives them from
    the record of earlier rollouts; problems seen solving everything or nothing get none while others are open."""
    import excursions.train.grpo as grpo
    from excursions.objectives import adaptive_groups

    model, tok = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    problems = read_jsonl(micro_run / "world" / "gsm" / "train.jsonl")[:6]
    seen = [(64, 64), (64, 0), (0, 0), (8, 4), (0, 0), (64, 63)]
    cfg = RLConfig(group_size=4, prompts_per_step=4, rollouts="adaptive", max_rollouts=8, max_new_tokens=12,
                   kl_coef=0.0, minibatches=1, temperature=1.0)
    given = adaptive_groups(seen, 4, 4, 2)
    assert sum(given) == 4 and given[0] == given[1] == 0 and max(given) <= 2
    batch = grpo.rollout(model, None, tok, problems, cfg, seed=5, seen=seen)
    assert batch.rewards.numel() == 4 * 4  # the budget, exactly
    assert [n for n, _ in batch.counts] == [4 * g for g in given]
    assert batch.stats["train/kept_groups"] == sum(g > 0 for g in given)
    rates = grpo.PassRates({problems[3].id: [8, 4]})
    rates.update([problems[3].id, problems[4].id], [(4, 1), (8, 0)])
    assert rates.counts([problems[3].id, problems[4].id, problems[5].id]) == [(12, 5), (8, 0), (0, 0)]


def test_a_batch_of_fewer_groups_than_minibatches_takes_a_step_per_group(source):
    """Under `filter` a step may keep 1 group where rl.minibatches = 2: one optimizer step over it, as uniform's
    own mini-batch of that group would be."""
    model, twin, tok = (AutoModelForCausalLM.from_pretrained(source), AutoModelForCausalLM.from_pretrained(source),
                        AutoTokenizer.from_pretrained(source))
    start = [p.clone() for p in model.parameters()]
    batch = _batch(model, tok, [" 1 + 1 = 2\n#### 2", " 1 + 1 = 3\n#### 3"], [1.0, 0.0], RLConfig())
    one = dict(group_size=2, kl_coef=0.0)
    grpo_update(model, adamw(model, 1e-2, (0.9, 0.999), 0.0), batch, RLConfig(prompts_per_step=2, minibatches=2, rollouts="filter", **one))
    grpo_update(twin, adamw(twin, 1e-2, (0.9, 0.999), 0.0), batch, RLConfig(prompts_per_step=1, minibatches=1, **one))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), start))


def test_unknown_recipe_is_a_clear_error(source, micro_run, post_cfg, tmp_path):
    with pytest.raises(UserError, match="unknown recipe 'ppo'; choose one of rl, sft"):
        posttrain(str(source), "ppo", post_cfg, tmp_path, micro_run / "world")


# until converged: validation every 2 steps, a window of 2, no stop before step 6; the micro model's flat val pass@1
# stops it there, before its cap of 12 (and the kill, after step 2, comes before the stop)
CONVERGE = ["rl.until=converged", "rl.steps=12", "rl.converge.every=2", "rl.converge.window=2",
            "rl.converge.min_steps=6", "rl.converge.problems=4", "rl.converge.n=2"]


@pytest.mark.parametrize("rollouts", ["uniform", "adaptive", "converged"])  # adaptive: its record of the problems
def test_rl_resumes_after_kill_9_to_the_same_weights(rollouts, source, micro_run, micro_overrides, tmp_path):
    # resumes too; converged: the convergence rule's history, so the rerun stops at the same step
    extra = CONVERGE if rollouts == "converged" else ["rl.until=steps", "rl.steps=6", f"rl.rollouts={rollouts}",
                                                      "rl.max_rollouts=8"]
    overrides = micro_overrides + POST + extra
    cmd = lambda out: [sys.executable, "-m", "excursions.cli", "posttrain", str(source), "--recipe", "rl",
                       "--preset", "smoke", "--out", str(out), "--quiet", *overrides]
    straight = subprocess.run(cmd(tmp_path / "straight"), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen(cmd(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list((tmp_path / "killed").glob("resume/step000002")):
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run(cmd(tmp_path / "killed"), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    a, b = load_file(tmp_path / "straight/final/model.safetensors"), load_file(tmp_path / "killed/final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(0, 7))  # step 0: the starting model's tracked pass@k, logged once
    assert set(assert_events_match_metrics(tmp_path / "killed")["train/reward"]) == set(range(1, 7))  # each once
    meta = lambda run: json.loads((tmp_path / run / "final/excursions.json").read_text())["convergence"]
    assert meta("killed") == meta("straight")
    if rollouts == "converged":
        assert meta("killed")["converged"] and meta("killed")["steps"] == 6 < meta("killed")["cap"] == 12


def test_the_convergence_rule_reads_validation_problems_only(source, micro_run, micro_overrides, tmp_path,
                                                             monkeypatch):
    """Every problem the rule scores is a val problem, none a test one (a test problem here fails this test), in
    every stage that can run until converged."""
    import excursions.train.posttrain as pt

    scored: dict[str, set] = {}
    real = pt.track

    def spy(model, tok, problems, eval_cfg, n, family, prefix="eval"):
        scored.setdefault(prefix, set()).update(p.id for p in problems)
        return real(model, tok, problems, eval_cfg, n, family, prefix)

    monkeypatch.setattr(pt, "track", spy)
    ids = lambda split: {p.id for p in read_jsonl(micro_run / "world" / "gsm" / f"{split}.jsonl")}
    rule = lambda section, cap: [f"{section}.until=converged", cap, f"{section}.converge.every=2",
                                 f"{section}.converge.window=2", f"{section}.converge.problems=4",
                                 f"{section}.converge.n=2"]
    cfg = load_config("smoke", overrides=micro_overrides + POST + rule("rl", "rl.steps=4") + rule("sft", "sft.epochs=1")
                      + rule("parallel", "parallel.steps=4"))
    for name in ("rl", "sft", "parallel"):
        posttrain(str(source), name, cfg, tmp_path / name, micro_run / "world", progress=False)
        assert scored["val"] and scored["val"] <= ids("val") and not scored["val"] & ids("test"), name
        assert scored["eval"] <= ids("test")  # the tracked curves stay on test problems
        scored.clear()


def test_shared_prefix_logits_and_gradients_equal_the_full_forward(source, micro_run):
    """Each prompt run once for its group (and the LM head on real tokens only) must give the same logits
    and gradients as every row run in full through the model's own forward."""
    from excursions.train.logprobs import completion_logits

    model, tok = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    problems = read_jsonl(micro_run / "world/gsm/train.jsonl")[:3]
    prompts = [tok(format_prompt(p.question)).input_ids for p in problems]
    G, P, T = 2, max(map(len, prompts)), 7
    ids = torch.full((3 * G, P + T), tok.pad_token_id)
    attention = torch.zeros(3 * G, P + T, dtype=torch.long)
    torch.manual_seed(0)
    for i in range(3 * G):
        p, n = prompts[i // G], 3 + i % 4  # ragged prompts (left padding) and completions (right padding)
        ids[i, P - len(p) : P], attention[i, P - len(p) : P] = torch.tensor(p), 1
        ids[i, P : P + n], attention[i, P : P + n] = torch.randint(5, len(tok), (n,)), 1
    mask = attention[:, P:].float()

    def run(group):
        model.zero_grad(set_to_none=True)
        logits, m = completion_logits(model, ids, attention, mask, P, 0.7, group)
        logits.log_softmax(-1).gather(-1, ids[:, P : P + m.shape[1]][m][:, None]).sum().backward()
        return logits.detach(), m, [p.grad.clone() for p in model.parameters()]

    full, m_full, g_full = run(1)  # the model's own forward, every row in full
    shared, m_shared, g_shared = run(G)
    assert torch.equal(m_full, mask.bool()[:, :6]) and torch.equal(m_shared, m_full)  # column 7 is all padding
    assert shared.shape == full.shape == (int(mask.sum()), len(tok))
    assert torch.allclose(shared, full, atol=1e-4)
    for a, b in zip(g_full, g_shared):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3)


def test_every_recipe_is_made_of_stages_that_exist():
    """The recipe table (torch-free) and the stage functions agree: a recipe's stages run, and every stage says
    which config sections it reads (what a result's directory digest covers)."""
    from excursions.recipes import STAGE_SECTIONS
    from excursions.train.posttrain import STAGES

    assert set(STAGES) == set(STAGE_SECTIONS)
    assert {stage for r in RECIPES.values() for stage in r.stages} == set(STAGES)
    assert RECIPES["sft_gold_rl"].sections == ("sft", "rl", "sft_rl")  # [sft_rl] is laid over [rl] for its RL stage
    assert RECIPES["parallel"].sections == ("parallel", "rl", "sft")


def test_the_rl_stages_of_sft_rl_and_parallel_take_their_own_settings(source, micro_run, post_cfg, tmp_path):
    """[sft_rl] over [rl] for SFT->RL's RL stage, parallel's RL-side settings for parallel averaging (the authors ran
    both unlike direct RL: no KL, one on-policy update, their own LR); what is left unset stays [rl]'s."""
    import tomllib

    from dataclasses import replace

    from excursions.config import ParallelConfig, SFTRLConfig

    cfg = replace(post_cfg, sft_rl=SFTRLConfig(lr=7e-4, kl_coef=0.0, minibatches=1),
                  parallel=replace(post_cfg.parallel, steps=1, kl_coef=0.0, max_new_tokens=16))
    posttrain(str(source), "sft_rl", cfg, tmp_path / "sft_rl", micro_run / "world", progress=False)
    rl = tomllib.loads((tmp_path / "sft_rl" / "rl" / "config.toml").read_text())["rl"]
    assert (rl["lr"], rl["kl_coef"], rl["minibatches"]) == (7e-4, 0.0, 1)
    assert rl["max_new_tokens"] == post_cfg.rl.max_new_tokens and rl["group_size"] == post_cfg.rl.group_size
    posttrain(str(source), "parallel", cfg, tmp_path / "parallel", micro_run / "world", progress=False)
    rl = tomllib.loads((tmp_path / "parallel" / "config.toml").read_text())["rl"]
    assert (rl["lr"], rl["kl_coef"], rl["max_new_tokens"]) == (cfg.parallel.rl_lr, 0.0, 16)
    assert ParallelConfig().rl_side(post_cfg.rl) == replace(post_cfg.rl, lr=ParallelConfig().rl_lr)  # unset: [rl]'s


def test_parallel_averaging_takes_each_optimizer_from_its_own_section(source, micro_run, micro_overrides, tmp_path,
                                                                       monkeypatch):
    """The RL AdamW from [rl]'s betas and weight decay, the SFT one from [sft]'s (and each its own LR)."""
    from excursions.optim import ParallelAveraging
    from excursions.train import posttrain as stages

    built = []
    monkeypatch.setattr(stages, "ParallelAveraging", lambda *a: built.append(ParallelAveraging(*a)) or built[-1])
    cfg = load_config("smoke", overrides=micro_overrides + POST + ["parallel.steps=1", "rl.betas=[0.9, 0.99]",
                      "rl.weight_decay=0.02", "sft.betas=[0.8, 0.95]", "sft.weight_decay=0.3", "parallel.sft_lr=2e-3"])
    posttrain(str(source), "parallel", cfg, tmp_path / "run", micro_run / "world", progress=False)
    (avg,) = built
    rl, sft = avg.rl.param_groups[0], avg.sft.param_groups[0]  # the decayed group of each
    assert (rl["betas"], rl["weight_decay"], rl["lr"]) == ((0.9, 0.99), 0.02, cfg.parallel.rl_lr)
    assert (sft["betas"], sft["weight_decay"], sft["lr"]) == ((0.8, 0.95), 0.3, 2e-3)
