"""Post-training: a recipe of the table (`excursions/recipes.py`) runs its stages, each a short function over the
shared pieces (sampler, rewards, losses, the loop and its hooks).

    excursions posttrain runs/tiny/checkpoints/step000519-tokens4251648 --recipe rl

    final = posttrain(checkpoint, "sft_rl", cfg, out, world)    # out/sft/ then out/rl/; returns out/rl/final

Stages: `rl` (GRPO), `sft` (one demonstration per problem), `sft_gold` (all of them), `parallel` (paper
Algorithm 1). Each stage is a resumable run directory (`loop.RunDir`); under `torchrun` every rank trains its
share and rank 0 writes (`dist.py`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from excursions.config import Config, ConvergeConfig, RLConfig, to_dict
from excursions.data.problems import read_jsonl
from excursions.errors import UserError
from excursions.model import check_checkpoint, load_model, parse_checkpoint
from excursions.objectives import ROLLOUTS
from excursions.optim import ParallelAveraging, adamw, constant_with_warmup, set_lr
from excursions.recipes import RECIPES
from excursions.registry import lookup
from excursions.runtime import progress_bar
from excursions.tokenizer import load_tokenizer
from excursions.train import dist
from excursions.train.grpo import PassRates, grpo_gradients, grpo_update, rollout, training_flops
from excursions.train.loop import (Converge, Evaluate, FiniteCheck, Log, Progress, RunDir, Save, Timer, Totals, every,
                                  scores, track, train_loop)
from excursions.train.sft import SFTBatches, demonstrations, sft_gradients


def posttrain(checkpoint: str, name: str, cfg: Config, out: Path, world: Path, progress: bool = True,
              skip: int = 0) -> Path:
    """Run recipe `name` from `checkpoint` into `out`; returns the final HF checkpoint directory. `skip`: its first
    stages ran elsewhere and `checkpoint` is their result (the study's sft_rl continues its own sft run)."""
    recipe = lookup(RECIPES, name, "recipe")
    if not (Path(out) / "config.toml").exists():  # a new run: a bad source fails before its directory is made
        check_checkpoint(checkpoint)
    if cfg.distributed.sampler == "vllm":  # a missing extra fails here too, not after the model loaded
        from excursions.vllm_backend import require_vllm

        require_vllm()
    source = checkpoint
    for i, stage in enumerate(recipe.stages):
        if i < skip:
            continue
        last = i == len(recipe.stages) - 1  # the result is named by its recipe, earlier stages by their own
        stage_cfg = replace(cfg, rl=getattr(cfg, recipe.rl_over).over(cfg.rl)) if stage == "rl" and recipe.rl_over \
            else cfg
        source = str(STAGES[stage](source, stage_cfg, recipe.stage_dir(Path(out), stage), Path(world), progress,
                                   name=name if last else stage))
    return Path(source)


# ----------------------------------------------------------------------------------------- shared pieces


class _Setup:
    """What every runner loads: the model (and frozen reference), tokenizer and the world's splits."""

    def __init__(self, src: str, cfg: Config, world: Path, family: str, reference: bool, device: str = "cpu"):
        path, revision = parse_checkpoint(src)
        self.policy = load_model(path, revision, device=device)
        self.ref = load_model(path, revision, device=device).eval().requires_grad_(False) if reference else None
        self.tok = load_tokenizer(path, revision, chat=cfg.prompt.chat_template)
        for split in ("train", "val", "test"):
            if not (world / family / f"{split}.jsonl").is_file():
                raise UserError(f"{world} has no {family}/{split}.jsonl; pass the world/ of a pretraining run")
        self.train = read_jsonl(world / family / "train.jsonl")
        self.test = read_jsonl(world / family / f"{cfg.eval.split}.jsonl")  # tracked; val while choosing settings
        self.val = read_jsonl(world / family / "val.jsonl")  # the convergence rule's problems, never test
        self.family = family
        self.policy.train()
        self.src, self.distributed = src, cfg.distributed


def prompt_rows(step: int, n_items: int, per_step: int, seed: int) -> list[int]:
    """The training problems of a step: an epoch permutation, a pure function of the step."""
    import numpy as np

    per_epoch = max(1, n_items // per_step)
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch, 7]).permutation(n_items)
    return perm[i * per_step : (i + 1) * per_step].tolist()


