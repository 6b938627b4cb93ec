"""Our sampler vs HF `model.generate` on the same model, prompts, lengths, temperature and stop strings.

    python benchmarks/sampler.py                                     # newest runs/tiny checkpoint
    python benchmarks/sampler.py --checkpoint runs/tiny/checkpoints/step000366-tokens11993088

Tokens/s counts useful completion tokens (up to and including EOS or the stop string) per wall second,
the same count for both; each engine samples its own tokens, so lengths differ slightly between them.
Both are warmed up on a few prompts first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--max-new", type=int, default=128)
    args = ap.parse_args()
    ckpt = args.checkpoint or sorted(Path("runs/tiny/checkpoints").glob("step*"))[-1]
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
    for name, prompts, n in cases:
        torch.manual_seed(0)
        t_hf, n_hf = timed(hf_generate, model, tok, prompts, n, args.max_new, 1.0)
        t_us, n_us = timed(ours, model, tok, prompts, n, args.max_new, 1.0)
        print(f"| {name} | {n_hf / t_hf:,.0f} | {n_us / t_us:,.0f} | {(n_us / t_us) / (n_hf / t_hf):.1f}x |", flush=True)


if __name__ == "__main__":
    main()
