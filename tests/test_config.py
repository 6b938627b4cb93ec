"""Configs: presets load, overrides apply, and every kind of bad input fails with the field named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from excursions.config import apply_override, diff, load_config, preset_names, to_dict, to_toml
from excursions.errors import ConfigError, UserError


def test_presets_load_and_roundtrip_through_toml(tmp_path):
    assert {"smoke", "tiny"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        path = tmp_path / f"{name}.toml"
        path.write_text(to_toml(cfg))
        assert load_config(path=path) == cfg


def test_dotted_overrides_are_typed():
    cfg = load_config("tiny", overrides=["model.d_model=168", "pretrain.lr=1e-3", "pretrain.compile=false",
                                         "model.size=olmo2_3M", "pretrain.checkpoint_tokens=[1_000_000, 2_000_000]"])
    assert cfg.model.d_model == 168 and cfg.model.size == "olmo2_3M"
    assert cfg.pretrain.lr == 1e-3 and cfg.pretrain.compile is False
    assert cfg.pretrain.checkpoint_tokens == (1_000_000, 2_000_000)


def test_config_is_frozen():
    cfg = load_config("smoke")
    with pytest.raises(Exception):
        cfg.pretrain.lr = 1.0


@pytest.mark.parametrize(
    "override, field, words",
    [
        ("model.dmodel=128", "model.dmodel", "did you mean 'd_model'"),
        ("pretrain.lr=-0.1", "pretrain.lr", "must be > 0"),
        ("pretrain.lr='fast'", "pretrain.lr", "must be a number"),
        ("pretrain.batch_size=2.5", "pretrain.batch_size", "must be an integer"),
        ("pretrain.checkpoint_tokens=[999_999_999]", "pretrain.checkpoint_tokens", "beyond the token budget"),
        ("pretrain.first_checkpoint=999_999_999", "pretrain.first_checkpoint", "<= tokens"),
        ("pretrain.checkpoints='cubic'", "pretrain.checkpoints", "one of 'geometric', 'linear'"),
        ("model.size='olmo2_1T'", "model.size", "unknown size"),
        ("data.general=0.9", "data.general", "must sum to 1"),
        ("world.gsm.max_steps=1", "world.gsm.max_steps", ">= min_steps"),
        ("world.gsm.start_max=500", "world.gsm.start_max", "in [2, max_value (50)]"),
        ("pretrain.seq_len=4096", "pretrain.seq_len", "<= model.context"),
        ("pretrain.compile=1", "pretrain.compile", "true or false"),
        ("model=3", "model", "table of settings"),
        ("pretrain.num_checkpoints=5000", "pretrain.num_checkpoints", "do not fit"),
        ("rl.rollouts='dapo'", "rl.rollouts", "unknown allocator; choose one of uniform, filter, until_positive, adaptive"),
    ],
)
def test_bad_values_name_the_field(override, field, words):
    with pytest.raises(ConfigError) as err:
        load_config("smoke", overrides=[override])
    assert err.value.field == field
    assert words in str(err.value)


def test_until_positive_needs_whole_draws_of_a_group():
    with pytest.raises(ConfigError, match="max_rollouts: must be a multiple of group_size \\(4\\)"):
        load_config("smoke", overrides=["rl.rollouts='until_positive'", "rl.max_rollouts=10"])
    assert load_config("smoke", overrides=["rl.max_rollouts=10"]).rl.rounds == 1  # read by until_positive only
    assert load_config("smoke", overrides=["rl.rollouts='until_positive'", "rl.max_rollouts=12"]).rl.rounds == 3


@pytest.mark.parametrize("allocator, widens, rounds", [("uniform", 1, 1), ("filter", 4, 1), ("until_positive", 1, 3),
                                                       ("adaptive", 4, 3)])
def test_each_allocator_samples_its_share_of_prompts_and_draws(allocator, widens, rounds):
    """filter and adaptive choose among filter_over x the step's prompts; until_positive and adaptive may draw a
    prompt up to max_rollouts / G times in a step."""
    rl = load_config("smoke", overrides=[f"rl.rollouts='{allocator}'", "rl.max_rollouts=12", "rl.filter_over=4"]).rl
    assert (rl.prompts_sampled, rl.rounds) == (widens * rl.prompts_per_step, rounds)


def test_bad_override_syntax_and_sources(tmp_path):
    with pytest.raises(UserError, match="section.key=value"):
        load_config("smoke", overrides=["pretrain.lr"])
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(UserError, match="does not exist"):
        load_config(path=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[pretrain\nlr = 1")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(path=bad)


def test_apply_override_builds_nested_sections():
    data = {}
    apply_override(data, "a.b.c=3")
    apply_override(data, "a.name=hello world")  # not TOML: taken as a string
    assert data == {"a": {"b": {"c": 3}, "name": "hello world"}}


def test_diff_names_changed_fields():
    a, b = to_dict(load_config("smoke")), to_dict(load_config("smoke", overrides=["pretrain.lr=1e-4"]))
    assert diff(a, b) == ["pretrain.lr: 0.003 -> 0.0001"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["pretrain", "--preset", "smoke", "pretrain.lr=-1"], "pretrain.lr: must be > 0"),
        (["pretrain", "--preset", "smoke", "modle.size=x"], "modle: unknown key; did you mean 'model'?"),
        (["pretrain", "--preset", "nope"], "unknown preset 'nope'"),
        (["pretrain", "--config", "missing.toml"], "missing.toml does not exist"),
        (["pretrain", "--preset", "smoke", "pretrain.tokens"], "not of the form section.key=value"),
    ],
)
def test_cli_rejects_bad_input_before_writing_anything(tmp_path, args, message):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "excursions.cli", *args, "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_preset_extends_another_with_its_own_keys_laid_over():
    """tiny-full is the tiny study (every section, its name too: the same pretraining run) and the beyond-paper
    experiments; a key it sets wins, section by section, and an override still comes last."""

    tiny, full = load_config("tiny"), load_config("tiny-full", overrides=["rl.lr=3e-4"])
    assert full.name == tiny.name and full.pretrain == tiny.pretrain and full.sft == tiny.sft
    assert full.study.allocators and full.study.large_k == 256 and not tiny.study.allocators
    assert full.study.checkpoints == tiny.study.checkpoints  # the rest of [study] is tiny's
    assert full.rl.lr == 3e-4 and to_dict(full.rl) == {**to_dict(tiny.rl), "lr": 3e-4}