def _step_rollouts(setup: "_Setup", trainee: "Trainee", c: RLConfig, step: int, d: dist.Dist, parts: int = 1):
    """This rank's share of step `step`'s rollout batch: its prompts (cut into `parts` mini-batches first, see
    `dist.shard`), sampled with the step's seed, so every rank count draws the samples one process would.
    Under `rl.rollouts = filter` and `adaptive` the step considers `filter_over` times the prompts (epochs pass
    that much faster); `adaptive` reads and updates the run's `PassRates`."""
    if c.rollouts != "uniform" and d.active:  # each rank would keep its own share of groups: unequal batches
        raise UserError(f"rl.rollouts={c.rollouts} runs in one process so far; launch without torchrun or use uniform")
    rows = prompt_rows(step, len(setup.train), c.prompts_sampled, c.seed)
    mine = dist.shard(len(rows), d, parts)
    problems = [setup.train[rows[i]] for i in mine]
    ids, rates = [p.id for p in problems], trainee.pass_rates(c) if ROLLOUTS[c.rollouts].by_rates else None
    batch = rollout(trainee.replica, setup.ref, setup.tok, problems, c, seed=c.seed * 1_000_003 + step,
                    prompt_index=mine, sampler=trainee.sampler, seen=rates.counts(ids) if rates else ())
    if rates:
        rates.update(ids, batch.counts)
    return batch


class Trainee:
    """The model being trained as each process holds it: `module` runs forward / backward (plain, DDP, or
    FSDP2-sharded), `replica` is a plain model with the current weights for rollouts, tracking and saving."""

    def __init__(self, run: RunDir, setup: _Setup, d: dist.Dist, rollouts: bool = False):
        self.d, self.setup = d, setup
        # every rank loads the same weights, then shards
        self.start, self._states = run.resume(setup.policy, run.latest())
        self.replica = setup.policy
        if d.strategy == "fsdp" and d.active:  # sharding replaces the parameters: keep a plain copy first
            import copy

            self.replica = copy.deepcopy(setup.policy).eval().requires_grad_(False)
        self.module = dist.wrap(setup.policy, d)
        self.optimizers: dict = {}
        self.rates: PassRates | None = None  # `adaptive`'s record, saved beside the optimizers' states
        self.sampler = None  # rollouts on a vLLM engine that follows the weights (distributed.sampler=vllm)
        if rollouts and setup.distributed.sampler == "vllm":
            from excursions.vllm_backend import VLLMSampler

            if d.active:
                raise UserError("distributed.sampler=vllm runs in one process so far; launch without torchrun")
            self.sampler = VLLMSampler(*parse_checkpoint(setup.src), memory=setup.distributed.vllm_memory)
            if self.start:  # resumed: the engine loaded the source checkpoint, not the resumed weights
                self.sampler.sync(self.replica)

    def attach(self, optimizers: dict) -> None:
        """The optimizers (made over `module`'s parameters), with their resumed states."""
        self.optimizers = optimizers
        for name, opt in optimizers.items():
            if name in self._states:
                dist.load_optimizer_state(self.module, opt, self._states[name], self.d)

    def sync(self) -> None:
        """After an update: the FSDP2 replica gets the new full weights (the DDP / single module is the replica)."""
        if self.replica is not self.setup.policy:
            self.replica.load_state_dict(dist.full_state(self.module, self.d))
            self.replica.eval()
        if self.sampler is not None:
            self.sampler.sync(self.replica)

    def pass_rates(self, c: RLConfig) -> PassRates:
        """`adaptive`'s record of the training problems: resumed, or from `rl.prior`, or empty; saved with the run."""
        if self.rates is None:
            resumed = self._states.get("pass_rates")
            self.rates = (PassRates(resumed) if resumed is not None
                          else PassRates.from_eval(c.prior) if c.prior else PassRates())
        return self.rates

    def save(self, run: RunDir, step: int) -> None:
        states = {name: dist.optimizer_state(self.module, opt, self.d) for name, opt in self.optimizers.items()}
        if self.rates is not None:
            states["pass_rates"] = self.rates.seen
        if self.d.main:
            run.save(step, self.replica, self.setup.tok, states)
        dist.barrier(self.d)


