"""The vLLM sampler's side of the contract, on the CPU: a stand-in `vllm` module (vLLM needs CUDA) that keeps
vLLM's interface (LLM.generate with per-request SamplingParams, apply_model, reset_prefix_cache; outputs with
token_ids, logprobs, finish_reason, stop_reason) and samples with the HF model. What it checks is ours:
Samples assembly, finish reasons, per-prompt seeds, and that the engine follows the trained weights."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from excursions.cli import main
from excursions.config import load_config
from excursions.errors import UserError
from excursions.train.posttrain import posttrain

from test_posttrain import POST


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: list = field(default_factory=list)
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    seed: int | None = None


class FakeLLM:
    instances: list = []

    def __init__(self, model, revision=None, **kwargs):
        from transformers import AutoTokenizer

        self.model, self.tok = AutoModelForCausalLM.from_pretrained(model).eval(), AutoTokenizer.from_pretrained(model)
        self.kwargs, self.requests, self.syncs = kwargs, [], 0
        FakeLLM.instances.append(self)

    def apply_model(self, fn):
        self.syncs += 1
        return [fn(self)]

    def load_weights(self, weights):  # the engine's model.load_weights (called through apply_model)
        self.model.load_state_dict(dict(weights))

    def reset_prefix_cache(self):
        pass

    @torch.no_grad()
    def generate(self, prompts, params, use_tqdm=True):
        self.requests.append([p.seed for p in params])
        outs = []
        for prompt, p in zip(prompts, params):
            completions = []
            g = torch.Generator().manual_seed(p.seed)
            for _ in range(p.n):
                ids, lps, finish, reason = list(prompt["prompt_token_ids"]), [], "length", None
                for _ in range(p.max_tokens):
                    logp = self.model(torch.tensor([ids])).logits[0, -1].float().div(p.temperature).log_softmax(-1)
                    t = int(torch.multinomial(logp.exp(), 1, generator=g))
                    ids.append(t)
                    lps.append({t: types.SimpleNamespace(logprob=float(logp[t]))})
                    text = self.tok.decode(ids[len(prompt["prompt_token_ids"]):])
                    if t == self.tok.eos_token_id:
                        finish = "stop"
                        break
                    if hit := next((s for s in p.stop if s in text), None):
                        finish, reason = "stop", hit
                        break
                new = ids[len(prompt["prompt_token_ids"]):]
                completions.append(types.SimpleNamespace(token_ids=new, logprobs=lps, finish_reason=finish,
                                                         stop_reason=reason))
            outs.append(types.SimpleNamespace(outputs=completions))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.instances = []
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM, SamplingParams=SamplingParams))
    monkeypatch.setattr("excursions.vllm_backend.cuda_available", lambda: True)
    return FakeLLM


@pytest.fixture(scope="module")
def source(micro_run):
    return sorted((micro_run / "checkpoints").glob("step*"))[-1]


def test_vllm_samples_follow_the_samplers_contract(fake_vllm, source, micro_run):
    from transformers import AutoTokenizer

    from excursions.data.problems import STOP_STRINGS, format_prompt, read_jsonl
    from excursions.sampling import sample
    from excursions.vllm_backend import VLLMSampler

    tok = AutoTokenizer.from_pretrained(source)
    prompts = [format_prompt(p.question) for p in read_jsonl(micro_run / "world/gsm/test.jsonl")[:3]]
    engine = VLLMSampler(str(source), memory=0.25)
    assert engine.llm.kwargs["gpu_memory_utilization"] == 0.25
    s = sample(engine, tok, prompts, n=2, max_new_tokens=12, temperature=1.0, seed=7)
    assert s.tokens.shape[0] == 6 and s.n == 2 and len(s.texts) == 6
    for j in range(6):
        k = int(s.lengths[j])
        assert k >= 1 and s.mask[j, :k].all() and not s.mask[j, k:].any()
        text = tok.decode(s.tokens[j, :k].tolist(), skip_special_tokens=True)
        assert s.finish[j] in ("eos", "stop", "length") and (s.finish[j] != "stop" or
                                                              any(x in text for x in STOP_STRINGS))
        assert text.startswith(s.texts[j]) and not any(x in s.texts[j] for x in STOP_STRINGS)
        assert s.finish[j] != "length" or k == 12
    # one seed per prompt, from (seed, the prompt's index): a shard asks for the same seeds as the whole batch
    whole = engine.llm.requests[-1]
    sample(engine, tok, prompts[1:], n=2, max_new_tokens=4, seed=7, prompt_index=[1, 2])
    assert engine.llm.requests[-1] == whole[1:] and len(set(whole)) == 3
    sample(engine, tok, prompts, n=2, max_new_tokens=4, seed=8)
    assert engine.llm.requests[-1] != whole


def test_rl_with_the_vllm_sampler_pushes_every_update_to_the_engine(fake_vllm, source, micro_run, micro_overrides,
                                                                    tmp_path):
    cfg = load_config("smoke", overrides=micro_overrides + POST + ["rl.until=steps", "distributed.sampler=vllm",
                                                                    "distributed.device=cpu",
                                                                    "rl.track_every=0"])
    final = posttrain(str(source), "rl", cfg, tmp_path / "rl", micro_run / "world", progress=False)
    engine = fake_vllm.instances[-1]
    assert engine.syncs == cfg.rl.steps and len(engine.requests) == cfg.rl.steps  # one rollout, one push per step
    trained = load_file(final / "model.safetensors")
    held = engine.model.state_dict()
    assert all(torch.equal(trained[k], held[k]) for k in trained)  # the engine holds the final weights
    rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    tokens = [0] + [r["total_rollout_tokens"] for r in rows]
    assert len(rows) == cfg.rl.steps and all(b > a for a, b in zip(tokens, tokens[1:]))


def test_eval_with_the_vllm_sampler_samples_on_the_engine(fake_vllm, source, micro_run, tmp_path):
    code = main(["eval", str(source), "--task", "gsm", "--n", "2", "--k", "1", "--limit", "3", "--shots", "0",
                 "--world", str(micro_run / "world"), "--out", str(tmp_path), "--quiet", "eval.max_new_tokens=8",
                 "distributed.sampler=vllm", "distributed.device=cpu"])
    assert code == 0 and len(fake_vllm.instances) == 1 and len(fake_vllm.instances[0].requests[0]) == 3
    assert json.loads((tmp_path / "gsm-0shot.json").read_text())["problems"] == 3


def test_vllm_sampler_without_the_extra_is_one_clear_error(monkeypatch, source, micro_run, post_cfg_vllm, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without the extra gives: ImportError
    with pytest.raises(UserError, match=r"pip install -e '\.\[vllm\]'"):
        posttrain(str(source), "rl", post_cfg_vllm, tmp_path / "rl", micro_run / "world", progress=False)
    assert not (tmp_path / "rl").exists()  # nothing written


@pytest.fixture
def post_cfg_vllm(micro_overrides):
    return load_config("smoke", overrides=micro_overrides + POST + ["distributed.sampler=vllm"])
