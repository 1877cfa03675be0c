"""The typefaces dataset and the registry of embedded datasets (hf_afr.data.embedded)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_script

from hf_afr.data import TYPEFACES, list_fonts, typeface_arrays, typeface_class_names
from hf_afr.data.embedded import EMBEDDED_DATASETS, load_embedded_dataset
from hf_afr.data.glyph_sets import _LATIN
from hf_afr.data.typefaces import (
    TYPEFACE_HELD_OUT_LETTERS,
    TYPEFACE_TRAIN_LETTERS,
    _typeface_masters,
    typeface_letters,
)


def test_twenty_distinct_typefaces_all_bundled_with_matplotlib():
    names = typeface_class_names()
    assert len(names) == len(set(names)) == 20
    bundled = {(f.family, f.style): f.source for f in list_fonts()}
    assert all(bundled.get(key) == "matplotlib" for key in TYPEFACES)


def test_held_out_letters_are_disjoint_from_training_letters_and_cover_the_alphabet():
    train, held_out = set(TYPEFACE_TRAIN_LETTERS), set(TYPEFACE_HELD_OUT_LETTERS)
    assert not train & held_out
    assert train | held_out == set(_LATIN)
    assert (len(train), len(held_out)) == (40, 12)
    assert typeface_letters("train") == TYPEFACE_TRAIN_LETTERS
    assert typeface_letters("validation") == typeface_letters("test") == TYPEFACE_HELD_OUT_LETTERS


def test_test_images_are_drawn_from_held_out_letters_only():
    """Every clean test render equals a held-out-letter master of its typeface, and none equals a
    training-letter master (checked against separately rendered masters)."""
    x, y = typeface_arrays("test", samples_per_class=3, strength=0.0)
    held_out = _typeface_masters(TYPEFACE_HELD_OUT_LETTERS, 64).numpy()
    train = _typeface_masters(TYPEFACE_TRAIN_LETTERS, 64).numpy()

    def downsample(masters):  # the clean path: identity resampling to 32 px = 2x2 mean
        m = masters.astype(np.float64) / 255
        m = m.reshape(*m.shape[:-2], 32, 2, 32, 2).mean(axis=(-1, -3))
        return np.round(m * 255)

    small_held_out, small_train = downsample(held_out), downsample(train)
    for img, label in zip(x[..., 0].astype(np.float64), y):
        err_held_out = np.abs(small_held_out[label] - img).max(axis=(-1, -2)).min()
        err_train = np.abs(small_train[label] - img).max(axis=(-1, -2)).min()
        assert err_held_out <= 1.0 < err_train


def test_typeface_arrays_are_deterministic_balanced_and_seeded():
    x1, y1 = typeface_arrays("train", samples_per_class=4, seed=3)
    x2, y2 = typeface_arrays("train", samples_per_class=4, seed=3)
    x3, _ = typeface_arrays("train", samples_per_class=4, seed=4)
    xv, _ = typeface_arrays("validation", samples_per_class=4, seed=3)
    xt, _ = typeface_arrays("test", samples_per_class=4, seed=3)
    assert x1.shape == (80, 32, 32, 3) and x1.dtype == np.uint8
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert not np.array_equal(xv, xt)  # independent streams over the same held-out letters
    np.testing.assert_array_equal(np.bincount(y1), np.full(20, 4))
    np.testing.assert_array_equal(y1[:20], np.arange(20))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "dev"}, "unknown split"),
        ({"samples_per_class": 0}, "samples_per_class"),
        ({"strength": 1.5}, "strength"),
    ],
)
def test_typeface_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        typeface_arrays(**{"split": "train", "samples_per_class": 1, **kwargs})


def test_the_registry_builds_every_embedded_dataset_and_names_them_on_a_typo():
    assert list(EMBEDDED_DATASETS) == ["digits", "cyrillic", "typefaces"]
    typefaces = load_embedded_dataset("hf_afr:typefaces")
    assert set(typefaces) == {"train", "validation"}
    assert (len(typefaces["train"]), len(typefaces["validation"])) == (1200, 400)
    assert typefaces["train"].features["label"].names == typeface_class_names()
    with pytest.raises(ValueError, match="hf_afr:digits, hf_afr:cyrillic, hf_afr:typefaces"):
        load_embedded_dataset("hf_afr:fonts")


def test_finetune_script_accepts_the_typefaces_dataset(tiny_vit_dir, tmp_path):
    finetune = load_script("finetune")
    out = tmp_path / "out"
    metrics = finetune.main(
        [
            "--model_name_or_path", tiny_vit_dir, "--output_dir", str(out),
            "--dataset_name", "hf_afr:typefaces", "--max_train_samples", "16",
            "--max_eval_samples", "8", "--method", "snip", "--sparsity", "0.5",
            "--num_batches", "1", "--scoring_batch_size", "4", "--use_cpu",
            "--per_device_train_batch_size", "4", "--report_to", "none",
            "--do_train", "--do_eval", "--max_steps", "1", "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert (out / "config.json").is_file()
