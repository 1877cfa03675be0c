"""The vision transformer families hf_afr prunes: one table, keyed by `config.model_type`.

In the spirit of peft's `TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING` and transformers'
`models/auto/` mappings, everything hf_afr needs to know about a family is one
`VisionArchitecture` entry of `ARCHITECTURES`, read here and nowhere else:

- the transformers class that loads a checkpoint with a classification head (a bare backbone
  gets a new head), and for dual-encoder families the vision-only config types and class;
- the patch-embedding and head module names (`prune_patch_embeddings`, `prune_classifier`);
- the layout of its transformer blocks (`layout`): which modules are the query, key, value and
  output projections, the MLP's two Linears, the head-count attributes and the per-head tables
  (Swin's and BEiT's relative position bias), read by structured pruning and by `shrink`;
- how ReFer reads one feature vector per sample from a block's output (a hidden state of
  shape `(batch, tokens, width)`): the leading tokens that are not patches (CLS, DeiT's
  distillation token, DINOv2's registers) and the reduction the family's own classification
  head applies (`head_feature`, the `feature_token="auto"` default).

The default prunable weights need no entry: they are the `nn.Linear`s inside the encoder
blocks, found structurally as the outermost transformers `GradientCheckpointingLayer`
modules (`encoder_blocks`). Adding a family is one entry plus its tests
(`tests/test_architectures.py` builds a tiny random model of every entry); `docs/architectures.md`
gives the transformers line each `head_feature` follows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn

from .structure.slicing import BlockLayout

FEATURE_TOKENS = ("auto", "cls", "mean", "patch_mean", "cls_patch_mean")
"""`PrunerConfig.feature_token` choices; see `token_feature`."""


@dataclass(frozen=True)
class VisionArchitecture:
    """What hf_afr needs to know about one family (see the module docstring).

    Args:
        model_type (`str`): `config.model_type` of the family's classifier checkpoints.
        name (`str`): the family's name in messages.
        model_class (`str`): the transformers class with the classification head.
        head_feature (`str`): what that head reads from the last hidden state, as a
            `feature_token` choice: the `"auto"` feature of ReFer.
        cls_token (`bool`, defaults to `True`): whether token 0 is a CLS token.
        extra_tokens (`int`, defaults to 0): tokens after the CLS token that are not patches.
        register_tokens_attr (`str`, *optional*): config attribute counting further register
            tokens that are not patches.
        mean_pooling_attr (`str`, *optional*): config flag; when False the head reads the CLS
            token instead of `head_feature`.
        patch_embedding (`str`): name (dotted suffix) of the patch-embedding Conv2d.
        head (`str`, defaults to `"classifier"`): name of the classification head.
        vision_model_types (`tuple[str, ...]`): config types of vision-only checkpoints of a
            dual-encoder family (e.g. `"clip_vision_model"`), loaded with `vision_model_class`.
        vision_model_class (`str`, *optional*): the vision tower class (`CLIPVisionModel`).
        layout (`BlockLayout`, defaults to the ViT layout): attribute paths of one transformer
            block (attention projections, head counts, per-head tables, MLP Linears).
    """

    model_type: str
    name: str
    model_class: str
    head_feature: str
    cls_token: bool = True
    extra_tokens: int = 0
    register_tokens_attr: str | None = None
    mean_pooling_attr: str | None = None
    patch_embedding: str = "embeddings.patch_embeddings.projection"
    head: str = "classifier"
    vision_model_types: tuple[str, ...] = ()
    vision_model_class: str | None = None
    layout: BlockLayout = BlockLayout()

    @property
    def model_cls(self) -> type[nn.Module]:
        return getattr(transformers, self.model_class)

    def num_prefix_tokens(self, config: Any) -> int:
        """Leading tokens that are not patches: CLS, distillation and register tokens."""
        registers = getattr(config, self.register_tokens_attr) if self.register_tokens_attr else 0
        return int(self.cls_token) + self.extra_tokens + int(registers or 0)

    def default_feature(self, config: Any) -> str:
        """The feature the family's classification head reads (`feature_token="auto"`)."""
        if self.mean_pooling_attr and not getattr(config, self.mean_pooling_attr):
            return "cls"
        return self.head_feature


