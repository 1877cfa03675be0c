#!/usr/bin/env bash
# The prepared GPU run of benchmarks/perf.py: one command, about 2-4 minutes on one
# H100/H200 (hard limit 9.5 minutes). Never needed by the tests.
#
# What it measures (random-weight ViT-B/16 shape, 224 px):
#   1. scoring throughput (images/s) and peak memory (torch.cuda.max_memory_allocated) of
#      SNIP, ReFer and AFR in float32 and bfloat16 at batch 64, 128 and 256, against one
#      plain training step (forward, backward, AdamW step) at the same batch and dtype;
#      AFR also with gradient checkpointing;
#   2. where the scoring time goes (torch.profiler, GPU kernel time per stage);
#   3. a short masked fine-tuning run: a Trainer (bf16 autocast, batch 64) with and without
#      PruningMaskCallback on a 90%-pruned model, step time and pruned weights after.
# Results, with the card name: ${OUT:-benchmarks/results}/perf-gpu.md and perf-gpu.json.
#
#   bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-benchmarks/results}"
mkdir -p "$out_dir"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'No CUDA device.')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | tee "$out_dir/gpu-card.txt" || true
timeout 570 python benchmarks/perf.py --suite gpu --device cuda --dtype bfloat16 \
    --output "$out_dir/perf-gpu.md"
