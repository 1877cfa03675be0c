"""Loading a checkpoint: its model (quietly, with one clear line per surprise), its image
processor, and the pruning state saved beside it; `inspect_checkpoint` checks masks against weights.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import transformers
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers.utils import logging

from ..architectures import (
    VisionArchitecture,
    encoder_blocks,
    get_architecture,
    module_names,
)
from ..config import PrunerConfig
from ..files import contained_file, resolve_file
from ..masks import nonzero_where_pruned
from ..report import SparsityReport
from ..structure.report import is_structured
from ..structure.slicing import sized_class
from ..untrusted import CheckpointError, describe
from .compact import (
    COMPACT_QUANT_METHOD,
    check_quantization_config,
    information_bound,
    read_compact_weights,
)
from .entries import model_tensors
from .formats import (
    COMPACT_WEIGHTS_NAME,
    CONFIG_NAME,
    IMAGE_PROCESSOR_NAME,
    MASKS_NAME,
    PRUNER_CONFIG_NAME,
    folder_weights,
    read_config_file,
)
from .masks_file import load_masks

logger = logging.get_logger(__name__)


def load_classifier(
    name_or_path: str | os.PathLike,
    model_config: Any = None,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """The family's classification model of a checkpoint: the one way hf_afr loads a model.

    A classifier loads as is, a head of another size than `num_labels` replaced; a bare
    backbone (`ViTModel`, `Dinov2Model`, `CLIPModel`, `SwinModel`, ...) gets a new head; a
    vision-only CLIP/SigLIP checkpoint (`CLIPVisionModel`) is loaded with its own class and put
    into a new classifier. An unsupported family fails before any weights are downloaded.
    transformers' load report is replaced: a new classification head is intended, so it is one
    info line; any other weight that is missing or does not fit is a warning. A truncated or
    corrupt weights file, or a checkpoint without the encoder or patch-embedding weights (they
    would be random), is a `ValueError` naming it.

    Args:
        name_or_path (`str` or `os.PathLike`): Hub id or local folder.
        model_config (*optional*): the checkpoint's config; read from it if not given.
        model_kwargs (`dict`, *optional*): passed to `from_pretrained` (`num_labels`, `id2label`,
            `label2id`, `dtype`, `revision`, `token`, `cache_dir`, ...); a head of another size is
            replaced (`ignore_mismatched_sizes=True`) unless the caller says otherwise.
    """
    from transformers import AutoConfig

    name_or_path = os.fspath(name_or_path)
    if os.path.isdir(name_or_path):  # config.json and weights read bounded before transformers
        check_local_checkpoint(name_or_path)
    kwargs = {"ignore_mismatched_sizes": True, **(model_kwargs or {})}
    _complete_label_kwargs(kwargs)
    if model_config is None:
        hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir") if k in kwargs}
        with quiet_transformers():
            model_config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    try:
        arch = get_architecture(model_config)
    except ValueError as err:
        raise ValueError(f"{name_or_path}: {err}") from None
    try:
        with quiet_transformers():
            if model_config.model_type in arch.vision_model_types:
                model, info = _load_vision_tower(name_or_path, arch, kwargs)
            else:
                model, info = loading_class(arch.model_cls, model_config).from_pretrained(
                    name_or_path, output_loading_info=True, **kwargs
                )
                model.__class__ = arch.model_cls
    except SafetensorError as err:
        raise ValueError(
            f"Cannot read the weights of {name_or_path}: {err}. The file is truncated or corrupt; "
            "re-save or re-download it."
        ) from err
    _check_encoder_loaded(model, name_or_path, arch, info)
    _log_loading_info(model, name_or_path, info, arch.head)
    return model


def loading_class(model_cls: type[nn.Module], model_config: Any) -> type[nn.Module]:
    """The class whose `from_pretrained` loads a checkpoint of `model_config` into `model_cls`.

    `model_cls` itself, or for a structurally pruned config (per-layer widths) its
    `sized_class`, which builds every block at its width before the weights load. Put the loaded
    model back into `model_cls` afterwards: `model.__class__ = model_cls`.
    """
    if not is_structured(model_config):
        return model_cls
    return sized_class(model_cls, get_architecture(model_config).layout)


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


def _load_vision_tower(name_or_path: str, arch: VisionArchitecture, kwargs: dict[str, Any]):
    """A vision-only checkpoint in a new `arch.model_class` (new head), and its loading info."""
    kwargs = dict(kwargs)
    labels = {k: kwargs.pop(k) for k in ("num_labels", "id2label", "label2id") if k in kwargs}
    kwargs.pop("ignore_mismatched_sizes", None)
    tower_cls = getattr(transformers, arch.vision_model_class)
    tower, info = tower_cls.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    config = arch.model_cls.config_class(vision_config=tower.config.to_dict(), **labels)
    model = arch.model_cls(config).to(tower.dtype).eval()
    name, slot = next((n, m) for n, m in model.named_children() if isinstance(m, tower_cls))
    slot.load_state_dict(tower.state_dict())
    head = [n for n, _ in model.named_parameters() if n.split(".")[0] == arch.head]
    return model, {
        "missing_keys": [f"{name}.{key}" for key in info["missing_keys"]] + head,
        "mismatched_keys": [],
        "unexpected_keys": list(info.get("unexpected_keys", [])),
    }


def _check_encoder_loaded(
    model: nn.Module, name_or_path: str, arch: VisionArchitecture, info: Mapping[str, Any]
) -> None:
    """Raise a `ValueError` if the encoder blocks or the patch embedding were not loaded."""
    missing = set(info["missing_keys"]) | {key for key, *_ in info["mismatched_keys"]}
    needed = {
        f"{block}.{param}"
        for block, module in encoder_blocks(model).items()
        for param, _ in module.named_parameters()
    }
    needed |= {f"{n}.weight" for n in module_names(model, arch.patch_embedding, nn.Conv2d)}
    absent = sorted(needed & missing)
    if absent:
        raise ValueError(
            f"{name_or_path} does not hold the {arch.name} encoder weights {arch.model_class} "
            f"expects ({len(absent)} missing, e.g. {absent[0]}); they would be random. Check that "
            "the weights match the checkpoint's config.json."
        )


def _log_loading_info(
    model: nn.Module, name_or_path: str, info: Mapping[str, Any], head_name: str
) -> None:
    head = {name for name, _ in model.named_parameters() if name.split(".")[0] == head_name}
    mismatched = [key for key, *_ in info.get("mismatched_keys", [])]
    missing = list(info.get("missing_keys", []))
    new = sorted(k for k in [*missing, *mismatched] if k in head)
    others = sorted(k for k in [*missing, *mismatched] if k not in head)
    if new:
        logger.info(
            f"New classification head for {model.config.num_labels} labels (randomly "
            f"initialised): {', '.join(new)}."
        )
    if others:
        logger.warning(
            f"{len(others)} weights were not found in {name_or_path} or have another shape there; "
            f"they are newly initialised: {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}."
        )
    unexpected = sorted(info.get("unexpected_keys", []))
    if unexpected:
        logger.info(
            f"{len(unexpected)} weights of {name_or_path} are not used by "
            f"{type(model).__name__} (e.g. {unexpected[0]})."
        )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' INFO/WARNING logs and progress bars (restored afterwards)."""
    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def check_local_checkpoint(folder: str | os.PathLike) -> None:
    """Check a local checkpoint folder's `config.json` and weights files before transformers
    reads them (`formats.read_config_file`, `check_safetensors_files`)."""
    config_path = contained_file(folder, CONFIG_NAME)
    if config_path is not None:
        quantization = read_config_file(config_path).get("quantization_config") or {}
        if quantization.get("quant_method") == COMPACT_QUANT_METHOD:
            check_quantization_config(quantization, config_path)
    check_safetensors_files(folder)


