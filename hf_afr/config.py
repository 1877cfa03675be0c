"""`PrunerConfig`: every option of a pruning run, serialisable as `pruner_config.json`."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from transformers.utils import logging

from .architectures import FEATURE_TOKENS
from .config_checks import (
    CONTROLS,  # noqa: F401 - re-exported
    as_float,
    check_choice,
    check_control,
    check_count,
)
from .criteria import criteria_help, get_criterion
from .files import atomic_write_text, read_json_object, resolve_file
from .masks import parse_pattern  # noqa: F401 - re-exported
from .untrusted import CheckpointError, check_field_types
from .version import __version__

logger = logging.get_logger(__name__)

SCOPES = ("global", "layerwise")
FEATURE_LAYERS = ("encoder", "all")
STRUCTURES = ("mlp", "heads", "heads+mlp")
GROUP_RANKINGS = ("per_kind", "per_layer", "pooled")
GROUP_METHODS = ("afr", "snip", "refer", "fisher", "magnitude", "random")
"""The criteria that score whole heads and MLP units (`hf_afr.structure.scores`)."""
SAVED_BEFORE_OPTION = {"fit_head": False, "feature_center": False}
"""What a saved `pruner_config.json` that lacks one of these options was made with."""


@dataclass
class PrunerConfig:
    """Configuration of a single-shot pruning run.

    Every field has a `help` entry, so the class can be handed to `HfArgumentParser`.

    Example:
        ```python
        >>> from hf_afr import PrunerConfig
        >>> config = PrunerConfig(method="afr", sparsity=0.9, num_batches=4)
        >>> config.save_pretrained("pruned-vit")  # writes pruned-vit/pruner_config.json
        ```
    """

    method: str = field(
        default="afr",
        metadata={"help": criteria_help()},
    )
    sparsity: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of prunable weights set to zero, in [0, 1). Default: 0.9, or "
            "1 - N/M with `pattern`."
        },
    )
    scope: str = field(
        default="global",
        metadata={
            "help": "'global': one ranking over all prunable weights (as in the paper); "
            "'layerwise': every prunable tensor is pruned to `sparsity` on its own."
        },
    )
    target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules whose weights are prunable. Each entry matches a module name exactly, "
            "as a dotted suffix (e.g. 'q_proj') or as a full regular expression. Default: every "
            "nn.Linear inside the encoder blocks (see docs/architectures.md)."
        },
    )
    exclude_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules never pruned, matched like `target_modules`."},
    )
    prune_patch_embeddings: bool = field(
        default=False,
        metadata={"help": "Also prune the patch-embedding projection (Conv2d) weight."},
    )
    prune_classifier: bool = field(
        default=False,
        metadata={"help": "Also prune the classifier head weight."},
    )
    feature_token: str = field(
        default="auto",
        metadata={
            "help": "ReFer/AFR: the per-sample feature of a layer's output h. 'auto': what the "
            "family's classification head reads (the CLS token for ViT and DeiT, the patch mean "
            "for CLIP and BEiT, the token mean for SigLIP, I-JEPA and Swin, CLS + patch mean "
            "for DINOv2; recorded as the concrete choice when a pruner is built); 'cls': the "
            "CLS token h[:, 0, :]; 'mean': the mean over all tokens; 'patch_mean': the mean "
            "over the patch tokens (without CLS, distillation and register tokens); "
            "'cls_patch_mean': the CLS token concatenated with the patch mean."
        },
    )
    feature_layers: str = field(
        default="encoder",
        metadata={
            "help": "ReFer/AFR: hidden states whose feature matrices enter the objective. "
            "'encoder': the outputs of the L encoder blocks (Swin: of its stages); 'all': the "
            "embedding output too."
        },
    )
    feature_center: bool | None = field(
        default=None,
        metadata={
            "help": "ReFer/AFR: subtract each layer's mean feature over the batch's samples "
            "before taking the singular values, so that the objective measures how the "
            "features spread across samples, without their common mean. None (default): on "
            "with a `structure`, off without (the paper's objective)."
        },
    )
    num_batches: int = field(
        default=4,
        metadata={
            "help": "Number of scoring batches taken from the data. Gradients add up over "
            "batches; for ReFer the objective is the sum of per-batch objectives."
        },
    )
    micro_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Split each scoring batch into micro-batches of this size to bound memory. "
            "The scores are exactly those of the whole batch (ReFer included)."
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute each encoder layer's activations during the scoring backward "
            "instead of storing them: less memory, one more layer forward per backward pass. "
            "The scores are unchanged (no dropout is enabled); the model's own checkpointing "
            "settings are left as they are."
        },
    )
    pattern: str | None = field(
        default=None,
        metadata={
            "help": "Semi-structured N:M sparsity, e.g. '2:4': in every prunable weight, each run "
            "of M consecutive weights along the input dimension keeps its N best-scored weights "
            "(any criterion). Fixes the sparsity at 1 - N/M (an explicit different `sparsity` is "
            "an error) and makes `scope` irrelevant, since every tensor gets that sparsity."
        },
    )
    min_density: float = field(
        default=0.0,
        metadata={
            "help": "Guard against fully pruned tensors: every prunable tensor keeps at least "
            "this fraction of its weights. 0 (off) reproduces the paper's global allocation."
        },
    )
    synflow_iterations: int = field(
        default=100,
        metadata={
            "help": "SynFlow: number of score-and-prune rounds; round k prunes to "
            "1 - (1 - sparsity)^(k/n) and rescores the remaining weights (1: one-shot)."
        },
    )
    control: str | None = field(
        default=None,
        metadata={
            "help": "Sanity-check control of the criterion's masks (Frankle et al., 2021): "
            "'shuffle' (the criterion's kept count per tensor at random positions, seeded by "
            "`seed`), 'invert' (keep the lowest-scored weights instead of the highest) or "
            "'magnitude_inside' (the criterion's kept count per tensor, chosen by |w|)."
        },
    )
    structure: str | None = field(
        default=None,
        metadata={
            "help": "Structured pruning: None (individual weights), 'mlp' (MLP hidden units), "
            "'heads' (attention heads) or 'heads+mlp'. Removes whole groups so that `sparsity` of "
            "the prunable weights go, leaving a smaller dense model of the same class; methods "
            f"{', '.join(GROUP_METHODS)}. See docs/structured.md."
        },
    )
    min_units: int = field(
        default=1,
        metadata={"help": "Structured pruning: MLP hidden units every block keeps at least."},
    )
    round_to: int = field(
        default=1,
        metadata={
            "help": "Structured pruning: round each block's kept MLP units to a multiple of "
            "this (e.g. 8 or 64 for hardware-friendly shapes)."
        },
    )
    group_ranking: str = field(
        default="per_kind",
        metadata={
            "help": "Structured pruning: 'per_kind' ranks heads with heads and units with "
            "units across all blocks, each kind losing `sparsity` of its weights; 'per_layer' "
            "also has every block lose that fraction of its heads and of its units (its "
            "lowest-scored ones); 'pooled' ranks all groups together by score per weight. "
            "AFR's z-scores are taken over the groups that compete."
        },
    )
    rounds: int = field(
        default=1,
        metadata={
            "help": "Structured pruning: remove the groups in this many rounds, each scoring "
            "what the previous rounds left (the density falls geometrically to 1 - sparsity, "
            "as in SNIP-it and FORCE); 1: one shot. Costs one scoring pass per round."
        },
    )
    fit_head: bool | None = field(
        default=None,
        metadata={
            "help": "Score through a classification head fitted to the scoring batches "
            "(logistic regression on the features it reads) instead of the model's head, which "
            "before fine-tuning is usually new and random; the model is not changed. Applies to "
            "criteria that read the loss. None (default): on with a `structure`, off without "
            "(the paper's setting). Set False when the head is already trained for the task."
        },
    )
    seed: int = field(
        default=42,
        metadata={
            "help": "Seed for the 'random' criterion, the 'shuffle' control and any sampling "
            "while scoring."
        },
    )

    def __post_init__(self) -> None:
        get_criterion(self.method)  # an unknown method is a ValueError naming the known ones
        self._resolve_pattern_and_sparsity()
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(
                f"`sparsity` must be in [0, 1) (the fraction of prunable weights set to zero), "
                f"got {self.sparsity}. For 90% sparsity pass 0.9."
            )
        check_choice("scope", self.scope, SCOPES)
        check_choice("feature_token", self.feature_token, FEATURE_TOKENS)
        check_choice("feature_layers", self.feature_layers, FEATURE_LAYERS)
        for name in ("num_batches", "synflow_iterations", "min_units", "round_to", "rounds"):
            check_count(name, getattr(self, name))
        check_control(self.control)
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(
                f"`micro_batch_size` must be a positive integer or None, got {self.micro_batch_size}."
            )
        self.min_density = as_float("min_density", self.min_density)
        if not 0.0 <= self.min_density <= 1.0 - self.sparsity:
            raise ValueError(
                f"`min_density` must be in [0, 1 - sparsity] = [0, {1.0 - self.sparsity:.4g}], "
                f"got {self.min_density}: no allocation could keep that much of every tensor."
            )
        self._check_structure()
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])
            elif value is not None and not all(isinstance(v, str) for v in value):
                raise ValueError(f"`{name}` must be a list of strings, got {value!r}.")

    def _check_structure(self) -> None:
        check_choice("group_ranking", self.group_ranking, GROUP_RANKINGS)
        for name in ("fit_head", "feature_center"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True, False or None, got {value!r}.")
        if self.structure is None:
            if self.rounds != 1:
                raise ValueError(
                    f"`rounds` ({self.rounds}) applies to structured pruning; set `structure` "
                    "or leave `rounds` at 1."
                )
            return
        check_choice("structure", self.structure, STRUCTURES)
        if self.method not in GROUP_METHODS:
            raise ValueError(
                f"structure={self.structure!r} scores whole heads/units with one of "
                f"{', '.join(GROUP_METHODS)}; got method={self.method!r}."
            )
        clashes = {
            "pattern": self.pattern is not None,
            "control": self.control is not None,
            "scope": self.scope != "global",
            "min_density": self.min_density != 0.0,
        }
        for name, clash in clashes.items():
            if clash:
                raise ValueError(
                    f"`{name}` applies to individual weights and cannot be combined with "
                    f"structure={self.structure!r}; leave it at its default (prune the smaller "
                    "model again with a second AFRPruner for weights inside what remains)."
                )

    def _resolve_pattern_and_sparsity(self) -> None:
        if self.pattern is None:
            self.sparsity = 0.9 if self.sparsity is None else as_float("sparsity", self.sparsity)
            return
        n, m = parse_pattern(self.pattern)
        self.pattern = f"{n}:{m}"
        implied = 1.0 - n / m
        if self.sparsity is not None:
            sparsity = as_float("sparsity", self.sparsity)
            if abs(sparsity - implied) > 1e-9:
                raise ValueError(
                    f"`pattern` {self.pattern!r} fixes the sparsity at 1 - {n}/{m} = {implied:.4g}, "
                    f"but `sparsity` is {sparsity}; leave `sparsity` unset or pass {implied:.4g}."
                )
        self.sparsity = implied

    @property
    def pattern_nm(self) -> tuple[int, int] | None:
        """`pattern` as a tuple `(N, M)`, or None without a pattern."""
        return None if self.pattern is None else parse_pattern(self.pattern)

    @property
    def fits_head(self) -> bool:
        """Whether scoring goes through a head fitted to the scoring batches (`fit_head`)."""
        fit = self.structure is not None if self.fit_head is None else self.fit_head
        return fit and get_criterion(self.method).needs_labels

    @property
    def centers_features(self) -> bool:
        """Whether ReFer's feature matrices are centred over the samples (`feature_center`)."""
        return self.structure is not None if self.feature_center is None else self.feature_center

    @property
    def needs_data(self) -> bool:
        """Whether the criterion reads batches (SNIP, ReFer, AFR) or only the weights."""
        return get_criterion(self.method).needs_data

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (lists copied)."""
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        """The config as sorted, indented JSON with the hf_afr version that wrote it."""
        return (
            json.dumps({**self.to_dict(), "hf_afr_version": __version__}, indent=2, sort_keys=True)
            + "\n"
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write `pruner_config.json` (sorted keys, library version recorded) into a folder."""
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` must be a folder, but {save_directory} is a file.")
        from .checkpoint.formats import PRUNER_CONFIG_NAME

        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, PRUNER_CONFIG_NAME)
        atomic_write_text(path, self.to_json_string())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrunerConfig:
        """Build a config, dropping (with a warning) keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in known and k != "hf_afr_version")
        if unknown:
            logger.warning(f"Ignoring unknown keys in the pruner config: {', '.join(unknown)}.")
        if "hf_afr_version" in data:  # a saved config without these options predates them
            data = {**SAVED_BEFORE_OPTION, **data}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **hub_kwargs: Any) -> PrunerConfig:
        """Load `pruner_config.json` from a local folder, a file path or a Hub repository id.

        Args:
            name_or_path (`str` or `os.PathLike`): a folder holding `pruner_config.json`, the
                file itself, or a Hub repo id.
            hub_kwargs: passed to `huggingface_hub.hf_hub_download` (`revision`, `token`, ...).
        """
        from .checkpoint.formats import PRUNER_CONFIG_NAME

        name_or_path = os.fspath(name_or_path)
        if os.path.isfile(name_or_path):
            path = name_or_path
        else:
            path = resolve_file(name_or_path, PRUNER_CONFIG_NAME, **hub_kwargs)
        data = read_json_object(path)
        check_field_types(cls, data, path)
        try:
            return cls.from_dict(data)
        except CheckpointError:
            raise
        except (ValueError, TypeError) as err:
            raise CheckpointError(path, None, str(err)) from None
