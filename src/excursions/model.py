"""Tiny OLMo-2 models: transformers' own `Olmo2ForCausalLM` at named sizes (`config.SIZES`); loading any HF causal LM.

Using the HF class itself (not a look-alike) means every checkpoint is a standard HF directory:
`AutoModelForCausalLM.from_pretrained(dir)` loads it, and the same code path serves real models.

    model = build_model(cfg.model, vocab_size=2048, special_ids=tok_ids)
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Olmo2Config, Olmo2ForCausalLM, PreTrainedModel

from excursions.config import SIZES, ModelConfig
from excursions.errors import UserError, first_line
from excursions.runtime import quiet_libraries

quiet_libraries()


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


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; `cuda` without a GPU is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but torch sees no GPU; use device=auto or cpu")
    return torch.device(name)


def load_model(path: str, revision: str | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> PreTrainedModel:
    """Any HF causal LM from a local directory or a hub id (with a revision); a clear error if missing."""
    try:
        # Remote code stays off: a checkpoint runs only classes transformers ships.
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype, trust_remote_code=False)
    except (OSError, ValueError) as err:
        first = first_line(err)
        raise UserError(f"cannot load a model from {path!r}{'@' + revision if revision else ''}: {first}") from None
    return model.to(device)


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


def check_checkpoint(spec: str) -> None:
    """Fail now, with one clear line, if `spec` (a directory or hub id[@revision]) cannot be loaded:
    a missing directory, one without config.json, an unknown repo or revision, no network and no cache.
    Reads only the config, so a study checks all its checkpoints before any work starts."""
    from pathlib import Path

    from transformers import AutoConfig

    path, revision = parse_checkpoint(spec)
    local = Path(path)
    if local.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1:
        if not local.is_dir():
            raise UserError(f"checkpoint {spec!r}: no such directory")
        if not (local / "config.json").is_file():
            raise UserError(f"checkpoint {spec!r}: not an HF model directory (no config.json)")
    try:
        AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as err:
        first = first_line(err)
        raise UserError(f"checkpoint {spec!r} cannot be loaded: {first}") from None


def revision_tokens(spec: str) -> int:
    """Pretraining tokens named by a checkpoint's revision or directory (OLMo's `...-tokens21B`), else 0.

    >>> revision_tokens("allenai/OLMo-2-0425-1B@stage1-step10000-tokens21B"), revision_tokens("runs/x/final")
    (21000000000, 0)
    >>> revision_tokens("runs/tiny/checkpoints/step001221-tokens10002432")
    10002432
    """
    import re

    m = re.search(r"tokens(\d+)([KMB]?)", spec)
    return int(m.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "B": 10**9}[m.group(2)] if m else 0


def match_revisions(names, pattern: str) -> list[tuple[str, int]]:
    r"""The names that fully match `pattern`, with their tokens, in order of tokens (then name).

    >>> match_revisions(["main", "stage1-step2000-tokens5B", "stage1-step1000-tokens3B", "stage2-x"],
    ...                 r"stage1-step\d+-tokens\d+B")
    [('stage1-step1000-tokens3B', 3000000000), ('stage1-step2000-tokens5B', 5000000000)]
    """
    import re

    try:
        rx = re.compile(pattern)
    except re.error as err:
        raise UserError(f"revision pattern {pattern!r} is not a valid regular expression ({err})") from None
    kept = [(n, revision_tokens(n)) for n in names if rx.fullmatch(n)]
    return sorted(kept, key=lambda nt: (nt[1], nt[0]))


def list_revisions(repo: str, pattern: str) -> list[tuple[str, int]]:
    """Branches of hub repo `repo` matching `pattern`, with tokens (OLMo-2's intermediate checkpoints)."""
    from huggingface_hub import list_repo_refs

    try:
        refs = list_repo_refs(repo)
    except Exception as err:  # offline, unknown repo, gated: one line instead of the client's traceback
        first = first_line(err)
        raise UserError(f"cannot list the revisions of {repo!r}: {first}") from None
    found = match_revisions([b.name for b in refs.branches], pattern)
    if not found:
        raise UserError(f"no revision of {repo!r} matches {pattern!r} ({len(refs.branches)} branches)")
    return found
