#!/usr/bin/env python
"""Prune a pretrained vision transformer with SNIP / ReFer / AFR, then fine-tune it sparse with `Trainer`.

Shaped like transformers' `examples/pytorch/image-classification/run_image_classification.py`.
The pruned weights stay exactly zero through training (gradients, weights and optimizer state
are masked by `PruningMaskCallback`), and every checkpoint carries its masks.

Examples:
    python scripts/finetune.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset_name cifar10 --image_column_name img --method afr --sparsity 0.9 \\
        --output_dir vit-afr90-cifar10 --do_train --do_eval --learning_rate 2e-5
    accelerate launch scripts/finetune.py ...        # one or several GPUs
    torchrun --nproc_per_node 2 scripts/finetune.py ...  # several CPU processes (gloo)
    accelerate launch --config_file fsdp2.yaml scripts/finetune.py ...  # FSDP2 on GPUs
    python scripts/finetune.py args.json --output_dir other  # a .json/.yaml file, then overrides

Distillation: `--teacher_model_name_or_path` (a classifier with the same labels, e.g. the
dense model fine-tuned on the task) trains with DeiT's soft distillation loss
(`--distillation_alpha`, `--distillation_temperature`; `hf_afr.distillation`).

Masks: scored on `--num_batches` seeded batches of the training set (evaluation transforms),
split over the processes with the gradients summed, so every process count gives the masks of
one process. A checkpoint already pruned by hf_afr keeps its masks (no scoring; `--skip_pruning`
makes that a requirement); `--resume_from_checkpoint` reuses the pruning saved in the checkpoint
(masks, and the per-layer widths of a structurally pruned model).
Errors are one line (`--debug` shows the traceback).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from transformers import TrainingArguments, set_seed
from transformers.utils import logging

from hf_afr.distributed import check_supported_training_args
from hf_afr.enforcement import MaskEnforcer
from hf_afr.sharding import has_dtensor_parameters
from hf_afr.workflow.arguments import (
    DataTrainingArguments,
    DistillationArguments,
    ModelArguments,
    PruningArguments,
    parse_arguments,
    pruner_config,
)
from hf_afr.workflow.data import label_maps, load_image_dataset, prepare_splits
from hf_afr.workflow.outputs import check_output_dir, results_files
from hf_afr.workflow.results import (
    accuracy_metric_fn,
    load_accuracy_metric,
    push_pruned_model,
    training_settings,
)
from hf_afr.workflow.resuming import pruning_callbacks, resolve_resume_checkpoint
from hf_afr.workflow.runner import run_script
from hf_afr.workflow.steps import (
    attach_image_processor,
    card_details,
    describe_masks,
    freeze_unused_parameters,
    load_pruner,
    score_and_prune,
    setup_logging,
    weight_sparsity_report,
    with_measured_speed,
)
from hf_afr.workflow.teacher import trainer_with_teacher
from hf_afr.workflow.transforms import ImageTransform, collate_fn, undecoded

logger = logging.get_logger("hf_afr.scripts")


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = (
        ModelArguments,
        DataTrainingArguments,
        PruningArguments,
        DistillationArguments,
        TrainingArguments,
    )
    model_args, data_args, pruning_args, distill_args, training_args = parse_arguments(
        arguments, argv, prog="finetune.py"
    )
    config = pruner_config(pruning_args, training_args)
    setup_logging(training_args.log_level, training_args.should_log, not training_args.disable_tqdm)
    check_supported_training_args(training_args)
    if training_args.world_size > 1:
        logger.info(f"world size: {training_args.world_size}, device: {training_args.device}.")
    # The transforms read the raw image column. The pruner pushes once at the end: the Trainer
    # neither pushes nor keeps the token (it would pickle it into training_args.bin).
    training_args.remove_unused_columns = False
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    hub_token, training_args.hub_token = training_args.hub_token, None
    set_seed(training_args.seed)
    resume = training_args.resume_from_checkpoint if training_args.do_train else None
    check_output_dir(training_args.output_dir, model_args.overwrite_output_dir, resume is not None)

    # Step 1: data, validated before anything is written or trained.
    with training_args.main_process_first(desc="loading the dataset"):  # one cache writer
        dataset = load_image_dataset(data_args, model_args.cache_dir, hub_token)
        dataset = prepare_splits(dataset, data_args, training_args.seed, training_args.do_eval)
    label2id, id2label = label_maps(dataset["train"], data_args.label_column_name)
    checkpoint = resolve_resume_checkpoint(resume, training_args.output_dir)

    # Step 2: model, image processor and transforms.
    pruner = load_pruner(model_args, config, id2label, checkpoint)
    image_processor = attach_image_processor(pruner, model_args)
    columns = (data_args.image_column_name, data_args.label_column_name)
    train_transform = ImageTransform(image_processor, *columns, augment=data_args.horizontal_flip)
    eval_transform = ImageTransform(image_processor, *columns)
    for split in dataset:
        dataset[split] = undecoded(dataset[split], data_args.image_column_name)

    # Step 3: score and prune (unless the masks are reused).
    if not pruner.is_pruned:
        batch_size = data_args.scoring_batch_size or training_args.per_device_train_batch_size
        score_and_prune(
            pruner,
            dataset["train"],
            eval_transform,
            batch_size,
            training_args.device,
            show_progress=training_args.should_log and not training_args.disable_tqdm,
        )
    logger.info(describe_masks(pruner))

    # Step 4: sparse fine-tuning; the callback keeps the masks exact and saves them.
    dataset["train"].set_transform(train_transform)
    if "validation" in dataset:
        dataset["validation"].set_transform(eval_transform)
    if training_args.world_size > 1 and training_args.ddp_find_unused_parameters is None:
        # DDP then needs no search for unused parameters at every step.
        freeze_unused_parameters(pruner.model, collate_fn([dataset["train"][0]]))
        training_args.ddp_find_unused_parameters = False
    metric = load_accuracy_metric(model_args.cache_dir) if training_args.do_eval else None
    trainer_cls, teacher_kwargs = trainer_with_teacher(
        distill_args, pruner.model.config, data_args.horizontal_flip, model_args.cache_dir
    )
    trainer = trainer_cls(
        model=pruner.model,
        args=training_args,
        train_dataset=dataset["train"] if training_args.do_train else None,
        eval_dataset=dataset["validation"] if training_args.do_eval else None,
        processing_class=image_processor,
        data_collator=collate_fn,
        compute_metrics=accuracy_metric_fn(metric),
        # masks stay exact; every checkpoint records the pruning (masks and/or widths)
        callbacks=pruning_callbacks(pruner),
        **teacher_kwargs,
    )
    metrics, results = {}, {}  # the results files are saved with the model, in one save
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.log_metrics("train", train_result.metrics)
        results["train"] = train_result.metrics
        metrics.update(train_result.metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        results["eval"] = eval_metrics
        metrics.update(eval_metrics)

    # Step 5: check the sparsity, save and push.
    if pruner.masks:
        MaskEnforcer(pruner.model, pruner.masks).verify()
    sparsity_metrics = {
        "mask_sparsity": pruner.sparsity_report().sparsity,
        "weight_sparsity": weight_sparsity_report(pruner).sparsity,
    }
    results["pruning"] = sparsity_metrics
    if training_args.should_save:
        card = card_details(
            "finetune.py",
            argv,
            data_args.dataset_name,
            model_args.model_name_or_path,
            training_settings(training_args, len(dataset["train"]))
            if training_args.do_train
            else None,
            metrics.get("eval_accuracy"),
        )
        card = with_measured_speed(card, pruner.model)
        fmt = model_args.checkpoint_format
        state = trainer.state if training_args.do_train else None
        files = results_files(results, state)
        pruner.save_pretrained(training_args.output_dir, fmt, card_data=card, extra_files=files)
        logger.info(f"Saved the pruned model and its model card to {training_args.output_dir}.")
        if push_to_hub:
            push_pruned_model(
                pruner,
                training_args.hub_model_id,
                training_args.output_dir,
                fmt,
                "Pruned and fine-tuned with hf_afr",
                card,
                token=hub_token,
                private=training_args.hub_private_repo,
            )
    elif has_dtensor_parameters(pruner.model):  # FSDP2: every process takes part in the gather
        pruner.save_pretrained(training_args.output_dir, model_args.checkpoint_format)
    return {**metrics, **sparsity_metrics}


if __name__ == "__main__":
    sys.exit(run_script("finetune.py", main))
