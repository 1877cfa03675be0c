"""Checkpoint formats: dense and compact round trips, validation, atomic writes, the CLI."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_vit
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForImageClassification, ViTForImageClassification

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.checkpoint import compact as compact_module
from hf_afr.checkpoint.codec import decode_mask, encode_mask
from hf_afr.checkpoint.compact import PLAIN_LOAD_GUARD, read_compact_header, read_compact_weights
from hf_afr.checkpoint.formats import COMPACT_WEIGHTS_NAME
from hf_afr.checkpoint.masks_file import MASKS_NAME
from hf_afr.cli import main

KEPT_ZERO = "vit.layers.0.mlp.fc1.weight"


def _pruned(sparsity: float = 0.9, dtype: torch.dtype = torch.float32) -> AFRPruner:
    model = tiny_vit(patch_size=4).to(dtype)
    pruner = AFRPruner(model, PrunerConfig(method="magnitude", sparsity=sparsity))
    pruner.prune(show_progress=False)
    # A kept weight that is exactly 0 must stay "kept": the mask is stored, not inferred.
    index = pruner.masks[KEPT_ZERO].nonzero()[0]
    with torch.no_grad():
        pruner.params[KEPT_ZERO][tuple(index)] = 0.0
    return pruner


@pytest.fixture(scope="module")
def pruner() -> AFRPruner:
    return _pruned()


@pytest.fixture(scope="module")
def compact_dir(pruner, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compact")
    pruner.save_pretrained(path, checkpoint_format="compact")
    return path


def _logits(model, seed: int = 0) -> torch.Tensor:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(pixel_values=x.to(model.dtype)).logits


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()
    }


# ----------------------------------------------------------------------------- mask coding


@pytest.mark.parametrize("density", [0.0, 0.003, 0.02, 0.1, 0.5, 0.97, 1.0])
@pytest.mark.parametrize("numel", [1, 13, 4099])
def test_mask_coding_round_trips(density, numel):
    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) < density
    data, encoding = encode_mask(mask)
    assert compact_module.MASK_ENCODINGS[data[0]] == encoding
    decoded = decode_mask(data, numel, int(mask.sum()))
    assert np.array_equal(decoded, mask.numpy())


@pytest.mark.parametrize("density", [0.1, 0.05, 0.02])
def test_mask_coding_is_close_to_the_entropy(density):
    numel = 200_000
    mask = torch.rand(numel, generator=torch.Generator().manual_seed(0)) < density
    p = mask.float().mean().item()
    entropy_bytes = numel * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8
    data, encoding = encode_mask(mask)
    assert encoding == "gaps-zlib"
    assert len(data) <= 1.06 * entropy_bytes


def test_structured_masks_compress_far_below_a_bitmask():
    mask = torch.zeros(512, 512, dtype=torch.bool)
    mask[:, :20] = True  # whole columns kept
    data, _ = encode_mask(mask)
    assert len(data) < mask.numel() / 8 / 10


# ----------------------------------------------------------------------------- round trips


def test_compact_checkpoint_loads_transparently_with_identical_outputs(pruner, compact_dir):
    assert sorted(os.listdir(compact_dir)) == [
        "README.md",
        "config.json",
        COMPACT_WEIGHTS_NAME,
        "pruner_config.json",
        "sparsity_per_layer.png",
    ]
    model = AutoModelForImageClassification.from_pretrained(compact_dir)
    assert type(model) is ViTForImageClassification
    assert not model.is_quantized and not hasattr(model.config, "quantization_config")
    assert not hasattr(model.config, "transformers_weights")
    expected = pruner.model.state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in model.state_dict().items())
    assert torch.equal(_logits(model), _logits(pruner.model))


def test_compact_checkpoint_restores_masks_and_config(pruner, compact_dir):
    restored = AFRPruner.from_pretrained(compact_dir)
    assert restored.config == pruner.config
    assert restored.masks.keys() == pruner.masks.keys()
    assert all(torch.equal(restored.masks[k], pruner.masks[k]) for k in pruner.masks)
    index = tuple(pruner.masks[KEPT_ZERO].nonzero()[0])
    assert restored.masks[KEPT_ZERO][index] and restored.params[KEPT_ZERO][index] == 0


def test_loaded_compact_model_saves_a_plain_checkpoint(pruner, compact_dir, tmp_path):
    model = AutoModelForImageClassification.from_pretrained(compact_dir)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "quantization_config" not in config and "transformers_weights" not in config
    plain = ViTForImageClassification.from_pretrained(tmp_path)
    assert torch.equal(_logits(plain), _logits(pruner.model))


def test_dense_checkpoint_loads_without_hf_afr_and_keeps_masks(pruner, tmp_path):
    pruner.save_pretrained(tmp_path)
    assert {"model.safetensors", MASKS_NAME, "pruner_config.json", "README.md"} <= set(
        os.listdir(tmp_path)
    )
    assert torch.equal(
        _logits(ViTForImageClassification.from_pretrained(tmp_path)), _logits(pruner.model)
    )
    restored = AFRPruner.from_pretrained(tmp_path)
    assert all(torch.equal(restored.masks[k], pruner.masks[k]) for k in pruner.masks)


def test_bfloat16_values_stay_bfloat16(tmp_path):
    pruner = _pruned(dtype=torch.bfloat16)
    pruner.save_pretrained(tmp_path, checkpoint_format="compact", model_card=False)
    entries = read_compact_header(tmp_path / COMPACT_WEIGHTS_NAME)
    assert {e.dtype for e in entries.values()} == {"bfloat16"}
    model = AutoModelForImageClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert torch.equal(_logits(model), _logits(pruner.model))


def test_switching_format_removes_the_other_formats_weights(pruner, tmp_path):
    pruner.save_pretrained(tmp_path, model_card=False)
    pruner.save_pretrained(tmp_path, checkpoint_format="compact", model_card=False)
    names = set(os.listdir(tmp_path))
    assert COMPACT_WEIGHTS_NAME in names and not {"model.safetensors", MASKS_NAME} & names
    pruner.save_pretrained(tmp_path, model_card=False)
    assert COMPACT_WEIGHTS_NAME not in os.listdir(tmp_path)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_compact_needs_masks_and_zeroed_weights():
    pruner = AFRPruner(tiny_vit(), PrunerConfig(method="magnitude"))
    with pytest.raises(ValueError, match="prune"):
        pruner.save_pretrained("unused", checkpoint_format="compact")
    with pytest.raises(ValueError, match="checkpoint_format"):
        pruner.save_pretrained("unused", checkpoint_format="sparse")
    pruned = _pruned()
    with torch.no_grad():
        pruned.params[KEPT_ZERO].add_(1.0)  # weights outside the mask become nonzero
    with pytest.raises(ValueError, match="nonzero weights outside its mask"):
        compact_module.save_compact_weights(pruned.model, pruned.masks, "unused.safetensors")


def test_plain_transformers_refuses_a_compact_checkpoint(compact_dir):
    code = (
        "import sys\n"
        "from transformers import AutoModelForImageClassification, ViTForImageClassification, pipeline\n"
        "loaders = [\n"
        "    lambda: AutoModelForImageClassification.from_pretrained(sys.argv[1]),\n"
        "    lambda: ViTForImageClassification.from_pretrained(sys.argv[1], ignore_mismatched_sizes=True),\n"
        "    lambda: pipeline('image-classification', model=sys.argv[1]),\n"
        "]\n"
        "for load in loaders:\n"
        "    try:\n"
        "        load()\n"
        "    except Exception as err:\n"
        "        assert 'install hf_afr from its repository' in str(err), err\n"
        "        print('refused:', type(err).__name__)\n"
        "    else:\n"
        "        raise SystemExit('loaded a compact checkpoint without hf_afr')\n"
        "assert 'hf_afr' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(compact_dir)],
        capture_output=True,
        text=True,
        cwd=compact_dir,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("refused: ValueError") == 3
    assert (
        json.loads((compact_dir / "config.json").read_text())["transformers_weights"]
        == PLAIN_LOAD_GUARD
    )


def test_loader_refuses_to_return_partially_decoded_models(compact_dir, monkeypatch):
    from hf_afr.checkpoint.loader import AFRCompactQuantizer

    monkeypatch.setattr(AFRCompactQuantizer, "get_load_operations", lambda self: {})
    with pytest.raises(ValueError, match="0 of the 12 pruned tensors"):
        AutoModelForImageClassification.from_pretrained(compact_dir)


# ----------------------------------------------------------------------------- validation


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.json", COMPACT_WEIGHTS_NAME, "pruner_config.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst / COMPACT_WEIGHTS_NAME


def _rewrite(path: Path, edit) -> None:
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    sparse = json.loads(metadata["sparse_tensors"])
    edit(tensors, sparse, metadata)
    metadata["sparse_tensors"] = json.dumps(sparse)
    save_file(tensors, str(path), metadata=metadata)


def _first(sparse: dict) -> str:
    return next(iter(sparse))


def _drop_one_value(tensors, sparse, metadata):
    key = _first(sparse)
    tensors[key + ".afr_values"] = tensors[key + ".afr_values"][:-1].clone()
    sparse[key]["nnz"] -= 1  # consistent count, but the mask keeps one more weight


def _declare_wrong_nnz(tensors, sparse, metadata):
    sparse[_first(sparse)]["nnz"] -= 1


def _declare_wrong_dtype(tensors, sparse, metadata):
    sparse[_first(sparse)]["dtype"] = "float16"


def _store_wrong_dtype(tensors, sparse, metadata):
    key = _first(sparse)
    tensors[key + ".afr_values"] = tensors[key + ".afr_values"].double()


def _wrong_shape_tensor(tensors, sparse, metadata):
    key = _first(sparse)
    tensors[key + ".afr_shape"] = tensors[key + ".afr_shape"].flip(0).clone() + 1


def _drop_mask(tensors, sparse, metadata):
    del tensors[_first(sparse) + ".afr_mask"]


def _corrupt_mask(tensors, sparse, metadata):
    key = _first(sparse)
    mask = tensors[key + ".afr_mask"].clone()
    mask[1:] = 7
    tensors[key + ".afr_mask"] = mask


def _newer_version(tensors, sparse, metadata):
    metadata["format_version"] = "99"


def _foreign_file(tensors, sparse, metadata):
    metadata["format"] = "pt"


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop_one_value, "the mask keeps"),
        (_declare_wrong_nnz, "metadata declares"),
        (_declare_wrong_dtype, "declares float16"),
        (_store_wrong_dtype, "stored as F64"),
        (_wrong_shape_tensor, "stores shape"),
        (_drop_mask, "lacks"),
        (_corrupt_mask, "Corrupt mask"),
        (_newer_version, "Upgrade hf_afr"),
        (_foreign_file, "not an hf_afr compact checkpoint"),
    ],
)
def test_inconsistent_files_raise_clear_value_errors(compact_dir, tmp_path, edit, message):
    weights = _copy_checkpoint(compact_dir, tmp_path / "ckpt")
    _rewrite(weights, edit)
    with pytest.raises(ValueError, match=message):
        read_compact_weights(weights)
    with pytest.raises(ValueError, match=message):
        AutoModelForImageClassification.from_pretrained(weights.parent)


def test_truncated_file_raises_a_clear_value_error(compact_dir, tmp_path):
    weights = _copy_checkpoint(compact_dir, tmp_path / "ckpt")
    data = weights.read_bytes()
    for size in (len(data) - 100, 40, 3):
        weights.write_bytes(data[:size])
        with pytest.raises(ValueError, match="truncated"):
            read_compact_weights(weights, load_values=False)
    with pytest.raises(ValueError, match="truncated"):
        AutoModelForImageClassification.from_pretrained(weights.parent)


def test_shapes_must_match_the_config(compact_dir, tmp_path):
    weights = _copy_checkpoint(compact_dir, tmp_path / "ckpt")
    config = json.loads((weights.parent / "config.json").read_text())
    config["intermediate_size"] = 48  # fc1 / fc2 no longer match the stored tensors
    (weights.parent / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="expects"):
        AutoModelForImageClassification.from_pretrained(weights.parent)


# ----------------------------------------------------------------------------- atomic writes


def _fail_midway(real_save):
    def save(tensors, path, metadata=None):
        real_save(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:  # half written, then the process "dies"
            f.truncate(os.path.getsize(path) // 2)
        raise OSError("disk full")

    return save


@pytest.mark.parametrize("checkpoint_format", ["dense", "compact"])
def test_interrupted_save_leaves_no_complete_looking_file(
    pruner, tmp_path, monkeypatch, checkpoint_format
):
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    pruner.save_pretrained(existing, model_card=False)
    before = _digest(existing)
    if checkpoint_format == "compact":
        monkeypatch.setattr(compact_module, "save_file", _fail_midway(compact_module.save_file))
    else:
        import transformers.modeling_utils as modeling_utils

        monkeypatch.setattr(
            modeling_utils, "safe_save_file", _fail_midway(modeling_utils.safe_save_file)
        )
    for folder in (fresh, existing):
        with pytest.raises(OSError, match="disk full"):
            pruner.save_pretrained(folder, checkpoint_format=checkpoint_format, model_card=False)
    assert not fresh.exists()  # the folder the failed save created is removed again
    assert _digest(existing) == before and not [
        n for n in os.listdir(existing) if n.startswith(".")
    ]


# ----------------------------------------------------------------------------- CLI


def test_cli_converts_both_ways_losslessly(pruner, compact_dir, tmp_path, capsys):
    assert main(["densify", str(compact_dir), str(tmp_path / "dense")]) == 0
    dense = tmp_path / "dense"
    assert {"model.safetensors", MASKS_NAME, "README.md"} <= set(os.listdir(dense))
    assert "transformers_weights" not in json.loads((dense / "config.json").read_text())
    assert torch.equal(
        _logits(ViTForImageClassification.from_pretrained(dense)), _logits(pruner.model)
    )
    assert main(["compact", str(dense), str(tmp_path / "again")]) == 0
    again = tmp_path / "again"
    state, masks, entries = read_compact_weights(again / COMPACT_WEIGHTS_NAME)
    state0, masks0, entries0 = read_compact_weights(compact_dir / COMPACT_WEIGHTS_NAME)
    assert entries == entries0
    assert all(torch.equal(state[k], state0[k]) for k in state0) and state.keys() == state0.keys()
    assert all(torch.equal(masks[k], masks0[k]) for k in masks0)
    assert "Checkpoint format: `compact`" in (again / "README.md").read_text()
    capsys.readouterr()
    assert main(["report", str(again), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "information bound" in out and "| **total** |" in out and "90.00%" in out


def test_cli_reports_clear_errors(compact_dir, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    assert main(["densify", str(compact_dir), str(tmp_path / "busy")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["densify", str(compact_dir), str(compact_dir)]) == 1
    assert "different folders" in capsys.readouterr().err
    assert main(["densify", str(tmp_path / "busy"), str(tmp_path / "out")]) == 1
    assert "not a compact checkpoint" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "busy")]) == 1
    assert "not pruned by hf_afr" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
