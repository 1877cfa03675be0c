"""The checkpoint formats and the files that make them up: named here and nowhere else.

- `"dense"`: a standard transformers checkpoint (zeros in the pruned places) plus the masks as a
  packed bitmask (`pruning_masks.safetensors`). Loads anywhere, hf_afr or not.
- `"compact"`: `model.compact.safetensors`, each pruned tensor as an encoded mask plus its kept
  values; `config.json` routes `from_pretrained` to hf_afr's loader.

Both carry `pruner_config.json`, the model card (`README.md`) and its density plot. A
structurally pruned model (per-layer widths in `config.json`) saved in the dense format also
carries `modeling_hf_afr_structured.py`, the self-contained loader `auto_map` names for
`trust_remote_code=True` users without hf_afr.
"""

from __future__ import annotations

import glob
import os

from ..files import contained_file, read_json_object
from ..untrusted import CheckpointError, describe

CHECKPOINT_FORMATS = ("dense", "compact")

CONFIG_NAME = "config.json"
PRUNER_CONFIG_NAME = "pruner_config.json"
DENSE_WEIGHTS_NAME = "model.safetensors"
MASKS_NAME = "pruning_masks.safetensors"
COMPACT_WEIGHTS_NAME = "model.compact.safetensors"
MODEL_CARD_NAME = "README.md"
DENSITY_PLOT_NAME = "sparsity_per_layer.png"
IMAGE_PROCESSOR_NAME = "preprocessor_config.json"
REMOTE_CODE_NAME = "modeling_hf_afr_structured.py"
# `config.json`'s `quantization_config.quant_method` of a compact checkpoint.
COMPACT_QUANT_METHOD = "hf_afr_compact"

# Every file name (or glob) a transformers save may write for the weights.
DENSE_WEIGHT_PATTERNS = (
    DENSE_WEIGHTS_NAME,
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "pytorch_model.bin",
)


def check_format(checkpoint_format: str) -> str:
    """Return `checkpoint_format` if it is a known format, else raise a `ValueError`."""
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(
            f"`checkpoint_format` must be one of {', '.join(map(repr, CHECKPOINT_FORMATS))}, "
            f"got {checkpoint_format!r}."
        )
    return checkpoint_format


def weights_file(checkpoint_format: str) -> str:
    """The (first) weights file of a checkpoint in this format."""
    return (
        COMPACT_WEIGHTS_NAME if check_format(checkpoint_format) == "compact" else DENSE_WEIGHTS_NAME
    )


def other_format_files(checkpoint_format: str) -> tuple[str, ...]:
    """Files (globs) of the other format, removed when a folder is saved in this one."""
    if check_format(checkpoint_format) == "compact":
        return (*DENSE_WEIGHT_PATTERNS, MASKS_NAME, REMOTE_CODE_NAME)
    return (COMPACT_WEIGHTS_NAME,)


def read_config_file(path: str | os.PathLike) -> dict:
    """A checkpoint's `config.json`, read bounded, with the fields hf_afr reads checked.

    transformers parses the file again; reading it first keeps a hostile file (too deep, too
    large, a `quantization_config` that is not an object) from reaching it.

    Raises:
        CheckpointError: naming the file and the field.
    """
    config = read_json_object(path)
    quantization = config.get("quantization_config")
    if quantization is not None and not isinstance(quantization, dict):
        raise CheckpointError(
            path, "quantization_config", f"must be a JSON object, got {describe(quantization)}."
        )
    return config


def folder_weights(folder: str | os.PathLike) -> tuple[str, str]:
    """`(format, file)` of a local pruned checkpoint: the format `from_pretrained` loads, as
    `config.json` declares it, and the file holding its masks (the compact weights, or the masks
    sidecar of a dense checkpoint).

    Raises:
        CheckpointError: if `config.json` is malformed or the file it implies is absent.
    """
    folder = os.fspath(folder)
    config_path = contained_file(folder, CONFIG_NAME)
    quantization = read_config_file(config_path).get("quantization_config") if config_path else None
    if (quantization or {}).get("quant_method") == COMPACT_QUANT_METHOD:
        found = contained_file(folder, COMPACT_WEIGHTS_NAME)
        if found is None:
            raise CheckpointError(
                config_path,
                "quantization_config",
                f"declares a compact checkpoint, but {folder} has no {COMPACT_WEIGHTS_NAME}.",
            )
        return "compact", found
    found = contained_file(folder, MASKS_NAME)
    if found is None:
        extra = f" ({COMPACT_WEIGHTS_NAME} is there, but config.json does not declare it)"
        raise CheckpointError(
            folder,
            None,
            f"holds neither {MASKS_NAME} nor a compact checkpoint declared by {CONFIG_NAME}: not "
            f"pruned by hf_afr{extra if contained_file(folder, COMPACT_WEIGHTS_NAME) else ''}.",
        )
    return "dense", found


def check_one_format(folder: str | os.PathLike) -> None:
    """Raise a `CheckpointError` if a folder holds the weights of both formats."""
    folder = os.fspath(folder)
    dense = sorted(
        name for pattern in DENSE_WEIGHT_PATTERNS for name in glob.glob(pattern, root_dir=folder)
    )
    if dense and os.path.lexists(os.path.join(folder, COMPACT_WEIGHTS_NAME)):
        raise CheckpointError(
            folder,
            None,
            f"holds the weights of both formats ({COMPACT_WEIGHTS_NAME} and {dense[0]}); "
            f"`from_pretrained` reads the one {CONFIG_NAME} declares. Remove the other first.",
        )
