#!/usr/bin/env python
"""Prune a pretrained ViT with SNIP / ReFer / AFR, then fine-tune it sparse with `Trainer`.

Shaped like transformers' `examples/pytorch/image-classification/run_image_classification.py`.
The pruned weights stay exactly zero through training (gradients, weights and optimizer state
are masked by `PruningMaskCallback`), and every checkpoint carries its masks.

Examples:
    python scripts/finetune.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset_name cifar10 --image_column_name img --method afr --sparsity 0.9 \\
        --output_dir vit-afr90-cifar10 --do_train --do_eval --learning_rate 2e-5
    accelerate launch scripts/finetune.py ...        # one or several GPUs
    torchrun --nproc_per_node 2 scripts/finetune.py ...  # several CPU processes (gloo)
    python scripts/finetune.py args.json             # all arguments from a file

Masks: scored on `--num_batches` seeded batches of the training set (evaluation transforms),
split over the processes with the gradients summed, so every process count gives the masks of
one process. A checkpoint already pruned by hf_afr keeps its masks (no scoring; `--skip_pruning`
makes that a requirement); `--resume_from_checkpoint` reuses the masks saved in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import AutoImageProcessor, Trainer, set_seed
from transformers.utils import logging

from hf_afr.distributed import check_supported_training_args
from hf_afr.enforcement import MaskEnforcer, PruningMaskCallback
from hf_afr.training import (
    ImageTransform,
    accuracy_metric_fn,
    card_kwargs,
    collate_fn,
    label_maps,
    load_accuracy_metric,
    load_image_dataset,
    load_pruner,
    parse_script_args,
    prepare_splits,
    push_pruned_model,
    resolve_resume_checkpoint,
    save_pruned_model,
    score_and_prune,
    setup_logging,
    weight_sparsity_report,
)

logger = logging.get_logger("hf_afr.finetune")


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    model_args, data_args, pruner_config, training_args = parse_script_args(argv)
    setup_logging(training_args)
    logger.warning(
        f"Process rank: {training_args.process_index}, device: {training_args.device}, "
        f"world size: {training_args.world_size}, bf16: {training_args.bf16}, "
        f"fp16: {training_args.fp16}"
    )
    check_supported_training_args(training_args)
    # The transforms read the raw image column. The pruner pushes once at the end: the Trainer
    # neither pushes nor keeps the token (it would pickle it into training_args.bin).
    training_args.remove_unused_columns = False
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    hub_token, training_args.hub_token = training_args.hub_token, None
    set_seed(training_args.seed)

    # Step 1: data, validated before anything is written or trained.
    with training_args.main_process_first(desc="loading the dataset"):  # one cache writer
        dataset = load_image_dataset(data_args, model_args.cache_dir, hub_token)
        dataset = prepare_splits(dataset, data_args, training_args.seed, training_args.do_eval)
    label2id, id2label = label_maps(dataset["train"], data_args.label_column_name)
    checkpoint = resolve_resume_checkpoint(training_args)

    # Step 2: model, image processor and transforms.
    image_processor = AutoImageProcessor.from_pretrained(
        model_args.image_processor_name or model_args.model_name_or_path,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
    )
    columns = (data_args.image_column_name, data_args.label_column_name)
    train_transform = ImageTransform(image_processor, *columns, augment=True)
    eval_transform = ImageTransform(image_processor, *columns)
    pruner = load_pruner(model_args, pruner_config, id2label, checkpoint)
    logger.info(f"Weight sparsity before pruning: {weight_sparsity_report(pruner).sparsity:.2%}")

    # Step 3: score and prune (unless the masks are reused).
    if not pruner.masks:
        batch_size = data_args.scoring_batch_size or training_args.per_device_train_batch_size
        score_and_prune(pruner, dataset["train"], eval_transform, batch_size, training_args)
    logger.info(f"Pruning masks ({pruner.config.method}):\n{pruner.sparsity_report()}")

    # Step 4: sparse fine-tuning; the callback keeps the masks exact and saves them.
    dataset["train"].set_transform(train_transform)
    if "validation" in dataset:
        dataset["validation"].set_transform(eval_transform)
    metric = load_accuracy_metric(model_args.cache_dir) if training_args.do_eval else None
    trainer = Trainer(
        model=pruner.model,
        args=training_args,
        train_dataset=dataset["train"] if training_args.do_train else None,
        eval_dataset=dataset["validation"] if training_args.do_eval else None,
        processing_class=image_processor,
        data_collator=collate_fn,
        compute_metrics=accuracy_metric_fn(metric),
        callbacks=[PruningMaskCallback.from_pruner(pruner)],
    )
    metrics = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        metrics.update(train_result.metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    # Step 5: check the sparsity, save and push.
    MaskEnforcer(pruner.model, pruner.masks).verify()
    measured = weight_sparsity_report(pruner)
    logger.info(f"Weight sparsity after training:\n{measured}")
    sparsity_metrics = {"mask_sparsity": pruner.sparsity_report().sparsity}
    sparsity_metrics["weight_sparsity"] = measured.sparsity
    trainer.save_metrics("pruning", sparsity_metrics)
    if training_args.should_save:
        card = card_kwargs("finetune.py", argv, data_args, metrics.get("eval_accuracy"))
        fmt = model_args.checkpoint_format
        save_pruned_model(pruner, image_processor, training_args.output_dir, fmt, card)
        logger.info(f"Saved the pruned model to {training_args.output_dir}.")
        if push_to_hub:
            message = "Pruned and fine-tuned with hf_afr"
            push_pruned_model(pruner, image_processor, training_args, fmt, message, card, hub_token)
    return {**metrics, **sparsity_metrics}


if __name__ == "__main__":
    main()
