"""The sections of how runs go: the post-training recipes (GRPO, SFT, parallel averaging), prompts, devices and
processes, metric tracking, and what the study runs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from excursions.config.loader import added, check
from excursions.recipes import RECIPES

def _check_optim(lr: float, betas: tuple, weight_decay: float, grad_clip: float, prefix: str = "") -> None:
    check(lr > 0, f"{prefix}lr", "must be > 0")
    check(len(betas) == 2 and all(0 <= b < 1 for b in betas), "betas", "must be two numbers in [0, 1)")
    check(weight_decay >= 0, "weight_decay", "must be >= 0")
    check(grad_clip > 0, "grad_clip", "must be > 0")


@dataclass(frozen=True)
class ConvergeConfig:
    """When a training stage has converged (its section's `until = "converged"`; `train.loop.Converge`): validation
    pass@1 (0-shot, on the first `problems` *val* problems, `n` samples each) every `every` steps and at the cap; the
    run stops at the first evaluation from `min_steps` on where the paired change of the best of the last `window`
    evaluations over the best before them has its 95% interval's upper end below `threshold` (the gain the last
    window could still hold is smaller than that). It returns its last weights: at a plateau the last is within
    `threshold` of the best by the rule's own test, and no extra copy of the weights is kept. The section's step
    count (rl.steps, sft.epochs, parallel.steps) is the cap; a run that reaches it unconverged is marked capped."""

    every: int = 10
    window: int = 3
    min_steps: int = 20
    threshold: float = 0.03
    problems: int = 200
    n: int = 8

    def __post_init__(self):
        for name in ("every", "window", "problems", "n"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.min_steps >= 0, "min_steps", "must be >= 0")
        check(0 < self.threshold < 1, "threshold", "must be in (0, 1): a pass@1 gain, as a fraction")


@dataclass(frozen=True)
class RLConfig:
    """GRPO (paper Table 1, VeRL semantics), scaled to a tiny model on a CPU."""

    family: Literal["gsm", "hard"] = "gsm"  # whose train problems are the prompts
    steps: int = 40  # rollout batches
    prompts_per_step: int = 32  # paper: 512
    group_size: int = 8  # G rollouts per prompt; paper: 32
    minibatches: int = 2  # optimizer steps per rollout batch (paper: 512 / 128 = 4)
    micro_batch: int = 64  # rollouts per forward/backward; gradients accumulate to the same loss
    lr: float = 5e-5  # paper: 1e-6 at 1B
    betas: tuple[float, ...] = (0.9, 0.999)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    temperature: float = 1.0
    max_new_tokens: int = 128
    clip_eps: float = 0.2
    dual_clip: float = 3.0  # VeRL's clip_ratio_c: a negative advantage's loss is capped at -c * A (0 = off)
    kl_coef: float = 1e-3
    kl: str = "k3"  # k1 | k2 | k3 (low-variance)
    advantage: str = "grpo"  # grpo | drgrpo
    # which sampled groups a step trains on (objectives.ROLLOUTS): all of them (`uniform`), or (`filter`, DAPO's
    # dynamic sampling) up to prompts_per_step groups with both a right and a wrong rollout, out of filter_over
    # times the prompts; its rollout FLOPs count every sample drawn
    # or (`until_positive`, the authors' adaptive rollouts) G more for each prompt without a right one, up to
    # max_rollouts per prompt, all trained on (advantages over each prompt's whole set); or (`adaptive`) the
    # step's prompts_per_step groups spread over filter_over times as many candidates, by what earlier rollouts
    # (and `prior`, an evaluation JSON of training problems) say of each (objectives.adaptive_groups)
    rollouts: str = "uniform"
    filter_over: int = 4
    max_rollouts: int = 128
    prior: str = ""
    aggregation: str = "token-mean"
    format_score: float = 0.1
    # what earns the reward of 1: the right answer (the paper), or the right answer reached by written work
    # whose every step checks out (`evals.math.verified`: a lucky guess earns only the format score)
    reward: Literal["answer", "verified"] = "answer"
    shots: int = 0  # exemplars in the rollout prompts (the paper trains 0-shot)
    track_every: int = 10  # steps between validation reward and test pass@k (0 = off)
    track_problems: int = 100
    track_n: int = 8
    save_every: int = 10
    seed: int = 0
    until: Literal["steps", "converged"] = added("steps")  # "converged": `steps` is the cap (ConvergeConfig)
    converge: ConvergeConfig = added(ConvergeConfig())

    @property
    def prompts_sampled(self) -> int:
        """Prompts a step considers: prompts_per_step, or under `filter` and `adaptive` filter_over times as many to
        choose from."""
        from excursions.objectives import ROLLOUTS

        return self.prompts_per_step * (self.filter_over if ROLLOUTS[self.rollouts].widens else 1)

    @property
    def rounds(self) -> int:
        """Draws of G rollouts a prompt may get in one step: max_rollouts / G under `until_positive` and
        `adaptive`, else 1."""
        from excursions.objectives import ROLLOUTS

        return self.max_rollouts // self.group_size if ROLLOUTS[self.rollouts].rounds else 1

    def __post_init__(self):
        from excursions.objectives import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, ROLLOUTS

        for name in ("steps", "prompts_per_step", "group_size", "minibatches", "micro_batch", "max_new_tokens",
                     "save_every", "filter_over"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.prompts_per_step % self.minibatches == 0, "minibatches",
              f"must divide prompts_per_step ({self.prompts_per_step})")
        _check_optim(self.lr, self.betas, self.weight_decay, self.grad_clip)
        check(self.temperature > 0, "temperature", "must be > 0 for exploration")
        check(0 <= self.clip_eps < 1, "clip_eps", "must be in [0, 1)")
        check(self.dual_clip == 0 or self.dual_clip > 1, "dual_clip", "must be 0 (off) or > 1 (VeRL: 3)")
        check(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        check(self.kl in KL_ESTIMATORS, "kl", f"unknown KL estimator; choose one of {', '.join(KL_ESTIMATORS)}")
        check(self.advantage in ADVANTAGES, "advantage", f"unknown estimator; choose one of {', '.join(ADVANTAGES)}")
        check(self.rollouts in ROLLOUTS, "rollouts", f"unknown allocator; choose one of {', '.join(ROLLOUTS)}")
        if ROLLOUTS[self.rollouts].rounds:
            check(self.max_rollouts >= self.group_size and self.max_rollouts % self.group_size == 0, "max_rollouts",
                  f"must be a multiple of group_size ({self.group_size}): rollouts are drawn G at a time")
        check(self.aggregation in AGGREGATIONS, "aggregation", f"unknown mode; choose one of {', '.join(AGGREGATIONS)}")
        check(0 <= self.format_score < 1, "format_score", "must be in [0, 1)")
        for name in ("shots", "track_every", "track_problems"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        check(self.track_n >= 1, "track_n", "must be >= 1")


@dataclass(frozen=True)
class SFTConfig:
    """SFT on demonstrations (paper Table 3): one per problem (`sft`) or all of them (`sft_gold`)."""

    family: Literal["gsm", "hard"] = "gsm"
    epochs: int = 3  # paper: 5
    batch_size: int = 32
    lr: float = 3e-4  # paper: 4e-5 at 1B
    betas: tuple[float, ...] = (0.9, 0.999)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    warmup_steps: int = 10
    # sft's one demonstration per problem: a random one, fixed by the seed (the paper's text), or the first of
    # the problem's list (the authors' data: the first OpenMathInstruct-2 row of each question)
    demonstration: Literal["random", "first"] = "random"
    track_every: int = 0  # steps between test pass@k (0 = at the end only)
    save_every: int = 50
    seed: int = 0
    until: Literal["steps", "converged"] = added("steps")  # "converged": `epochs` is the cap (ConvergeConfig)
    converge: ConvergeConfig = added(ConvergeConfig())

    def __post_init__(self):
        for name in ("epochs", "batch_size", "save_every"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        _check_optim(self.lr, self.betas, self.weight_decay, self.grad_clip)
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(self.track_every >= 0, "track_every", "must be >= 0")


@dataclass(frozen=True)
class ParallelConfig:
    """Parallel averaging (paper Algorithm 1): an RL and an SFT update from their own AdamW, averaged.

    theta <- theta_bar + w * delta_RL + (1 - w) * delta_SFT, with w going linearly from `weight`
    to `weight_end` over the run (the paper: w = 0.5 throughout). Rollouts follow [rl], the SFT
    batches [sft] (one demonstration per problem).
    """

    steps: int = 40
    rl_lr: float = 5e-5
    sft_lr: float = 3e-4
    weight: float = 0.5
    weight_end: float = 0.5
    # the RL side's rollouts and loss where not [rl]'s (the authors' script: no KL, 512 tokens, no format score)
    kl_coef: float = -1.0  # < 0 = [rl]'s (0 turns the KL term off)
    max_new_tokens: int = 0  # 0 = [rl]'s
    format_score: float = -1.0  # < 0 = [rl]'s
    until: Literal["steps", "converged"] = added("steps")  # "converged": `steps` is the cap (ConvergeConfig)
    converge: ConvergeConfig = added(ConvergeConfig())

    def __post_init__(self):
        check(self.steps >= 1, "steps", "must be >= 1")
        check(self.rl_lr > 0, "rl_lr", "must be > 0")
        check(self.sft_lr > 0, "sft_lr", "must be > 0")
        check(0 <= self.weight <= 1, "weight", "must be between 0 and 1")
        check(0 <= self.weight_end <= 1, "weight_end", "must be between 0 and 1")
        check(self.max_new_tokens >= 0, "max_new_tokens", "must be >= 0 (0 = [rl]'s)")

    def rl_side(self, rl: RLConfig) -> RLConfig:
        """[rl] as parallel averaging's RL side runs it: its own LR, and these where set."""
        return over(rl, lr=self.rl_lr, kl_coef=self.kl_coef, max_new_tokens=self.max_new_tokens,
                    format_score=self.format_score)


