"""Resuming a structurally pruned fine-tuning run: the checkpoint's widths (never scored again),
its fine-tuned weights, optimizer, scheduler and step, and its masks when it has them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import CLASSES, load_script, write_image_folder
from helpers import tiny_vit_config
from test_resume import run
from transformers import ViTForImageClassification, ViTImageProcessorPil

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.checkpoint.formats import MASKS_NAME, PRUNER_CONFIG_NAME
from hf_afr.checkpoint.load import load_classifier
from hf_afr.checkpoint.masks_file import load_masks
from hf_afr.checkpoint.widths import build_structured_model
from hf_afr.resume import load_checkpoint_weights
from hf_afr.workflow.resuming import check_resumable
from hf_afr.workflow.runner import run_script

pytestmark = pytest.mark.usefixtures("single_thread")

finetune = load_script("finetune")
HEADS, UNITS = "layer_num_attention_heads", "layer_intermediate_sizes"


def widths(folder) -> tuple[list[int], list[int]]:
    config = json.loads((folder / "config.json").read_text())
    return config[HEADS], config[UNITS]


def weights(folder) -> dict[str, torch.Tensor]:
    return load_classifier(folder).state_dict()  # a Trainer checkpoint too (no loader marker)


def no_scoring(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run scored the model")

    monkeypatch.setattr(AFRPruner, "compute_scores", refuse)
    monkeypatch.setattr(AFRPruner, "prune", refuse)


def save_tiny(folder, **overrides) -> str:
    torch.manual_seed(0)
    ViTForImageClassification(tiny_vit_config(patch_size=4, **overrides)).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), {"train": 4})


@pytest.fixture(scope="module")
def structured_run(tiny_vit_dir, images, tmp_path_factory):
    """A 4-step `--structure heads+mlp` run saving checkpoints at steps 2 and 4."""
    whole = tmp_path_factory.mktemp("structured") / "whole"
    run(tiny_vit_dir, images, whole, "--structure", "heads+mlp")
    return whole


@pytest.mark.slow
def test_structured_run_resumes_with_its_widths_and_ends_where_the_whole_run_does(
    tiny_vit_dir, images, structured_run, tmp_path, monkeypatch, capsys
):
    checkpoint = structured_run / "checkpoint-2"
    saved = json.loads((checkpoint / PRUNER_CONFIG_NAME).read_text())
    assert (saved["structure"], saved["sparsity"]) == ("heads+mlp", 0.5)
    assert not (checkpoint / MASKS_NAME).exists()
    heads, units = widths(checkpoint)
    assert sum(heads) < 2 * 2 and sum(units) < 2 * 64  # narrower than the dense tiny ViT
    # The run interrupted after step 2 left checkpoint-2 in its folder; it resumes from "last",
    # with other pruning arguments (ignored, and nothing is scored again).
    out = tmp_path / "resumed"
    shutil.copytree(checkpoint, out / "checkpoint-2")
    no_scoring(monkeypatch)
    capsys.readouterr()
    run(
        tiny_vit_dir, images, out, "--resume_from_checkpoint", "last",
        "--structure", "heads+mlp", "--method", "magnitude", "--sparsity", "0.3",
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "reusing its per-layer widths" in printed
    assert "pruning arguments of this run ('magnitude', sparsity 0.3" in printed
    assert widths(out) == widths(structured_run) == (heads, units)
    assert json.loads((out / PRUNER_CONFIG_NAME).read_text())["structure"] == "heads+mlp"
    whole, resumed, at_two = weights(structured_run), weights(out), weights(checkpoint)
    assert resumed.keys() == whole.keys()
    for name, tensor in whole.items():
        assert torch.allclose(resumed[name], tensor, rtol=0, atol=1e-3), name
    # Not vacuous: steps 3 and 4 moved the encoder by more than the tolerance.
    encoder = [name for name in whole if ".layers." in name]
    assert max((whole[n] - at_two[n]).abs().max() for n in encoder) > 5e-3


@pytest.fixture(scope="module")
def structured_masked_base(tiny_vit_dir, tmp_path_factory):
    """The tiny ViT without half its heads and units, then half the weights of what remains."""
    folder = tmp_path_factory.mktemp("structured-masked")
    structure = PrunerConfig(method="magnitude", structure="heads+mlp", sparsity=0.5)
    structured = AFRPruner.from_pretrained(tiny_vit_dir, structure)
    structured.prune()
    inner = AFRPruner(structured.model, PrunerConfig(method="magnitude", sparsity=0.5))
    inner.prune()
    inner.save_pretrained(folder, image_processor=structured.image_processor)
    return folder


@pytest.mark.slow
def test_structured_run_with_masks_resumes_them_exactly(
    structured_masked_base, images, tmp_path, monkeypatch
):
    base = structured_masked_base
    run(base, images, tmp_path / "whole")  # the base's widths and masks are reused
    checkpoint = tmp_path / "whole" / "checkpoint-2"
    assert (checkpoint / MASKS_NAME).exists() and widths(checkpoint) == widths(base)
    no_scoring(monkeypatch)
    out = tmp_path / "resumed"
    run(base, images, out, "--resume_from_checkpoint", checkpoint)
    assert widths(out) == widths(base)
    expected = load_masks(base / MASKS_NAME)
    masks = load_masks(out / MASKS_NAME)
    assert masks.keys() == expected.keys()
    assert all(torch.equal(masks[name], expected[name]) for name in expected)
    whole, resumed = weights(tmp_path / "whole"), weights(out)
    for name, tensor in whole.items():
        assert torch.allclose(resumed[name], tensor, rtol=0, atol=1e-3), name
    assert all(not resumed[name][~mask].any() for name, mask in masks.items())
    moved = max((whole[n] - weights(checkpoint)[n]).abs().max() for n in masks)
    assert moved > 5e-3


def structured_tiny(units: tuple[int, int] = (40, 24), seed: int = 0):
    config = tiny_vit_config()
    setattr(config, HEADS, [1, 2])
    setattr(config, UNITS, list(units))
    torch.manual_seed(seed)
    return build_structured_model(config).eval()


def test_resuming_trainer_loads_a_structured_checkpoint_at_its_widths(tmp_path):
    source = structured_tiny(seed=1)
    source.save_pretrained(tmp_path)  # as the Trainer saves: config.json with the widths
    target = structured_tiny(seed=2)
    load_checkpoint_weights(target, tmp_path)
    expected = source.state_dict()
    assert all(torch.equal(t, expected[n]) for n, t in target.state_dict().items())
    with pytest.raises(ValueError, match=r"of another shape \(e.g. vit.layers.0.mlp.fc1.bias\)"):
        load_checkpoint_weights(structured_tiny(units=(48, 24)), tmp_path)


def with_widths(heads, units, **overrides):
    config = tiny_vit_config(**overrides)
    if heads is not None:
        setattr(config, HEADS, heads)
        setattr(config, UNITS, units)
    return config


@pytest.mark.parametrize(
    ("checkpoint", "run_model", "structure", "message"),
    [
        (([1, 2], [40, 24]), ([1, 2], [40, 28]), None, "its widths (heads per block [1, 2], MLP"),
        (([1, 2], [40, 24]), (None, None), "heads", "remove MLP units, which --structure heads"),
        (([2, 2], [40, 24]), (None, None), "mlp", None),
        (([2, 2], [40, 24]), ([2, 2], [40, 24]), None, None),
        ((None, None), (None, None), None, None),
    ],
)
def test_the_checkpoint_must_have_widths_the_run_can_give(
    checkpoint, run_model, structure, message
):
    check = [with_widths(*checkpoint), with_widths(*run_model), structure, "tiny"]
    if message is None:
        check_resumable("ckpt", *check)
    else:
        with pytest.raises(ValueError, match="^Cannot resume from ckpt: ") as err:
            check_resumable("ckpt", *check)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_of_another_depth_is_another_model():
    deeper = with_widths([1, 1, 1], [8, 8, 8], num_hidden_layers=3)
    with pytest.raises(ValueError, match=r"another model than tiny \(vit.layers.2.") as err:
        check_resumable("ckpt", deeper, with_widths(None, None), "heads+mlp", "tiny")
    assert "absent here" in str(err.value)


def checkpoint_of_masks(tiny_vit_dir, folder):
    config = PrunerConfig(method="magnitude", sparsity=0.5)
    pruner = AFRPruner.from_pretrained(tiny_vit_dir, config, id2label=dict(enumerate(CLASSES)))
    pruner.prune()
    pruner.save_pretrained(folder)


def edited(checkpoint, folder, **changes):
    """A copy of `checkpoint` whose config.json has `changes`."""
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no --structure", "it holds a structurally pruned model (heads per block [1, 1]"),
        ("--structure mlp", "remove attention heads, which --structure mlp keeps"),
        ("another model", "it holds another model than"),
        ("other labels", "it classifies 3 labels (cat, dog, bird), the training data has 3"),
        ("masks, --structure", "this run prunes with --structure heads+mlp, but the checkpoint"),
        ("neither", "has no pruning_masks.safetensors: only checkpoints written with"),
        ("malformed widths", "checkpoint-2: config.json `layer_intermediate_sizes` must be a list"),
        ("widths not of the weights", "layer 0 (vit.layers.0) stores mlp.fc1.weight with shape"),
    ],
)
def test_a_checkpoint_that_does_not_belong_is_one_line(
    case, message, tiny_vit_dir, images, structured_run, tmp_path, capsys
):
    model, checkpoint = tiny_vit_dir, structured_run / "checkpoint-2"
    extra = ["--structure", "heads+mlp"]
    if case == "no --structure":
        extra = []
    elif case == "--structure mlp":
        extra = ["--structure", "mlp"]
    elif case == "another model":
        model = save_tiny(tmp_path / "wider", intermediate_size=96)
    elif case == "other labels":
        labels = ["cat", "dog", "bird"]
        checkpoint = edited(
            checkpoint, tmp_path / "checkpoint-2",
            id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        )  # fmt: skip
    elif case == "malformed widths":
        checkpoint = edited(checkpoint, tmp_path / "checkpoint-2", **{UNITS: "wide"})
    elif case == "widths not of the weights":
        units = [n + 1 for n in widths(checkpoint)[1]]
        checkpoint = edited(checkpoint, tmp_path / "checkpoint-2", **{UNITS: units})
    elif case == "masks, --structure":
        checkpoint = tmp_path / "checkpoint-2"
        checkpoint_of_masks(tiny_vit_dir, checkpoint)
    elif case == "neither":
        checkpoint = save_tiny(tmp_path / "checkpoint-2")
    out = tmp_path / "out"
    args = [
        "--model_name_or_path", str(model), "--output_dir", str(out),
        "--train_dir", str(images / "train"), "--use_cpu", "--report_to", "none",
        "--do_train", "--resume_from_checkpoint", str(checkpoint), *extra,
    ]  # fmt: skip
    capsys.readouterr()
    assert run_script("finetune.py", finetune.main, args) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("finetune.py: error: "), errors
    assert message in errors[0], errors[0]
    assert not out.exists()