def _claim(out: Path, settings: dict, d: dist.Dist, cfg: Config) -> RunDir:
    """The run directory; rank 0 claims and cleans it before the other ranks read it."""
    run = RunDir(out, settings, tracking=cfg.tracking) if d.main else None
    dist.barrier(d)
    return run or RunDir(out, settings, write=False)


def _loop(run: RunDir, trainee: Trainee, cfg: Config, steps: int, step_fn: Callable[[int], dict], save_every: int,
          track_every: int, track_n: int, desc: str, progress: bool, until: str = "steps",
          converge: ConvergeConfig | None = None) -> dict:
    """A stage's steps through the shared loop: check, count FLOPs, track test pass@k, log and save (rank 0); under
    `until = "converged"` the `Converge` hook reads validation pass@1 and may stop before `steps` (the cap). Returns
    the run's convergence record for its metadata."""
    setup, d, start = trainee.setup, trainee.d, trainee.start
    test = setup.test[: cfg.rl.track_problems]

    def step(s: int) -> dict:
        stats = step_fn(s)
        trainee.sync()
        return stats

    def evaluate(problems=test, n=track_n, prefix="eval") -> dict:
        numbers = track(trainee.replica, setup.tok, problems, cfg.eval, n, setup.family, prefix)
        trainee.replica.train(trainee.replica is setup.policy)
        return numbers

    conv = None
    if until == "converged":
        c = converge or ConvergeConfig()
        key = f"val/{setup.family}/per_problem"

        def validate() -> tuple[dict, dict]:
            numbers = evaluate(validation_problems(setup, c.problems), c.n, "val")
            return scores(numbers[key]), numbers

        conv = Converge(validate, c, steps, run.rows() if start else [], key)
    bar = progress_bar(total=steps, initial=start, unit="step", desc=desc, disable=not progress or not d.main)
    postfix = lambda row: {k.split("/")[-1]: f"{v:.3f}" for k, v in row.items()
                           if k in ("train/reward", "train/loss", f"val/{setup.family}/pass@1")}
    tracked = every(track_every, last=steps)
    hooks = [FiniteCheck(desc, trainee.replica),  # every rank: the stats are reduced, the weights equal
             Totals(("train_flops", "rollout_flops", "rollout_tokens"), run.rows()[-1] if start else {}),
             Timer(), *([conv] if conv else []),
             Evaluate(evaluate, lambda done: tracked(done) or bool(conv and conv.stop)),
             *([Log(run)] if d.main else []), Progress(bar, postfix),
             Save(lambda done: trainee.save(run, done),
                  lambda done: done % save_every == 0 and done < steps and not (conv and conv.stop))]
    if start == 0 and (track_every > 0 or conv):  # the curves start at the starting model (step 0), before any update
        row = {"step": 0, **(evaluate() if track_every > 0 else {}), **(conv.first() if conv else {})}
        if d.main:
            run.log(row)
    train_loop(start, steps, step, hooks)
    return conv.record() if conv else {"until": "steps", "steps": steps}


def validation_problems(setup: "_Setup", count: int) -> list:
    """The problems the convergence rule scores: the first `count` of the family's val split (test is read once,
    at the end; settings are never chosen on it)."""
    return setup.val[:count]