@dataclass(frozen=True)
class InterleaveConfig:
    """RL inside pretraining (beyond the paper, its section 7; `excursions pretrain --interleave-from CKPT`): from a
    pretraining checkpoint to the end of its schedule, GRPO steps with the [rl] settings mixed into next-token
    prediction, every `every`-th pretraining step. mode "alternate": one GRPO step through its own AdamW after that
    pretraining step; "average": that step's next-token update and a GRPO update, both from the same weights and each
    through its own AdamW, averaged with `weight` on RL (paper Algorithm 1 with the pretraining batch in place of
    the SFT batch; weight 0 is plain pretraining, exactly). The data, LR schedule and checkpoints stay the run's."""

    mode: Literal["alternate", "average"] = "alternate"
    every: int = 8
    weight: float = 0.5
    world: str = added("")  # the world/ directory whose [rl] family's train problems RL steps on; "" = the run's own

    def __post_init__(self):
        check(self.every >= 1, "every", "must be >= 1 (1: an RL step with every pretraining step)")
        check(0 <= self.weight <= 1, "weight", "must be between 0 and 1")


@dataclass(frozen=True)
class SFTRLConfig:
    """The RL stage of SFT->RL (`sft_rl`, `sft_gold_rl`): [rl] with what is set here laid over it; a field left at
    its default keeps [rl]'s. The authors ran this stage with their SFT trainer's settings, not direct RL's: lr 4e-5,
    no KL, one on-policy update per rollout batch, 512-token responses, no format score (docs/FIDELITY.md)."""

    lr: float = 0.0  # 0 = [rl]'s
    kl_coef: float = -1.0  # < 0 = [rl]'s (0 turns the KL term off)
    minibatches: int = 0  # 0 = [rl]'s (1: one on-policy update per rollout batch)
    max_new_tokens: int = 0  # 0 = [rl]'s
    format_score: float = -1.0  # < 0 = [rl]'s

    def __post_init__(self):
        for name in ("lr", "minibatches", "max_new_tokens"):
            check(getattr(self, name) >= 0, name, "must be >= 0 (0 = [rl]'s)")

    def over(self, rl: RLConfig) -> RLConfig:
        return over(rl, lr=self.lr, kl_coef=self.kl_coef, minibatches=self.minibatches,
                    max_new_tokens=self.max_new_tokens, format_score=self.format_score)


