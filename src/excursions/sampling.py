"""Batched sampling with a KV cache for any HF causal LM: the evaluator's sampler and GRPO's rollouts.

    out = sample(model, tok, prompts, n=32, max_new_tokens=128, temperature=0.6, seed=0)
    out.texts[i * 32 + j]          # sample j of prompt i, cut before the stop string
    out.tokens, out.logprobs, out.mask   # [P*n, T] each

Why it is faster than `model.generate` (benchmarks/sampler.py measures it):
- each prompt is prefilled once and its cache shared by its n samples;
- finished sequences leave the batch (the cache is compacted) instead of decoding padding;
- sampling is an exponential race, argmax(log p - log E) with E ~ Exp(1), not softmax + multinomial;
- for OLMo-2 models (the tiny ones and the paper's) a decode step runs the layers directly over a
  preallocated cache: no per-step mask building or cache concatenation. Other architectures use
  their HF forward with a `DynamicCache`. Tests check both against recomputing the full sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from excursions.data.problems import STOP_STRINGS


@dataclass(frozen=True)
class Samples:
    """`n` completions per prompt, prompt-major: row i * n + j is sample j of prompt i."""

    prompt_ids: list[list[int]]  # [P][prompt length]
    tokens: torch.Tensor  # [P*n, T] completion ids; pad after the end
    logprobs: torch.Tensor  # [P*n, T] log-prob of each sampled token at the sampling temperature
    mask: torch.Tensor  # [P*n, T] 1 on completion tokens, up to and including EOS / the stop string
    texts: list[str]  # decoded completion, cut before the stop string, without EOS
    finish: list[str]  # "eos" | "stop" | "length"
    n: int

    @property
    def lengths(self) -> torch.Tensor:  # [P*n]
        return self.mask.sum(-1)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the first stop string.

    >>> cut_at_stop("7 + 2 = 9\\n#### 9\\n\\nQuestion: next", ["\\n\\nQuestion:"])
    '7 + 2 = 9\\n#### 9'
    """
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None):
    """Sample one token per row; returns (ids [B], log-probs [B] at `temperature`; T = 1 when greedy).

    Greedy at temperature 0. Otherwise an exponential race over the (top-p truncated) distribution,
    which draws exactly from softmax(logits / T) without normalising or building a CDF.
    """
    logits = logits.float()
    if temperature <= 0:
        ids = logits.argmax(-1)
        return ids, F.log_softmax(logits, -1).gather(-1, ids[:, None]).squeeze(-1)
    logp = F.log_softmax(logits / temperature, -1)
    race = logp
    if top_p < 1.0:
        sorted_logp, order = logp.sort(-1, descending=True)
        outside = sorted_logp.exp().cumsum(-1) - sorted_logp.exp() >= top_p  # keep the smallest nucleus
        race = logp.scatter(-1, order, sorted_logp.masked_fill(outside, float("-inf")))
    noise = torch.empty_like(race).exponential_(generator=gen)
    ids = (race - noise.log()).argmax(-1)
    return ids, logp.gather(-1, ids[:, None]).squeeze(-1)


# ------------------------------------------------------------------------------------------ engines


