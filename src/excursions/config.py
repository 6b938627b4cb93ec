"""Typed, frozen, validated configs: TOML presets shipped in the package plus dotted overrides.

    cfg = load_config("tiny", overrides=["model.d_model=128", "pretrain.lr=1e-3"])

Every section is a frozen dataclass. Loading rejects unknown keys (with a "did you mean"), wrong types
and impossible values, naming the dotted field, before any work starts. `to_toml(cfg)` writes the
resolved config that goes next to every output.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import tomli_w

from excursions.errors import ConfigError, UserError


def check(ok: bool, name: str, message: str) -> None:
    """Raise a ConfigError on `name` (a field of the section being validated) unless `ok`."""
    if not ok:
        raise ConfigError(name, message)


# ----------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class MathFamilyConfig:
    """One family of the math world: split sizes and how hard its problems are."""

    train: int = 2000  # post-training problems (RL prompts, SFT demonstrations)
    val: int = 200
    test: int = 500
    min_steps: int = 2  # arithmetic steps per problem
    max_steps: int = 3
    max_operand: int = 9  # largest number a step introduces (and a starting amount)
    max_value: int = 50  # largest intermediate result or answer
    start_max: int = 0  # largest starting amount of a word problem (0: max_operand); wider spreads the answers

    def __post_init__(self):
        for name in ("train", "val", "test"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        check(self.min_steps >= 1, "min_steps", "must be >= 1")
        check(self.max_steps >= self.min_steps, "max_steps", f"must be >= min_steps ({self.min_steps})")
        check(self.max_operand >= 2, "max_operand", "must be >= 2")
        check(self.max_value >= 2 * self.max_operand, "max_value", f"must be >= 2 * max_operand ({2 * self.max_operand})")
        check(self.start_max == 0 or 2 <= self.start_max <= self.max_value, "start_max",
              f"must be 0 (= max_operand) or in [2, max_value ({self.max_value})]")


@dataclass(frozen=True)
class GeneralWorldConfig:
    """The made-up encyclopedia and the multiple-choice questions about it."""

    entities: int = 240
    mc_test: int = 600  # multiple-choice questions for the general-capability eval
    heldout_docs: int = 300  # held-out encyclopedia articles for bits-per-byte

    def __post_init__(self):
        check(self.entities >= 24, "entities", "must be >= 24 (distractors need enough entities of each kind)")
        check(self.mc_test >= 0, "mc_test", "must be >= 0")
        check(self.heldout_docs >= 1, "heldout_docs", "must be >= 1")


@dataclass(frozen=True)
class WorldConfig:
    """The synthetic worlds; everything in them is a pure function of `seed`."""

    seed: int = 0
    solutions: int = 4  # K distinct worked solutions per problem (sft uses one, sft_gold all)
    # Solution styles of the pretraining math pages (0 bare equations, 1 narrative, 2 numbered steps,
    # 3 first/next/finally, 4 one running line, 5 intro then equations); empty = all six.
    pretrain_styles: tuple[int, ...] = ()
    gsm: MathFamilyConfig = field(default_factory=MathFamilyConfig)
    hard: MathFamilyConfig = field(
        default_factory=lambda: MathFamilyConfig(min_steps=3, max_steps=5, max_operand=20, max_value=400)
    )
    general: GeneralWorldConfig = field(default_factory=GeneralWorldConfig)

    def __post_init__(self):
        check(1 <= self.solutions <= 12, "solutions", "must be between 1 and 12")
        check(all(0 <= x < 6 for x in self.pretrain_styles), "pretrain_styles", "each style must be 0..5")


@dataclass(frozen=True)
class DataConfig:
    """The pretraining mixture, as shares of the token budget (they must sum to 1)."""

    general: float = 0.4  # encyclopedia prose
    math: float = 0.6  # worked problems, textbook style (gsm and hard families)
    targeted: float = 0.0  # extra targeted math: more `hard`-family pages (the paper's scaling D)
    hard_share: float = 0.25  # share of the `math` pages drawn from the hard family
    drills: float = 0.0  # share of math pages that are arithmetic drills ("7 + 5 = 12" lines)
    val_tokens: int = 100_000  # held-out pretraining text for the validation loss

    def __post_init__(self):
        for name in ("general", "math", "targeted", "hard_share", "drills"):
            check(0.0 <= getattr(self, name) <= 1.0, name, "must be between 0 and 1")
        total = self.general + self.math + self.targeted
        check(abs(total - 1.0) < 1e-6, "general", f"general + math + targeted must sum to 1 (got {total:g})")
        check(self.val_tokens >= 1000, "val_tokens", "must be >= 1000")


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 2048
    train_chars: int = 4_000_000  # characters of the corpus the BPE is trained on

    def __post_init__(self):
        check(300 <= self.vocab_size <= 65_535, "vocab_size", "must be between 300 and 65535")
        check(self.train_chars >= 10_000, "train_chars", "must be >= 10000")


@dataclass(frozen=True)
class ModelConfig:
    """An OLMo-2 architecture at a named size; a non-zero field overrides the size preset."""

    size: str = "olmo2_1M"
    d_model: int = 0
    n_layers: int = 0
    n_heads: int = 0
    d_ff: int = 0
    context: int = 1024  # longest sequence (prompt + completion) the model is used at

    def __post_init__(self):
        from excursions.model import SIZES  # late: model imports torch

        check(self.size in SIZES, "size", f"unknown size {self.size!r}; choose one of {', '.join(SIZES)}")
        for name in ("d_model", "n_layers", "n_heads", "d_ff"):
            check(getattr(self, name) >= 0, name, "must be >= 0 (0 = take it from `size`)")
        check(self.context >= 64, "context", "must be >= 64")
        d, h = self.d_model or SIZES[self.size]["d_model"], self.n_heads or SIZES[self.size]["n_heads"]
        check(d % h == 0, "n_heads", f"d_model ({d}) must be divisible by n_heads ({h})")


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining from scratch (paper Table 4, scaled down): AdamW, cosine with warmup, checkpoints."""

    tokens: int = 10_000_000  # token budget
    seq_len: int = 512
    batch_size: int = 16  # sequences per optimizer step
    lr: float = 6e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_tokens: int = 250_000
    weight_decay: float = 0.1
    betas: tuple[float, ...] = (0.9, 0.95)
    grad_clip: float = 1.0
    checkpoints: Literal["geometric", "linear"] = "geometric"
    first_checkpoint: int = 500_000  # tokens at the first checkpoint of the schedule
    num_checkpoints: int = 8  # the last one is always the end of the budget
    checkpoint_tokens: tuple[int, ...] = ()  # explicit token counts; replaces the schedule when given
    save_every: int = 100  # steps between resume states (kept apart from the checkpoints)
    eval_problems: int = 128  # gsm test problems for a quick greedy accuracy at each checkpoint (0 = off)
    eval_shots: int = 4
    compile: bool = False
    threads: int = 0  # torch threads; 0 = all cores

    def __post_init__(self):
        check(self.tokens > 0, "tokens", "must be > 0")
        check(self.seq_len >= 16, "seq_len", "must be >= 16")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "must be between 0 and 1")
        check(0 <= self.warmup_tokens < self.tokens, "warmup_tokens", f"must be >= 0 and < tokens ({self.tokens})")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "must be two numbers in [0, 1)")
        check(self.grad_clip > 0, "grad_clip", "must be > 0")
        check(self.num_checkpoints >= 1, "num_checkpoints", "must be >= 1")
        check(0 < self.first_checkpoint <= self.tokens, "first_checkpoint", f"must be > 0 and <= tokens ({self.tokens})")
        for t in self.checkpoint_tokens:
            check(0 < t <= self.tokens, "checkpoint_tokens", f"{t} is beyond the token budget ({self.tokens})")
        check(self.save_every >= 1, "save_every", "must be >= 1")
        check(self.eval_problems >= 0, "eval_problems", "must be >= 0")
        check(self.eval_shots >= 0, "eval_shots", "must be >= 0")
        check(self.threads >= 0, "threads", "must be >= 0")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size

    @property
    def total_steps(self) -> int:
        return max(1, round(self.tokens / self.tokens_per_step))

    def checkpoint_steps(self) -> list[int]:
        """Steps after which a checkpoint is kept; the last step is always one.

        Geometric: token counts first * (tokens / first) ** (i / (n - 1)); linear: tokens * (i + 1) / n;
        explicit `checkpoint_tokens` replace the schedule. Each is rounded to the nearest step.
        """
        n, first, total = self.num_checkpoints, self.first_checkpoint, self.tokens
        if self.checkpoint_tokens:
            tokens = list(self.checkpoint_tokens)
        elif self.checkpoints == "geometric":
            tokens = [first * (total / first) ** (i / (n - 1)) for i in range(n)] if n > 1 else [total]
        else:
            tokens = [total * (i + 1) / n for i in range(n)]
        steps = [min(self.total_steps, max(1, round(t / self.tokens_per_step))) for t in tokens]
        return sorted(set(steps) | {self.total_steps})


