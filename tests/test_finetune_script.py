"""`scripts/finetune.py` and `scripts/prune.py` end to end on a tiny ViT and imagefolder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_script, write_image_folder
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image
from transformers import Trainer, ViTForImageClassification

from hf_afr import AFRPruner
from hf_afr.checkpoint.masks_file import MASKS_NAME, load_masks
from hf_afr.workflow.data import validate_split
from hf_afr.workflow.transforms import to_rgb

finetune = load_script("finetune")
prune = load_script("prune")


def common_args(model_dir, out, tmp_path, *extra) -> list[str]:
    """Options of both scripts."""
    return [
        "--model_name_or_path", str(model_dir),
        "--output_dir", str(out),
        "--cache_dir", str(tmp_path / "cache"),
        "--method", "afr",
        "--sparsity", "0.8",
        "--min_density", "0.05",
        "--num_batches", "2",
        "--scoring_batch_size", "4",
        "--use_cpu",
        "--disable_tqdm", "true",
        *map(str, extra),
    ]  # fmt: skip


# Options of the training script only.
TRAINING = ["--per_device_train_batch_size", "4", "--report_to", "none"]


def folder_args(images: Path) -> list[str]:
    return ["--train_dir", str(images / "train"), "--validation_dir", str(images / "validation")]


def finetune_args(model_dir, images, out, tmp_path, *extra) -> list[str]:
    return common_args(
        model_dir, out, tmp_path,
        *folder_args(images), *TRAINING,
        "--do_train", "--do_eval",
        "--gradient_accumulation_steps", "2",
        "--max_steps", "4",
        "--save_steps", "2",
        "--learning_rate", "1e-2",
        "--weight_decay", "0.1",
        "--max_grad_norm", "1.0",
        *extra,
    )  # fmt: skip


def saved_weights(folder) -> dict[str, torch.Tensor]:
    model = ViTForImageClassification.from_pretrained(folder)
    return {name: p.detach() for name, p in model.named_parameters()}


def assert_pruned_weights_zero(folder, masks) -> None:
    weights = saved_weights(folder)
    for name, mask in masks.items():
        assert torch.count_nonzero(weights[name][~mask]) == 0, name
        assert torch.count_nonzero(weights[name][mask]) > 0, name  # not vacuous


def optimizer_state_by_name(checkpoint) -> dict[str, dict[str, torch.Tensor]]:
    """`optimizer.pt` of a Trainer checkpoint, keyed by parameter name (Trainer's grouping)."""
    model = ViTForImageClassification.from_pretrained(checkpoint)
    names = [n for n, _ in model.named_parameters()]
    decay = set(Trainer.get_decay_parameter_names(None, model))
    order = [n for n in names if n in decay] + [n for n in names if n not in decay]
    state = torch.load(os.path.join(checkpoint, "optimizer.pt"), weights_only=True)["state"]
    shapes = dict(model.named_parameters())
    named = {order[i]: s for i, s in state.items()}
    for name, s in named.items():  # the grouping assumption holds
        assert all(v.shape == shapes[name].shape for v in s.values() if v.ndim), name
    return named


def assert_state_zero_at_pruned(checkpoint, masks, keys) -> None:
    state = optimizer_state_by_name(checkpoint)
    for name, mask in masks.items():
        for key in keys:
            value = state[name][key]
            assert torch.count_nonzero(value[~mask]) == 0, (name, key)
            assert torch.count_nonzero(value[mask]) > 0, (name, key)  # not vacuous


@pytest.mark.slow
def test_adamw_accumulation_decay_clipping_and_resume(tiny_vit_dir, image_folder, tmp_path):
    out = tmp_path / "out"
    metrics = finetune.main(finetune_args(tiny_vit_dir, image_folder, out, tmp_path))

    masks = load_masks(out / MASKS_NAME)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.8 * total)
    assert_pruned_weights_zero(out, masks)
    for step in (2, 4):
        checkpoint = out / f"checkpoint-{step}"
        assert torch.equal(  # every Trainer checkpoint carries the masks
            torch.cat([m.flatten() for m in load_masks(checkpoint / MASKS_NAME).values()]),
            torch.cat([m.flatten() for m in masks.values()]),
        )
        assert_pruned_weights_zero(checkpoint, masks)
        assert_state_zero_at_pruned(checkpoint, masks, ("exp_avg", "exp_avg_sq"))
    results = json.loads((out / "all_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    assert results["weight_sparsity"] >= results["mask_sparsity"] > 0.79
    assert metrics["eval_accuracy"] == results["eval_accuracy"]

    # Resume with other pruning arguments: the checkpoint's masks win, nothing is rescored.
    resume_args = finetune_args(
        tiny_vit_dir, image_folder, out, tmp_path,
        "--resume_from_checkpoint", out / "checkpoint-2", "--sparsity", "0.5", "--max_steps", "6",
    )  # fmt: skip
    finetune.main(resume_args)
    resumed = load_masks(out / MASKS_NAME)
    assert all(torch.equal(resumed[name], masks[name]) for name in masks)
    assert_pruned_weights_zero(out, masks)
    assert_state_zero_at_pruned(out / "checkpoint-6", masks, ("exp_avg", "exp_avg_sq"))
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6


@pytest.mark.slow
def test_sgd_momentum_bf16(tiny_vit_dir, image_folder, tmp_path):
    out = tmp_path / "out"
    args = finetune_args(
        tiny_vit_dir, image_folder, out, tmp_path,
        "--optim", "sgd", "--optim_args", "momentum=0.9", "--bf16", "--method", "snip",
    )  # fmt: skip
    finetune.main(args)
    masks = load_masks(out / MASKS_NAME)
    assert_pruned_weights_zero(out, masks)
    assert_state_zero_at_pruned(out / "checkpoint-4", masks, ("momentum_buffer",))
    assert json.loads((out / "pruner_config.json").read_text())["method"] == "snip"


def test_already_pruned_checkpoint_is_reused(tiny_vit_dir, image_folder, tmp_path):
    pruned = tmp_path / "pruned"
    prune.main(common_args(tiny_vit_dir, pruned, tmp_path, *folder_args(image_folder)))
    masks = load_masks(pruned / MASKS_NAME)
    assert (pruned / "preprocessor_config.json").is_file()
    assert_pruned_weights_zero(pruned, masks)

    out = tmp_path / "out"
    args = common_args(
        pruned, out, tmp_path, *folder_args(image_folder), *TRAINING, "--skip_pruning"
    )
    finetune.main([*args, "--do_train", "--max_steps", "1", "--sparsity", "0.3"])
    reused = load_masks(out / MASKS_NAME)
    assert all(torch.equal(reused[name], masks[name]) for name in masks)
    assert_pruned_weights_zero(out, masks)


def test_json_argument_file(tiny_vit_dir, image_folder, tmp_path):
    out = tmp_path / "out"
    config = {
        "model_name_or_path": tiny_vit_dir,
        "train_dir": str(image_folder / "train"),
        "output_dir": str(out),
        "cache_dir": str(tmp_path / "cache"),
        "method": "magnitude",
        "sparsity": 0.5,
        "use_cpu": True,
        "checkpoint_format": "compact",
    }
    path = tmp_path / "args.json"
    path.write_text(json.dumps(config))
    prune.main([str(path)])
    report = json.loads((out / "pruning_results.json").read_text())
    assert report["mask_sparsity"] == pytest.approx(0.5, abs=1e-4)
    reloaded = AFRPruner.from_pretrained(out)
    assert reloaded.config.method == "magnitude"
    assert reloaded.sparsity_report().sparsity == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize(
    "method, control, log_line",
    [
        ("synflow", "shuffle", "Scoring with 'synflow' (no data, 3 rounds)."),
        ("fisher", "invert", "Scoring with 'fisher' on 2 batches of 4 training images."),
        ("grasp", "magnitude_inside", "Scoring with 'grasp' on 2 batches of 4 training images."),
        ("refer", None, "Scoring with 'refer', 'cls' features on 2 batches of 4"),
    ],
)
def test_prune_script_with_new_criteria_and_controls(
    method, control, log_line, tiny_vit_dir, image_folder, tmp_path, capsys
):
    out = tmp_path / "out"
    args = common_args(tiny_vit_dir, out, tmp_path, *folder_args(image_folder))
    args += ["--method", method, "--synflow_iterations", "3"]
    args += ["--control", control] if control else []
    prune.main(args)
    assert log_line in capsys.readouterr().out
    saved = json.loads((out / "pruner_config.json").read_text())
    assert saved["method"] == method and saved["control"] == control
    report = json.loads((out / "pruning_results.json").read_text())
    assert report["mask_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert ("sanity-check control" in (out / "README.md").read_text()) == (control is not None)


# ---------------------------------------------------------------------------------------
# Bad inputs: a clear error before any work, and no output folder.


def save_dataset(path: Path, features: Features, rows: dict) -> None:
    DatasetDict({"train": Dataset.from_dict(rows, features=features)}).save_to_disk(str(path))


def images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), (i * 40 % 255, 0, 0)) for i in range(n)]


