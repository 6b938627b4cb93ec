"""Log-probs of sampled completions under a model, micro-batch by micro-batch: what GRPO's loss and its old /
reference log-probs are made of.

    logp, entropy = completion_logprobs(policy, ids, attention, response_mask, tokens, P, temperature, group=G)
    ref = batch_logprobs(ref_model, ids, attention, tokens, response_mask, P, cfg.rl)    # [N, T], no grad

Only the real completion tokens cost vocabulary-sized work (LM head, softmax and their backward); OLMo-2 models
take the packed shared-prefix forward (`olmo2.shared_prefix_hidden`), any other HF model its own forward.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from excursions.config import RLConfig
from excursions.objectives import logprob_entropy
from excursions.olmo2 import is_olmo2, position_ids, shared_prefix_hidden


def response_logits(model, input_ids: torch.Tensor, attention: torch.Tensor, prompt_width: int, temperature: float):
    """Logits that predict each completion token, divided by the rollout temperature: [N, T, V]."""
    L = input_ids.shape[1]
    extra = {}
    if _accepts_logits_to_keep(type(model)):  # the LM head only at the positions that predict completions
        extra["logits_to_keep"] = torch.arange(prompt_width - 1, L - 1, device=input_ids.device)
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids(attention), **extra)
    logits = out.logits if extra else out.logits[:, prompt_width - 1 : L - 1]
    return logits if temperature == 1.0 else logits / temperature


@functools.cache
def _accepts_logits_to_keep(model_type: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_type.forward).parameters


def trim(ids: torch.Tensor, attention: torch.Tensor, prompt_width: int, response_mask: torch.Tensor):
    """Drop the columns of a micro-batch that are padding in every row (left of the prompts, right of
    the completions): (ids, attention, prompt_width, response columns kept)."""
    start = int(attention[:, :prompt_width].argmax(-1).min()) if prompt_width else 0
    width = int(response_mask.sum(-1).max())
    return ids[:, start : prompt_width + width], attention[:, start : prompt_width + width], prompt_width - start, width


def completion_logits(model, ids, attention, response_mask, prompt_width: int, temperature: float, group: int):
    """Logits of a micro-batch's real completion tokens only, divided by the temperature: ([M, V], mask [n, w]).

    The micro-batch's all-padding columns are dropped (`trim`), and the vocabulary-sized work (LM head,
    softmax, their backward) runs only where `mask` is set: ~16% of a padded batch's positions are padding.
    OLMo-2 models run each group's prompt once (`shared_prefix_hidden`)."""
    ids, attention, prompt_width, width = trim(ids, attention, prompt_width, response_mask)
    mask = response_mask[:, :width].bool()
    if group > 1 and is_olmo2(model):
        logits = model.lm_head(shared_prefix_hidden(model, ids, attention, prompt_width, group)[mask])
    else:
        logits = response_logits(model, ids, attention, prompt_width, 1.0)[mask]
    return (logits if temperature == 1.0 else logits / temperature), mask


def completion_logprobs(model, ids, attention, response_mask, tokens, prompt_width: int, temperature: float,
                        group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion `tokens` [n, T] (0 on padding) and the entropies at the real tokens [M],
    from `completion_logits`: what both the old / reference log-probs and the GRPO loss need."""
    logits, m = completion_logits(model, ids, attention, response_mask, prompt_width, temperature, group)
    lp, ent = logprob_entropy(logits, tokens[:, : m.shape[1]][m])
    real = F.pad(m, (0, response_mask.shape[1] - m.shape[1]))
    return torch.zeros(response_mask.shape, device=lp.device).masked_scatter(real, lp), ent


def micro_batches(rows: torch.Tensor, lengths: torch.Tensor, group: int, micro_batch: int) -> list[torch.Tensor]:
    """Split `rows` (whole groups of `group` consecutive rows) into micro-batches of whole groups, about
    `micro_batch` rows each, groups with shorter completions first (less padding per micro-batch).

    >>> [c.tolist() for c in micro_batches(torch.arange(6), torch.tensor([5, 9, 1, 2, 3, 3]), 2, 4)]
    [[2, 3, 4, 5], [0, 1]]
    """
    groups = rows.view(-1, group)
    longest = lengths.view(-1, group).max(-1).values
    return [g.flatten() for g in groups[longest.argsort(stable=True)].split(max(1, micro_batch // group))]


@torch.no_grad()
def batch_logprobs(model, ids, attention, tokens, mask, prompt_width: int, cfg: RLConfig) -> torch.Tensor:
    """Log-probs of the sampled tokens under `model` (eval mode), micro-batch by micro-batch: [N, T]."""
    was_training = model.training
    model.eval()
    out = torch.zeros(tokens.shape, device=tokens.device)
    for c in micro_batches(torch.arange(len(ids), device=ids.device), mask.sum(-1), cfg.group_size, cfg.micro_batch):
        out[c] = completion_logprobs(model, ids[c], attention[c], mask[c], tokens[c], prompt_width, cfg.temperature,
                                     cfg.group_size)[0]
    model.train(was_training)
    return out