def check_safetensors_files(folder: str | os.PathLike) -> None:
    """Raise a `ValueError` naming the first `*.safetensors` file of `folder` that is unreadable."""
    for path in sorted(glob.glob(os.path.join(os.fspath(folder), "*.safetensors"))):
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{path} is truncated or corrupt ({err}); re-save or re-download it."
            ) from None


def load_image_processor(name_or_path: str, **hub_kwargs: Any) -> Any | None:
    """The checkpoint's image processor, or None if it has none."""
    found = resolve_file(
        name_or_path, IMAGE_PROCESSOR_NAME, missing_ok=True, unreachable_ok=True, **hub_kwargs
    )
    if found is None:
        return None
    from transformers import AutoImageProcessor

    with quiet_transformers():
        return AutoImageProcessor.from_pretrained(name_or_path, **hub_kwargs)


def load_pruning_state(
    name_or_path: str | os.PathLike,
    is_compact: bool = False,
    model: nn.Module | None = None,
    **hub_kwargs: Any,
) -> tuple[PrunerConfig | None, dict[str, torch.Tensor] | None]:
    """`(PrunerConfig, masks)` saved beside a checkpoint; `(None, None)` if it was not pruned.

    A checkpoint without `pruner_config.json` was not saved by hf_afr. With it, the masks come
    from the sidecar of a dense checkpoint (absent only if it was saved before pruning) or from
    the weights of a compact one. Only a file that certainly does not exist counts as absent:
    a Hub that cannot be reached while the masks are not cached is an error, never "no masks".

    Args:
        name_or_path (`str` or `os.PathLike`): a local folder or a Hub repository id.
        is_compact (`bool`, defaults to `False`): whether `config.json` declares the compact format.
        model (`nn.Module`, *optional*): the loaded model; the masks are checked against its
            parameters (names and shapes) before they are decoded.
        hub_kwargs: `revision`, `token`, `cache_dir`.
    """
    config_file = resolve_file(
        name_or_path, PRUNER_CONFIG_NAME, missing_ok=True, unreachable_ok=True, **hub_kwargs
    )
    if config_file is None:
        return None, None
    pruner_config = PrunerConfig.from_pretrained(config_file)
    if is_compact:
        compact_file = resolve_file(name_or_path, COMPACT_WEIGHTS_NAME, **hub_kwargs)
        expected = None if model is None else model_tensors(model)
        return pruner_config, read_compact_weights(compact_file, False, expected)[1]
    masks_file = resolve_file(name_or_path, MASKS_NAME, missing_ok=True, **hub_kwargs)
    return pruner_config, load_masks(masks_file, model) if masks_file is not None else None


