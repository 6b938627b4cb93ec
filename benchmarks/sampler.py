"""Our sampler vs HF `model.generate` on the same model, prompts, lengths, temperature and stop strings.

    python benchmarks/sampler.py                                     # newest runs/tiny checkpoint
    python benchmarks/sampler.py --checkpoint runs/tiny/checkpoints/step000930-tokens7618560

Tokens/s counts useful completion tokens (up to and including EOS or the stop string) per wall second,
the same count for both; each engine samples its own tokens, so lengths differ slightly between them.
Both are warmed up on a few prompts first, then run alternately `--repeats` times; the table shows
medians (this machine's speed drifts by 20% within minutes, which a single pair of runs would mix in).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from excursions.runtime import benchmark_setup
from excursions.data.problems import STOP_STRINGS, format_prompt, read_jsonl
from excursions.sampling import sample


def hf_generate(model, tok, prompts, n, max_new, temperature):
    """`model.generate` with the same semantics: n samples per prompt, stop strings, EOS."""
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=None, top_p=None,
                             max_new_tokens=max_new, num_return_sequences=n, stop_strings=list(STOP_STRINGS),
                             tokenizer=tok, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    new = out[:, enc.input_ids.shape[1]:]
    return int((new != tok.pad_token_id).sum())


def ours(model, tok, prompts, n, max_new, temperature):
    return int(sample(model, tok, prompts, n=n, max_new_tokens=max_new, temperature=temperature).mask.sum())


def timed(fn, *args) -> tuple[float, int]:
    t = time.perf_counter()
    tokens = fn(*args)
    return time.perf_counter() - t, tokens


def rate(seconds: float, tokens: int) -> float:
    return tokens / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ckpt = benchmark_setup(args.checkpoint)  # process-wide, as the CLI does: both sides of the comparison get it
    run = ckpt.parent.parent
    model, tok = AutoModelForCausalLM.from_pretrained(ckpt).eval(), AutoTokenizer.from_pretrained(ckpt)
    test, train = read_jsonl(run / "world/gsm/test.jsonl"), read_jsonl(run / "world/gsm/train.jsonl")
    shots = [(p.question, p.solutions[0]) for p in train[:4]]
    cases = [  # (name, prompts, samples per prompt)
        ("64 prompts x 1, 0-shot", [format_prompt(p.question) for p in test[:64]], 1),
        ("256 prompts x 1, 0-shot", [format_prompt(p.question) for p in test[:256]], 1),
        ("16 prompts x 16, 4-shot", [format_prompt(p.question, shots) for p in test[:16]], 16),
    ]
    print(f"model: {ckpt} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), "
          f"T=1.0, max {args.max_new} new tokens, {torch.get_num_threads()} threads\n")
    print("| case | HF generate tok/s | excursions tok/s | speed-up |\n|---|---:|---:|---:|")
    hf_generate(model, tok, cases[0][1][:4], 2, 8, 1.0)  # warm both up (allocator, token-text cache)
    ours(model, tok, cases[0][1][:4], 2, 8, 1.0)
    median = lambda xs: sorted(xs)[len(xs) // 2]
    for name, prompts, n in cases:
        torch.manual_seed(0)
        hf, us = [], []
        for _ in range(args.repeats):
            hf.append(rate(*timed(hf_generate, model, tok, prompts, n, args.max_new, 1.0)))
            us.append(rate(*timed(ours, model, tok, prompts, n, args.max_new, 1.0)))
        print(f"| {name} | {median(hf):,.0f} | {median(us):,.0f} | {median(us) / median(hf):.1f}x |", flush=True)


if __name__ == "__main__":
    main()