def _finish(run: RunDir, trainee: Trainee, src: str, name: str, world: Path, convergence: dict, t0: float) -> Path:
    setup = trainee.setup
    rows = run.rows()
    meta = {"recipe": name, "source": src, "world_dir": str(world.resolve()), "family": setup.family,
            "steps": convergence["steps"], "convergence": convergence,
            "final": {k: v for k, v in rows[-1].items() if k.startswith(("eval/", "total_"))
                      and not k.endswith("/per_problem")} if rows else {},
            "wall_seconds": time.perf_counter() - t0}
    if trainee.d.active:
        meta["distributed"] = {"strategy": trainee.d.strategy, "world_size": trainee.d.world}
    if trainee.d.main:
        run.finish(trainee.replica, setup.tok, meta)
    dist.barrier(trainee.d)
    return run.final


# ----------------------------------------------------------------------------------------- stages


def run_grpo(src: str, cfg: Config, out: Path, world: Path, progress: bool, name: str = "rl") -> Path:
    """GRPO from `src`: each step samples the step's prompts and takes `rl.minibatches` optimizer steps."""
    c = cfg.rl
    d = dist.setup(cfg.distributed.strategy, cfg.distributed.device)
    run = _claim(out, {"stage": "rl", "source": src, "rl": to_dict(c), "eval": to_dict(cfg.eval)}, d, cfg)
    if run.done:
        return run.final
    t0 = time.perf_counter()
    setup = _Setup(src, cfg, world, c.family, reference=c.kl_coef > 0, device=d.device)
    trainee = Trainee(run, setup, d, rollouts=True)
    opt = adamw(trainee.module, c.lr, c.betas, c.weight_decay)
    trainee.attach({"opt": opt})

    def step_fn(step: int) -> dict:
        batch = _step_rollouts(setup, trainee, c, step, d, c.minibatches)  # mini-batch by mini-batch
        update = grpo_update(trainee.module, opt, batch, c, d, flops_model=trainee.replica)
        return {**dist.mean_stats(batch.stats, d), **update}

    conv = _loop(run, trainee, cfg, c.steps, step_fn, c.save_every, c.track_every, c.track_n, name, progress,
                 c.until, c.converge)
    return _finish(run, trainee, src, name, world, conv, t0)


