"""Tokenizer and model: standard HF artifacts that round-trip exactly."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from excursions.config import ModelConfig
from excursions.model import SIZES, build_model, count_params, load_model, resolve_dims
from excursions.errors import UserError
from excursions.tokenizer import EOS, train_tokenizer

TEXTS = [
    "Question: Ada has 12 apples. She buys 7 more. How many apples?\nAnswer: 12 + 7 = 19\n#### 19",
    "Solve for x: 3 * (x + 4) - 5 = 37.\n42 / 3 = 14\n\\boxed{10}",
    "Zorblax is a city in Merovia. The main export of Zorblax is copper.",
    "  odd   spacing\ttabs\nand ünïcödé — dashes “quotes” 😀 $1,234.50",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS * 50, vocab_size=400)


def test_tokenizer_roundtrips_text_exactly(tok):
    for text in TEXTS + ["", "9" * 40, "\n\n\n", "never seen: QqZz 0123456789"]:
        assert tok.decode(tok(text).input_ids) == text


def test_digits_are_single_tokens(tok):
    pieces = tok.convert_ids_to_tokens(tok("x = 12345 and 907").input_ids)
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digits == list("12345907")


def test_saved_tokenizer_loads_with_autotokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.eos_token == EOS and again.pad_token is not None and again.pad_token != again.eos_token
    for text in TEXTS:
        assert again(text).input_ids == tok(text).input_ids


@pytest.mark.parametrize("size", sorted(s for s in SIZES if s != "olmo2_1B"))
def test_size_presets_span_half_a_million_to_ten_million(size):
    dims = resolve_dims(ModelConfig(size=size))
    model = build_model(ModelConfig(size=size), 2048, 0, 0, 1, seed=0)
    n = count_params(model)
    assert 0.4e6 <= n <= 12e6
    assert model.config.hidden_size == dims["d_model"] and model.config.num_hidden_layers == dims["n_layers"]


def test_the_1B_size_has_olmo2_1Bs_shape():
    """The paper-olmo2-1b preset's model, built on the meta device (no memory): OLMo-2 1B's layers, ~1.2B
    parameters with its 50,304-token vocabulary (tied embeddings)."""
    import torch

    with torch.device("meta"):
        model = build_model(ModelConfig(size="olmo2_1B"), 50_304, 0, 0, 1, seed=0)
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (2048, 16, 16, 8192)
    assert 1.15e9 <= count_params(model) <= 1.25e9


def test_overrides_replace_preset_dims():
    assert resolve_dims(ModelConfig(size="olmo2_1M", d_model=96, n_heads=3))["d_model"] == 96


def test_same_seed_same_weights():
    a = build_model(ModelConfig(size="olmo2_500K"), 512, 0, 0, 1, seed=3)
    b = build_model(ModelConfig(size="olmo2_500K"), 512, 0, 0, 1, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_save_pretrained_roundtrip_gives_identical_logits(tmp_path):
    model = build_model(ModelConfig(size="olmo2_500K"), 512, 0, 0, 1, seed=0)
    with torch.no_grad():  # move off the init so that the test is not about initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    x = torch.randint(0, 512, (3, 40))
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_load_model_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="cannot load a model from"):
        load_model(str(tmp_path / "nothing-here"))