class HFEngine:
    """Any HF causal LM: its own forward over a DynamicCache, left padding via position ids."""

    def __init__(self, model):
        import inspect

        self.model = model
        # transformers 5 renamed `past_key_values` to `cache`; accept either generation.
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def prefill(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        self.cache, self.valid = DynamicCache(), valid
        self.pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=valid.long(), position_ids=self.pos,
                         use_cache=True, **{self.cache_arg: self.cache})
        self.pos = self.pos[:, -1:] + 1
        return out.logits[:, -1]

    def repeat(self, n: int) -> None:
        self.cache.batch_repeat_interleave(n)
        self.valid, self.pos = self.valid.repeat_interleave(n, 0), self.pos.repeat_interleave(n, 0)

    def select(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.valid, self.pos = self.valid[rows], self.pos[rows]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        self.valid = torch.cat([self.valid, torch.ones_like(self.valid[:, :1])], 1)
        out = self.model(input_ids=ids[:, None], attention_mask=self.valid.long(), position_ids=self.pos,
                         use_cache=True, **{self.cache_arg: self.cache})
        self.pos = self.pos + 1
        return out.logits[:, -1]


class Olmo2Engine:
    """OLMo-2 decode over a preallocated cache, calling the model's own layers (same weights, same maths)."""

    def __init__(self, model, max_new_tokens: int):
        self.model, self.max_new = model, max_new_tokens
        self.layers = model.model.layers
        cfg = model.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def prefill(self, ids: torch.Tensor, valid: torch.Tensor, block: int = 16) -> torch.Tensor:
        B, T = ids.shape
        shape = (len(self.layers), B, self.kv_heads, T + self.max_new, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.model.dtype)
        self.v = torch.zeros(shape, dtype=self.model.dtype)
        self.valid = torch.zeros(B, T + self.max_new, dtype=torch.bool)
        self.valid[:, :T] = valid
        pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
        # Causal and not padding; a padding query also sees itself, so that no softmax row is empty (NaN).
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        mask = (causal & valid[:, None, :]) | torch.eye(T, dtype=torch.bool)
        logits = []
        for i in range(0, B, block):  # blocks bound the T x T attention scores in memory
            rows = slice(i, i + block)
            logits.append(self._forward(ids[rows], pos[rows], mask[rows, None], 0, rows)[:, -1])
        self.len, self.pos = T, pos[:, -1:] + 1
        return torch.cat(logits)

    def repeat(self, n: int) -> None:
        self.k, self.v = self.k.repeat_interleave(n, 1), self.v.repeat_interleave(n, 1)
        self.valid, self.pos = self.valid.repeat_interleave(n, 0), self.pos.repeat_interleave(n, 0)

    def select(self, rows: torch.Tensor) -> None:
        self.k, self.v = self.k[:, rows], self.v[:, rows]
        self.valid, self.pos = self.valid[rows], self.pos[rows]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        self.valid[:, self.len] = True
        logits = self._forward(ids[:, None], self.pos, self.valid[:, None, None, : self.len + 1], self.len, slice(None))
        self.len, self.pos = self.len + 1, self.pos + 1
        return logits[:, -1]

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, start: int, rows: slice) -> torch.Tensor:
        """Run `ids` [B, T] at cache slots start..start+T of cache `rows`; mask [B, 1, T, start+T]."""
        from transformers.models.olmo2.modeling_olmo2 import apply_rotary_pos_emb

        B, T = ids.shape
        h = self.model.model.embed_tokens(ids)  # [B, T, d]
        cos, sin = self.model.model.rotary_emb(h, pos)
        end = start + T
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            q = a.q_norm(a.q_proj(h)).view(B, T, -1, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
            k = a.k_norm(a.k_proj(h)).view(B, T, -1, self.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(B, T, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.k[i, rows, :, start:end], self.v[i, rows, :, start:end] = k, v
            att = F.scaled_dot_product_attention(q, self.k[i, rows, :, :end], self.v[i, rows, :, :end], attn_mask=mask,
                                                 scale=a.scaling, enable_gqa=self.heads != self.kv_heads)
            h = h + layer.post_attention_layernorm(a.o_proj(att.transpose(1, 2).reshape(B, T, -1)))
            h = h + layer.post_feedforward_layernorm(layer.mlp(h))
        return self.model.lm_head(self.model.model.norm(h))


def make_engine(model, max_new_tokens: int, fast: bool = True):
    if fast and type(model).__name__ == "Olmo2ForCausalLM" and model.config._attn_implementation in ("sdpa", "eager"):
        return Olmo2Engine(model, max_new_tokens)
    return HFEngine(model)


# ------------------------------------------------------------------------------------------ sampler


def _token_texts(tok) -> list[str]:
    """Each vocabulary id's text (cached on the tokenizer): for stop-string checks without decoding."""
    cached = getattr(tok, "_excursions_token_texts", None)
    if cached is None:
        cached = [tok.decode([i]) for i in range(len(tok))]
        tok._excursions_token_texts = cached
    return cached


@torch.no_grad()
def sample(model, tok, prompts: Sequence[str], n: int = 1, max_new_tokens: int = 128, temperature: float = 1.0,
           top_p: float = 1.0, stop: Sequence[str] = STOP_STRINGS, seed: int = 0, max_batch: int = 256,
           fast: bool = True, progress=None) -> Samples:
    """`n` completions of each prompt. Reproducible: the same arguments give the same samples."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    prompt_ids = [tok(p).input_ids for p in prompts]
    rows: list[tuple] = []
    per_chunk = max(1, max_batch // n)
    try:
        for i in range(0, len(prompts), per_chunk):
            rows += _sample_chunk(model, tok, prompt_ids[i : i + per_chunk], n, max_new_tokens, temperature, top_p,
                                  stop, gen, fast)
            if progress is not None:
                progress.update(len(prompt_ids[i : i + per_chunk]) * n)
    finally:
        model.train(was_training)
    T = max([len(r[0]) for r in rows] + [1])
    tokens = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
    logprobs, mask = torch.zeros(len(rows), T), torch.zeros(len(rows), T)
    for j, (ids, lps, _) in enumerate(rows):
        tokens[j, : len(ids)], logprobs[j, : len(ids)], mask[j, : len(ids)] = torch.tensor(ids), torch.tensor(lps), 1
    texts = [cut_at_stop(t, stop) for t in tok.batch_decode([r[0] for r in rows], skip_special_tokens=True)]
    return Samples(prompt_ids, tokens, logprobs, mask, texts, [r[2] for r in rows], n)


def _sample_chunk(model, tok, prompt_ids, n, max_new, temperature, top_p, stop, gen, fast) -> list[tuple]:
    """Decode one chunk of prompts; returns (ids, logprobs, finish) per sample, prompt-major."""
    texts = _token_texts(tok) if stop else None
    window = max((len(s) for s in stop), default=0) + 32
    L = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), L), tok.pad_token_id, dtype=torch.long)
    valid = torch.zeros(len(prompt_ids), L, dtype=torch.bool)
    for i, p in enumerate(prompt_ids):  # left padding: every prompt ends in the last column
        ids[i, L - len(p):], valid[i, L - len(p):] = torch.tensor(p), True
    engine = make_engine(model, max_new, fast)
    logits = engine.prefill(ids, valid)
    if n > 1:
        engine.repeat(n)
        logits = logits.repeat_interleave(n, 0)
    B = len(prompt_ids) * n
    out_ids: list[list[int]] = [[] for _ in range(B)]
    out_lp: list[list[float]] = [[] for _ in range(B)]
    tails, finish = [""] * B, ["length"] * B
    active = list(range(B))
    for t in range(max_new):
        new, lp = pick_tokens(logits, temperature, top_p, gen)
        keep = []
        for j, (row, tid, l) in enumerate(zip(active, new.tolist(), lp.tolist())):
            out_ids[row].append(tid)
            out_lp[row].append(l)
            if tid == tok.eos_token_id:
                finish[row] = "eos"
                continue
            if texts is not None:
                tails[row] = (tails[row] + texts[tid])[-window:]
                if any(s in tails[row] for s in stop):
                    finish[row] = "stop"
                    continue
            keep.append(j)
        if not keep or t == max_new - 1:
            break
        if len(keep) < len(active):
            idx = torch.tensor(keep)
            engine.select(idx)
            new = new[idx]
            active = [active[j] for j in keep]
        logits = engine.step(new)
    return list(zip(out_ids, out_lp, finish))


def generate(model, tok, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
             stop: Sequence[str] = STOP_STRINGS) -> list[str]:
    """One completion text per prompt (greedy by default)."""
    return sample(model, tok, prompts, 1, max_new_tokens, temperature, stop=stop, seed=seed).texts
