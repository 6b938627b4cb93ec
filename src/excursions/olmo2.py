"""One fast implementation of OLMo-2's forward, shared by the sampler's decode steps and training's log-probs.

    weights = olmo2_weights(model)                        # per layer, the model's own tensors, fused
    logits = olmo2_forward(model, weights, ids, pos, attend)   # attention done by `attend(layer, q, k, v)`
    hidden = shared_prefix_hidden(model, ids, attention, prompt_width, group=16)   # GRPO's packed forward

The same maths as transformers' `Olmo2ForCausalLM` (tests compare logits and gradients with its own forward), in
fewer operations: a decode step or a tiny model's update on a CPU is bound by the count of small ops, not by
FLOPs. The q/k/v and gate/up projections are one matmul each, RMSNorm is one reduction and two multiplies with a
written-out backward, the softmax scale is folded into the q-norm gain and rotary embeddings rotate q and k
together. What attends is the caller's: the sampler attends a shared prompt cache (`sampling.Olmo2Engine`),
training runs each group's prompt once and its completions packed (`shared_prefix_hidden`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def position_ids(valid: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: [N, L] (bool or 0/1) -> [N, L]."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def prompt_mask(valid: torch.Tensor) -> torch.Tensor:
    """Attention mask of left-padded prompts [P, L] -> [P, 1, L, L]: causal over real tokens; a padding
    query also sees itself, so that no softmax row is empty (NaN)."""
    L, dev = valid.shape[-1], valid.device
    causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
    return ((causal & valid.bool()[:, None, :]) | torch.eye(L, dtype=torch.bool, device=dev))[:, None]


def olmo2_heads(model) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of an OLMo-2 model."""
    cfg = model.config
    H = cfg.num_attention_heads
    return H, cfg.num_key_value_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // H


def olmo2_weights(model) -> list[dict]:
    """Per layer, an OLMo-2 model's weights fused for `olmo2_forward` (differentiable outside no_grad)."""
    out = []
    for layer in model.model.layers:
        a, mlp = layer.self_attn, layer.mlp
        cat = lambda *ms: torch.cat([m.weight for m in ms])
        out.append(dict(
            qkv=cat(a.q_proj, a.k_proj, a.v_proj), o=a.o_proj.weight, gate_up=cat(mlp.gate_proj, mlp.up_proj),
            down=mlp.down_proj.weight, q_norm=a.q_norm.weight * a.scaling, k_norm=a.k_norm.weight,
            attn_norm=layer.post_attention_layernorm.weight, ff_norm=layer.post_feedforward_layernorm.weight,
            eps=a.q_norm.variance_epsilon,
        ))
    return out


def _inv_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(mean(x^2) + eps) over the last dimension, keepdim: one reduction pass over x."""
    return torch.linalg.vector_norm(x, 2, -1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()


class _RMSNorm(torch.autograd.Function):
    """x / rms(x) * w over the last dimension with the backward written out. F.rms_norm on a CPU runs as
    six elementwise ops forward and about twice as many backward; this takes three and six (half the time).
    With n = x / rms(x) and g = dy * w: dx = (g - n * mean(g * n)) / rms(x), dw = sum over rows of dy * n."""

    @staticmethod
    def forward(ctx, x, w, eps):
        r = _inv_rms(x, eps)
        xh = x * r
        ctx.save_for_backward(xh, r, w)
        return xh * w

    @staticmethod
    def backward(ctx, gy):
        xh, r, w = ctx.saved_tensors
        g = gy * w
        gw = (gy * xh).reshape(-1, xh.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        dot = torch.linalg.vecdot(g, xh).unsqueeze(-1).div_(xh.shape[-1])
        return torch.addcmul(g, xh, dot, value=-1.0).mul_(r), gw, None


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """`F.rms_norm(x, x.shape[-1:], w, eps)`, faster on a CPU (tested equal, values and gradients); other
    devices have a fused kernel for it."""
    if x.device.type != "cpu":
        return F.rms_norm(x, x.shape[-1:], w, eps)
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        return _RMSNorm.apply(x, w, eps)
    return (x * _inv_rms(x, eps)).mul_(w)


def olmo2_forward(model, weights: list[dict], ids: torch.Tensor, pos: torch.Tensor, attend,
                  last_only: bool = False, head: bool = True) -> torch.Tensor:
    """The OLMo-2 stack over `ids` [B, T] at positions `pos`, attention done by `attend(layer, q, k, v)`
    with q pre-scaled (the softmax scale is folded into the q-norm gain): logits [B, T or 1, V], or without
    the LM `head` the final normed hidden states [B, T or 1, d]."""
    B, T = ids.shape
    H, KVH, hd = olmo2_heads(model)
    h = model.model.embed_tokens(ids)  # [B, T, d]
    cos, sin = model.model.rotary_emb(h, pos)
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, hd]
    # rotate_half(x) * sin = (x's halves swapped) * (sin with its first half negated): a flip and one
    # multiply-add instead of a negation, a concatenation, a multiply and an add (and their backward)
    sin = torch.cat([-sin[..., : hd // 2], sin[..., hd // 2 :]], -1)
    for i, w in enumerate(weights):
        q, k, v = F.linear(h, w["qkv"]).split([H * hd, KVH * hd, KVH * hd], -1)
        q, k = rms_norm(q, w["q_norm"], w["eps"]), rms_norm(k, w["k_norm"], w["eps"])
        qk = torch.cat([q, k], -1).view(B, T, H + KVH, hd).transpose(1, 2)  # rotate q and k together
        qk = torch.addcmul(qk * cos, qk.unflatten(-1, (2, hd // 2)).flip(-2).flatten(-2), sin)
        att = attend(i, qk[:, :H], qk[:, H:], v.view(B, T, KVH, hd).transpose(1, 2))
        att = F.linear(att.transpose(1, 2).reshape(B, T, -1), w["o"])
        h = h + rms_norm(att, w["attn_norm"], w["eps"])
        gate, up = F.linear(h, w["gate_up"]).chunk(2, -1)
        h = h + rms_norm(F.linear(F.silu(gate) * up, w["down"]), w["ff_norm"], w["eps"])
    if last_only:
        h = h[:, -1:]
    norm = model.model.norm
    h = rms_norm(h, norm.weight, norm.variance_epsilon)
    return model.lm_head(h) if head else h


def is_olmo2(model) -> bool:
    """Whether `olmo2_forward` computes this model exactly (OLMo-2 without attention biases). Not for a
    DDP wrapper or an FSDP2-sharded model: their forward must run through the engine's hooks."""
    if type(model).__name__ != "Olmo2ForCausalLM":
        return False
    cfg = model.config
    return cfg._attn_implementation in ("sdpa", "eager") and not getattr(cfg, "attention_bias", False)


