"""Per-layer widths of structurally pruned models: read, recorded in the config, checked, rebuilt.

A structurally pruned model is the dense model's transformers class with narrower blocks. Its
config records the widths as two plain lists, one entry per transformer block (in the order of
`hf_afr.structure.slicing.transformer_layers`):

- `config.layer_num_attention_heads`: the attention heads each block keeps;
- `config.layer_intermediate_sizes`: the MLP hidden units each block keeps.

A dense model has neither. Loading builds the dense-shaped model from the config, gives every
block its widths (`hf_afr.structure.slicing.set_widths`) and only then loads the weights, so
nothing is ever re-expanded. The per-layer sizes of a folder are checked against the shapes its
weights file declares before any weight is read: a mismatch is one line naming the file, the
layer and the config field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import nn

from ..architectures import get_architecture
from ..structure.report import HEADS_KEY as LAYER_HEADS_KEY
from ..structure.report import UNITS_KEY as LAYER_UNITS_KEY
from ..structure.slicing import get_submodule, layer_widths, set_widths, transformer_layers

WIDTH_KEYS = (LAYER_HEADS_KEY, LAYER_UNITS_KEY)


def model_widths(model: nn.Module) -> tuple[list[int], list[int]]:
    """`(heads per block, MLP units per block)` read from the model's module shapes."""
    return layer_widths(model, get_architecture(model).layout)


def config_widths(config: Any) -> tuple[list[int], list[int]] | None:
    """The per-layer widths a config records, or None for a dense model's config.

    Raises:
        `ValueError`: only one of the two lists, lists of different lengths, or an entry that is
            not a positive integer.
    """
    values = {key: _get(config, key) for key in WIDTH_KEYS}
    if all(v is None for v in values.values()):
        return None
    for key, value in values.items():
        if value is None:
            other = next(k for k in WIDTH_KEYS if k != key)
            raise ValueError(
                f"config.json has `{other}` but not `{key}`: a structurally pruned model records "
                "both per-layer lists (re-save it with hf_afr)."
            )
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
        ):
            raise ValueError(
                f"config.json `{key}` must be a list of positive integers, one per transformer "
                f"block; got {value!r}."
            )
    heads, units = (list(values[key]) for key in WIDTH_KEYS)
    if len(heads) != len(units):
        raise ValueError(
            f"config.json lists {len(heads)} head counts (`{LAYER_HEADS_KEY}`) but {len(units)} "
            f"MLP widths (`{LAYER_UNITS_KEY}`); both need one entry per transformer block."
        )
    return heads, units


def record_widths(model: nn.Module) -> tuple[list[int], list[int]]:
    """Write the model's current widths into `model.config` (both lists) and return them."""
    heads, units = model_widths(model)
    setattr(model.config, LAYER_HEADS_KEY, heads)
    setattr(model.config, LAYER_UNITS_KEY, units)
    return heads, units


def apply_config_widths(model: nn.Module) -> bool:
    """Give a dense-shaped model the widths its config records (in place; meta tensors too).

    Returns:
        `bool`: whether the config records widths (False: the model was left as it was).
    """
    widths = config_widths(model.config)
    if widths is None:
        return False
    heads, units = widths
    layout = get_architecture(model).layout
    blocks = transformer_layers(model, layout)
    if len(heads) != len(blocks):
        raise ValueError(
            f"config.json lists widths for {len(heads)} transformer blocks but "
            f"{type(model).__name__} built from it has {len(blocks)}; the lists do not belong "
            "to this config."
        )
    for i, (name, block) in enumerate(blocks.items()):
        dense_heads = int(getattr(get_submodule(block, layout.attention), layout.head_count[0]))
        dense_units = get_submodule(block, layout.fc1).out_features
        for key, value, limit in (
            (LAYER_HEADS_KEY, heads, dense_heads),
            (LAYER_UNITS_KEY, units, dense_units),
        ):
            if value[i] > limit:
                raise ValueError(
                    f"config.json `{key}[{i}]` = {value[i]} exceeds the {limit} of layer {i} "
                    f"({name}) of the dense model the config describes."
                )
    set_widths(model, layout, heads, units)
    return True


def build_structured_model(config: Any, model_class: type[nn.Module] | None = None) -> nn.Module:
    """A (randomly initialised) model of the config's family with the config's per-layer widths.

    The dense-shaped model is built from `config` and then narrowed; load a structured state
    dict into it with `load_state_dict` (its parameter count is the saved one).

    Args:
        config: a transformers config recording `layer_num_attention_heads` and
            `layer_intermediate_sizes`.
        model_class (*optional*): the class to build; defaults to the family's classifier.
    """
    if config_widths(config) is None:
        raise ValueError(
            f"The config records no per-layer widths (`{LAYER_HEADS_KEY}`, `{LAYER_UNITS_KEY}`): "
            "it describes a dense model; build it with the transformers class directly."
        )
    model_class = model_class or get_architecture(config).model_cls
    model = model_class(config)
    apply_config_widths(model)
    return model


# --------------------------------------------------------------------------- checks


def weight_file_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """`{disk key: shape}` a safetensors weights file declares (compact files: the dense shapes)."""
    from .compact import SHAPE_SUFFIX, SPARSE_SUFFIXES

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            shapes, names = {}, f.keys()
            for key in names:
                if key.endswith(SHAPE_SUFFIX):
                    shapes[key.removesuffix(SHAPE_SUFFIX)] = tuple(f.get_tensor(key).tolist())
                elif not key.endswith(SPARSE_SUFFIXES):
                    shapes[key] = tuple(f.get_slice(key).get_shape())
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"Cannot read {path}: {err}. The file is truncated or is not a safetensors file; "
            "re-save or re-download it."
        ) from None
    return shapes


def check_widths_match_weights(
    model: nn.Module, shapes: Mapping[str, Sequence[int]], source: str | os.PathLike
) -> None:
    """Check that the weights of every block have the shapes the config's widths give the model.

    Args:
        model: the model already narrowed to its config's widths (meta tensors are fine).
        shapes (`dict`): `{disk key: shape}` of the weights (`weight_file_shapes`).
        source: the weights file, named in the error.

    Raises:
        `ValueError`: one line naming the file, the layer and the config field that disagree.
    """
    from .compact import disk_state_dict

    layout = get_architecture(model).layout
    _, params = disk_state_dict(model)
    disk_key = {param: key for key, param in params.items()}
    state = model.state_dict()
    fields = {
        layout.query: LAYER_HEADS_KEY,
        layout.key: LAYER_HEADS_KEY,
        layout.value: LAYER_HEADS_KEY,
        layout.output: LAYER_HEADS_KEY,
        layout.fc1: LAYER_UNITS_KEY,
        layout.fc2: LAYER_UNITS_KEY,
    }
    for i, name in enumerate(transformer_layers(model, layout)):
        for path, key in fields.items():
            param = f"{name}.{path}.weight"
            stored = shapes.get(disk_key.get(param, param))
            expected = tuple(state[param].shape)
            if stored is not None and tuple(stored) != expected:
                value = getattr(model.config, key)[i]
                raise ValueError(
                    f"{os.fspath(source)}: layer {i} ({name}) stores {path}.weight with shape "
                    f"{list(stored)}, but config.json `{key}[{i}]` = {value} needs "
                    f"{list(expected)}; the per-layer widths and the weights do not belong together."
                )


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared tensors once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