_TOWER = "embeddings.patch_embedding"  # CLIP and SigLIP vision towers
_TOWER_LAYOUT = BlockLayout(
    query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
    output="self_attn.out_proj", attention="self_attn", head_count=("num_heads",),
    scaling="scale",
)  # fmt: skip
_BEIT_LAYOUT = BlockLayout(head_tables=("relative_position_bias.relative_position_bias_table",))
_DATA2VEC_LAYOUT = BlockLayout(
    query="attention.attention.query", key="attention.attention.key",
    value="attention.attention.value", output="attention.output.dense",
    attention="attention.attention", head_width=("all_head_size",),
    head_tables=("attention.attention.relative_position_bias.relative_position_bias_table",),
    scaling="", fc1="intermediate.dense", fc2="output.dense",
)  # fmt: skip
_SWIN_LAYOUT = BlockLayout(
    head_tables=("attention.relative_position_bias.relative_position_bias_table",)
)

ARCHITECTURES: dict[str, VisionArchitecture] = {
    arch.model_type: arch
    for arch in (
        VisionArchitecture("vit", "ViT", "ViTForImageClassification", "cls"),
        VisionArchitecture("vit_msn", "ViT-MSN", "ViTMSNForImageClassification", "cls"),
        VisionArchitecture(
            "deit", "DeiT", "DeiTForImageClassification", "cls",
            extra_tokens=1,  # the distillation token
        ),
        VisionArchitecture("dinov2", "DINOv2", "Dinov2ForImageClassification", "cls_patch_mean"),
        VisionArchitecture(
            "dinov2_with_registers", "DINOv2 with registers",
            "Dinov2WithRegistersForImageClassification", "cls_patch_mean",
            register_tokens_attr="num_register_tokens",
        ),
        VisionArchitecture(
            "beit", "BEiT", "BeitForImageClassification", "patch_mean",
            mean_pooling_attr="use_mean_pooling", layout=_BEIT_LAYOUT,
        ),
        VisionArchitecture(
            "data2vec-vision", "Data2Vec-Vision", "Data2VecVisionForImageClassification",
            "patch_mean", mean_pooling_attr="use_mean_pooling", layout=_DATA2VEC_LAYOUT,
        ),
        VisionArchitecture(
            "ijepa", "I-JEPA", "IJepaForImageClassification", "mean", cls_token=False,
        ),
        VisionArchitecture(
            "clip", "CLIP", "CLIPForImageClassification", "patch_mean",
            patch_embedding=_TOWER, vision_model_types=("clip_vision_model",),
            vision_model_class="CLIPVisionModel", layout=_TOWER_LAYOUT,
        ),
        VisionArchitecture(
            "siglip", "SigLIP", "SiglipForImageClassification", "mean", cls_token=False,
            patch_embedding=_TOWER, vision_model_types=("siglip_vision_model",),
            vision_model_class="SiglipVisionModel", layout=_TOWER_LAYOUT,
        ),
        VisionArchitecture(
            "swin", "Swin", "SwinForImageClassification", "mean", cls_token=False,
            layout=_SWIN_LAYOUT,
        ),
    )
}  # fmt: skip

_BY_CONFIG_TYPE = {
    config_type: arch
    for arch in ARCHITECTURES.values()
    for config_type in (arch.model_type, *arch.vision_model_types)
}


def supported_model_types() -> list[str]:
    """The `model_type`s hf_afr prunes (vision-only config types of CLIP/SigLIP included)."""
    return list(_BY_CONFIG_TYPE)


