"""Tiny random models of every family in `hf_afr.architectures.ARCHITECTURES` (no download).

Every registry entry needs a tiny config here: the parametrized tests in
`test_architectures.py` fail with a KeyError for a family added without one.
"""

from __future__ import annotations

import torch
import transformers as T

from hf_afr.architectures import ARCHITECTURES

FAMILIES = list(ARCHITECTURES)
IMAGE_SIZE = 32
_VIT = dict(
    image_size=IMAGE_SIZE,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
)
_DINOV2 = {k: v for k, v in _VIT.items() if k != "intermediate_size"} | {"mlp_ratio": 2}
_TEXT = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=64,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)


def tiny_config(model_type: str, num_labels: int = 3, **overrides):
    """The classifier config of a 2-block (Swin: 2 stages x 2 blocks) model on 32 px images."""
    labels = {"num_labels": num_labels}
    if model_type in ("clip", "siglip"):
        prefix = "CLIP" if model_type == "clip" else "Siglip"
        vision = {**_VIT, **overrides}
        config_cls = getattr(T, f"{prefix}Config")
        return config_cls(vision_config=vision, text_config=_TEXT, **labels)
    if model_type == "swin":
        swin = dict(
            image_size=IMAGE_SIZE,
            patch_size=2,
            embed_dim=16,
            depths=[2, 2],
            num_heads=[2, 2],
            window_size=4,
        )
        return T.SwinConfig(**{**swin, **overrides}, **labels)
    config_cls, kwargs = {
        "vit": (T.ViTConfig, _VIT),
        "vit_msn": (T.ViTMSNConfig, _VIT),
        "deit": (T.DeiTConfig, _VIT),
        "dinov2": (T.Dinov2Config, _DINOV2),
        "dinov2_with_registers": (
            T.Dinov2WithRegistersConfig,
            _DINOV2 | {"num_register_tokens": 3},
        ),
        "beit": (T.BeitConfig, _VIT | {"use_mean_pooling": True}),
        "data2vec-vision": (T.Data2VecVisionConfig, _VIT | {"use_mean_pooling": True}),
        "ijepa": (T.IJepaConfig, _VIT),
    }[model_type]
    return config_cls(**{**kwargs, **labels, **overrides})


def tiny_classifier(model_type: str, num_labels: int = 3, seed: int = 0, **overrides):
    """A random `*ForImageClassification` of the family, in eval mode."""
    torch.manual_seed(seed)
    config = tiny_config(model_type, num_labels, **overrides)
    return ARCHITECTURES[model_type].model_cls(config).eval()


BACKBONES = {  # bare checkpoints that get a new head: (family, class name)
    "vit": "ViTModel",
    "vit_msn": "ViTMSNModel",
    "deit": "DeiTModel",
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "beit": "BeitModel",
    "data2vec-vision": "Data2VecVisionModel",
    "ijepa": "IJepaModel",
    "clip": "CLIPModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipModel",
    "siglip_vision_model": "SiglipVisionModel",
    "swin": "SwinModel",
}


def tiny_backbone(kind: str, seed: int = 0):
    """A random bare backbone (`BACKBONES[kind]`), e.g. a `Dinov2Model` or a `CLIPVisionModel`."""
    torch.manual_seed(seed)
    family = kind.removesuffix("_vision_model")
    config = tiny_config(family)
    if kind.endswith("_vision_model"):
        config = config.vision_config
    return getattr(T, BACKBONES[kind])(config).eval()


def tiny_image_processor(model_type: str):
    """The family's own (PIL) image processor class, producing 32 x 32 pixel values."""
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    crop = {"size": {"shortest_edge": IMAGE_SIZE + 4}, "crop_size": square}
    cls, kwargs = {
        "deit": (
            T.DeiTImageProcessorPil,
            {"size": {"height": 36, "width": 36}, "crop_size": square},
        ),
        "dinov2": (T.BitImageProcessorPil, crop),
        "dinov2_with_registers": (T.BitImageProcessorPil, crop),
        "beit": (T.BeitImageProcessorPil, {"size": square}),
        "data2vec-vision": (T.BeitImageProcessorPil, {"size": square}),
        "clip": (T.CLIPImageProcessorPil, crop),
        "siglip": (T.SiglipImageProcessorPil, {"size": square}),
    }.get(model_type, (T.ViTImageProcessorPil, {"size": square}))
    return cls(**kwargs)


def tiny_batches(n_batches: int = 2, batch_size: int = 5, num_labels: int = 3, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
            "labels": torch.randint(0, num_labels, (batch_size,), generator=generator),
        }
        for _ in range(n_batches)
    ]