def bad_dataset(tmp_path: Path, kind: str) -> list[str]:
    path = tmp_path / f"dataset-{kind}"
    if kind == "no_label":
        save_dataset(path, Features({"image": ImageFeature()}), {"image": images(4)})
    elif kind == "int_label":
        features = Features({"image": ImageFeature(), "label": Value("int64")})
        save_dataset(path, features, {"image": images(4), "label": [0, 1, 0, 1]})
    elif kind == "empty_validation":  # parquet files, as a Hub dataset repository has them
        features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
        train = Dataset.from_dict({"image": images(4), "label": [0, 1, 0, 1]}, features=features)
        path.mkdir()
        train.to_parquet(str(path / "train.parquet"))
        train.select([]).to_parquet(str(path / "validation.parquet"))
    return ["--dataset_name", str(path)]


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("no_label", "no label column 'label'"),
        ("int_label", "must be a `datasets.ClassLabel`"),
        ("empty_validation", "has an empty split"),
        ("empty_validation_dir", "is empty"),
        ("sparsity_out_of_range", "`sparsity` must be in \\[0, 1\\)"),
    ],
)
def test_bad_inputs_fail_before_any_output(kind, error, tiny_vit_dir, image_folder, tmp_path):
    extra = ["--do_train", "--do_eval"]
    if kind == "empty_validation_dir":
        (tmp_path / "empty").mkdir()
        data = [
            "--train_dir",
            str(image_folder / "train"),
            "--validation_dir",
            str(tmp_path / "empty"),
        ]
    elif kind == "sparsity_out_of_range":
        data, extra = folder_args(image_folder), [*extra, "--sparsity", "1.5"]
    else:
        data = bad_dataset(tmp_path, kind)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=error):
        finetune.main(common_args(tiny_vit_dir, out, tmp_path, *data, *TRAINING, *extra))
    assert not out.exists()


