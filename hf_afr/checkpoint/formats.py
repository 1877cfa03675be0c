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
