"""The sampler: exact against recomputation, reproducible, and honouring stop strings and EOS per sequence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from excursions.data.problems import STOP_STRINGS, format_prompt, read_jsonl
from excursions.olmo2 import rms_norm
from excursions.sampling import pick_tokens, sample


@pytest.fixture(scope="module")
def lm(micro_run):
    final = sorted((micro_run / "checkpoints").glob("step*"))[-1]
    return AutoModelForCausalLM.from_pretrained(final), AutoTokenizer.from_pretrained(final)


@pytest.fixture(scope="module")
def prompts(micro_run):
    test = read_jsonl(micro_run / "world" / "gsm" / "test.jsonl")
    train = read_jsonl(micro_run / "world" / "gsm" / "train.jsonl")
    shots = [(p.question, p.solutions[0]) for p in train[:2]]
    # different prompt lengths in one batch: 0, 1 and 2 shots
    return [format_prompt(p.question, shots[: i % 3]) for i, p in enumerate(test[:9])]


def _recompute_greedy(model, tok, prompt: str, steps: int) -> list[int]:
    """Reference: the full sequence through the model at every step, no cache."""
    ids, out = tok(prompt).input_ids, []
    for _ in range(steps):
        with torch.no_grad():
            t = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
        out.append(t)
        if t == tok.eos_token_id:
            break
    return out


@pytest.mark.parametrize("fast", [True, False], ids=["olmo2-engine", "hf-engine"])
def test_kv_cache_equals_recomputing_the_full_sequence(lm, prompts, fast):
    model, tok = lm
    out = sample(model, tok, prompts, n=1, max_new_tokens=24, temperature=0, stop=(), fast=fast)
    for i, prompt in enumerate(prompts):
        n = int(out.mask[i].sum())
        assert out.tokens[i, :n].tolist() == _recompute_greedy(model, tok, prompt, 24)


def test_same_seed_same_samples_and_other_seed_differs(lm, prompts):
    model, tok = lm
    a = sample(model, tok, prompts, n=4, max_new_tokens=24, temperature=1.0, seed=3)
    b = sample(model, tok, prompts, n=4, max_new_tokens=24, temperature=1.0, seed=3)
    c = sample(model, tok, prompts, n=4, max_new_tokens=24, temperature=1.0, seed=4)
    assert torch.equal(a.tokens, b.tokens) and a.texts == b.texts
    assert not torch.equal(a.tokens, c.tokens)


def test_temperature_to_zero_equals_greedy(lm, prompts):
    model, tok = lm
    greedy = sample(model, tok, prompts, n=1, max_new_tokens=24, temperature=0)
    cold = sample(model, tok, prompts, n=1, max_new_tokens=24, temperature=1e-4, seed=9)
    nucleus = sample(model, tok, prompts, n=1, max_new_tokens=24, temperature=1.0, top_p=1e-6, seed=9)
    assert torch.equal(greedy.tokens, cold.tokens) and torch.equal(greedy.tokens, nucleus.tokens)


def test_shared_prefill_equals_repeated_prompts(lm, prompts):
    model, tok = lm
    shared = sample(model, tok, prompts[:3], n=3, max_new_tokens=16, temperature=0)
    repeated = sample(model, tok, [p for p in prompts[:3] for _ in range(3)], n=1, max_new_tokens=16, temperature=0)
    assert torch.equal(shared.tokens, repeated.tokens)


def _frequent_char(texts: list[str]) -> str:
    """A character found in about half of the texts: as a stop string, some samples hit it and some don't."""
    chars = {c for t in texts for c in t if c.strip()}
    return min(sorted(chars), key=lambda c: abs(sum(c in t for t in texts) - len(texts) / 2))


def test_stop_strings_and_eos_are_honoured_per_sequence(lm, prompts):
    model, tok = lm
    # What a micro model writes varies with the machine it was trained on, so the extra stop string is
    # chosen from its own free samples rather than hard-coded.
    free = sample(model, tok, prompts, n=8, max_new_tokens=48, temperature=1.0, stop=(), seed=0)
    stop = (*STOP_STRINGS, _frequent_char(free.texts))
    out = sample(model, tok, prompts, n=8, max_new_tokens=48, temperature=1.0, stop=stop, seed=0)
    lengths = out.mask.sum(-1).long().tolist()
    assert len(set(lengths)) > 1  # sequences ended at different steps in one batch
    assert set(out.finish) >= {"stop", "length"}
    for i, (n, why) in enumerate(zip(lengths, out.finish)):
        ids = out.tokens[i, :n].tolist()
        assert (out.tokens[i, n:] == tok.pad_token_id).all() and (out.mask[i, n:] == 0).all()
        full = tok.decode(ids)
        if why == "eos":
            assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]
        elif why == "stop":
            assert any(s in full for s in stop)
            assert not any(s in tok.decode(ids[:-1]) for s in stop)  # stopped at the first one
            assert not any(s in out.texts[i] for s in stop)
        else:
            assert n == 48 and tok.eos_token_id not in ids


