"""Typed, frozen, validated configs: TOML presets shipped in the package plus dotted overrides.

    cfg = load_config("tiny", overrides=["model.d_model=128", "pretrain.lr=1e-3"])

Every section is a frozen dataclass (`sections.py`: worlds, data, model, pretraining, evaluation; `runs.py`:
post-training, prompts, devices, tracking, the study). Loading rejects unknown keys (with a "did you mean"),
wrong types and impossible values, naming the dotted field, before any work starts (`loader.py`).
`to_toml(cfg)` writes the resolved config that goes next to every output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from excursions.config.loader import (apply_override, build, check, diff, digest, load_raw, preset_names, read_toml,
                                      to_dict, to_toml)
from excursions.config.runs import (ConvergeConfig, DistributedConfig, InterleaveConfig, ParallelConfig, PromptConfig, RLConfig, SFTConfig, SFTRLConfig,
                                    StudyConfig, TrackingConfig)
from excursions.config.sections import (SIZES, DataConfig, EvalConfig, GeneralWorldConfig, MathFamilyConfig,
                                        ModelConfig, PretrainConfig, TokenizerConfig, WorldConfig)

# The sections a pretraining run depends on: its directory is named by them, and a run there must share them.
PRETRAIN_SECTIONS = ("seed", "world", "data", "tokenizer", "model", "pretrain")

__all__ = ["PRETRAIN_SECTIONS", "Config", "load_config", "prompt_settings", "apply_override", "build", "check", "diff", "digest",
           "load_raw", "preset_names", "read_toml", "to_dict", "to_toml", "SIZES", "DataConfig", "DistributedConfig", "ConvergeConfig",
           "EvalConfig", "GeneralWorldConfig", "InterleaveConfig", "MathFamilyConfig", "ModelConfig", "ParallelConfig", "PretrainConfig",
           "PromptConfig", "RLConfig", "SFTConfig", "SFTRLConfig", "StudyConfig", "TokenizerConfig", "TrackingConfig", "WorldConfig"]


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
    sft_rl: SFTRLConfig = field(default_factory=SFTRLConfig)
    interleave: InterleaveConfig = field(default_factory=InterleaveConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        p = self.pretrain
        check(p.seq_len <= self.model.context, "pretrain.seq_len", f"must be <= model.context ({self.model.context})")
        check(bool(self.model.init) or not self.data.corpus, "data.corpus", "a real text stream is tokenized with "
              "the tokenizer of the checkpoint it continues: set model.init=CHECKPOINT too")
        check(bool(self.data.corpus) or not self.model.init, "model.init", "continuing pretraining of a real "
              "checkpoint needs a text stream: set data.corpus=FILE|DIR|ID[:CONFIG]@SPLIT (a `text` column)")
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


def load_config(preset: str | None = None, path: Path | str | None = None, overrides: list[str] = ()) -> Config:
    """Load a preset (default `tiny`) or a TOML file, apply dotted overrides, validate everything."""
    return build(Config, load_raw(preset, path, overrides))


def prompt_settings(cfg: "Config") -> dict:
    """The prompt section for a digest: empty at its default, so results from before it existed keep their names."""
    return {} if cfg.prompt == PromptConfig() else {"prompt": to_dict(cfg.prompt)}