def is_compact_config(model_config: Any) -> bool:
    """Whether a loaded transformers config declares an hf_afr compact checkpoint."""
    quantization = getattr(model_config, "quantization_config", None)
    if quantization is not None and not isinstance(quantization, dict):
        if not hasattr(quantization, "to_dict"):
            raise CheckpointError(
                CONFIG_NAME,
                "quantization_config",
                f"must be a JSON object, got {describe(quantization)}.",
            )
        quantization = quantization.to_dict()
    return (quantization or {}).get("quant_method") == COMPACT_QUANT_METHOD


def check_weights_follow_masks(
    model: nn.Module, masks: Mapping[str, torch.Tensor], source: str | os.PathLike = "the model"
) -> None:
    """Raise a `ValueError` if a pruned weight is nonzero (weights and masks do not belong
    together: a corrupted, replaced or retrained weights file)."""
    params = dict(model.named_parameters())
    if any(name not in params or params[name].shape != mask.shape for name, mask in masks.items()):
        raise ValueError(f"{source}: the masks do not match the model's weights (names or shapes).")
    stray = nonzero_where_pruned(params, masks)
    if stray:
        name, count = next(iter(stray.items()))
        raise ValueError(
            f"{source}: {sum(stray.values())} weights are nonzero where the masks prune them "
            f"(e.g. {count} in {name!r}); the weights and the masks do not belong together."
        )


def inspect_checkpoint(folder: str | os.PathLike) -> tuple[str, SparsityReport]:
    """Read the masks of a local pruned checkpoint and check them against its weights.

    Returns:
        `(header, report)`: a line describing the checkpoint, and the per-tensor sparsity.

    Raises:
        ValueError: if the folder holds no masks, a file is unreadable, or a pruned weight is
            nonzero (the weights and masks do not belong together).
    """
    folder = os.fspath(folder)
    checkpoint_format, weights = folder_weights(folder)
    # The model first: for a compact file, its loader checks every entry against the model
    # before any mask is decoded; the masks are then read against the model's parameters.
    model = load_classifier(folder)
    if checkpoint_format == "compact":
        _, masks, entries = read_compact_weights(weights, False, model_tensors(model))
        header = (
            f"compact checkpoint {folder}: {os.path.getsize(weights)} bytes of weights; "
            f"information bound of the pruned tensors {information_bound(entries):.0f} bytes"
        )
    else:
        masks = load_masks(weights, model)
        header = f"dense checkpoint {folder} with masks {MASKS_NAME}"
    check_weights_follow_masks(model, masks, folder)
    return header + "; weights checked against the masks", SparsityReport.from_masks(masks)
