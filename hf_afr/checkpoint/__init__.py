"""Pruned checkpoints on disk: formats, the one save, readers, conversion and the model card.

Modules, one concern each:

- `formats`: the two formats and every file name (nowhere else);
- `codec`: lossless coding of a pruned tensor (mask bytes + kept values);
- `entries`: what a compact file declares, checked against the model before anything is allocated;
- `compact`: the compact weights file (writer and the one validating reader);
- `masks_file`: the masks sidecar of dense checkpoints;
- `card_data`: `PrunedCardData`, what a card reports besides the pruning (built once);
- `card`: the model card (metadata, sections, density plot);
- `save`: `save_pruned_checkpoint` (used by `AFRPruner`, the Hub push and the scripts);
- `load`: the model (quietly), image processor and pruning state of a checkpoint, and
  `inspect_checkpoint` (masks checked against weights, `hf-afr report`);
- `convert`: dense <-> compact folders (`hf-afr densify` / `hf-afr compact`);
- `loader`: transparent `from_pretrained` of compact checkpoints (registered by `import hf_afr`);
- `widths`: per-layer widths of structurally pruned models (config lists, checks, building);
- `portable`: what makes a structured folder load without hf_afr (`auto_map` + modeling file)
  and its card section; `structured_loader`: its `from_pretrained` with hf_afr installed.
"""

from ..untrusted import CheckpointError
from .card import create_model_card, merge_model_cards, save_model_card
from .card_data import PrunedCardData
from .compact import read_compact_header, read_compact_weights
from .convert import compact_checkpoint, densify_checkpoint
from .formats import (
    CHECKPOINT_FORMATS,
    COMPACT_WEIGHTS_NAME,
    DENSE_WEIGHTS_NAME,
    MASKS_NAME,
    MODEL_CARD_NAME,
    PRUNER_CONFIG_NAME,
)
from .load import (
    check_weights_follow_masks,
    inspect_checkpoint,
    load_classifier,
    load_image_processor,
    load_pruning_state,
)
from .masks_file import load_masks, save_masks
from .save import save_pruned_checkpoint

__all__ = [
    "CHECKPOINT_FORMATS",
    "CheckpointError",
    "COMPACT_WEIGHTS_NAME",
    "DENSE_WEIGHTS_NAME",
    "MASKS_NAME",
    "MODEL_CARD_NAME",
    "PRUNER_CONFIG_NAME",
    "PrunedCardData",
    "check_weights_follow_masks",
    "inspect_checkpoint",
    "load_classifier",
    "load_image_processor",
    "compact_checkpoint",
    "create_model_card",
    "densify_checkpoint",
    "load_masks",
    "load_pruning_state",
    "merge_model_cards",
    "read_compact_header",
    "read_compact_weights",
    "save_masks",
    "save_model_card",
    "save_pruned_checkpoint",
]
