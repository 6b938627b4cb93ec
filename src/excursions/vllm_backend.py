"""vLLM as the sampler (`distributed.sampler=vllm`, CUDA, `pip install -e '.[vllm]'`): GRPO rollouts and math
evaluation on a vLLM engine in this process, the same `Samples` as the built-in sampler.

    engine = VLLMSampler("runs/tiny/checkpoints/step001465-tokens12001280")
    s = sample(engine, tok, prompts, n=16, max_new_tokens=128, temperature=1.0, seed=step)   # as with a model
    engine.sync(policy)                                      # after each optimizer step: push the new weights

The engine runs in this process (no worker process), as TRL's colocate mode does, so the trainer's weights
are loaded straight into its model after each update: no checkpoint round trip. It takes
`distributed.vllm_memory` of the GPU's memory; the trainer keeps the rest.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from excursions.data.problems import encode_prompt
from excursions.errors import UserError
from excursions.sampling import Samples, mix64, sample_keys, to_samples


def require_vllm():
    try:
        import vllm
    except ImportError:
        raise UserError("distributed.sampler=vllm needs vLLM (CUDA only): pip install -e '.[vllm]'; "
                        "or leave distributed.sampler=builtin") from None
    return vllm


def cuda_available() -> bool:  # vLLM's wheels run on CUDA GPUs only
    return torch.cuda.is_available()


class VLLMSampler:
    """A vLLM engine over one checkpoint, usable wherever `sample` takes a model."""

    def __init__(self, path: str, revision: str | None = None, memory: float = 0.3, max_model_len: int = 4096):
        vllm = require_vllm()
        if not cuda_available():
            raise UserError("distributed.sampler=vllm needs a CUDA GPU; torch sees none (use the builtin sampler)")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: weights load in
        self.params = vllm.SamplingParams
        self.llm = vllm.LLM(model=path, revision=revision, gpu_memory_utilization=memory, max_model_len=max_model_len,
                            enable_prefix_caching=True, trust_remote_code=False, seed=0)

    def sync(self, model) -> None:
        """Load `model`'s current weights into the engine (names as in its HF state dict) and drop cached prefixes."""
        weights = [(name, t.detach()) for name, t in model.state_dict().items()]
        if hasattr(self.llm, "apply_model"):
            self.llm.apply_model(lambda m: m.load_weights(weights))
        else:  # older engines: the driver worker's model, as TRL reaches it
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        self.llm.reset_prefix_cache()

    def vllm_sample(self, tok, prompts: Sequence[str], n: int, max_new_tokens: int, temperature: float, top_p: float,
                    stop: Sequence[str], seed: int, prompt_index: Sequence[int] | None) -> Samples:
        """`sample`'s contract: n completions per prompt, prompt-major, each prompt seeded by (seed, its index)
        so that a shard of a batch samples what the whole would; completions keep EOS / the stop string."""
        index = list(range(len(prompts))) if prompt_index is None else list(prompt_index)
        prompt_ids = [encode_prompt(tok, p) for p in prompts]
        keys = mix64(sample_keys(seed, torch.tensor(index)))  # one request seed per prompt
        params = [self.params(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, stop=list(stop),
                              include_stop_str_in_output=True, logprobs=0, seed=int(k) & 0x7FFFFFFF) for k in keys]
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        rows = []
        for out in outs:
            for c in out.outputs:
                # vLLM's "stop" covers EOS (stop_reason None) and a stop string (stop_reason the string)
                finish = "length" if c.finish_reason == "length" else ("eos" if c.stop_reason is None else "stop")
                lps = [step[t].logprob for t, step in zip(c.token_ids, c.logprobs or [])] or [0.0] * len(c.token_ids)
                rows.append((list(c.token_ids), lps, finish))
        return to_samples(tok, prompt_ids, rows, n, stop)
