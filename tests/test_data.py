"""Tests of the rendered-glyph and handwritten-digit datasets (hf_afr.data)."""

from __future__ import annotations

import unicodedata

import datasets
import numpy as np
import pytest
import torch

from hf_afr.data import (
    DOWNSTREAM_GLYPH_SET,
    GLYPH_SETS,
    PRETRAIN_GLYPH_SET,
    GlyphBank,
    augment_glyphs,
    digits_arrays,
    digits_dataset,
    glyph_arrays,
    glyph_class_names,
    glyph_dataset,
    list_fonts,
)

# ---------------------------------------------------------------------------------- glyph sets


def test_glyph_set_sizes_and_uniqueness():
    pretrain = glyph_class_names(PRETRAIN_GLYPH_SET)
    downstream = glyph_class_names(DOWNSTREAM_GLYPH_SET)
    assert 120 <= len(pretrain) <= 160
    assert 20 <= len(downstream) <= 40
    assert len(set(pretrain)) == len(pretrain)
    assert len(set(downstream)) == len(downstream)
    assert all(len(c) == 1 for c in pretrain + downstream)


def test_pretrain_and_downstream_classes_are_disjoint():
    pretrain = set(GLYPH_SETS[PRETRAIN_GLYPH_SET])
    downstream = set(GLYPH_SETS[DOWNSTREAM_GLYPH_SET])
    assert not pretrain & downstream
    # no Arabic digits (the handwritten-digit task) and no Cyrillic in pretraining
    assert not any(c.isdigit() for c in pretrain)
    assert not any("CYRILLIC" in unicodedata.name(c) for c in pretrain)
    assert all("CYRILLIC" in unicodedata.name(c) for c in downstream)
    # pretraining covers the whole Latin alphabet and some Greek
    assert set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") <= pretrain
    assert any("GREEK" in unicodedata.name(c) for c in pretrain)


def test_downstream_letters_have_no_lookalike_in_pretraining():
    # Cyrillic letters identical to Latin/Greek ones must not be downstream classes.
    downstream = set(GLYPH_SETS[DOWNSTREAM_GLYPH_SET])
    assert not downstream & set("АВЕКМНОРСТХГПФЛаеорсхукмнтгпф")


# ---------------------------------------------------------------------------------- fonts


def test_font_groups_are_disjoint_and_deterministic():
    train = list_fonts("train")
    val = list_fonts("validation")
    assert len(train) >= 8 and len(val) >= 2
    assert not {f.path for f in train} & {f.path for f in val}
    assert not {(f.family, f.style) for f in train} & {(f.family, f.style) for f in val}
    assert all(f.monospaced for f in val) and not any(f.monospaced for f in train)
    assert all(f.source == "matplotlib" for f in train + val)
    assert [f.path for f in list_fonts("train")] == [f.path for f in train]
    assert len(list_fonts()) == len(train) + len(val)


def test_banks_use_the_right_fonts_and_cover_every_class():
    for glyph_set in GLYPH_SETS:
        for split, group in [("train", "train"), ("validation", "validation")]:
            bank = GlyphBank.build(glyph_set, split)
            assert [f.path for f in bank.fonts] == [f.path for f in list_fonts(group)]
            counts = torch.bincount(bank.labels, minlength=bank.num_classes)
            assert int(counts.min()) >= 1
            assert bank.masters.dtype == torch.uint8
            assert bank.masters.shape[1:] == (64, 64)
            # every master has ink
            assert bool((bank.masters.flatten(1).amax(1) > 100).all())


# ---------------------------------------------------------------------------------- rendering


