"""`AFRPruner`: load a ViT, score its prunable weights, select and apply the masks."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, ViTForImageClassification
from transformers.utils import logging

from .compact import (
    CHECKPOINT_FORMATS,
    COMPACT_WEIGHTS_NAME,
    DENSE_WEIGHT_PATTERNS,
    load_compact_masks,
    save_compact_checkpoint,
    staged_directory,
)
from .config import PRUNER_CONFIG_NAME, PrunerConfig
from .criteria import get_criterion
from .mask_io import MASKS_NAME, load_masks, save_masks
from .masks import apply_masks, check_scores, select_masks
from .report import SparsityReport
from .targets import find_prunable_parameters

logger = logging.get_logger(__name__)


class AFRPruner:
    """Single-shot pruning of a `ViTForImageClassification` with SNIP, ReFer or AFR.

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
        if not isinstance(model, ViTForImageClassification):
            raise ValueError(
                f"AFRPruner works on transformers' ViTForImageClassification, got "
                f"{type(model).__name__}. Load a ViT checkpoint with AFRPruner.from_pretrained."
            )
        if config is not None and not isinstance(config, PrunerConfig):
            raise ValueError(f"`config` must be a PrunerConfig, got {type(config).__name__}.")
        self.model = model
        self.config = config if config is not None else PrunerConfig()
        self.params = find_prunable_parameters(model, self.config)
        self.masks: dict[str, torch.Tensor] = {}
        # Hub id of the unpruned model, for model cards (set by `from_pretrained`).
        self.base_model: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        config: PrunerConfig | None = None,
        **model_kwargs: Any,
    ) -> AFRPruner:
        """Load a ViT from the Hub or a local folder, ready to prune.

        Args:
            name_or_path (`str` or `os.PathLike`): Hub id (e.g. `"google/vit-base-patch16-224"`)
                or local folder of a ViT checkpoint: a classifier, a bare `ViTModel` (as
                `facebook/dino-vitb16`) or a checkpoint pruned by hf_afr, dense or compact
                (whose config and masks are restored).
            config (`PrunerConfig`, *optional*): pruning options; defaults to the checkpoint's
                `pruner_config.json` if it has one, else `PrunerConfig()`.
            model_kwargs: passed to `ViTForImageClassification.from_pretrained` (`num_labels`,
                `id2label`, `label2id`, `torch_dtype`, `revision`, ...). A classifier head whose
                size does not match `num_labels` is replaced by a new one.
        """
        name_or_path = os.fspath(name_or_path)
        hub_kwargs = {
            k: model_kwargs[k] for k in ("revision", "token", "cache_dir") if k in model_kwargs
        }
        model_config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
        if model_config.model_type != "vit":
            raise ValueError(
                f"{name_or_path} is a {model_config.model_type!r} model; AFRPruner supports ViT "
                "checkpoints (model_type 'vit'), e.g. google/vit-base-patch16-224 or facebook/dino-vitb16."
            )
        _complete_label_kwargs(model_kwargs)
        model_kwargs.setdefault("ignore_mismatched_sizes", True)
        model = ViTForImageClassification.from_pretrained(name_or_path, **model_kwargs)
        saved = _load_pruning_state(name_or_path, hub_kwargs)
        pruner = cls(model, config if config is not None else saved[0])
        if saved[1] is not None:
            pruner.set_masks(saved[1])
        if saved[0] is None and not os.path.isdir(name_or_path):
            pruner.base_model = name_or_path
        return pruner

    def compute_scores(
        self, batches: Iterable[Mapping[str, Any]] | None = None, show_progress: bool = True
    ) -> dict[str, torch.Tensor]:
        """Score every prunable weight with `config.method`; changes no weight.

        Args:
            batches: iterable of dicts with `pixel_values` (and `labels` for SNIP/AFR), e.g. a
                `DataLoader`; the first `config.num_batches` are used. Not needed for
                "magnitude" and "random".
            show_progress (`bool`, defaults to `True`): show a progress bar (also silenced by
                `transformers.utils.logging.disable_progress_bar()`).

        Returns:
            `dict[str, Tensor]`: float32 scores keyed by `model.named_parameters()` names.
        """
        criterion = get_criterion(self.config.method)
        if criterion.needs_data:
            if batches is None:
                raise ValueError(
                    f"Method {self.config.method!r} needs scoring batches; pass `batches`."
                )
            batches = itertools.islice(batches, self.config.num_batches)
            batches = logging.tqdm(
                batches,
                total=self.config.num_batches,
                desc=f"Scoring ({self.config.method})",
                disable=not show_progress,
                unit="batch",
            )
        scores = criterion.score(self.model, batches, self.params, self.config)
        check_scores(scores, self.params)
        return scores

    def prune(
        self, batches: Iterable[Mapping[str, Any]] | None = None, show_progress: bool = True
    ) -> dict[str, torch.Tensor]:
        """Score, select the masks (True = kept) and zero the pruned weights of `self.model`."""
        scores = self.compute_scores(batches, show_progress=show_progress)
        masks = select_masks(
            scores,
            self.config.sparsity,
            self.config.scope,
            self.config.min_density,
            pattern=self.config.pattern,
        )
        self.set_masks(masks)
        report = self.sparsity_report()
        if report.fully_pruned:
            logger.warning(
                f"{len(report.fully_pruned)} prunable tensors are 100% pruned: "
                f"{', '.join(report.fully_pruned)}. Their layers then pass only the residual path; "
                "set `min_density` in PrunerConfig to keep a floor of weights in every tensor."
            )
        return self.masks

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

    def sparsity_report(self) -> SparsityReport:
        """Global and per-tensor sparsity of the current masks."""
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
        """Save the pruned model, its pruning config, masks and model card into a folder.

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
            image_processor (*optional*): saved alongside (e.g. a `ViTImageProcessor`), so that
                `pipeline("image-classification", model=save_directory)` works.
            model_card (`bool`, defaults to `True`): write README.md and the per-layer density plot;
                an existing README.md is updated, not replaced.
            model_card_kwargs (`dict`, *optional*): passed to `create_model_card` (`base_model`,
                `datasets`, `accuracy`, `eval_dataset`, `command`, ...).
            kwargs: passed to `model.save_pretrained` (dense format only, e.g. `max_shard_size`).
        """
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(
                f"`checkpoint_format` must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}."
            )
        if kwargs.get("push_to_hub"):
            raise ValueError("Use `AFRPruner.push_to_hub(repo_id, ...)` to upload a pruned model.")
        if checkpoint_format == "compact" and kwargs:
            raise ValueError(f"Options {sorted(kwargs)} only apply to the dense checkpoint format.")
        if checkpoint_format == "compact" and not self.masks:
            raise ValueError("A compact checkpoint stores the masks: call `prune(batches)` first.")
        save_directory = os.fspath(save_directory)
        stale = (
            DENSE_WEIGHT_PATTERNS + (MASKS_NAME,)
            if checkpoint_format == "compact"
            else (COMPACT_WEIGHTS_NAME,)
        )
        with staged_directory(save_directory, stale=stale) as staging:
            weights = self._save_weights(staging, checkpoint_format, **kwargs)
            self.config.save_pretrained(staging)
            if image_processor is not None:
                image_processor.save_pretrained(staging)
            if model_card and self.masks:
                self._save_model_card(
                    staging, save_directory, checkpoint_format, weights, model_card_kwargs or {}
                )

    def _save_weights(self, folder: str, checkpoint_format: str, **kwargs: Any) -> str:
        """Write the weights (and, for dense, the masks sidecar); returns the weights file."""
        if checkpoint_format == "compact":
            save_compact_checkpoint(self.model, self.masks, folder)
            return os.path.join(folder, COMPACT_WEIGHTS_NAME)
        self.model.save_pretrained(folder, **kwargs)
        if self.masks:
            save_masks(self.masks, os.path.join(folder, MASKS_NAME))
        return os.path.join(folder, "model.safetensors")

    def _save_model_card(
        self, folder: str, save_directory: str, checkpoint_format: str, weights: str, kwargs: dict
    ) -> None:
        from .model_card import MODEL_CARD_NAME, save_model_card

        kwargs = dict(kwargs)
        if not kwargs.get("repo_id"):
            kwargs.setdefault("model_name", os.path.basename(os.path.abspath(save_directory)))
        if os.path.isfile(weights):
            kwargs.setdefault("weights_size", os.path.getsize(weights))
        card = self.create_model_card(checkpoint_format, **kwargs)
        existing = os.path.join(save_directory, MODEL_CARD_NAME)
        save_model_card(card, folder, self.masks, existing=existing)

    def create_model_card(self, checkpoint_format: str = "dense", **kwargs: Any):
        """The `huggingface_hub.ModelCard` of the pruned model (see `hf_afr.model_card`).

        Args:
            checkpoint_format (`str`, defaults to `"dense"`): the format the card describes.
            kwargs: passed to `hf_afr.model_card.create_model_card` (`repo_id`, `base_model`,
                `datasets`, `accuracy`, `eval_dataset`, `eval_split`, `license`, `tags`, `command`).
        """
        from .model_card import create_model_card

        kwargs.setdefault("base_model", self.base_model)
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
        from .hub import push_to_hub

        return push_to_hub(
            self,
            repo_id,
            checkpoint_format=checkpoint_format,
            commit_message=commit_message,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            image_processor=image_processor,
            **card_kwargs,
        )


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


def _load_pruning_state(name_or_path: str, hub_kwargs: dict[str, Any]):
    """(PrunerConfig, masks) saved beside a checkpoint, or (None, None) if it has none.

    The masks come from the sidecar of a dense checkpoint or from a compact checkpoint's weights.
    """
    config_file = _optional_file(name_or_path, PRUNER_CONFIG_NAME, hub_kwargs)
    if config_file is None:
        return None, None
    masks_file = _optional_file(name_or_path, MASKS_NAME, hub_kwargs)
    if masks_file is not None:
        masks = load_masks(masks_file)
    else:
        compact_file = _optional_file(name_or_path, COMPACT_WEIGHTS_NAME, hub_kwargs)
        masks = load_compact_masks(compact_file) if compact_file else None
    return PrunerConfig.from_pretrained(config_file), masks


def _optional_file(name_or_path: str, filename: str, hub_kwargs: dict[str, Any]) -> str | None:
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import EntryNotFoundError

    try:
        return hf_hub_download(name_or_path, filename, **hub_kwargs)
    except EntryNotFoundError:
        return None
    except Exception:
        cached = try_to_load_from_cache(name_or_path, filename, revision=hub_kwargs.get("revision"))
        return cached if isinstance(cached, str) else None
