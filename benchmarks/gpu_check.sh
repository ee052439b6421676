#!/usr/bin/env bash
# One prepared GPU check (≤ 8 minutes on an H200): the perplexity engine on a randomly initialised
# Llama-2-7B-shaped model (bf16, SDPA causal path, no mask tensor) at 32k, 64k and 128k tokens.
# Prints peak GB (torch.cuda.max_memory_allocated), tokens/s and MFU per length
# (FLOPs = 2·N·T + 2·n_layers·T²·d_attn, see benchmarks/bench_perplexity.py; peak 989 TFLOP/s bf16).
# Target: 128k fits with peak ≤ 40 GB and ≥ 35% MFU. Each length is its own process, so an OOM at
# one length is reported and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for length in 32k 64k 128k; do
  echo "=== random:llama2-7b, yarn:32, ${length} tokens ==="
  timeout 170 "$PY" benchmarks/bench_perplexity.py --model random:llama2-7b --method yarn:32 \
      --lengths "$length" --phases engine --dtype bfloat16 --device cuda --attn-impl "${ATTN_IMPL:-sdpa}" \
      2>&1 | grep -E "phase|engine|failed|Error" || echo "(${length}: failed or timed out)"
done
