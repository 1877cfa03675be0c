"""From dataset rows to model inputs: decoding, RGB conversion, the image processor, batching.

Images are decoded here rather than by `datasets` (the image column is cast to
`Image(decode=False)`), so that an image that cannot be decoded is reported with its file name or
row instead of a library traceback.
"""

from __future__ import annotations

import io
import random
from typing import Any

import numpy as np
import torch
from datasets import Image as ImageFeature
from PIL import Image, ImageOps
from torch.utils.data import DataLoader
from transformers.utils import logging

from ..distributed import shard_batches

logger = logging.get_logger("hf_afr.scripts")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB.

    Grayscale is replicated into the three channels; 16-bit images (`I;16*`, and `I` holding
    values above 255, as 16-bit PNGs open) are scaled to 8 bits (`round(v * 255 / 65535)`), not
    clipped; transparency (an alpha band, or a palette or grayscale image with a transparent
    colour) is composited on white; every other mode is converted by PIL.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):
        image = _as_8_bit(image)
    if image.mode == "P" or "transparency" in image.info or {"A", "a"} & set(image.getbands()):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _as_8_bit(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit integer grayscale image as "L": 16-bit values scaled, 8-bit ones kept."""
    values = np.asarray(image).astype(np.float64)
    scale = 255 / 65535 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 1
    scaled = Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")
    if "transparency" in image.info:  # a transparent grey level, scaled alike
        scaled.info["transparency"] = round(image.info["transparency"] * scale)
    return scaled


def undecoded(dataset, image_column: str):
    """The dataset with its image column left as `{"bytes", "path"}` for `ImageTransform`."""
    return dataset.cast_column(image_column, ImageFeature(decode=False))


def decode_image(value: Any) -> Image.Image:
    """A PIL image from a `datasets` image value (decoded or not); a `ValueError` names the file."""
    if isinstance(value, Image.Image):
        return value
    path, data = value.get("path"), value.get("bytes")
    try:
        image = Image.open(io.BytesIO(data) if data is not None else path)
        image.load()
        return image
    except (OSError, ValueError, SyntaxError) as err:
        where = path or "an image stored in the dataset"
        raise ValueError(f"Cannot decode {where}: {' '.join(str(err).split())}.") from None


class ImageTransform:
    """`set_transform` function: images to RGB `pixel_values` with the image processor.

    Args:
        image_processor: the model's `AutoImageProcessor` (resizing, rescaling, normalization).
        image_column (`str`), label_column (`str`): dataset columns.
        augment (`bool`, defaults to `False`): random horizontal flips (training only).
    """

    def __init__(self, image_processor, image_column: str, label_column: str, augment=False):
        self.image_processor = image_processor
        self.image_column = image_column
        self.label_column = label_column
        self.augment = augment

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images = [to_rgb(decode_image(value)) for value in batch[self.image_column]]
        if self.augment:
            images = [ImageOps.mirror(im) if random.random() < 0.5 else im for im in images]
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": list(pixel_values), "labels": batch[self.label_column]}


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack examples into `{"pixel_values": (B, 3, H, W), "labels": (B,)}`."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
    }


def scoring_dataloader(
    train_dataset, transform: ImageTransform, batch_size: int, num_batches: int, seed: int
) -> DataLoader:
    """This process's scoring batches: `num_batches` seeded batches of the training set.

    The batches are the same whatever the number of processes; with several, each process
    gets every `world_size`-th batch (the criteria sum the gradients over processes).
    """
    n = min(len(train_dataset), batch_size * num_batches)
    if n < batch_size * num_batches:
        logger.warning(
            f"The training set has {len(train_dataset)} examples: scoring uses "
            f"{-(-n // batch_size)} batches instead of {num_batches}."
        )
    order = np.random.default_rng(seed).permutation(len(train_dataset))[:n].tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return DataLoader(
        train_dataset.with_transform(transform),
        batch_sampler=shard_batches(batches),
        collate_fn=collate_fn,
    )
