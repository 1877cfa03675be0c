#!/usr/bin/env python
"""Score and prune a pretrained ViT with SNIP / ReFer / AFR, print the sparsity table, save.

No training: the same arguments as `scripts/finetune.py` (the training ones are ignored but
`--seed`, `--per_device_train_batch_size`, `--output_dir` and the Hub options apply). The saved
folder is a standard transformers checkpoint plus `pruner_config.json` and the masks; fine-tune
it later with `scripts/finetune.py --model_name_or_path <output_dir>`.

Examples:
    python scripts/prune.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset_name cifar10 --image_column_name img --method afr --sparsity 0.9 \\
        --num_batches 8 --output_dir vit-afr90
    torchrun --nproc_per_node 2 scripts/prune.py ...  # scoring batches split over processes
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from transformers import AutoImageProcessor, set_seed
from transformers.utils import logging

from hf_afr.distributed import check_supported_training_args
from hf_afr.io_utils import atomic_write_text
from hf_afr.training import (
    ImageTransform,
    card_kwargs,
    label_maps,
    load_image_dataset,
    load_pruner,
    parse_script_args,
    prepare_splits,
    push_pruned_model,
    save_pruned_model,
    score_and_prune,
    setup_logging,
)

logger = logging.get_logger("hf_afr.prune")


def main(argv: Sequence[str] | None = None) -> dict:
    model_args, data_args, pruner_config, training_args = parse_script_args(argv)
    setup_logging(training_args)
    check_supported_training_args(training_args)
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="loading the dataset"):  # one cache writer
        dataset = load_image_dataset(data_args, model_args.cache_dir, training_args.hub_token)
        dataset = prepare_splits(dataset, data_args, training_args.seed, need_validation=False)
    _, id2label = label_maps(dataset["train"], data_args.label_column_name)
    image_processor = AutoImageProcessor.from_pretrained(
        model_args.image_processor_name or model_args.model_name_or_path,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
    )
    transform = ImageTransform(
        image_processor, data_args.image_column_name, data_args.label_column_name
    )
    pruner = load_pruner(model_args, pruner_config, id2label)
    if not pruner.masks:
        batch_size = data_args.scoring_batch_size or training_args.per_device_train_batch_size
        score_and_prune(pruner, dataset["train"], transform, batch_size, training_args)

    report = pruner.sparsity_report()
    results = {"mask_sparsity": report.sparsity, "method": pruner.config.method, **report.to_dict()}
    if training_args.should_save:
        print(report)
        card = card_kwargs("prune.py", argv, data_args)
        fmt = model_args.checkpoint_format
        save_pruned_model(pruner, image_processor, training_args.output_dir, fmt, card)
        path = os.path.join(training_args.output_dir, "pruning_results.json")
        atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
        logger.info(f"Saved the pruned model to {training_args.output_dir}.")
        if training_args.push_to_hub:
            message = f"Pruned with hf_afr ({pruner.config.method})"
            push_pruned_model(pruner, image_processor, training_args, fmt, message, card)
    return results


if __name__ == "__main__":
    main()