@dataclass(frozen=True)
class EvalConfig:
    """How every model is evaluated (paper §2.3): pass@k at T = 0.6 from n samples per problem."""

    n: int = 32  # samples per problem
    ks: tuple[int, ...] = (1, 8, 32)
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 160
    shots: int = 8  # worked exemplars for base checkpoints; post-trained models are evaluated 0-shot
    problems: int = 500  # test problems per family (0 = all)
    mc_items: int = 0  # general-world multiple-choice items (0 = all)
    bootstrap: int = 1000  # resamples for the confidence intervals
    seed: int = 0

    def __post_init__(self):
        check(self.n >= 1, "n", "must be >= 1")
        check(len(self.ks) >= 1 and all(1 <= k <= self.n for k in self.ks), "ks", f"each k must be between 1 and n ({self.n})")
        check(self.temperature >= 0, "temperature", "must be >= 0")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        for name in ("shots", "problems", "mc_items"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        check(self.bootstrap >= 10, "bootstrap", "must be >= 10")


def _check_optim(lr: float, betas: tuple, weight_decay: float, grad_clip: float, prefix: str = "") -> None:
    check(lr > 0, f"{prefix}lr", "must be > 0")
    check(len(betas) == 2 and all(0 <= b < 1 for b in betas), "betas", "must be two numbers in [0, 1)")
    check(weight_decay >= 0, "weight_decay", "must be >= 0")
    check(grad_clip > 0, "grad_clip", "must be > 0")


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
    kl_coef: float = 1e-3
    kl: str = "k3"  # k1 | k2 | k3 (low-variance)
    advantage: str = "grpo"  # grpo | drgrpo
    aggregation: str = "token-mean"
    format_score: float = 0.1
    shots: int = 0  # exemplars in the rollout prompts (the paper trains 0-shot)
    track_every: int = 10  # steps between validation reward and test pass@k (0 = off)
    track_problems: int = 100
    track_n: int = 8
    save_every: int = 10
    seed: int = 0

    def __post_init__(self):
        from excursions.objectives import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS

        for name in ("steps", "prompts_per_step", "group_size", "minibatches", "micro_batch", "max_new_tokens",
                     "save_every"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.prompts_per_step % self.minibatches == 0, "minibatches",
              f"must divide prompts_per_step ({self.prompts_per_step})")
        _check_optim(self.lr, self.betas, self.weight_decay, self.grad_clip)
        check(self.temperature > 0, "temperature", "must be > 0 for exploration")
        check(0 <= self.clip_eps < 1, "clip_eps", "must be in [0, 1)")
        check(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        check(self.kl in KL_ESTIMATORS, "kl", f"unknown KL estimator; choose one of {', '.join(KL_ESTIMATORS)}")
        check(self.advantage in ADVANTAGES, "advantage", f"unknown estimator; choose one of {', '.join(ADVANTAGES)}")
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
    track_every: int = 0  # steps between test pass@k (0 = at the end only)
    save_every: int = 50
    seed: int = 0

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

    def __post_init__(self):
        check(self.steps >= 1, "steps", "must be >= 1")
        check(self.rl_lr > 0, "rl_lr", "must be > 0")
        check(self.sft_lr > 0, "sft_lr", "must be > 0")
        check(0 <= self.weight <= 1, "weight", "must be between 0 and 1")
        check(0 <= self.weight_end <= 1, "weight_end", "must be between 0 and 1")


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


EXPERIMENTS = ("recipes", "base_vs_rl", "sharpening", "general", "parallel", "seeds", "nshot", "sft_epochs", "rollouts",
               "scaling")


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
    nshot: tuple[int, ...] = (0, 1, 2, 4, 8)  # exemplar counts swept on the last base checkpoint (Fig. 16)
    sft_epochs: int = 0  # > 0: one more sft run at seed_checkpoint for this many epochs, tracked each epoch (Fig. 15)
    tasks: tuple[str, ...] = ("gsm", "general")  # evaluated on every base checkpoint and every result
    # Fig. 18: direct RL on easy / hard splits of the last checkpoint's training problems with each rollout count
    rollouts: tuple[int, ...] = (4, 16)  # rollouts per prompt compared (paper: 5 and 64); () = off
    split_problems: int = 400  # training problems sampled to make the splits (paper: all 80K)
    split_n: int = 32  # samples per problem for the splits (paper: 64 at T = 1; here at rl.temperature)
    rollout_steps: int = 0  # RL steps of these runs (0 = rl.steps)
    rollout_prompts: int = 0  # prompts per RL step of these runs (0 = rl.prompts_per_step)
    # Fig. 4, 10-12: RL on `hard` from the final checkpoint of the study's run, of a bigger model on the same data
    # (scaling N), and of the same model with extra targeted `hard` math (scaling D). Each is a pretraining run.
    scale_model: str = ""  # scaling N: this model size (e.g. olmo2_3M); "" = no N variant
    scale_targeted: float = 0.0  # scaling D: extra targeted math tokens, as a share of pretrain.tokens; 0 = no D variant
    experiments: tuple[str, ...] = EXPERIMENTS

    def __post_init__(self):
        from excursions.train.recipes import RECIPES

        for i, name in enumerate(self.recipes):
            check(name in RECIPES, f"recipes[{i}]", f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
        for i, name in enumerate(self.experiments):
            check(name in EXPERIMENTS, f"experiments[{i}]",
                  f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
        known = ("gsm", "hard", "general")
        for i, task in enumerate(self.tasks):
            check(task in known, f"tasks[{i}]", f"unknown task {task!r}; choose from {', '.join(known)}")
        check(any(t != "general" for t in self.tasks), "tasks", "needs a math task (gsm or hard): every experiment reads one")
        check(len(self.seeds) >= 1, "seeds", "needs at least one seed")
        check(all(k >= 0 for k in self.nshot), "nshot", "exemplar counts must be >= 0")
        check(self.sft_epochs >= 0, "sft_epochs", "must be >= 0 (0 = no SFT epochs sweep)")
        check(all(g >= 2 for g in self.rollouts), "rollouts", "rollout counts must be >= 2 (GRPO compares a group)")
        check(self.split_problems >= 1, "split_problems", "must be >= 1")
        check(self.split_n >= 8, "split_n", "must be >= 8 (hard means at most n / 8 correct)")
        check(self.rollout_steps >= 0, "rollout_steps", "must be >= 0 (0 = rl.steps)")
        check(self.rollout_prompts >= 0, "rollout_prompts", "must be >= 0 (0 = rl.prompts_per_step)")
        check(self.scale_targeted >= 0, "scale_targeted", "must be >= 0 (0 = no scaling-D variant)")
        check(not (self.external and (self.scale_model or self.scale_targeted)), "scale_model",
              "the scaling variants pretrain from scratch; they need the study's own pretraining (no study.external)")
        check(len(set(self.seeds + self.extra_seeds)) == len(self.seeds) + len(self.extra_seeds), "extra_seeds",
              "must not repeat a seed of `seeds`")
        check(not self.external or bool(self.world), "world",
              "external checkpoints need the world/ directory they are evaluated on")


@dataclass(frozen=True)
class Config:
    """Everything one run needs. `name` is the preset it came from (informational)."""

    name: str = "custom"
    seed: int = 0
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        p = self.pretrain
        check(p.seq_len <= self.model.context, "pretrain.seq_len", f"must be <= model.context ({self.model.context})")
        first_step_tokens = p.tokens_per_step
        check(
            p.first_checkpoint >= first_step_tokens or p.checkpoint_tokens,
            "pretrain.first_checkpoint",
            f"must be >= one step's tokens (seq_len * batch_size = {first_step_tokens})",
        )
        check(
            p.tokens >= first_step_tokens,
            "pretrain.tokens",
            f"must be >= one step's tokens (seq_len * batch_size = {first_step_tokens})",
        )
        wanted = len(p.checkpoint_tokens) or p.num_checkpoints
        check(
            len(p.checkpoint_steps()) >= wanted,
            "pretrain.num_checkpoints" if not p.checkpoint_tokens else "pretrain.checkpoint_tokens",
            f"{wanted} checkpoints do not fit in {p.total_steps} steps of {first_step_tokens} tokens "
            "(some fall on the same step); ask for fewer or raise pretrain.tokens",
        )


# ------------------------------------------------------------------------------------ generic loader


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, name: str) -> Any:
    """`value` from TOML as type `tp`, or a ConfigError naming `name`."""
    origin = typing.get_origin(tp)
    if _is_section(tp):
        if not isinstance(value, dict):
            raise ConfigError(name, f"must be a table of settings, got {value!r}")
        return build(tp, value, name)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(name, f"must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f"must be {_type_name(tp)}, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(v, item, f"{name}[{i}]") for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):  # `X | None`
        if value is None:
            return None
        return _convert(value, next(a for a in typing.get_args(tp) if a is not type(None)), name)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"config field {name} has unsupported type {tp}")
    if not ok:
        raise ConfigError(name, f"must be {_type_name(tp)}, got {value!r}")
    return float(value) if tp is float else value


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """Build the dataclass `cls` from a (nested) dict, validating keys, types and values."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(dotted, f"unknown key{hint}")
        kwargs[key] = _convert(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.under(prefix) if prefix else err


def apply_override(data: dict, override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as TOML, else taken as a string."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {override!r} is not of the form section.key=value (e.g. model.d_model=128)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(".".join(parents[: i + 1]), "is a value, not a section; cannot override inside it")
    node[leaf] = value


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("excursions.presets").iterdir() if p.name.endswith(".toml"))


def read_toml(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing .toml file or one of --preset {', '.join(preset_names())}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"config file {path} is not valid TOML: {err}") from None


def load_raw(preset: str | None = None, path: Path | str | None = None, overrides: list[str] = ()) -> dict:
    """The raw dict of a preset or file with overrides applied (not yet validated)."""
    if path is not None:
        data = read_toml(path)
    else:
        preset = preset or "tiny"
        if preset not in preset_names():
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(preset_names())}")
        data = tomllib.loads(resources.files("excursions.presets").joinpath(f"{preset}.toml").read_text())
    for override in overrides:
        apply_override(data, override)
    return data


def load_config(preset: str | None = None, path: Path | str | None = None, overrides: list[str] = ()) -> Config:
    """Load a preset (default `tiny`) or a TOML file, apply dotted overrides, validate everything."""
    return build(Config, load_raw(preset, path, overrides))


def to_dict(cfg: Any) -> dict:
    """A plain nested dict of a config, tuples as lists (TOML- and JSON-ready)."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def prompt_settings(cfg: "Config") -> dict:
    """The prompt section for a digest: empty at its default, so results from before it existed keep their names."""
    return {} if cfg.prompt == PromptConfig() else {"prompt": to_dict(cfg.prompt)}


def to_toml(cfg: Any) -> str:
    return tomli_w.dumps(to_dict(cfg))


def digest(obj, digits: int = 8) -> str:
    """Hex digits naming a JSON-able value (e.g. `to_dict` of a config section): runs with other settings get
    other directories.

    >>> digest({"lr": 1e-4}) == digest({"lr": 1e-4}) != digest({"lr": 2e-4}), len(digest({}, 6))
    (True, 6)
    """
    import hashlib
    import json

    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:digits]


def diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two plain config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}.{key}" if prefix else key
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff(va, vb, name)
        elif va != vb:
            out.append(f"{name}: {va!r} -> {vb!r}")
    return out
