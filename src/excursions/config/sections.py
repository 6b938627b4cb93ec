"""The sections a pretraining run and every evaluation read: the synthetic worlds, the pretraining mixture,
tokenizer, model (named sizes) and pretraining schedule, and how models are evaluated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from excursions.config.loader import added, check

# Named sizes, OLMo-core style. The name is the approximate parameter count with a 2048-token vocab
# (tied embeddings); d_ff is ~8/3 d_model rounded, as in SwiGLU models.
SIZES: dict[str, dict[str, int]] = {
    "olmo2_500K": dict(d_model=96, n_layers=4, n_heads=4, d_ff=256),
    "olmo2_1M": dict(d_model=128, n_layers=4, n_heads=4, d_ff=352),
    "olmo2_3M": dict(d_model=192, n_layers=6, n_heads=6, d_ff=512),
    "olmo2_5M": dict(d_model=256, n_layers=6, n_heads=8, d_ff=688),
    "olmo2_10M": dict(d_model=320, n_layers=8, n_heads=8, d_ff=864),
    "olmo2_1B": dict(d_model=2048, n_layers=16, n_heads=16, d_ff=8192),  # OLMo-2 1B's shape (paper Table 4)
}


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
    # the range of a problem's first number (a word problem's starting amount, an expression's first term, an
    # equation's x); start_max 0: [2, max_operand]. Wide ranges spread the answers, so blind guessing fails
    start_max: int = 0
    start_min: int = 2
    # How deep the pretraining pages' problems are: depth d (its arithmetic steps) drawn with weight
    # pretrain_decay ** (d - min_steps), so below 1 the text is mostly shallow with a thin tail of deep problems;
    # post-training and test problems are uniform over min_steps..max_steps
    pretrain_decay: float = 1.0
    schemas: tuple[str, ...] = ()  # the family's problem kinds to draw (worlds/arithmetic.py SCHEMAS); () = all

    def __post_init__(self):
        for name in ("train", "val", "test"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        check(self.min_steps >= 1, "min_steps", "must be >= 1")
        check(self.max_steps >= self.min_steps, "max_steps", f"must be >= min_steps ({self.min_steps})")
        check(self.max_operand >= 2, "max_operand", "must be >= 2")
        check(self.max_value >= 2 * self.max_operand, "max_value", f"must be >= 2 * max_operand ({2 * self.max_operand})")
        check(self.start_max == 0 or 2 <= self.start_max <= self.max_value, "start_max",
              f"must be 0 (= max_operand) or in [2, max_value ({self.max_value})]")
        check(2 <= self.start_min <= (self.start_max or self.max_operand), "start_min",
              "must be >= 2 and at most the largest starting amount (start_max, or max_operand)")
        check(0 < self.pretrain_decay <= 1, "pretrain_decay", "must be in (0, 1] (1: as deep as the test problems)")


# The problem kinds of each math family (worlds/arithmetic.py draws them; `schemas` picks among them).
SCHEMA_NAMES = {"gsm": ("chain", "compare", "shop"), "hard": ("expression", "equation", "word")}


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
    # Share of the pretraining pages' solutions that end in the family's answer marker (`#### N`, `\boxed{N}`);
    # the others end in prose ("So the answer is N."), as real text rarely uses the post-training format
    marker_share: float = 1.0
    gsm: MathFamilyConfig = field(default_factory=MathFamilyConfig)
    hard: MathFamilyConfig = field(
        default_factory=lambda: MathFamilyConfig(min_steps=3, max_steps=5, max_operand=20, max_value=400)
    )
    general: GeneralWorldConfig = field(default_factory=GeneralWorldConfig)

    def __post_init__(self):
        check(1 <= self.solutions <= 12, "solutions", "must be between 1 and 12")
        check(all(0 <= x < 6 for x in self.pretrain_styles), "pretrain_styles", "each style must be 0..5")
        check(0 <= self.marker_share <= 1, "marker_share", "must be between 0 and 1")
        for family, names in SCHEMA_NAMES.items():
            bad = [n for n in getattr(self, family).schemas if n not in names]
            check(not bad, f"{family}.schemas", f"unknown kind {bad[0] if bad else ''!r}; choose from {', '.join(names)}")


@dataclass(frozen=True)
class DataConfig:
    """The pretraining mixture, as shares of the token budget (they must sum to 1)."""

    general: float = 0.4  # encyclopedia prose
    math: float = 0.6  # worked problems, textbook style (gsm and hard families)
    targeted: float = 0.0  # extra targeted math: more `hard`-family pages (the paper's scaling D)
    hard_share: float = 0.25  # share of the `math` pages drawn from the hard family
    drills: float = 0.0  # share of math pages that are arithmetic drills ("7 + 5 = 12" lines)
    val_tokens: int = 100_000  # held-out pretraining text for the validation loss
    # Real scale: a text stream to pretrain on instead of the synthetic mixture, tokenized with model.init's
    # tokenizer and packed (documents joined by EOS): a .jsonl / .json / .parquet file or a directory of them (the
    # `text_field` column; .txt files whole), or a hub dataset ID[:CONFIG]@SPLIT. The first val_tokens are held out.
    corpus: str = added("")
    text_field: str = added("text")

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
    # Real scale: an HF causal LM to continue pretraining from (a directory or hub id[@revision]): its architecture,
    # weights and tokenizer (the size fields above are then unused), with a fresh AdamW; needs data.corpus
    init: str = added("")

    def __post_init__(self):
        check(self.size in SIZES, "size", f"unknown size {self.size!r}; choose one of {', '.join(SIZES)}")
        for name in ("d_model", "n_layers", "n_heads", "d_ff"):
            check(getattr(self, name) >= 0, name, "must be >= 0 (0 = take it from `size`)")
        check(self.context >= 64, "context", "must be >= 64")
        d, h = self.d_model or SIZES[self.size]["d_model"], self.n_heads or SIZES[self.size]["n_heads"]
        check(d % h == 0, "n_heads", f"d_model ({d}) must be divisible by n_heads ({h})")


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining from scratch (paper Table 4, scaled down): AdamW, cosine (or WSD) with warmup, checkpoints."""

    tokens: int = 10_000_000  # token budget
    seq_len: int = 512
    batch_size: int = 16  # sequences per optimizer step
    lr: float = 6e-3
    min_lr_ratio: float = 0.1  # the schedule decays to lr * min_lr_ratio
    schedule: Literal["cosine", "wsd"] = "cosine"  # wsd: warmup, lr held, a linear decay at the end
    decay_fraction: float = 0.2  # wsd only: the share of `tokens` spent decaying
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
        check(0.0 < self.decay_fraction <= 1.0, "decay_fraction", "must be > 0 and <= 1")
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
    # the problems scored: test, or val while choosing settings (calibration), so that test is looked at once
    split: Literal["test", "val"] = "test"
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
