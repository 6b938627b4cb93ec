"""Tiny OLMo-2 models: transformers' own `Olmo2ForCausalLM` at named sizes.

Using the HF class itself (not a look-alike) means every checkpoint is a standard HF directory:
`AutoModelForCausalLM.from_pretrained(dir)` loads it, and the same code path serves real models.

    model = build_model(cfg.model, vocab_size=2048, special_ids=tok_ids)
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Olmo2Config, Olmo2ForCausalLM, PreTrainedModel

from excursions import progress  # noqa: F401  (quiets transformers' own progress bars)
from excursions.config import ModelConfig
from excursions.errors import UserError

# Named sizes, OLMo-core style. The name is the approximate parameter count with a 2048-token vocab
# (tied embeddings); d_ff is ~8/3 d_model rounded, as in SwiGLU models.
SIZES: dict[str, dict[str, int]] = {
    "olmo2_500K": dict(d_model=96, n_layers=4, n_heads=4, d_ff=256),
    "olmo2_1M": dict(d_model=128, n_layers=4, n_heads=4, d_ff=352),
    "olmo2_3M": dict(d_model=192, n_layers=6, n_heads=6, d_ff=512),
    "olmo2_5M": dict(d_model=256, n_layers=6, n_heads=8, d_ff=688),
    "olmo2_10M": dict(d_model=320, n_layers=8, n_heads=8, d_ff=864),
}


def resolve_dims(cfg: ModelConfig) -> dict[str, int]:
    """The size preset with the config's non-zero fields laid over it."""
    dims = dict(SIZES[cfg.size])
    for key in dims:
        if getattr(cfg, key):
            dims[key] = getattr(cfg, key)
    return dims


def hf_config(cfg: ModelConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> Olmo2Config:
    dims = resolve_dims(cfg)
    return Olmo2Config(
        vocab_size=vocab_size,
        hidden_size=dims["d_model"],
        intermediate_size=dims["d_ff"],
        num_hidden_layers=dims["n_layers"],
        num_attention_heads=dims["n_heads"],
        num_key_value_heads=dims["n_heads"],
        max_position_embeddings=cfg.context,
        rope_theta=10_000.0,
        # Tied embeddings: at ~1M parameters the embedding matrix is a quarter of the model.
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        initializer_range=0.02,
        attn_implementation="sdpa",
    )


def build_model(cfg: ModelConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, seed: int) -> Olmo2ForCausalLM:
    """A freshly initialised model; the same seed gives the same weights."""
    torch.manual_seed(seed)
    model = Olmo2ForCausalLM(hf_config(cfg, vocab_size, bos_id, eos_id, pad_id))
    return model.float()


def count_params(model: torch.nn.Module, embeddings: bool = True) -> int:
    """Parameters, each counted once (tied weights are one tensor)."""
    n = sum(p.numel() for p in model.parameters())
    if not embeddings:
        n -= model.get_input_embeddings().weight.numel()
    return n


def load_model(path: str, revision: str | None = None, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Any HF causal LM from a local directory or a hub id (with a revision); a clear error if missing."""
    try:
        return AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load a model from {path!r}{'@' + revision if revision else ''}: {first}") from None


def parse_checkpoint(spec: str) -> tuple[str, str | None]:
    """`dir` or `hub/id@revision` -> (path or id, revision). A local path wins over the @ syntax.

    >>> parse_checkpoint("allenai/OLMo-2-0425-1B@stage1-step10000-tokens21B")
    ('allenai/OLMo-2-0425-1B', 'stage1-step10000-tokens21B')
    >>> parse_checkpoint("runs/tiny/checkpoints/step001221-tokens10002432")
    ('runs/tiny/checkpoints/step001221-tokens10002432', None)
    """
    from pathlib import Path

    if Path(spec).exists() or "@" not in spec:
        return spec, None
    name, _, revision = spec.rpartition("@")
    return name, revision or None