def over(rl: RLConfig, **fields) -> RLConfig:
    """`rl` with the fields that are set laid over it: 0 means unset for counts and rates, a negative value for
    coefficients and scores (where 0 is a setting).

    >>> over(RLConfig(), lr=0.0, kl_coef=0.0, format_score=-1.0).kl_coef, over(RLConfig(lr=2e-5), lr=0.0).lr
    (0.0, 2e-05)
    """
    unset = lambda k, v: v < 0 if k in ("kl_coef", "format_score") else v == 0
    return replace(rl, **{k: v for k, v in fields.items() if not unset(k, v)})


@dataclass(frozen=True)
class PromptConfig:
    """How problems are shown to the model. Base checkpoints (the paper's, and the tiny ones) read plain
    `Question: ... Answer:` text; an instruct model can be given its tokenizer's chat template instead: the
    question as a user turn (exemplars as earlier user / assistant turns), the solution as the assistant's.
    Enters a result's digest only when set (it came after results that did not have it)."""

    chat_template: bool = False


@dataclass(frozen=True)
class DistributedConfig:
    """Where and how runs execute: devices, the split of a `torchrun` launch (one process ignores the strategy),
    and the sampler. Not part of any result's digest: the same settings on another device or sampler measure
    the same thing (with other random draws)."""

    strategy: Literal["ddp", "fsdp"] = "ddp"  # DistributedDataParallel, or FSDP2's fully_shard per layer
    device: str = "auto"  # where models train and sample: auto (a GPU when torch sees one), cpu, cuda
    sampler: Literal["builtin", "vllm"] = "builtin"  # rollouts and math evaluation; vllm: CUDA, '.[vllm]'
    vllm_memory: float = 0.3  # share of GPU memory a vLLM engine takes (the trainer keeps the rest)

    def __post_init__(self):
        check(self.device in ("auto", "cpu", "cuda"), "device", "choose auto, cpu or cuda")
        check(0 < self.vllm_memory < 1, "vllm_memory", "must be in (0, 1)")


