#!/usr/bin/env python
"""Score and prune a pretrained vision transformer with SNIP / ReFer / AFR, print the sparsity table, save.

No training, so no training options: the model, data and pruning arguments of
`scripts/finetune.py`, plus `--output_dir`, `--seed`, `--use_cpu` and the Hub options. The saved
folder is a standard transformers checkpoint plus `pruner_config.json` and the masks; fine-tune
it later with `scripts/finetune.py --model_name_or_path <output_dir>`.

Examples:
    python scripts/prune.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset_name cifar10 --image_column_name img --method afr --sparsity 0.9 \\
        --num_batches 8 --scoring_batch_size 32 --output_dir vit-afr90
    torchrun --nproc_per_node 2 scripts/prune.py ...  # scoring batches split over processes

Errors are one line (`--debug` shows the traceback).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from accelerate import PartialState
from transformers import set_seed
from transformers.utils import logging

from hf_afr.workflow.arguments import (
    DataTrainingArguments,
    ModelArguments,
    PruneArguments,
    PruningArguments,
    parse_arguments,
    pruner_config,
)
from hf_afr.workflow.data import label_maps, load_image_dataset, prepare_splits
from hf_afr.workflow.outputs import check_output_dir
from hf_afr.workflow.results import push_pruned_model
from hf_afr.workflow.runner import run_script
from hf_afr.workflow.steps import (
    attach_image_processor,
    card_details,
    describe_masks,
    load_pruner,
    score_and_prune,
    setup_logging,
    with_measured_speed,
)
from hf_afr.workflow.transforms import ImageTransform, undecoded

logger = logging.get_logger("hf_afr.scripts")

DEFAULT_SCORING_BATCH_SIZE = 8


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = (ModelArguments, DataTrainingArguments, PruningArguments, PruneArguments)
    model_args, data_args, pruning_args, run_args = parse_arguments(
        arguments, argv, prog="prune.py"
    )
    config = pruner_config(pruning_args, run_args)
    state = PartialState(cpu=run_args.use_cpu)
    setup_logging(run_args.log_level, state.is_main_process, not run_args.disable_tqdm)
    set_seed(run_args.seed)
    check_output_dir(run_args.output_dir, model_args.overwrite_output_dir)

    with state.main_process_first():  # one cache writer
        dataset = load_image_dataset(data_args, model_args.cache_dir, run_args.hub_token)
        dataset = prepare_splits(dataset, data_args, run_args.seed, need_validation=False)
    _, id2label = label_maps(dataset["train"], data_args.label_column_name)
    pruner = load_pruner(model_args, config, id2label)
    image_processor = attach_image_processor(pruner, model_args)
    transform = ImageTransform(
        image_processor, data_args.image_column_name, data_args.label_column_name
    )
    if not pruner.is_pruned:
        train = undecoded(dataset["train"], data_args.image_column_name)
        batch_size = data_args.scoring_batch_size or DEFAULT_SCORING_BATCH_SIZE
        show_progress = state.is_main_process and not run_args.disable_tqdm
        score_and_prune(pruner, train, transform, batch_size, state.device, show_progress)
    logger.info(describe_masks(pruner))

    report = pruner.sparsity_report()
    results = {"mask_sparsity": report.sparsity, "method": pruner.config.method, **report.to_dict()}
    if state.is_main_process:
        print(report)
        card = card_details("prune.py", argv, data_args.dataset_name, model_args.model_name_or_path)
        card = with_measured_speed(card, pruner.model)
        fmt = model_args.checkpoint_format
        text = json.dumps(results, indent=2, sort_keys=True) + "\n"
        files = {"pruning_results.json": text}  # saved with the model, in one save
        pruner.save_pretrained(run_args.output_dir, fmt, card_data=card, extra_files=files)
        logger.info(f"Saved the pruned model and its model card to {run_args.output_dir}.")
        if run_args.push_to_hub:
            push_pruned_model(
                pruner,
                run_args.hub_model_id,
                run_args.output_dir,
                fmt,
                f"Pruned with hf_afr ({pruner.config.method})",
                card,
                token=run_args.hub_token,
                private=run_args.hub_private_repo,
            )
    return results


if __name__ == "__main__":
    sys.exit(run_script("prune.py", main))