def run_sft(src: str, cfg: Config, out: Path, world: Path, progress: bool, name: str = "sft",
            demos: str = "one") -> Path:
    """SFT from `src` on one demonstration per training problem (`demos="one"`) or on all of them."""
    c = cfg.sft
    d = dist.setup(cfg.distributed.strategy, cfg.distributed.device)
    settings = {"stage": "sft", "demos": demos, "source": src, "sft": to_dict(c), "eval": to_dict(cfg.eval)}
    run = _claim(out, settings, d, cfg)
    if run.done:
        return run.final
    t0 = time.perf_counter()
    setup = _Setup(src, cfg, world, c.family, reference=False, device=d.device)
    trainee = Trainee(run, setup, d)
    pairs = demonstrations(setup.train, demos, c.seed, setup.tok, c.demonstration)
    batches = SFTBatches(setup.tok, pairs, c.batch_size, c.seed)
    steps = c.epochs * batches.steps_per_epoch
    opt = adamw(trainee.module, c.lr, c.betas, c.weight_decay)
    trainee.attach({"opt": opt})

    def step_fn(step: int) -> dict:
        set_lr(opt, constant_with_warmup(step, c.lr, c.warmup_steps))
        batch = batches.batch(step)
        loss = sft_gradients(trainee.module, batch, d=d)  # under torchrun: this rank's rows of the batch
        torch.nn.utils.clip_grad_norm_(trainee.module.parameters(), c.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {"train/loss": loss, "epoch": (step + 1) / batches.steps_per_epoch,
                "train_flops": training_flops(trainee.replica, batch[1])}

    conv = _loop(run, trainee, cfg, steps, step_fn, c.save_every, c.track_every, cfg.rl.track_n, name, progress,
                 c.until, c.converge)
    return _finish(run, trainee, src, name, world, conv, t0)


def take_gradients(module, params: list, clip: float) -> list[torch.Tensor]:
    """The accumulated gradients, clipped to norm `clip`, as a list (zeros where none), with the module's cleared."""
    torch.nn.utils.clip_grad_norm_(params, clip)
    out = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    module.zero_grad(set_to_none=True)
    return out


def rl_gradient(module, params: list, batch, r, d: dist.Dist = dist.SINGLE) -> tuple[list[torch.Tensor], dict]:
    """Algorithm 1's RL half: the GRPO gradient of the whole rollout batch (mini-batches accumulated), clipped on its
    own, and its stats. A batch with no group to learn from (`filter` found none with a right and a wrong rollout)
    gives a zero gradient (AdamW's momentum still moves)."""
    if not batch.rewards.numel():
        return [torch.zeros_like(p) for p in params], {}
    stats = grpo_gradients(module, batch, torch.arange(batch.rewards.numel(), device=batch.rewards.device), r, d)
    return take_gradients(module, params, r.grad_clip), stats


def parallel_gradients(module, params: list, batch, sft_batch, r, s, d: dist.Dist = dist.SINGLE):
    """Algorithm 1's two gradients at the same weights, each clipped on its own: (g_rl, g_sft, RL stats, SFT
    loss). Under torchrun `batch` is this rank's shard and the SFT rows are split over the ranks; the engine
    reduces both."""
    g_rl, rl_stats = rl_gradient(module, params, batch, r, d)
    sft_loss = sft_gradients(module, sft_batch, d=d)
    return g_rl, take_gradients(module, params, s.grad_clip), rl_stats, sft_loss


def run_parallel(src: str, cfg: Config, out: Path, world: Path, progress: bool, name: str = "parallel") -> Path:
    """Parallel averaging (Algorithm 1): per step an RL and an SFT gradient at the same weights, each through its own
    AdamW, the two updates averaged with weight w."""
    c, r, s = cfg.parallel, cfg.parallel.rl_side(cfg.rl), cfg.sft
    d = dist.setup(cfg.distributed.strategy, cfg.distributed.device)
    run = _claim(out, {"stage": "parallel", "source": src, "parallel": to_dict(c), "rl": to_dict(r),
                       "sft": to_dict(s), "eval": to_dict(cfg.eval)}, d, cfg)
    if run.done:
        return run.final
    t0 = time.perf_counter()
    setup = _Setup(src, cfg, world, r.family, reference=r.kl_coef > 0, device=d.device)
    trainee = Trainee(run, setup, d, rollouts=True)
    pairs = demonstrations(setup.train, "one", s.seed, setup.tok, s.demonstration)
    batches = SFTBatches(setup.tok, pairs, s.batch_size, s.seed)
    avg = ParallelAveraging(trainee.module, c.rl_lr, c.sft_lr, r.betas, r.weight_decay, s.betas, s.weight_decay)
    trainee.attach({"rl": avg.rl, "sft": avg.sft})

    def step_fn(step: int) -> dict:
        batch = _step_rollouts(setup, trainee, r, step, d)  # one gradient over the whole batch
        sft_batch = batches.batch(step)
        g_rl, g_sft, rl_stats, sft_loss = parallel_gradients(trainee.module, avg.params, batch, sft_batch, r, s, d)
        w = c.weight + (c.weight_end - c.weight) * step / max(1, c.steps - 1)
        avg.step(g_rl, g_sft, w)
        flops = dist.global_sum(training_flops(trainee.replica, batch.attention), d)
        flops += training_flops(trainee.replica, sft_batch[1])  # every rank holds the whole SFT batch
        return {**dist.mean_stats(batch.stats, d), **{f"train/{k}": v for k, v in rl_stats.items()},
                "train/loss": sft_loss, "parallel/weight": w, "train_flops": flops}

    conv = _loop(run, trainee, cfg, c.steps, step_fn, r.save_every, r.track_every, r.track_n, name, progress,
                 c.until, c.converge)
    return _finish(run, trainee, src, name, world, conv, t0)


STAGES: dict[str, Callable] = {  # the trainings recipes are made of (recipes.STAGE_SECTIONS: what each reads)
    "rl": run_grpo,
    "sft": partial(run_sft, demos="one"),
    "sft_gold": partial(run_sft, demos="all"),
    "parallel": run_parallel,
}
