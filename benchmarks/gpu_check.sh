#!/usr/bin/env bash
# GPU check (issue 7): on a machine with a CUDA GPU, pretrain a small model there, run a short GRPO from it on the
# GPU with the built-in sampler and, where vLLM is installed (pip install -e '.[vllm]'), with the vLLM sampler, and
# print rollout tokens/s and seconds per step for each. A few minutes on one H200.
#
#   bash benchmarks/gpu_check.sh                 # writes runs/gpu-check
#   bash benchmarks/gpu_check.sh /tmp/gpu-check  # elsewhere
set -euo pipefail
OUT=${1:-runs/gpu-check}
PY=${PYTHON:-python}
EXC=${EXCURSIONS:-excursions}
$PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no GPU')"
$PY -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}')"

# a 10M-parameter OLMo-2 on the smoke world, 4M tokens (on the GPU: distributed.device=auto finds it)
$EXC pretrain --preset smoke --out "$OUT/pretrain" --quiet model.size=olmo2_10M pretrain.tokens=4000000 \
    pretrain.batch_size=64 pretrain.seq_len=256 pretrain.lr=1e-3 pretrain.warmup_tokens=200000 pretrain.compile=false
CKPT=$(ls -d "$OUT"/pretrain/checkpoints/step* | tail -1)

# 6 GRPO steps of 64 prompts x 16 rollouts, up to 128 new tokens each, with each sampler available
SAMPLERS=builtin
if $PY -c "import vllm" 2>/dev/null; then SAMPLERS="builtin vllm"; else echo "vLLM not installed: builtin sampler only"; fi
for S in $SAMPLERS; do
  $EXC posttrain "$CKPT" --recipe rl --preset smoke --out "$OUT/rl-$S" --quiet rl.steps=6 rl.prompts_per_step=64 \
      rl.group_size=16 rl.minibatches=2 rl.max_new_tokens=128 rl.track_every=0 rl.save_every=6 distributed.sampler=$S
  $PY - "$OUT/rl-$S/metrics.jsonl" "$S" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])][1:]  # the first step warms up
secs = sum(r["seconds"] for r in rows[1:])
sampling = sum(r["train/sample_seconds"] for r in rows[1:])
toks = rows[-1]["total_rollout_tokens"] - rows[0]["total_rollout_tokens"]
reward = sum(r["train/reward"] for r in rows) / len(rows)
print(f"GRPO on the GPU, {sys.argv[2]} sampler, {len(rows) - 1} steps of 64 prompts x 16 rollouts: "
      f"{secs / (len(rows) - 1):.2f} s / step, rollouts {toks / sampling:,.0f} tokens / s ({sampling / secs:.0%} "
      f"of the step), mean reward {reward:.3f}")
PY
done