def get_architecture(model_or_config: Any) -> VisionArchitecture:
    """The registry entry of a model, a config or a `model_type` string.

    Raises:
        `ValueError`: one line naming the unsupported type and listing the supported ones.
    """
    config = getattr(model_or_config, "config", model_or_config)
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    if model_type not in _BY_CONFIG_TYPE:
        described = (
            f"a {model_type!r} model"
            if model_type
            else f"a {type(model_or_config).__name__} (not a transformers model such as "
            "ViTForImageClassification)"
        )
        raise ValueError(
            f"hf_afr cannot prune {described}; supported vision transformer families "
            f"(config.model_type): {', '.join(supported_model_types())}."
        )
    return _BY_CONFIG_TYPE[model_type]


# --------------------------------------------------------------------------- features


def resolve_feature_token(config: Any, feature_token: str) -> str:
    """The concrete feature of `feature_token` for a model config (`"auto"`: the head's).

    Raises:
        `ValueError`: a CLS-based feature for a family without a CLS token, or an unknown
            choice.
    """
    arch = get_architecture(config)
    if feature_token not in FEATURE_TOKENS:
        raise ValueError(
            f"`feature_token` must be one of {', '.join(map(repr, FEATURE_TOKENS))}, "
            f"got {feature_token!r}."
        )
    feature = arch.default_feature(config) if feature_token == "auto" else feature_token
    if feature.startswith("cls") and not arch.cls_token:
        raise ValueError(
            f"feature_token={feature_token!r} reads a CLS token, but {arch.name} has none; "
            "use 'auto', 'mean' or 'patch_mean'."
        )
    return feature


def token_feature(hidden_state: torch.Tensor, feature: str, num_prefix_tokens: int) -> torch.Tensor:
    """One float32 feature vector per sample from a `(batch, tokens, width)` hidden state.

    Args:
        hidden_state (`torch.Tensor`): a block's output.
        feature (`str`): `"cls"` (token 0), `"mean"` (all tokens), `"patch_mean"` (the tokens
            after the `num_prefix_tokens` non-patch tokens) or `"cls_patch_mean"` (the CLS
            token concatenated with the patch mean).
        num_prefix_tokens (`int`): leading tokens that are not patches.
    """
    if feature == "cls":
        return hidden_state[:, 0, :].float()
    if feature == "mean":
        return hidden_state.float().mean(dim=1)
    patch_mean = hidden_state[:, num_prefix_tokens:, :].float().mean(dim=1)
    if feature == "patch_mean":
        return patch_mean
    if feature == "cls_patch_mean":
        return torch.cat([hidden_state[:, 0, :].float(), patch_mean], dim=1)
    raise ValueError(f"Unknown feature {feature!r}; choose one of {FEATURE_TOKENS[1:]}.")


def feature_reader(config: Any, feature_token: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """`hidden_state -> (batch, D)` float32 features of a model config's family."""
    feature = resolve_feature_token(config, feature_token)
    prefix = get_architecture(config).num_prefix_tokens(config)
    return lambda hidden_state: token_feature(hidden_state, feature, prefix)


# --------------------------------------------------------------------------- modules


def encoder_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """`{name: block}` of the encoder blocks: the outermost `GradientCheckpointingLayer`s.

    A ViT's `ViTLayer`s, CLIP's `CLIPEncoderLayer`s, Swin's `SwinStage`s (each with its blocks
    and its patch-merging layer), in model order.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, GradientCheckpointingLayer) and not any(
            name.startswith(f"{outer}.") for outer in blocks
        ):
            blocks[name] = module
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no transformers GradientCheckpointingLayer modules, so "
            "its encoder blocks cannot be found; pass `target_modules` explicitly."
        )
    return blocks


def module_names(model: nn.Module, suffix: str, kind: type[nn.Module]) -> list[str]:
    """Names of the modules of type `kind` named `suffix` or ending in `.suffix`."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, kind) and (name == suffix or name.endswith(f".{suffix}"))
    ]
