"""`AFRPruner`: load a vision transformer, score its prunable weights, select and apply the masks."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig
from transformers.utils import logging

from .architectures import get_architecture, resolve_feature_token
from .checkpoint.card import create_model_card
from .checkpoint.card_data import PrunedCardData
from .checkpoint.load import (
    check_local_checkpoint,
    is_compact_config,
    load_classifier,
    load_image_processor,
    load_pruning_state,
)
from .checkpoint.save import save_pruned_checkpoint
from .config import PrunerConfig
from .controls import controlled_masks
from .criteria import get_criterion
from .criteria.head_fit import scoring_head
from .distributed import check_equal_batch_counts
from .files import check_local_folder
from .hub import push_to_hub
from .masks import apply_masks, check_scores, nonzero_where_pruned
from .report import SparsityReport
from .sharding import has_dtensor_parameters, unsharded_copy
from .structure.prune import prune_structure
from .structure.report import (
    StructureReport,
    is_structured,
    structure_card_section,
    structure_report,
)
from .targets import find_prunable_parameters

logger = logging.get_logger(__name__)


class AFRPruner:
    """Pruning of a vision transformer classifier before fine-tuning (AFR, SNIP, ReFer, ...).

    Works on every family of `hf_afr.architectures.ARCHITECTURES` (ViT, DeiT, DINOv2, BEiT,
    CLIP, SigLIP, Swin, ...), as its transformers `*ForImageClassification` model.

    Example:
        ```python
        >>> from hf_afr import AFRPruner, PrunerConfig
        >>> pruner = AFRPruner.from_pretrained(
        ...     "google/vit-base-patch16-224", PrunerConfig(method="afr", sparsity=0.9), num_labels=10
        ... )
        >>> masks = pruner.prune(train_dataloader)  # batches of {"pixel_values", "labels"}
        >>> print(pruner.sparsity_report())
        >>> pruner.save_pretrained("vit-b16-afr90")
        ```
    """

    def __init__(self, model: nn.Module, config: PrunerConfig | None = None):
        arch = get_architecture(model)
        if not isinstance(model, arch.model_cls):
            raise ValueError(
                f"AFRPruner works on a {arch.name} model as transformers' {arch.model_class}, "
                f"got {type(model).__name__}; load the checkpoint with AFRPruner.from_pretrained."
            )
        if config is not None and not isinstance(config, PrunerConfig):
            raise ValueError(f"`config` must be a PrunerConfig, got {type(config).__name__}.")
        self.model = model
        self.config = _with_concrete_feature(config or PrunerConfig(), model.config)
        self.params = find_prunable_parameters(model, self.config)
        self.masks: dict[str, torch.Tensor] = {}
        # Hub id of the unpruned model, for model cards (set by `from_pretrained`).
        self.base_model: str | None = None
        # The checkpoint's image processor, saved with the model (set by `from_pretrained`).
        self.image_processor: Any | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        config: PrunerConfig | None = None,
        **model_kwargs: Any,
    ) -> AFRPruner:
        """Load a vision transformer from the Hub or a local folder, ready to prune.

        Args:
            name_or_path (`str` or `os.PathLike`): Hub id (e.g. `"google/vit-base-patch16-224"`,
                `"facebook/dinov2-base"`) or local folder of a checkpoint of a supported family
                (`hf_afr.architectures.supported_model_types()`): a classifier, a bare backbone
                (`ViTModel` as `facebook/dino-vitb16`, `Dinov2Model`, `CLIPModel`,
                `CLIPVisionModel`, `SwinModel`, ...; it gets a new head) or a checkpoint pruned
                by hf_afr, dense or compact (whose config and masks are restored).
            config (`PrunerConfig`, *optional*): pruning options; defaults to the checkpoint's
                `pruner_config.json` if it has one, else `PrunerConfig()`.
            model_kwargs: passed to the family's `*ForImageClassification.from_pretrained`
                (`num_labels`, `id2label`, `label2id`, `dtype`, `revision`, ...). A classifier
                head whose size does not match `num_labels` is replaced by a new one.
        """
        name_or_path = os.fspath(name_or_path)
        check_local_folder(name_or_path)  # a mistyped path: not "Repo id must be in the form"
        hub_kwargs = {
            k: model_kwargs[k] for k in ("revision", "token", "cache_dir") if k in model_kwargs
        }
        if os.path.isdir(name_or_path):
            check_local_checkpoint(name_or_path)
        model_config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
        model = load_classifier(name_or_path, model_config, model_kwargs)
        saved_config, saved_masks = load_pruning_state(
            name_or_path, is_compact=is_compact_config(model_config), model=model, **hub_kwargs
        )
        pruner = cls(model, config if config is not None else saved_config)
        if saved_masks is not None:
            stray = nonzero_where_pruned(dict(model.named_parameters()), saved_masks)
            if stray:
                logger.warning(
                    f"{name_or_path}: {sum(stray.values())} weights are nonzero where the saved "
                    f"masks prune them (in {', '.join(list(stray)[:3])}); the masks are applied."
                )
            pruner.set_masks(saved_masks)
        if saved_config is None and not os.path.isdir(name_or_path):
            pruner.base_model = name_or_path
        pruner.image_processor = load_image_processor(name_or_path, **hub_kwargs)
        return pruner

    def compute_scores(
        self, batches: Iterable[Mapping[str, Any]] | None = None, show_progress: bool = True
    ) -> dict[str, torch.Tensor]:
        """Score every prunable weight with `config.method`; changes no weight.

        Args:
            batches: iterable of dicts with `pixel_values` (and `labels` for SNIP, AFR, GraSP and
                Fisher), e.g. a `DataLoader`; the first `config.num_batches` are used. Not needed
                for the data-free criteria ("synflow", "magnitude", "random").
            show_progress (`bool`, defaults to `True`): show a progress bar (also silenced by
                `transformers.utils.logging.disable_progress_bar()`).

        Returns:
            `dict[str, Tensor]`: float32 scores keyed by `model.named_parameters()` names.
        """
        criterion = get_criterion(self.config.method)
        batches = self._scoring_batches(batches, criterion.needs_data, show_progress)
        with scoring_head(self.model, batches, self.config) as batches:
            scores = criterion.score(self.model, batches, self.params, self.config)
        check_scores(scores, self.params)
        return scores

    def _scoring_batches(self, batches, needs_data: bool, show_progress: bool):
        """The first `config.num_batches` batches behind a progress bar (None if not needed)."""
        if not needs_data:
            return batches
        if batches is None:
            raise ValueError(
                f"Method {self.config.method!r} needs scoring batches; pass `batches`."
            )
        if has_dtensor_parameters(self.model):  # FSDP2: a collective per backward
            device = next(self.model.parameters()).to_local().device
            check_equal_batch_counts(batches, self.config.num_batches, device)
        return logging.tqdm(
            itertools.islice(batches, self.config.num_batches),
            total=self.config.num_batches,
            desc=f"Scoring ({self.config.method})",
            disable=not show_progress,
            unit="batch",
        )

    def prune(
        self, batches: Iterable[Mapping[str, Any]] | None = None, show_progress: bool = True
    ) -> dict[str, torch.Tensor]:
        """Score, select the masks (True = kept) and zero the pruned weights of `self.model`.

        The masks keep the highest scores (`hf_afr.masks.select_masks`), changed by
        `config.control` when a sanity-check control is set (`hf_afr.controls`).

        With `config.structure` set, whole heads and/or MLP units are removed instead
        (`hf_afr.structure`): `self.model` becomes a smaller dense model of the same class, its
        config records the widths per block, and no masks are returned (an empty dict). Prune
        individual weights of what remains with a second `AFRPruner(pruner.model, ...)`.
        """
        if self.config.structure is not None:
            return self._prune_structure(batches, show_progress)
        scores = self.compute_scores(batches, show_progress=show_progress)
        self.set_masks(controlled_masks(scores, self.params, self.config))
        report = self.sparsity_report()
        if report.fully_pruned:
            logger.warning(
                f"{len(report.fully_pruned)} prunable tensors are 100% pruned: "
                f"{', '.join(report.fully_pruned)}. Each outputs only its bias: an empty key "
                "projection makes attention uniform, an empty query projection makes every token "
                "attend alike (uniformly if its bias is zero), an empty value, output or MLP "
                "projection adds a constant. Set "
                "`min_density` in PrunerConfig to keep a floor of weights in every tensor."
            )
        return self.masks

    def _prune_structure(self, batches, show_progress: bool) -> dict[str, torch.Tensor]:
        if is_structured(self.model.config):
            raise ValueError(
                "This model was already pruned structurally; load the dense checkpoint to prune "
                "it again, or prune individual weights with a config without `structure`."
            )
        batches = self._scoring_batches(batches, self.config.needs_data, show_progress)
        total = sum(p.numel() for p in self.params.values())
        prune_structure(self.model, batches, self.config, total)
        self.params = find_prunable_parameters(self.model, self.config)
        self.masks = {}
        logger.info(f"Structured pruning ({self.config.structure}):\n{self.sparsity_report()}")
        return self.masks

    @property
    def is_pruned(self) -> bool:
        """Whether the model has masks or was pruned structurally (smaller widths)."""
        return bool(self.masks) or is_structured(self.model.config)

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Install masks (True = kept) for the prunable parameters and apply them."""
        missing = set(masks) ^ set(self.params)
        if missing:
            raise ValueError(
                f"The masks do not match the prunable parameters of this model/config; "
                f"differing names: {sorted(missing)[:5]}."
            )
        apply_masks(self.params, masks)
        self.masks = {
            name: masks[name].to(self.params[name].device, torch.bool) for name in self.params
        }

    def sparsity_report(self) -> SparsityReport | StructureReport:
        """Global and per-tensor sparsity of the current masks; for a structurally pruned model
        without masks, its `StructureReport` (heads and units per block, parameters, MACs)."""
        if not self.masks and is_structured(self.model.config):
            return structure_report(self.model.config)
        self._check_pruned()
        return SparsityReport.from_masks(self.masks)

    def _check_pruned(self) -> None:
        if not self.is_pruned:
            raise ValueError(
                "The model has not been pruned yet: call `prune(batches)` first (an unpruned "
                "model saves with `pruner.model.save_pretrained`)."
            )

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        checkpoint_format: str = "dense",
        *,
        image_processor: Any | None = None,
        model_card: bool = True,
        card_data: PrunedCardData | None = None,
        model_card_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Save the pruned model, its pruning config, masks, image processor and model card.

        Every file is written to a staging folder first and then moved in place, weights before
        `config.json`: an interrupted save leaves the folder as it was.

        Args:
            save_directory (`str` or `os.PathLike`): the folder (created if needed).
            checkpoint_format (`str`, defaults to `"dense"`):
                - `"dense"`: a standard transformers checkpoint with zeros in the pruned places
                  (loads without hf_afr), plus the masks in `pruning_masks.safetensors`;
                - `"compact"`: `model.compact.safetensors`, pruned tensors as encoded mask + kept
                  values (about 10x smaller at 90% sparsity); loads with
                  `AutoModelForImageClassification.from_pretrained` after `import hf_afr`.
            image_processor (*optional*): saved alongside, so that
                `pipeline("image-classification", model=save_directory)` works. Defaults to the
                processor `from_pretrained` found with the base checkpoint.
            model_card (`bool`, defaults to `True`): write README.md and the per-layer density plot;
                an existing README.md is updated, not replaced.
            card_data (`PrunedCardData`, *optional*): what the card reports (see `card_data`).
            model_card_kwargs (`dict`, *optional*): the same as a dict (`base_model`, `datasets`,
                `accuracy`, `eval_dataset`, `command`, `training`, ...), instead of `card_data`.
            kwargs: passed to `model.save_pretrained` (dense format only, e.g. `max_shard_size`).

        With an FSDP2 model (DTensor parameters) this is a collective: call it on every process;
        the full weights are gathered and process 0 writes the same checkpoint as a DDP run.
        """
        self._check_pruned()  # no pruner_config.json claiming a sparsity without masks
        model = self.model
        if has_dtensor_parameters(model):
            model = unsharded_copy(model)
            if model is None:  # not process 0: it only took part in the gather
                return
        save_pruned_checkpoint(
            save_directory,
            model,
            self.masks,
            self.config,
            checkpoint_format=checkpoint_format,
            image_processor=image_processor
            if image_processor is not None
            else self.image_processor,
            model_card=model_card,
            card_data=self.card_data(card_data, **(model_card_kwargs or {})),
            **kwargs,
        )

    def card_data(self, card_data: PrunedCardData | None = None, **details: Any) -> PrunedCardData:
        """The model-card data of this pruner: `card_data`, or one built from `details`
        (`PrunedCardData` fields), with `base_model` defaulting to the checkpoint it came from."""
        if card_data is not None and details:
            raise ValueError(
                "Pass the model-card details either as `card_data` or as keywords, not both."
            )
        card = card_data if card_data is not None else PrunedCardData.from_dict(details)
        return card if card.base_model is not None else card.replace(base_model=self.base_model)

    def create_model_card(
        self,
        checkpoint_format: str = "dense",
        card_data: PrunedCardData | None = None,
        **details: Any,
    ):
        """The `huggingface_hub.ModelCard` of the pruned model (see `hf_afr.checkpoint.card`).

        Args:
            checkpoint_format (`str`, defaults to `"dense"`): the format the card describes.
            card_data (`PrunedCardData`, *optional*): what the card reports besides the pruning.
            details: `PrunedCardData` fields instead of `card_data` (`repo_id`, `base_model`,
                `datasets`, `accuracy`, `eval_dataset`, `eval_split`, `license`, `tags`, `command`).
        """
        structure = None
        if is_structured(self.model.config):
            report = structure_report(self.model.config)
            structure = structure_card_section(report, self.config.structure)
        return create_model_card(
            self.config,
            SparsityReport.from_masks(self.masks) if self.masks else None,
            self.card_data(card_data, **details),
            checkpoint_format=checkpoint_format,
            model_type=self.model.config.model_type,
            structure=structure,
        )

    def push_to_hub(
        self,
        repo_id: str,
        checkpoint_format: str = "dense",
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        image_processor: Any | None = None,
        create_pr: bool = False,
        card_data: PrunedCardData | None = None,
        **card_details: Any,
    ):
        """Upload the pruned model to the Hub in one commit (see `hf_afr.hub.push_to_hub`).

        The card reports `card_data`, or the `PrunedCardData` fields given as `card_details`.

        Example:
            ```python
            >>> pruner.push_to_hub("me/vit-b16-afr90", checkpoint_format="compact", datasets="cifar10")
            ```
        """
        self._check_pruned()
        return push_to_hub(
            self.model,
            self.masks,
            self.config,
            repo_id,
            checkpoint_format=checkpoint_format,
            commit_message=commit_message,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            image_processor=image_processor
            if image_processor is not None
            else self.image_processor,
            card_data=self.card_data(card_data, **card_details),
        )


def _with_concrete_feature(config: PrunerConfig, model_config: Any) -> PrunerConfig:
    """`config` with `feature_token="auto"` replaced by the family's choice (a copy), so that a
    saved `pruner_config.json` records the feature that produced the masks."""
    feature = resolve_feature_token(model_config, config.feature_token)
    if feature == config.feature_token:
        return config
    logger.debug(f"feature_token='auto' reads {feature!r} for a {model_config.model_type} model.")
    return dataclasses.replace(config, feature_token=feature)
