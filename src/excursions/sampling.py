"""Batched sampling with a KV cache for any HF causal LM: the evaluator's sampler and GRPO's rollouts.

    out = sample(model, tok, prompts, n=32, max_new_tokens=128, temperature=0.6, seed=0)
    out.texts[i * 32 + j]          # sample j of prompt i, cut before the stop string
    out.tokens, out.logprobs, out.mask   # [P*n, T] each

Why it is faster than `model.generate` (benchmarks/sampler.py measures it):
- each prompt is prefilled once and its cache shared by its n samples;
- finished sequences leave the batch (the cache is compacted) instead of decoding padding;
- OLMo-2 decoding keeps one copy of each prompt's cache, attended by all its samples at once;
- sampling is inverse-CDF (one uniform per row and a binary search), not a noise draw per vocabulary entry;
- for OLMo-2 models (the tiny ones and the paper's) a decode step runs the layers directly over a
  preallocated cache (`olmo2.olmo2_forward`, the fast path training uses too): no per-step mask building or
  cache concatenation. Other architectures use their HF forward with a `DynamicCache`. Tests check both
  against recomputing the full sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from excursions.data.problems import STOP_STRINGS, encode_prompt
from excursions.olmo2 import is_olmo2, olmo2_forward, olmo2_heads, olmo2_weights, position_ids, prompt_mask


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

    def prompts(self, keep: Sequence[int]) -> "Samples":
        """The samples of prompts `keep` only, in that order (completions cut to the longest one kept)."""
        rows = torch.tensor([i * self.n + j for i in keep for j in range(self.n)], dtype=torch.long)
        T = int(self.mask[rows].sum(-1).max()) if len(rows) else 0
        return Samples([self.prompt_ids[i] for i in keep], self.tokens[rows, :T], self.logprobs[rows, :T],
                       self.mask[rows, :T], [self.texts[r] for r in rows.tolist()],
                       [self.finish[r] for r in rows.tolist()], self.n)

    @staticmethod
    def concat(parts: Sequence["Samples"], pad_id: int) -> "Samples":
        """Several draws of `n` completions as one, in order: a prompt drawn twice appears twice (each of its
        groups of `n` rows keeps its own prompt entry), completions right-padded to the longest."""
        T = max(p.tokens.shape[1] for p in parts)
        pad = lambda t, v: torch.nn.functional.pad(t, (0, T - t.shape[1]), value=v)
        return Samples([q for p in parts for q in p.prompt_ids], torch.cat([pad(p.tokens, pad_id) for p in parts]),
                       torch.cat([pad(p.logprobs, 0.0) for p in parts]), torch.cat([pad(p.mask, 0.0) for p in parts]),
                       [t for p in parts for t in p.texts], [f for p in parts for f in p.finish], parts[0].n)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the first stop string.

    >>> cut_at_stop("7 + 2 = 9\\n#### 9\\n\\nQuestion: next", ["\\n\\nQuestion:"])
    '7 + 2 = 9\\n#### 9'
    """
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


_M64 = 2**64


def _s64(x: int) -> int:
    """A 64-bit constant as torch's signed int64 (multiplication wraps modulo 2^64)."""
    return x - _M64 if x >= 2**63 else x