def test_unparsable_sparsity_is_an_argument_error(tiny_vit_dir, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = common_args(
        tiny_vit_dir, out, tmp_path, *folder_args(image_folder), *TRAINING, "--sparsity", "abc"
    )
    with pytest.raises(SystemExit):
        finetune.main(args)
    assert "--sparsity: invalid float value: 'abc'" in capsys.readouterr().err
    assert not out.exists()


def test_resume_from_checkpoint_without_masks_is_refused(tiny_vit_dir, image_folder, tmp_path):
    foreign = tmp_path / "checkpoint-3"
    foreign.mkdir()
    out = tmp_path / "out"
    args = common_args(
        tiny_vit_dir, out, tmp_path, *folder_args(image_folder), *TRAINING, "--do_train"
    )
    with pytest.raises(ValueError, match="has no pruning_masks.safetensors"):
        finetune.main([*args, "--resume_from_checkpoint", str(foreign)])
    assert not out.exists()


def test_empty_split_in_memory_is_refused():
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    empty = Dataset.from_dict({"image": images(2), "label": [0, 1]}, features=features).select([])
    with pytest.raises(ValueError, match="The validation split is empty"):
        validate_split(empty, "validation", "image", "label")


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_every_image_mode_becomes_rgb(mode):
    image = Image.new("RGB", (8, 8), (10, 200, 30)).convert(mode)
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == (8, 8)


# ---------------------------------------------------------------------------------------
# Several processes


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tiny_vit_dir, tmp_path):
    images = write_image_folder(tmp_path / "images", {"train": 8, "validation": 2})
    # 2 scoring batches: each of the 2 ranks scores one, the gradient sums are all-reduced.
    single = tmp_path / "single"
    prune.main(common_args(tiny_vit_dir, single, tmp_path, *folder_args(images)))

    multi = tmp_path / "multi"
    script = REPO_ROOT / "scripts" / "finetune.py"
    args = common_args(tiny_vit_dir, multi, tmp_path, *folder_args(images), *TRAINING)
    args += ["--do_train", "--max_steps", "2", "--save_steps", "1", "--weight_decay", "0.1"]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    command += [str(script), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "world size: 2" in result.stdout + result.stderr
    assert "find_unused_parameters=True" not in result.stdout + result.stderr

    expected, got = load_masks(single / MASKS_NAME), load_masks(multi / MASKS_NAME)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert_pruned_weights_zero(multi, got)
    assert_state_zero_at_pruned(multi / "checkpoint-2", got, ("exp_avg", "exp_avg_sq"))


def test_push_to_hub_is_one_pruner_push_without_the_token(
    tiny_vit_dir, image_folder, tmp_path, monkeypatch
):
    calls = []
    monkeypatch.setattr(
        "hf_afr.pruner.AFRPruner.push_to_hub",
        lambda self, repo_id, **kwargs: calls.append((repo_id, kwargs)),
    )
    out = tmp_path / "out"
    args = common_args(tiny_vit_dir, out, tmp_path, *folder_args(image_folder), *TRAINING)
    args += ["--push_to_hub", "--hub_model_id", "me/tiny-afr", "--hub_token", "hf_secret123"]
    finetune.main([*args, "--do_train", "--do_eval", "--max_steps", "1"])
    ((repo_id, kwargs),) = calls
    assert repo_id == "me/tiny-afr" and kwargs["token"] == "hf_secret123"
    assert kwargs["checkpoint_format"] == "dense" and kwargs["image_processor"] is not None
    card = kwargs["card_data"]
    assert "--sparsity 0.8" in card.command and "hf_secret123" not in card.command
    assert 0.0 <= card.accuracy <= 1.0
    for path in out.rglob("*"):  # the token is in no file written (model card included)
        assert not path.is_file() or b"hf_secret123" not in path.read_bytes(), path


def test_horizontal_flip_is_the_only_augmentation_and_can_be_turned_off():
    from hf_afr.workflow.transforms import ImageTransform

    class Identity:  # an image processor that returns the pixels as they are
        def __call__(self, images, return_tensors):
            return {
                "pixel_values": torch.stack(
                    [torch.from_numpy(np.array(im)).reshape(-1, 3) for im in images]
                )
            }

    image = Image.new("RGB", (4, 1))
    image.putdata([(i, 0, 0) for i in range(4)])
    batch = {"image": [image] * 64, "label": [0] * 64}
    plain = ImageTransform(Identity(), "image", "label", augment=False)(batch)["pixel_values"]
    assert all(torch.equal(p, plain[0]) for p in plain)
    flipped = ImageTransform(Identity(), "image", "label", augment=True)(batch)["pixel_values"]
    mirrored = plain[0].flip(0)
    assert {bool(torch.equal(p, mirrored)) for p in flipped} == {True, False}
    assert all(torch.equal(p, mirrored) or torch.equal(p, plain[0]) for p in flipped)