def test_logprobs_are_those_of_the_sampled_tokens(lm, prompts):
    model, tok = lm
    out = sample(model, tok, prompts[:2], n=2, max_new_tokens=8, temperature=0.7, seed=1)
    for i in range(4):
        n = int(out.mask[i].sum())
        prompt = out.prompt_ids[i // 2]
        seq = torch.tensor([prompt + out.tokens[i, :n].tolist()])
        with torch.no_grad():
            logits = model(seq).logits[0, len(prompt) - 1 : -1] / 0.7
        want = torch.log_softmax(logits, -1).gather(-1, out.tokens[i, :n, None]).squeeze(-1)
        assert torch.allclose(out.logprobs[i, :n], want, atol=1e-4)


def test_sampling_draws_from_the_tempered_truncated_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]]).repeat(40_000, 1)
    for t in (1.0, 0.5):
        ids, lp = pick_tokens(logits, temperature=t, top_p=1.0, keys=torch.arange(40_000) + int(100_000 * t))
        freq = torch.bincount(ids, minlength=5).float() / len(ids)
        want = torch.softmax(logits[0] / t, -1)
        assert torch.allclose(freq, want, atol=0.01) and freq[4] == 0
        assert torch.allclose(lp, want[ids].log())
    # nucleus 0.7: the two likeliest tokens (0.64 + 0.24 >= 0.7), renormalised
    ids, _ = pick_tokens(logits, temperature=1.0, top_p=0.7, keys=torch.arange(40_000))
    freq = torch.bincount(ids, minlength=5).float() / len(ids)
    p = torch.softmax(logits[0], -1)[:2]
    assert torch.allclose(freq, torch.cat([p / p.sum(), torch.zeros(3)]), atol=0.01)


def test_rms_norm_values_and_gradients():
    # by hand: x = (3, 4): mean square 12.5, so x / rms = (3, 4) / sqrt(12.5) = (0.8485, 1.1314)
    x, w = torch.tensor([[3.0, 4.0]], requires_grad=True), torch.tensor([1.0, 2.0], requires_grad=True)
    y = rms_norm(x, w, 0.0)
    assert torch.allclose(y, torch.tensor([[0.84853, 2.26274]]), atol=1e-5)
    # d(sum y)/dw = x / rms; d(sum y)/dx = (w - n * mean(w * n)) / rms with n = x / rms
    y.sum().backward()
    n, rms = torch.tensor([3.0, 4.0]) / 12.5**0.5, 12.5**0.5
    assert torch.allclose(w.grad, n, atol=1e-6)
    assert torch.allclose(x.grad[0], (torch.tensor([1.0, 2.0]) - n * (torch.tensor([1.0, 2.0]) * n).mean()) / rms)
    # against PyTorch's on a batch, forward (with and without autograd) and backward
    torch.manual_seed(0)
    x, w, gy = torch.randn(3, 5, 16, requires_grad=True), torch.randn(16, requires_grad=True), torch.randn(3, 5, 16)
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    rms_norm(x, w, 1e-5).backward(gy)
    F.rms_norm(x2, (16,), w2, 1e-5).backward(gy)
    assert torch.allclose(x.grad, x2.grad, atol=1e-5) and torch.allclose(w.grad, w2.grad, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(rms_norm(x, w, 1e-5), F.rms_norm(x, (16,), w, 1e-5), atol=1e-6)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x[0, :2].double(), w.double()))


def test_grouped_query_attention_decodes_like_the_full_forward(lm, prompts):
    """Real OLMo-2 configs may share key/value heads; the shared-prefix engine must handle them."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    _, tok = lm
    torch.manual_seed(0)
    cfg = Olmo2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = Olmo2ForCausalLM(cfg).eval()
    out = sample(model, tok, prompts[:3], n=2, max_new_tokens=12, temperature=0, stop=())
    for i in range(6):
        n = int(out.mask[i].sum())
        assert out.tokens[i, :n].tolist() == _recompute_greedy(model, tok, prompts[i // 2], 12)


def test_prompts_can_leave_before_the_first_decode_step(lm, prompts):
    """A sample that ends on its first token (EOS or a stop string) may trigger compaction before any step."""
    from excursions.sampling import Olmo2Engine

    model, tok = lm
    ids = [tok(p).input_ids for p in prompts[:4]]
    L = max(map(len, ids))
    padded = torch.tensor([[tok.pad_token_id] * (L - len(i)) + i for i in ids])
    valid = torch.tensor([[False] * (L - len(i)) + [True] * len(i) for i in ids])
    with torch.no_grad():
        engine = Olmo2Engine(model, max_new_tokens=4)
        first = engine.prefill(padded, valid).argmax(-1)
        kept = engine.select(torch.tensor([1, 2, 3]))  # prompt 0 done at t = 0: a quarter of the prompts
        assert kept.tolist() == [1, 2, 3]
        got = engine.step(first[kept])
        alone = Olmo2Engine(model, max_new_tokens=4)
        alone.prefill(padded[1:], valid[1:])
        want = alone.step(first[1:])
    assert torch.allclose(got, want, atol=1e-5)


def test_a_shard_or_a_chunk_samples_what_the_whole_batch_would(lm, prompts):
    """Per-sample random streams: rollouts sharded over ranks (or split into chunks) equal the whole batch's."""
    model, tok = lm
    whole = sample(model, tok, prompts[:4], n=3, max_new_tokens=12, temperature=1.0, seed=7, stop=())
    chunked = sample(model, tok, prompts[:4], n=3, max_new_tokens=12, temperature=1.0, seed=7, stop=(), max_batch=3)
    shard = sample(model, tok, prompts[2:4], n=3, max_new_tokens=12, temperature=1.0, seed=7, stop=(),
                   prompt_index=[2, 3])
    assert chunked.texts == whole.texts
    assert shard.texts == whole.texts[6:] and whole.texts[:6] != whole.texts[6:]
    assert torch.allclose(shard.logprobs[:, : shard.tokens.shape[1]], whole.logprobs[6:, : shard.tokens.shape[1]],
                          atol=1e-5)
