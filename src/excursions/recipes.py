"""The recipe table: every post-training recipe the study compares, in one place (no torch here: the config's
checks, the study's plan, training and the report all read it).

| recipe        | stages          | what it does                                                        |
| ------------- | --------------- | ------------------------------------------------------------------- |
| `rl`          | rl              | GRPO from the checkpoint                                            |
| `sft`         | sft             | SFT on one demonstration per training problem (fixed by the seed)   |
| `sft_rl`      | sft, rl         | GRPO from the `sft` result, on the same problems                    |
| `sft_gold`    | sft_gold        | SFT on all demonstrations                                           |
| `sft_gold_rl` | sft_gold, rl    | GRPO from the `sft_gold` result                                     |
| `parallel`    | parallel        | parallel averaging of RL and SFT updates (paper Algorithm 1)        |

A stage is one training run (`train/posttrain.py` has one function per stage); a recipe runs its stages in
order, each from the previous one's result. A new recipe made of existing stages is one row below; a new kind of
training is one stage function and its row in `STAGE_SECTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The config sections each stage reads: what a result's directory digest covers.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "rl": ("rl",),
    "sft": ("sft",),  # one demonstration per problem
    "sft_gold": ("sft",),  # all demonstrations
    "parallel": ("parallel", "rl", "sft"),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    stages: tuple[str, ...]  # trainings run in order, each from the previous one's result
    color: str  # its colour in every figure
    dashed: bool = False  # drawn dashed where recipes share a panel (the SFT-Gold family: all demonstrations)
    rl_over: str = ""  # a config section laid over [rl] for its RL stage (SFT->RL's own settings, `[sft_rl]`)

    @property
    def sections(self) -> tuple[str, ...]:
        """The config sections its result depends on, each once, in stage order.

        >>> RECIPES["sft_rl"].sections, RECIPES["parallel"].sections
        (('sft', 'rl', 'sft_rl'), ('parallel', 'rl', 'sft'))
        """
        stages = [s for stage in self.stages for s in STAGE_SECTIONS[stage]] + ([self.rl_over] if self.rl_over else [])
        return tuple(dict.fromkeys(stages))

    @property
    def demonstrations(self) -> str:
        """How many demonstrations per problem it trains on: none (RL alone), one, or all (SFT-Gold).

        >>> [RECIPES[r].demonstrations for r in ("rl", "sft_rl", "parallel", "sft_gold_rl")]
        ['none', 'one', 'one', 'all']
        """
        return "all" if "sft_gold" in self.stages else "one" if {"sft", "parallel"} & set(self.stages) else "none"

    def stage_dir(self, run: Path, stage: str) -> Path:
        """Where a stage runs: the run directory itself for one stage, a directory per stage for several."""
        return run if len(self.stages) == 1 else run / stage

    def final(self, run: Path) -> Path:
        """The recipe's result: its last stage's `final/` checkpoint.

        >>> str(RECIPES["rl"].final(Path("r"))), str(RECIPES["sft_rl"].final(Path("r")))
        ('r/final', 'r/rl/final')
        """
        return self.stage_dir(Path(run), self.stages[-1]) / "final"


# In the order the report lists and colours them.
RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("rl", ("rl",), "#d62728"),
    Recipe("sft", ("sft",), "#1f77b4"),
    Recipe("sft_rl", ("sft", "rl"), "#9467bd", rl_over="sft_rl"),
    Recipe("sft_gold", ("sft_gold",), "#2ca02c", dashed=True),
    Recipe("sft_gold_rl", ("sft_gold", "rl"), "#17becf", dashed=True, rl_over="sft_rl"),
    Recipe("parallel", ("parallel",), "#ff7f0e"),
)}
