"""A byte-level BPE trained with HF `tokenizers` on the pretraining corpus, digits split one by one.

Saved as a standard `tokenizer.json` (+ config) that `transformers.AutoTokenizer` loads, so tiny
checkpoints and real models share every code path after this.

    tok = train_tokenizer(texts, vocab_size=2048)
    tok.save_pretrained(out_dir)                 # AutoTokenizer.from_pretrained(out_dir) loads it
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from excursions.data.problems import use_chat
from excursions.errors import UserError, first_line

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE; every digit is its own token (arithmetic stays position-aligned)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # EOS doubles as BOS, as in OLMo: documents are separated by EOS and no BOS is prepended.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, model_max_length=1_000_000
    )


def load_tokenizer(path: str, revision: str | None = None, chat: bool = False) -> PreTrainedTokenizerBase:
    """Any HF tokenizer (local dir or hub id); one without a pad token gets EOS as pad. With `chat`, prompts
    for it are rendered with its chat template (`data.problems.format_prompt`); it must have one."""
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as err:
        first = first_line(err)
        raise UserError(f"cannot load a tokenizer from {path!r}: {first}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if chat:
        if not getattr(tok, "chat_template", None):
            raise UserError(f"prompt.chat_template is set but the tokenizer of {path!r} has no chat template; "
                            "set prompt.chat_template=false for a base model")
        use_chat(tok)
    return tok