def shared_prefix_hidden(model, input_ids: torch.Tensor, attention: torch.Tensor, prompt_width: int,
                         group: int) -> torch.Tensor:
    """The final (normed) hidden states that predict each completion token, for rows in groups of `group`
    completions of one prompt, each prompt run once: [N, T, d] (zero where the completion is padding);
    `model.lm_head` of it is `response_logits`. OLMo-2 only (`is_olmo2`).

    The prompt's layers run once per group and its keys / values are shared by the group's completions
    (gradients from all of them flow back through the one copy): with G = 16 completions of ~100 tokens
    after a ~50-token prompt this skips a quarter of the forward and backward. The completions' real
    tokens run packed ([1, M] instead of [N, T - 1]): everything but attention is per position, so only
    attention sees the padded layout, and right padding (a sixth of a tiny GRPO batch, more where lengths
    vary) costs no projection, MLP or norm, forward or backward.
    """
    P, (N, L) = prompt_width, input_ids.shape
    T, (H, KVH, hd) = L - P, olmo2_heads(model)
    pvalid = attention[::group, :P].bool()  # [g, P]
    ppos = position_ids(pvalid)
    R = T - 1  # completion tokens 0..T-2 predict 1..T-1; the prompt's last position predicts token 0
    dev = input_ids.device
    rpos = pvalid.sum(-1).repeat_interleave(group)[:, None] + torch.arange(R, device=dev)  # [N, R]
    weights = olmo2_weights(model)
    pmask = prompt_mask(pvalid)
    # a completion token attends to its prompt's real tokens and causally to its own completion
    rmask = torch.cat([pvalid.repeat_interleave(group, 0)[:, None, :].expand(N, R, P),
                       torch.ones(R, R, dtype=torch.bool, device=dev).tril().expand(N, R, R)], -1)[:, None]
    real = attention[:, P:-1].bool().flatten().nonzero().squeeze(-1)  # packed index of real inputs in [N * R]
    cache: list = []

    def attend_prompt(layer, q, k, v):
        cache.append((k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=pmask, scale=1.0, enable_gqa=H != KVH)

    def unpack(x):  # packed [1, h, M, hd] -> [N, h, R, hd], zero on padding (no real query attends to it)
        rows = x.new_zeros(N * R, x.shape[1], hd).index_copy(0, real, x[0].transpose(0, 1))
        return rows.view(N, R, -1, hd).transpose(1, 2)

    def attend_response(layer, q, k, v):
        kp, vp = cache[layer]
        out = F.scaled_dot_product_attention(unpack(q), torch.cat([kp, unpack(k)], 2), torch.cat([vp, unpack(v)], 2),
                                             attn_mask=rmask, scale=1.0, enable_gqa=H != KVH)
        return out.transpose(1, 2).reshape(N * R, H, hd).index_select(0, real).transpose(0, 1)[None]  # packed

    last = olmo2_forward(model, weights, input_ids[::group, :P], ppos, attend_prompt, last_only=True, head=False)
    hidden = last.repeat_interleave(group, 0)  # [N, 1, d]
    if R > 0:
        packed = olmo2_forward(model, weights, input_ids[:, P:-1].flatten()[real][None], rpos.flatten()[real][None],
                               attend_response, head=False)[0]  # [M, d]
        body = packed.new_zeros(N * R, packed.shape[-1]).index_copy(0, real, packed).view(N, R, -1)
        hidden = torch.cat([hidden, body], 1)
    return hidden
