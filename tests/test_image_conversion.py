"""`to_rgb` by the pixel: grayscale replicated, transparency composited on white, 16-bit scaled;
and what a training batch sees of a 16-bit PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessorPil

from hf_afr.workflow.transforms import ImageTransform, to_rgb

pytestmark = pytest.mark.usefixtures("single_thread")

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
COLOUR = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (6, 5), dtype=np.uint8)


def pixels(image: Image.Image) -> np.ndarray:
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == image.size
    return np.asarray(converted).astype(np.int64)


def on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha compositing over white, by hand: c * a + 255 * (1 - a)."""
    a = alpha[..., None] / 255.0
    return np.rint(colour * a + 255 * (1 - a)).astype(np.int64)


def test_grayscale_is_replicated():
    assert np.array_equal(pixels(Image.fromarray(GREY, "L")), np.stack([GREY] * 3, -1))
    binary = Image.fromarray(GREY > 127).convert("1")
    assert np.array_equal(pixels(binary), np.stack([(GREY > 127) * 255] * 3, -1))


def test_rgba_and_la_are_composited_on_white():
    rgba = Image.fromarray(np.dstack([COLOUR, ALPHA]), "RGBA")
    assert np.abs(pixels(rgba) - on_white(COLOUR, ALPHA)).max() <= 1
    la = Image.fromarray(np.dstack([GREY, ALPHA]), "LA")
    assert np.abs(pixels(la) - on_white(np.stack([GREY] * 3, -1), ALPHA)).max() <= 1
    premultiplied = rgba.convert("RGBa")  # alpha in a lower-case band
    assert np.abs(pixels(premultiplied) - on_white(COLOUR, ALPHA)).max() <= 2


def test_palette_transparency_is_white_and_opaque_colours_kept():
    palette = Image.fromarray(np.arange(30, dtype=np.uint8).reshape(6, 5), "P")
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    palette.info["transparency"] = 3
    out = pixels(palette)
    index = np.arange(30).reshape(6, 5)
    expected = np.stack([index, 255 - index, (7 * index) % 256], -1)
    expected[index == 3] = 255
    assert np.array_equal(out, expected)


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    noise = RNG.integers(0, 128, GREY.shape) * (GREY < 255)  # below half a step of 257
    wide = (GREY.astype(np.uint16) * 257 + noise).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    with Image.open(tmp_path / "wide.png") as image:
        assert image.mode.startswith("I")  # PIL reads 16-bit PNGs as I;16 (or I)
        out = pixels(image)
    expected = np.rint(wide / 65535 * 255).astype(np.int64)
    assert np.array_equal(out, np.stack([expected] * 3, -1))
    assert np.array_equal(out[..., 0], GREY)  # v * 257 + small noise scales back to v


def test_32_bit_image_with_8_bit_values_is_kept():
    image = Image.fromarray(GREY.astype(np.int32), "I")
    assert np.array_equal(pixels(image), np.stack([GREY] * 3, -1))


def test_a_16_bit_png_trains_as_its_8_bit_twin(tmp_path):
    Image.fromarray(GREY.astype(np.uint16) * 257).save(tmp_path / "16.png")
    Image.fromarray(GREY, "L").save(tmp_path / "8.png")
    processor = ViTImageProcessorPil(size={"height": 8, "width": 8})
    transform = ImageTransform(processor, "image", "label")
    rows = {"image": [{"path": str(tmp_path / f"{b}.png"), "bytes": None} for b in (16, 8)]}
    batch = transform({**rows, "label": [0, 0]})
    sixteen, eight = batch["pixel_values"]
    assert torch.equal(sixteen, eight)
    assert sixteen.std() > 0.1  # not a flat (clipped) image


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "HSV"])
def test_other_modes_are_converted_by_pil(mode):
    image = Image.fromarray(COLOUR, "RGB").convert(mode)
    assert np.array_equal(pixels(image), np.asarray(image.convert("RGB")))
