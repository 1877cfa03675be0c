#!/usr/bin/env bash
# The prepared GPU run of benchmarks/perf.py and benchmarks/inference.py: one command on one
# CUDA card, about 4-7 minutes on one H100/H200. Never needed by the tests.
#
#   bash benchmarks/gpu.sh            # results in ${OUT:-benchmarks/results}
#
# Each benchmark is one `step` line at the end, with its own timeout; a failing step is
# reported and the next ones still run, and the script exits non-zero if any step failed.
# To add a benchmark, append a `step timeout <s> python benchmarks/<script>.py ...` line and
# keep the sum of the timeouts under the machine's limit for one command (10 minutes).
#
# benchmarks/perf.py --suite gpu (about 2-4 minutes on one H100/H200; random-weight
# ViT-B/16 shape, 224 px; each finished section is written at once, so a timeout keeps them):
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
#   5. structured pruning (benchmarks/structured_speed.py): ViT-B/16 shape, dense vs heads+mlp
#      at 50% and 75%, bfloat16, inference at batch 64 and 256 and a fine-tuning step at 64.
#   6. FSDP2 through accelerate (`fsdp_version: 2`, fully_shard per ViTLayer): the quickstart
#      fine-tuning on one GPU; finetune.py verifies the masks after training (a violation
#      fails the step) and saves the gathered full checkpoint. accelerate runs no FSDP on CPU.
# Results, with the card name: ${OUT:-benchmarks/results}/perf-gpu.{md,json} and
# inference-gpu.{md,json}, structured_speed-gpu.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-benchmarks/results}"
mkdir -p "$out_dir"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'No CUDA device.')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | tee "$out_dir/gpu-card.txt" || true

failed=0
step() {
    echo "[gpu.sh] $*" >&2
    "$@" || { echo "[gpu.sh] FAILED (exit $?): $*" >&2; failed=1; }
}

step timeout 420 python benchmarks/perf.py --suite gpu --device cuda --dtype bfloat16 \
    --output "$out_dir/perf-gpu.md"
[ -d outputs/tiny-vit-glyphs-afr90-digits ] \
    || step timeout 150 python scripts/finetune.py scripts/quickstart.json
step timeout 300 python benchmarks/inference.py --device cuda --dtype float16 --batch_sizes 64 256 \
    --sections vit main --output_dir "$out_dir" --output_name inference-gpu
step timeout 120 python benchmarks/structured_speed.py --device cuda --dtype bfloat16 \
    --batch_sizes 64 256 --train_batch_size 64 --rounds 5 --output "$out_dir/structured_speed-gpu.md"

step timeout 240 accelerate launch --num_processes 1 --use_fsdp --fsdp_version 2 \
    --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap ViTLayer \
    --fsdp_state_dict_type FULL_STATE_DICT --mixed_precision bf16 \
    scripts/finetune.py scripts/quickstart.json --use_cpu false \
    --output_dir "$out_dir/fsdp2-quickstart" --save_strategy epoch

exit "$failed"
