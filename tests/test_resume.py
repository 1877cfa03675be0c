"""Resuming a run: the fine-tuned weights come back (transformers 5 renamed ViT's modules while
checkpoints keep the legacy names), and a checkpoint whose weights do not all land is refused."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_script, write_image_folder
from helpers import tiny_vit, tiny_vit_config
from safetensors import safe_open
from transformers import ViTForImageClassification

from hf_afr import AFRPruner
from hf_afr.checkpoint.formats import MASKS_NAME, PRUNER_CONFIG_NAME
from hf_afr.checkpoint.masks_file import load_masks
from hf_afr.resume import load_checkpoint_weights
from hf_afr.workflow.runner import run_script

pytestmark = pytest.mark.usefixtures("single_thread")

finetune = load_script("finetune")


def test_legacy_named_checkpoint_loads_every_weight(tmp_path):
    source = tiny_vit(seed=1)
    source.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:  # what makes the plain load fail
        assert any(".encoder.layer." in key for key in f.keys())  # noqa: SIM118
    target = tiny_vit(seed=2)
    load_checkpoint_weights(target, tmp_path)
    expected = source.state_dict()
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (dict(intermediate_size=48), "of another shape (e.g. vit.layers.0.mlp.fc1.bias)"),
        (dict(num_hidden_layers=3), "unknown to the model (e.g. vit.layers.2."),
        (dict(num_hidden_layers=1), "missing from it (e.g. vit.layers.1."),
    ],
)
def test_checkpoint_of_another_model_is_refused_and_nothing_changes(other, message, tmp_path):
    ViTForImageClassification(tiny_vit_config(**other)).save_pretrained(tmp_path)
    model = tiny_vit()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.raises(ValueError, match="Cannot resume from") as err:
        load_checkpoint_weights(model, tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert all(torch.equal(t, before[name]) for name, t in model.state_dict().items())


def run(model_dir, images, out, *extra) -> None:
    args = [
        "--model_name_or_path", str(model_dir), "--output_dir", str(out),
        "--train_dir", str(images / "train"), "--method", "snip", "--sparsity", "0.5",
        "--num_batches", "1", "--scoring_batch_size", "4", "--use_cpu", "--disable_tqdm", "true",
        "--report_to", "none", "--do_train", "--per_device_train_batch_size", "4",
        "--max_steps", "4", "--save_steps", "2", "--learning_rate", "1e-2", "--seed", "0",
        "--horizontal_flip", "false", *map(str, extra),
    ]  # fmt: skip
    assert run_script("finetune.py", finetune.main, args) == 0


def weights(folder) -> dict[str, torch.Tensor]:
    return ViTForImageClassification.from_pretrained(folder).state_dict()


@pytest.fixture(scope="module")
def whole_run(tiny_vit_dir, tmp_path_factory):
    """A 4-step run saving checkpoints at steps 2 and 4, and its images."""
    root = tmp_path_factory.mktemp("whole-run")
    images = write_image_folder(root / "images", {"train": 4})
    run(tiny_vit_dir, images, root / "whole")
    return root / "whole", images


@pytest.mark.slow
def test_resumed_run_ends_where_the_uninterrupted_one_does(tiny_vit_dir, whole_run, tmp_path):
    whole_dir, images = whole_run
    # The run interrupted after step 2 left checkpoint-2; another folder resumes from it.
    checkpoint = whole_dir / "checkpoint-2"
    run(tiny_vit_dir, images, tmp_path / "resumed", "--resume_from_checkpoint", checkpoint)
    whole, resumed = weights(whole_dir), weights(tmp_path / "resumed")
    at_two, pretrained = weights(checkpoint), weights(tiny_vit_dir)
    for name, tensor in whole.items():
        assert torch.allclose(resumed[name], tensor, rtol=0, atol=1e-3), name
    # Not vacuous: training moved the encoder before the checkpoint and after it, by more than that.
    encoder = [name for name in whole if ".layers." in name]
    for earlier, later in ((pretrained, at_two), (at_two, whole)):
        assert max((later[n] - earlier[n]).abs().max() for n in encoder) > 5e-3


@pytest.mark.slow
def test_resume_restores_the_masks_and_scores_nothing(
    tiny_vit_dir, whole_run, tmp_path, monkeypatch
):
    whole_dir, _ = whole_run
    checkpoint = whole_dir / "checkpoint-2"
    saved = load_masks(checkpoint / MASKS_NAME)

    def no_scoring(*args, **kwargs):
        raise AssertionError("a resumed run scored the model")

    monkeypatch.setattr(AFRPruner, "compute_scores", no_scoring)
    monkeypatch.setattr(AFRPruner, "prune", no_scoring)
    # Other scoring inputs: other images, another scoring batch size, another method.
    other_images = write_image_folder(tmp_path / "other", {"train": 6}, seed=7)
    out = tmp_path / "resumed"
    run(
        tiny_vit_dir, other_images, out, "--resume_from_checkpoint", checkpoint,
        "--scoring_batch_size", "2", "--method", "magnitude", "--sparsity", "0.3",
    )  # fmt: skip
    resumed = load_masks(out / MASKS_NAME)
    assert resumed.keys() == saved.keys()
    assert all(torch.equal(resumed[name], saved[name]) for name in saved)
    config = json.loads((out / PRUNER_CONFIG_NAME).read_text())
    assert (config["method"], config["sparsity"]) == ("snip", 0.5)


def test_load_best_model_at_end_loads_every_weight(tmp_path):
    from transformers import TrainingArguments

    from hf_afr import ResumingTrainer

    best = tiny_vit(seed=1)
    best.save_pretrained(tmp_path / "checkpoint-2")
    model = tiny_vit(seed=2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = ResumingTrainer(model=model, args=args)
    trainer.state.best_model_checkpoint = str(tmp_path / "checkpoint-2")
    trainer._load_best_model()  # what `load_best_model_at_end` calls
    expected = best.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