_GOLDEN, _MIX1, _MIX2 = _s64(0x9E3779B97F4A7C15), _s64(0xBF58476D1CE4E5B9), _s64(0x94D049BB133111EB)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser: a bijective, well-mixed hash of int64 counters."""
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def uniforms(keys: torch.Tensor) -> torch.Tensor:
    """One float64 uniform in [0, 1) per int64 key: the top 53 bits of its hash.

    >>> u = uniforms(torch.arange(100_000)); bool(u.min() >= 0) and bool(u.max() < 1), round(u.mean().item(), 2)
    (True, 0.5)
    """
    return _shr(mix64(keys), 11).double() * 2.0**-53


def sample_keys(seed: int, sample_ids: torch.Tensor) -> torch.Tensor:
    """Per-sample random streams: token t of sample i draws `uniforms(mix64(key_i + t))`. A sample's tokens
    depend only on (seed, its id, the model), not on the batch it ran in: chunking, dropped finished rows
    or rollouts sharded over ranks give the same completions."""
    return mix64(mix64(torch.full_like(sample_ids, seed)) ^ sample_ids)


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float, keys: torch.Tensor | None):
    """Sample one token per row; returns (ids [B], log-probs [B] at `temperature`; T = 1 when greedy).

    Greedy at temperature 0. Otherwise inverse-CDF sampling from the (top-p truncated) softmax(logits / T):
    one uniform draw per row and a binary search, 40x cheaper on a CPU than a noise draw per vocabulary
    entry (exponential race or Gumbel), which dominated decoding time (see `inverse_cdf`).
    """
    logits = logits.float()
    if temperature <= 0:
        ids = logits.argmax(-1)
        return ids, F.log_softmax(logits, -1).gather(-1, ids[:, None]).squeeze(-1)
    z = logits if temperature == 1.0 else logits / temperature
    top = z.amax(-1, keepdim=True)
    probs = (z - top).exp_()  # unnormalised: inverse_cdf normalises, and the log-prob needs only the sum
    total = probs.sum(-1, keepdim=True)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p * total  # keep the smallest nucleus
        probs = probs.scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
    ids = inverse_cdf(probs, uniforms(keys))
    return ids, (z.gather(-1, ids[:, None]) - top - total.log()).squeeze(-1)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Per row, the index i with cdf[i - 1] <= u * total < cdf[i] of unnormalised `probs` [B, V], u in [0, 1).

    In two levels: first the block of `block` entries (from the blocks' sums), then the entry within it,
    with both cumulative sums in float64 over at most V / block + block terms. A cumsum over the whole
    vocabulary (and its float64 copy) cost ten times more per decode step on a CPU.

    >>> inverse_cdf(torch.tensor([[0.0, 1.0, 0.0, 3.0]]).expand(3, 4), torch.tensor([0.2, 0.3, 0.9]), block=2).tolist()
    [1, 3, 3]
    """
    B, V = probs.shape
    blocks = (probs if V % block == 0 else F.pad(probs, (0, -V % block))).view(B, -1, block)
    sums = blocks.sum(-1).double()  # [B, V / block]
    ends = sums.cumsum(-1)
    x = u[:, None] * ends[:, -1:]
    b = torch.searchsorted(ends, x, right=True).clamp(max=ends.shape[-1] - 1)  # [B, 1]: ends[b - 1] <= x < ends[b]
    inner = blocks.gather(1, b[:, :, None].expand(B, 1, block)).squeeze(1).double().cumsum(-1)  # [B, block]
    # x's place within the block, rescaled from the float32 block sum to the float64 cumsum of its entries
    r = (x - (ends - sums).gather(-1, b)) / sums.gather(-1, b).clamp(min=1e-300) * inner[:, -1:]
    j = torch.searchsorted(inner, r, right=True).clamp(max=block - 1)
    return (b * block + j).squeeze(-1).clamp(max=V - 1)


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
        self.pos = position_ids(valid)
        out = self.model(input_ids=ids, attention_mask=valid.long(), position_ids=self.pos,
                         use_cache=True, **{self.cache_arg: self.cache})
        self.pos = self.pos[:, -1:] + 1
        return out.logits[:, -1]

    def repeat(self, n: int) -> None:
        self.cache.batch_repeat_interleave(n)
        self.valid, self.pos = self.valid.repeat_interleave(n, 0), self.pos.repeat_interleave(n, 0)

    def select(self, rows: torch.Tensor) -> torch.Tensor:
        self.cache.batch_select_indices(rows)
        self.valid, self.pos = self.valid[rows], self.pos[rows]
        return rows

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        self.valid = torch.cat([self.valid, torch.ones_like(self.valid[:, :1])], 1)
        out = self.model(input_ids=ids[:, None], attention_mask=self.valid.long(), position_ids=self.pos,
                         use_cache=True, **{self.cache_arg: self.cache})
        self.pos = self.pos + 1
        return out.logits[:, -1]


