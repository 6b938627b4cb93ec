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

from excursions.data.problems import Problem, format_prompt
from excursions.objectives import sft_loss


def demonstrations(problems: Sequence[Problem], mode: Literal["one", "all"], seed: int) -> list[tuple[str, str]]:
    """(prompt, completion) pairs: one randomly chosen solution per problem (fixed by seed), or all."""
    rng = random.Random(f"sft-demos/{seed}")
    pairs = []
    for p in problems:
        chosen = p.solutions if mode == "all" else [rng.choice(p.solutions)]
        pairs += [(format_prompt(p.question), " " + s) for s in chosen]
    return pairs


class SFTBatches:
    """Tokenized demonstrations; `batch(step)` is a pure function of the step (an epoch permutation)."""

    def __init__(self, tok, pairs: Sequence[tuple[str, str]], batch_size: int, seed: int):
        self.tok, self.batch_size, self.seed = tok, batch_size, seed
        self.items = []
        for prompt, completion in pairs:
            p = tok(prompt).input_ids
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


def sft_gradients(model, batch, scale: float = 1.0) -> float:
    ids, attention, labels, mask = batch
    loss = sft_loss(model(input_ids=ids, attention_mask=attention).logits, labels, mask)
    (loss * scale).backward()
    return loss.item()
