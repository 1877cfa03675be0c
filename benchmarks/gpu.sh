#!/usr/bin/env bash
# The prepared GPU run of benchmarks/perf.py and benchmarks/inference.py: one command, about
# 4-7 minutes on one H100/H200 (hard limits 9.5 + 5 minutes). Never needed by the tests.
#
# What it measures (random-weight ViT-B/16 shape, 224 px):
#   1. scoring throughput (images/s) and peak memory (torch.cuda.max_memory_allocated) of
#      SNIP, ReFer and AFR in float32 and bfloat16 at batch 64, 128 and 256, against one
#      plain training step (forward, backward, AdamW step) at the same batch and dtype;
#      AFR also with gradient checkpointing;
#   2. where the scoring time goes (torch.profiler, GPU kernel time per stage);
#   3. a short masked fine-tuning run: a Trainer (bf16 autocast, batch 64) with and without
#      PruningMaskCallback on a 90%-pruned model, step time and pruned weights after.
#   4. inference of pruned models, float16, batch 64 and 256 (benchmarks/inference.py): a
#      ViT-B/16 shape with random and AFR-like masks at 90/95/98% and with 2:4 masks, and the
#      main job's output (created first if missing), dense vs shrunk vs converted. 2:4 layers use
#      torch.sparse.to_sparse_semi_structured where this torch and GPU provide it; where they do
#      not, the table says why and the layers stay dense (the run does not fail).
# Results, with the card name: ${OUT:-benchmarks/results}/perf-gpu.{md,json} and
# inference-gpu.{md,json}.
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
[ -d outputs/tiny-vit-glyphs-afr90-digits ] \
    || timeout 240 python scripts/finetune.py scripts/quickstart.json > "$out_dir/finetune.log" 2>&1 \
    || echo "The main job's output could not be created; see $out_dir/finetune.log."
timeout 300 python benchmarks/inference.py --device cuda --dtype float16 --batch_sizes 64 256 \
    --sections vit main --output_dir "$out_dir" --output_name inference-gpu
