"""Our GRPO step vs TRL's `GRPOTrainer` on the same tiny model, prompts, G, lengths and batch, on this CPU.

    python benchmarks/grpo_step.py                       # newest runs/tiny checkpoint, 16 prompts x 16
    python benchmarks/grpo_step.py --prompts 8 --group 8 --steps 3

Needs TRL: pip install -e '.[bench]'.

Both: one optimizer step per rollout batch, temperature 1, at most --max-new tokens, EOS as the only
stop, no KL model (beta = 0), the same strict reward. Seconds per step exclude the first (warm-up) step;
ours runs before and after TRL and both are averaged. Each step is split into its rollout (generation and
scoring: TRL's `_generate_and_score_completions`) and the rest (the update).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from excursions.runtime import benchmark_setup
from excursions.config import RLConfig
from excursions.data.problems import format_prompt, read_jsonl
from excursions.optim import adamw
from excursions.rewards import math_rewards
from excursions.train.grpo import grpo_update, rollout


def ours(ckpt: Path, problems, args) -> tuple[list[float], list[float]]:
    model, tok = AutoModelForCausalLM.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt)
    cfg = RLConfig(prompts_per_step=args.prompts, group_size=args.group, minibatches=1, lr=1e-5, kl_coef=0.0,
                   max_new_tokens=args.max_new)
    opt = adamw(model, cfg.lr, cfg.betas, cfg.weight_decay)
    times, rollouts = [], []
    for step in range(args.steps + 1):
        t = time.perf_counter()
        batch = rollout(model, None, tok, problems, cfg, seed=step, stop=())
        rollouts.append(time.perf_counter() - t)
        grpo_update(model, opt, batch, cfg)
        times.append(time.perf_counter() - t)
    return times[1:], rollouts[1:]


class _Clock(TrainerCallback):
    def __init__(self):
        self.marks = []

    def on_step_begin(self, *a, **k):
        self.marks.append(time.perf_counter())

    def on_train_end(self, *a, **k):
        self.marks.append(time.perf_counter())


def trl(ckpt: Path, problems, args) -> tuple[list[float], list[float]]:
    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        sys.exit("benchmarks/grpo_step.py compares against TRL: pip install -e '.[bench]'")

    model, tok = AutoModelForCausalLM.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt)
    rows = [{"prompt": format_prompt(p.question), "answer": p.answer} for p in problems] * (args.steps + 1)

    def reward(completions, answer, **_):
        return math_rewards(completions, answer, [True] * len(completions))

    config = GRPOConfig(output_dir="/tmp/trl-bench", per_device_train_batch_size=args.prompts * args.group,
                        gradient_accumulation_steps=1, num_generations=args.group, max_completion_length=args.max_new,
                        temperature=1.0, beta=0.0, learning_rate=1e-5, max_steps=args.steps + 1, logging_steps=1,
                        report_to=[], save_strategy="no", use_cpu=True, bf16=False, fp16=False, shuffle_dataset=False,
                        disable_tqdm=True)
    clock = _Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, callbacks=[clock])
    rollouts = []
    generate_and_score = trainer._generate_and_score_completions

    def timed(*a, **k):
        t = time.perf_counter()
        out = generate_and_score(*a, **k)
        rollouts.append(time.perf_counter() - t)
        return out

    trainer._generate_and_score_completions = timed
    trainer.train()
    return [b - a for a, b in zip(clock.marks[1:], clock.marks[2:])], rollouts[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    ckpt = benchmark_setup(args.checkpoint)  # process-wide, as the CLI does: both sides of the comparison get it
    problems = read_jsonl(ckpt.parent.parent / "world/gsm/train.jsonl")[: args.prompts]
    print(f"model: {ckpt}; {args.prompts} prompts x {args.group} generations, <= {args.max_new} new tokens, "
          f"{torch.get_num_threads()} threads\n")
    # ours before and after TRL: this machine's speed drifts within minutes, so neither side gets a quiet spell
    first, first_rollouts = ours(ckpt, problems, args)
    t_trl, r_trl = trl(ckpt, problems, args)
    again, again_rollouts = ours(ckpt, problems, args)
    t_ours, r_ours = first + again, first_rollouts + again_rollouts
    mean = lambda xs: sum(xs) / len(xs)
    print("| implementation | s / GRPO step | rollout | update | speed-up (rollout, update) |\n|---|---:|---:|---:|---:|")
    for name, t, r in (("TRL GRPOTrainer", t_trl, r_trl), ("excursions", t_ours, r_ours)):
        step, roll = mean(t), mean(r)
        print(f"| {name} | {step:.2f} | {roll:.2f} | {step - roll:.2f} | {mean(t_trl) / step:.1f}x "
              f"({mean(r_trl) / roll:.1f}x, {(mean(t_trl) - mean(r_trl)) / (step - roll):.1f}x) |")


if __name__ == "__main__":
    main()
