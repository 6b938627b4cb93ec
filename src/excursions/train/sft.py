"""SFT on demonstrations, in the same prompt format as RL and evaluation; the prompt is masked.

    pairs = demonstrations(train_problems, "one", seed=0)     # sft: one per problem; "all": sft_gold
    batches = SFTBatches(tok, pairs, batch_size=32, seed=0)
    loss = sft_gradients(model, batches.batch(step))          # backward done; returns the loss
"""

from __future__ import annotations

import math
import random
from typing import Literal, Sequence

import numpy as np
import torch

from excursions.data.problems import Problem, encode_prompt, format_demo
from excursions.objectives import sft_loss
from excursions.train.dist import SINGLE, Dist, global_sum


def demonstrations(problems: Sequence[Problem], mode: Literal["one", "all"], seed: int, tok=None,
                   pick: Literal["random", "first"] = "random") -> list[tuple[str, str]]:
    """(prompt, completion) pairs: one solution per problem (`pick`: a random one, fixed by seed, or the first), or
    all of them; in the tokenizer's chat template when it was loaded for chat."""
    rng = random.Random(f"sft-demos/{seed}")
    pairs = []
    for p in problems:
        chosen = p.solutions if mode == "all" else [rng.choice(p.solutions) if pick == "random" else p.solutions[0]]
        pairs += [format_demo(p.question, s, tok) for s in chosen]
    return pairs


class SFTBatches:
    """Tokenized demonstrations; `batch(step)` is a pure function of the step (an epoch permutation)."""

    def __init__(self, tok, pairs: Sequence[tuple[str, str]], batch_size: int, seed: int):
        self.tok, self.batch_size, self.seed = tok, batch_size, seed
        self.items = []
        for prompt, completion in pairs:
            p = encode_prompt(tok, prompt)
            c = tok(completion, add_special_tokens=False).input_ids + [tok.eos_token_id]
            self.items.append((p, c))
        self.steps_per_epoch = math.ceil(len(self.items) / batch_size)

    def rows(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.items))
        return perm[i * self.batch_size : (i + 1) * self.batch_size]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention, labels, loss_mask), right-padded: [B, L] each; labels are shifted."""
        seqs = [self.items[r] for r in self.rows(step)]
        L = max(len(p) + len(c) for p, c in seqs) - 1
        ids = torch.full((len(seqs), L), self.tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(seqs), L), self.tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros(len(seqs), L, dtype=torch.long)
        mask = torch.zeros(len(seqs), L)
        for r, (p, c) in enumerate(seqs):
            full = torch.tensor(p + c)
            n = len(full) - 1
            ids[r, :n], labels[r, :n], attention[r, :n] = full[:-1], full[1:], 1
            mask[r, len(p) - 1 : n] = 1  # positions that predict completion tokens (and EOS)
        return ids, attention, labels, mask


def sft_gradients(model, batch, scale: float = 1.0, d: Dist = SINGLE) -> float:
    """Backpropagate the token-mean SFT loss of `batch` (times `scale`); returns the loss.

    Under torchrun each rank takes every `d.world`-th row and weighs its loss by its share of the global token
    count (times the world size, which the engine's gradient averaging divides out): the gradient is the
    whole batch's. A rank left without rows still runs one (weighted 0), as every rank must join the reduction.
    """
    if d.active:
        ids, attention, labels, mask = batch
        total = float(mask.sum())  # every rank holds the whole batch
        rows = torch.arange(d.rank, len(ids), d.world)
        empty = len(rows) == 0
        rows = rows if not empty else torch.tensor([0])
        share = 0.0 if empty else float(mask[rows].sum()) / max(1.0, total) * d.world
        batch = (ids[rows], attention[rows], labels[rows], mask[rows])
        loss = sft_gradients(model, batch, scale * share)
        return global_sum(0.0 if empty else loss * float(mask[rows].sum()), d) / max(1.0, total)
    dev = next(model.parameters()).device  # batches are assembled on the CPU
    ids, attention, labels, mask = (t.to(dev) for t in batch)
    loss = sft_loss(model(input_ids=ids, attention_mask=attention).logits, labels, mask)
    (loss * scale).backward()
    return loss.item()