@dataclass(frozen=True)
class TrackingConfig:
    """Where every training run's per-step metrics go besides its metrics.jsonl: TensorBoard event files in the
    run directory (on by default), and Weights & Biases when `wandb` is online or offline (`pip install
    'excursions[wandb]'`; offline writes to the run directory without a network, for `wandb sync` later)."""

    tensorboard: bool = True
    wandb: Literal["off", "online", "offline"] = "off"
    wandb_project: str = "excursions"


def experiment_names() -> list[str]:
    """The experiments there are: one module each in study/experiments/, named by its file (read off the files, so
    that checking a config imports none of them)."""
    folder = Path(__file__).resolve().parent.parent / "study" / "experiments"
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


@dataclass(frozen=True)
class StudyConfig:
    """What `excursions study` runs: the checkpoints to branch from, the recipes, seeds and experiments.

    Every recipe runs from every chosen checkpoint once per seed (the seed goes to [rl] and [sft]);
    `seed_checkpoint` adds direct-RL runs with `extra_seeds` there, for the brittleness experiment.
    """

    checkpoints: tuple[int, ...] = ()  # indices into the pretraining checkpoints (negative from the end); () = all
    external: tuple[str, ...] = ()  # checkpoint dirs or hub ids[@revision] to use instead of pretraining
    world: str = ""  # the world/ directory the external checkpoints are evaluated and post-trained on
    recipes: tuple[str, ...] = ("rl", "sft", "sft_gold", "sft_rl", "parallel")
    seeds: tuple[int, ...] = (0,)
    extra_seeds: tuple[int, ...] = ()  # more direct-RL seeds at `seed_checkpoint` (Fig. 13-14)
    seed_checkpoint: int = -1
    # more pretraining runs of the same world, one per seed (the config's `seed`: initialisation and data order), each
    # with its own checkpoints and the study's recipes from them; verdicts pool the runs (the multi-bootstrap)
    pretrain_seeds: tuple[int, ...] = added(())
    # checkpoints matched by capability beside token counts (the matched experiment): in each pretraining run, direct
    # RL also from the first checkpoint whose base scores at least each target on validation problems (`match_metric`,
    # few-shot as the base is compared); () = off
    match_targets: tuple[float, ...] = added(())
    match_metric: str = added("pass@1")
    nshot: tuple[int, ...] = (0, 1, 2, 4, 8)  # exemplar counts swept on the last base checkpoint (Fig. 16)
    sft_epochs: int = 0  # > 0: one more sft run at seed_checkpoint for this many epochs, tracked each epoch (Fig. 15)
    tasks: tuple[str, ...] = ("gsm", "general")  # evaluated on every base checkpoint and every result
    # Fig. 18: direct RL on easy / hard splits of the last checkpoint's training problems with each rollout count
    rollouts: tuple[int, ...] = (4, 16)  # rollouts per prompt compared (paper: 5 and 64); () = off
    split_problems: int = 400  # training problems sampled to make the splits (paper: all 80K)
    split_n: int = 32  # samples per problem for the splits (paper: 64 at T = 1; here at rl.temperature)
    rollout_steps: int = 0  # RL steps of these runs (0 = rl.steps)
    rollout_prompts: int = 0  # prompts per RL step of these runs (0 = rl.prompts_per_step)
    # beyond the paper: direct RL from the first chosen checkpoint under each rollout allocator (rl.rollouts), at
    # equal FLOPs, the rollouts experiment's steps and prompts; () = off
    allocators: tuple[str, ...] = ()
    # Fig. 4, 10-12: RL on `hard` from the final checkpoint of the study's run, of a bigger model on the same data
    # (scaling N), and of the same model with extra targeted `hard` math (scaling D). Each is a pretraining run.
    scale_model: str = ""  # scaling N: this model size (e.g. olmo2_3M); "" = no N variant
    scale_targeted: float = 0.0  # scaling D: extra targeted math tokens, as a share of pretrain.tokens; 0 = no D variant
    # beyond the paper: pass@k to large k (Yue et al.), base vs direct RL from the first chosen checkpoint, with this
    # many samples on the first `large_k_problems` test problems; 0 = off
    large_k: int = 0
    large_k_problems: int = 50
    # beyond the paper (its section 7): excursion and return. These recipes' runs from the first chosen checkpoint
    # (first seed) go back to pretraining, with the run's optimizer state, LR schedule and data position, to its end
    returns: tuple[str, ...] = ()
    # beyond the paper (its section 7): interleaved RL, [interleave] in each of these modes (alternate, average), from
    # the same checkpoint to the end of the pretraining schedule
    interleaves: tuple[str, ...] = ()
    branch_at: int = 0  # where returns and interleaved runs start: a position in study.checkpoints (0: the first)
    # the experiments to run and report (study/experiments/, one file each; checked when the study plans);
    # () = every one, in the paper's order
    experiments: tuple[str, ...] = ()

    def __post_init__(self):
        for i, name in enumerate(self.experiments):
            check(name in experiment_names(), f"experiments[{i}]",
                  f"unknown experiment {name!r}; choose from {', '.join(experiment_names())}")
        for i, name in enumerate(self.recipes):
            check(name in RECIPES, f"recipes[{i}]", f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
        known = ("gsm", "hard", "general")
        for i, task in enumerate(self.tasks):
            check(task in known, f"tasks[{i}]", f"unknown task {task!r}; choose from {', '.join(known)}")
        check(any(t != "general" for t in self.tasks), "tasks", "needs a math task (gsm or hard): every experiment reads one")
        check(len(self.seeds) >= 1, "seeds", "needs at least one seed")
        check(len(set(self.pretrain_seeds)) == len(self.pretrain_seeds), "pretrain_seeds", "each seed once")
        check(not (self.pretrain_seeds and self.external), "pretrain_seeds",
              "more pretraining runs need the study's own pretraining, not external checkpoints")
        check(all(0 < t <= 1 for t in self.match_targets), "match_targets", "each target is a pass rate in (0, 1]")
        check(self.match_metric.startswith("pass@") and self.match_metric[5:].isdigit(), "match_metric",
              "must be pass@k, k one of eval.ks (e.g. pass@1)")
        check(all(k >= 0 for k in self.nshot), "nshot", "exemplar counts must be >= 0")
        check(self.sft_epochs >= 0, "sft_epochs", "must be >= 0 (0 = no SFT epochs sweep)")
        check(all(g >= 2 for g in self.rollouts), "rollouts", "rollout counts must be >= 2 (GRPO compares a group)")
        check(self.split_problems >= 1, "split_problems", "must be >= 1")
        check(self.split_n >= 8, "split_n", "must be >= 8 (hard means at most n / 8 correct)")
        from excursions.objectives import ROLLOUTS

        for i, name in enumerate(self.allocators):
            check(name in ROLLOUTS, f"allocators[{i}]", f"unknown allocator {name!r}; choose from {', '.join(ROLLOUTS)}")
        check(self.rollout_steps >= 0, "rollout_steps", "must be >= 0 (0 = rl.steps)")
        check(self.rollout_prompts >= 0, "rollout_prompts", "must be >= 0 (0 = rl.prompts_per_step)")
        check(self.large_k == 0 or self.large_k >= 2, "large_k", "must be 0 (off) or >= 2 samples per problem")
        check(self.large_k_problems >= 1, "large_k_problems", "must be >= 1")
        for i, name in enumerate(self.returns):
            check(name in self.recipes, f"returns[{i}]", f"{name!r} is not one of study.recipes ({', '.join(self.recipes)})")
        check(not (self.external and self.returns), "returns", "a return continues the study's own pretraining (no "
              "study.external)")
        for i, mode in enumerate(self.interleaves):
            check(mode in ("alternate", "average"), f"interleaves[{i}]", f"unknown mode {mode!r}; choose alternate or average")
        check(not (self.external and self.interleaves), "interleaves", "interleaved RL continues the study's own "
              "pretraining (no study.external)")
        check(not self.checkpoints or -len(self.checkpoints) <= self.branch_at < len(self.checkpoints), "branch_at",
              f"must be a position in study.checkpoints (0..{len(self.checkpoints) - 1})")
        check(self.scale_targeted >= 0, "scale_targeted", "must be >= 0 (0 = no scaling-D variant)")
        check(not (self.external and (self.scale_model or self.scale_targeted)), "scale_model",
              "the scaling variants pretrain from scratch; they need the study's own pretraining (no study.external)")
        check(len(set(self.seeds + self.extra_seeds)) == len(self.seeds) + len(self.extra_seeds), "extra_seeds",
              "must not repeat a seed of `seeds`")
        check(not self.external or bool(self.world), "world",
              "external checkpoints need the world/ directory they are evaluated on")