class Olmo2Engine:
    """OLMo-2 decode with a shared-prefix cache over the model's own weights (fused, same maths).

    Each prompt's keys and values are stored once and attended by all of its n samples in one batched
    matmul; only the generated tokens have a per-sample cache. With n = 32 samples of a 4-shot prompt
    this reads the prompt cache 32x less per step, and dropping finished samples copies only the small
    generated cache. Finished samples stay in the batch until a quarter of the prompts are done (then
    whole prompts leave): copying caches on every finish cost more than decoding a few idle rows.

    A decode step is ~40 small ops per layer, so their count is the cost at batch 64 on a CPU: the
    q/k/v and gate/up projections are fused into one matmul each, norms are one reduction and two
    multiplies (`rms_norm`), the softmax scale is folded into the q-norm gain, rotary embeddings rotate q
    and k together. The prompt's keys are cached transposed ([hd, L]) so that its scores are one contiguous
    batched matmul; generated keys are cached as rows ([L, hd]): writing one column per step into a
    transposed cache cost more than it saved.
    """

    def __init__(self, model, max_new_tokens: int):
        self.model, self.max_new = model, max_new_tokens
        self.heads, self.kv_heads, self.head_dim = olmo2_heads(model)
        self.layers = olmo2_weights(model)

    def prefill(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        P, T = ids.shape
        block = max(1, 2**22 // (T * T))  # prompts per forward: bounds the T x T masks to ~4M entries
        L, KVH, hd, dt = len(self.layers), self.kv_heads, self.head_dim, self.model.dtype
        like = dict(dtype=dt, device=ids.device)
        self.pk, self.pv = torch.zeros(L, P, KVH, hd, T, **like), torch.zeros(L, P, KVH, T, hd, **like)
        self.pbias = torch.zeros(P, 1, 1, T, **like).masked_fill(~valid[:, None, None, :], float("-inf"))
        pos, mask = position_ids(valid), prompt_mask(valid)
        logits = []
        for i in range(0, P, block):
            rows = slice(i, i + block)

            def attend(layer: int, q, k, v, rows=rows):
                self.pk[layer, rows], self.pv[layer, rows] = k.transpose(-1, -2), v
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[rows], scale=1.0,
                                                      enable_gqa=self.heads != self.kv_heads)

            logits.append(olmo2_forward(self.model, self.layers, ids[rows], pos[rows], attend, last_only=True)[:, -1])
        self.n, self.t, self.gk, self.gv = 1, 0, None, None
        self.pos = pos[:, -1:] + 1
        return torch.cat(logits)

    def repeat(self, n: int) -> None:
        self.n = n
        self.pos = self.pos.repeat_interleave(n, 0)

    def select(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Keep at least `rows`; returns the rows actually kept (whole prompts), or None if nothing changed."""
        groups = torch.unique(rows // self.n)
        P = self.pk.shape[1]
        if P - len(groups) < max(1, P // 4):
            return None
        kept = (groups[:, None] * self.n + torch.arange(self.n, device=groups.device)).flatten()
        self.pk, self.pv, self.pbias = self.pk[:, groups], self.pv[:, groups], self.pbias[groups]
        self.pos = self.pos[kept]
        if self.gk is not None:  # samples can finish on their first token, before any decode step
            self.gk, self.gv = self.gk[:, kept], self.gv[:, kept]
        return kept

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        B, t, n = ids.shape[0], self.t, self.n
        if self.gk is None:
            L, KVH, hd, dt = len(self.layers), self.kv_heads, self.head_dim, self.model.dtype
            # only positions <= t are ever read, each written first
            self.gk, self.gv = (torch.empty(L, B, KVH, self.max_new, hd, dtype=dt, device=ids.device) for _ in range(2))
        P, KVH, rep = B // n, self.kv_heads, self.heads // self.kv_heads

        def attend(layer: int, q, k, v):  # q [B, H, 1, hd]: the prompt part per prompt, generated per sample
            self.gk[layer, :, :, t], self.gv[layer, :, :, t] = k[:, :, 0], v[:, :, 0]
            # query rows grouped by key/value head: [B, KVH, rep, hd]; a prompt's n samples share its cache
            qg = q.reshape(B, KVH, rep, -1)
            qp = qg if n == 1 else qg.view(P, n, KVH, rep, -1).transpose(1, 2).reshape(P, KVH, n * rep, -1)
            sp = qp @ self.pk[layer] + self.pbias  # [P, KVH, n * rep, Lp], -inf on prompt padding
            sp = sp if n == 1 else sp.view(P, KVH, n, rep, -1).transpose(1, 2).reshape(B, KVH, rep, -1)
            sg = qg @ self.gk[layer, :, :, : t + 1].transpose(-1, -2)  # [B, KVH, rep, t + 1]
            Lp = sp.shape[-1]
            w = torch.cat([sp, sg], -1).softmax(-1)
            wp = w[..., :Lp]
            wp = wp if n == 1 else wp.reshape(P, n, KVH, rep, Lp).transpose(1, 2).reshape(P, KVH, n * rep, Lp)
            op = wp @ self.pv[layer]  # [P, KVH, n * rep, hd]
            op = op if n == 1 else op.view(P, KVH, n, rep, -1).transpose(1, 2)
            out = op.reshape(B, KVH, rep, -1) + w[..., Lp:] @ self.gv[layer, :, :, : t + 1]
            return out.reshape(B, self.heads, 1, -1)

        logits = olmo2_forward(self.model, self.layers, ids[:, None], self.pos, attend)
        self.t, self.pos = t + 1, self.pos + 1
        return logits[:, -1]


def make_engine(model, max_new_tokens: int, fast: bool = True):
    if fast and is_olmo2(model):
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
           fast: bool = True, progress=None, prompt_index: Sequence[int] | None = None) -> Samples:
    """`n` completions of each prompt. Reproducible: the same arguments give the same samples.

    Sample j of prompt i has its own random stream, keyed by (seed, prompt_index[i] * n + j); `prompt_index`
    (default 0, 1, ...) names a prompt's place in a larger batch, so a shard of it samples what the whole would.
    `model` may also be a `VLLMSampler` (excursions.vllm_backend), which samples the same way on its engine.
    """
    if hasattr(model, "vllm_sample"):
        return model.vllm_sample(tok, prompts, n, max_new_tokens, temperature, top_p, stop, seed, prompt_index)
    was_training = model.training
    model.eval()
    index = list(range(len(prompts))) if prompt_index is None else list(prompt_index)
    dev = next(model.parameters()).device  # prompts go to the model's device; results come back to the CPU
    ids = torch.tensor([i * n + j for i in index for j in range(n)], dtype=torch.long, device=dev)
    keys = sample_keys(seed, ids)
    prompt_ids = [encode_prompt(tok, p) for p in prompts]
    rows: list[tuple] = []
    per_chunk = max(1, max_batch // n)
    try:
        for i in range(0, len(prompts), per_chunk):
            rows += _sample_chunk(model, tok, prompt_ids[i : i + per_chunk], n, max_new_tokens, temperature, top_p,
                                  stop, keys[i * n : (i + per_chunk) * n], fast)
            if progress is not None:
                progress.update(len(prompt_ids[i : i + per_chunk]) * n)
    finally:
        model.train(was_training)
    return to_samples(tok, prompt_ids, rows, n, stop)


def to_samples(tok, prompt_ids: list[list[int]], rows: list[tuple], n: int, stop: Sequence[str]) -> Samples:
    """`Samples` from (completion ids, their log-probs, finish reason) per sample, prompt-major."""
    T = max([len(r[0]) for r in rows] + [1])
    tokens = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
    logprobs, mask = torch.zeros(len(rows), T), torch.zeros(len(rows), T)
    for j, (ids, lps, _) in enumerate(rows):
        tokens[j, : len(ids)], logprobs[j, : len(ids)], mask[j, : len(ids)] = torch.tensor(ids), torch.tensor(lps), 1
    texts = [cut_at_stop(t, stop) for t in tok.batch_decode([r[0] for r in rows], skip_special_tokens=True)]
    return Samples(prompt_ids, tokens, logprobs, mask, texts, [r[2] for r in rows], n)


def _sample_chunk(model, tok, prompt_ids, n, max_new, temperature, top_p, stop, keys, fast) -> list[tuple]:
    """Decode one chunk of prompts; returns (ids, logprobs, finish) per sample, prompt-major."""
    texts = _token_texts(tok) if stop else None
    window = max((len(s) for s in stop), default=0) + 32
    L = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), L), tok.pad_token_id, dtype=torch.long)
    valid = torch.zeros(len(prompt_ids), L, dtype=torch.bool)
    for i, p in enumerate(prompt_ids):  # left padding: every prompt ends in the last column
        ids[i, L - len(p):], valid[i, L - len(p):] = torch.tensor(p), True
    engine = make_engine(model, max_new, fast)
    logits = engine.prefill(ids.to(keys.device), valid.to(keys.device))
    if n > 1:
        engine.repeat(n)
        logits = logits.repeat_interleave(n, 0)
    B = len(prompt_ids) * n
    out_ids: list[list[int]] = [[] for _ in range(B)]
    out_lp: list[list[float]] = [[] for _ in range(B)]
    tails, finish, alive = [""] * B, ["length"] * B, [True] * B
    rows = list(range(B))  # engine row -> sample; an engine may keep finished samples for a while
    eos = tok.eos_token_id  # a tokenizer attribute lookup costs more than the rest of this loop's body
    for t in range(max_new):
        new, lp = pick_tokens(logits, temperature, top_p, mix64(keys[rows] + t))
        for row, tid, l in zip(rows, new.tolist(), lp.tolist()):
            if not alive[row]:
                continue
            out_ids[row].append(tid)
            out_lp[row].append(l)
            if tid == eos:
                finish[row], alive[row] = "eos", False
            elif texts is not None:
                tails[row] = (tails[row] + texts[tid])[-window:]
                if any(s in tails[row] for s in stop):
                    finish[row], alive[row] = "stop", False
        live = [j for j, row in enumerate(rows) if alive[row]]
        if not live or t == max_new - 1:
            break
        if len(live) < len(rows) and (kept := engine.select(torch.tensor(live, device=keys.device))) is not None:
            new = new[kept]
            rows = [rows[j] for j in kept.tolist()]
        logits = engine.step(new)
    return list(zip(out_ids, out_lp, finish))


def generate(model, tok, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
             stop: Sequence[str] = STOP_STRINGS) -> list[str]:
    """One completion text per prompt (greedy by default)."""
    return sample(model, tok, prompts, 1, max_new_tokens, temperature, stop=stop, seed=seed).texts