def test_glyph_arrays_are_deterministic_and_seed_dependent():
    a, la = glyph_arrays(DOWNSTREAM_GLYPH_SET, "train", 2, seed=3)
    b, lb = glyph_arrays(DOWNSTREAM_GLYPH_SET, "train", 2, seed=3)
    c, _ = glyph_arrays(DOWNSTREAM_GLYPH_SET, "train", 2, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_glyph_arrays_shapes_labels_and_splits():
    n_cls = len(GLYPH_SETS[DOWNSTREAM_GLYPH_SET])
    images, labels = glyph_arrays(DOWNSTREAM_GLYPH_SET, "validation", 3, image_size=24)
    assert images.shape == (3 * n_cls, 24, 24, 3) and images.dtype == np.uint8
    assert np.array_equal(images[..., 0], images[..., 2])  # grayscale replicated
    assert np.array_equal(labels, np.tile(np.arange(n_cls), 3))
    test, _ = glyph_arrays(DOWNSTREAM_GLYPH_SET, "test", 3, image_size=24)
    train, _ = glyph_arrays(DOWNSTREAM_GLYPH_SET, "train", 3, image_size=24)
    assert not np.array_equal(images, test)
    assert not np.array_equal(images, train)
    # white ink on a dark background: the border is darker than the brightest pixel
    border = np.concatenate([images[:, 0, :, 0], images[:, -1, :, 0]], axis=1)
    assert (border.mean(1) < images[..., 0].reshape(len(images), -1).max(1) - 60).all()


def test_clean_renderings_are_not_augmented():
    a, _ = glyph_arrays(DOWNSTREAM_GLYPH_SET, "train", 1, augment=False, seed=0)
    b, _ = glyph_arrays(DOWNSTREAM_GLYPH_SET, "train", 1, augment=True, seed=0)
    assert not np.array_equal(a, b)
    # clean renderings have a pure black background
    assert a[:, 0, :, :].max() == 0


def test_augment_glyphs_output_and_errors():
    masters = GlyphBank.build(DOWNSTREAM_GLYPH_SET, "train").masters[:8]
    out = augment_glyphs(masters, torch.Generator().manual_seed(0), image_size=16)
    assert out.shape == (8, 16, 16) and out.dtype == torch.uint8
    again = augment_glyphs(masters, torch.Generator().manual_seed(0), image_size=16)
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="strength"):
        augment_glyphs(masters, torch.Generator(), strength=-1)
    with pytest.raises(ValueError, match="generator"):
        augment_glyphs(masters, 0)
    with pytest.raises(ValueError, match="shape"):
        augment_glyphs(masters[0, 0], torch.Generator())


def test_bank_sample_respects_given_labels():
    bank = GlyphBank.build(DOWNSTREAM_GLYPH_SET, "train")
    labels = torch.tensor([0, 5, 5, 29])
    images, got = bank.sample(4, torch.Generator().manual_seed(1), 32, labels=labels)
    assert torch.equal(got, labels) and images.shape == (4, 32, 32)
    with pytest.raises(ValueError, match="labels"):
        bank.sample(2, torch.Generator(), labels=torch.tensor([0, bank.num_classes]))


def test_glyph_dataset_columns():
    ds = glyph_dataset(DOWNSTREAM_GLYPH_SET, "train", 1, image_size=32, seed=0)
    names = glyph_class_names(DOWNSTREAM_GLYPH_SET)
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == names
    assert len(ds) == len(names)
    image = ds[0]["image"]
    assert image.mode == "RGB" and image.size == (32, 32)
    ref, _ = glyph_arrays(DOWNSTREAM_GLYPH_SET, "train", 1, image_size=32, seed=0)
    assert np.array_equal(np.asarray(image), ref[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"glyph_set": "klingon"}, "unknown glyph set"),
        ({"split": "dev"}, "unknown split"),
        ({"samples_per_class": 0}, "samples_per_class"),
        ({"image_size": 2}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_glyph_dataset_bad_arguments(kwargs, match):
    args = {"glyph_set": DOWNSTREAM_GLYPH_SET, "split": "train", "samples_per_class": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        glyph_dataset(**args)


def test_bad_font_group():
    with pytest.raises(ValueError, match="unknown split"):
        list_fonts("test")


# ---------------------------------------------------------------------------------- digits


def test_digits_dataset_split_sizes_and_labels():
    train = digits_dataset("train")
    test = digits_dataset("test")
    assert len(train) + len(test) == 1797
    assert len(test) == 360
    assert train.features["label"].names == [str(d) for d in range(10)]
    assert isinstance(train.features["image"], datasets.Image)
    img = test[0]["image"]
    assert img.mode == "RGB" and img.size == (32, 32)
    # stratified: every class in both splits with ~20% of its images in test
    tr = np.bincount(train["label"], minlength=10)
    te = np.bincount(test["label"], minlength=10)
    assert (te > 0).all() and np.all(np.abs(te / (tr + te) - 0.2) < 0.02)


def test_digits_split_is_deterministic_and_disjoint():
    a, la = digits_arrays("train", image_size=16, seed=0)
    b, lb = digits_arrays("train", image_size=16, seed=0)
    c, _ = digits_arrays("train", image_size=16, seed=1)
    t, _ = digits_arrays("test", image_size=16, seed=0)
    assert a.shape == (1437, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    rows = {x.tobytes() for x in a}
    assert sum(x.tobytes() in rows for x in t) < 5  # the few exact duplicates of the source data


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="unknown split"):
        digits_dataset("validation")
    with pytest.raises(ValueError, match="image_size"):
        digits_dataset("train", image_size=4)
    with pytest.raises(ValueError, match="test_fraction"):
        digits_arrays("train", test_fraction=1.5)
