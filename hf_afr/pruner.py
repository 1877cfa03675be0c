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
from .checkpoint.load import (
    is_compact_config,
    load_classifier,
    load_image_processor,
    load_pruning_state,
    unmasked_weights,
)
from .checkpoint.save import save_pruned_checkpoint
from .config import PrunerConfig
from .controls import controlled_masks
from .criteria import get_criterion
from .hub import push_to_hub
from .masks import apply_masks, check_scores
from .report import SparsityReport
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
        hub_kwargs = {
            k: model_kwargs[k] for k in ("revision", "token", "cache_dir") if k in model_kwargs
        }
        model_config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
        try:  # an unsupported family fails here, before any weights are downloaded
            get_architecture(model_config)
        except ValueError as err:
            raise ValueError(f"{name_or_path}: {err}") from None
        _complete_label_kwargs(model_kwargs)
        model = load_classifier(name_or_path, model_config, model_kwargs)
        saved_config, saved_masks = load_pruning_state(
            name_or_path, is_compact=is_compact_config(model_config), **hub_kwargs
        )
        pruner = cls(model, config if config is not None else saved_config)
        if saved_masks is not None:
            stray = unmasked_weights(model, saved_masks)
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
        needs_data = self.config.method not in ("magnitude", "random")
        batches = self._scoring_batches(batches, needs_data, show_progress)
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
        if not self.masks:
            raise ValueError("The model has not been pruned yet: call `prune(batches)` first.")
        return SparsityReport.from_masks(self.masks)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        checkpoint_format: str = "dense",
        *,
        image_processor: Any | None = None,
        model_card: bool = True,
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
            model_card_kwargs (`dict`, *optional*): passed to `create_model_card` (`base_model`,
                `datasets`, `accuracy`, `eval_dataset`, `command`, `training`, ...).
            kwargs: passed to `model.save_pretrained` (dense format only, e.g. `max_shard_size`).
        """
        card_kwargs = dict(model_card_kwargs or {})
        card_kwargs.setdefault("base_model", self.base_model)
        save_pruned_checkpoint(
            save_directory,
            self.model,
            self.masks,
            self.config,
            checkpoint_format=checkpoint_format,
            image_processor=image_processor
            if image_processor is not None
            else self.image_processor,
            model_card=model_card,
            card_kwargs=card_kwargs,
            **kwargs,
        )

    def create_model_card(self, checkpoint_format: str = "dense", **kwargs: Any):
        """The `huggingface_hub.ModelCard` of the pruned model (see `hf_afr.checkpoint.card`).

        Args:
            checkpoint_format (`str`, defaults to `"dense"`): the format the card describes.
            kwargs: passed to `hf_afr.checkpoint.card.create_model_card` (`repo_id`, `base_model`,
                `datasets`, `accuracy`, `eval_dataset`, `eval_split`, `license`, `tags`, `command`).
        """
        kwargs.setdefault("base_model", self.base_model)
        kwargs["tags"] = [self.model.config.model_type, *(kwargs.get("tags") or [])]
        if is_structured(self.model.config):
            report = structure_report(self.model.config)
            kwargs.setdefault("structure", structure_card_section(report, self.config.structure))
        return create_model_card(
            self.config, self.masks, checkpoint_format=checkpoint_format, **kwargs
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
        **card_kwargs: Any,
    ):
        """Upload the pruned model to the Hub in one commit (see `hf_afr.hub.push_to_hub`).

        Example:
            ```python
            >>> pruner.push_to_hub("me/vit-b16-afr90", checkpoint_format="compact", datasets="cifar10")
            ```
        """
        card_kwargs.setdefault("base_model", self.base_model)
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
            **card_kwargs,
        )


def _with_concrete_feature(config: PrunerConfig, model_config: Any) -> PrunerConfig:
    """`config` with `feature_token="auto"` replaced by the family's choice (a copy), so that a
    saved `pruner_config.json` records the feature that produced the masks."""
    feature = resolve_feature_token(model_config, config.feature_token)
    if feature == config.feature_token:
        return config
    logger.debug(f"feature_token='auto' reads {feature!r} for a {model_config.model_type} model.")
    return dataclasses.replace(config, feature_token=feature)


def _complete_label_kwargs(kwargs: dict[str, Any]) -> None:
    id2label = kwargs.get("id2label")
    if id2label is not None:
        id2label = {int(k): v for k, v in id2label.items()}
        kwargs["id2label"] = id2label
        kwargs.setdefault("label2id", {v: k for k, v in id2label.items()})
        if kwargs.setdefault("num_labels", len(id2label)) != len(id2label):
            raise ValueError(
                f"num_labels={kwargs['num_labels']} but id2label has {len(id2label)} entries."
            )
