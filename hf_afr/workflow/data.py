"""Loading and checking the data of a run, before anything is scored, trained or written.

Sources: a Hub dataset, a local folder that `datasets` can load (`save_to_disk` output
included), local `imagefolder`s (`--train_dir` / `--validation_dir`), or an embedded offline
dataset (`hf_afr:digits`, `hf_afr:cyrillic`, `hf_afr:typefaces`; see `hf_afr.data.embedded`).
Every check here runs before any work: a missing column, a label
column that is not a `ClassLabel`, an empty split or folder, and, in a local image folder, a file
that is not a readable image (every image is decoded once and a bad one stops the run, named in
the error: a run never trains on a silently smaller dataset). Images of other sources are
decoded when used; one that cannot be decoded stops the run with its row or file name. With the Hub unreachable, a dataset that is
not cached fails at once instead of after the Hub client's retries (see `hub_or_offline`).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any
from urllib.parse import urlsplit

from datasets import ClassLabel, DatasetDict, load_dataset, load_from_disk
from datasets import Image as ImageFeature
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image, UnidentifiedImageError
from transformers.utils import logging

from ..data.embedded import EMBEDDED_DATASETS, EMBEDDED_PREFIX  # noqa: F401 (re-exported)
from .arguments import DataTrainingArguments

logger = logging.get_logger("hf_afr.scripts")


def load_image_dataset(
    data_args: DataTrainingArguments, cache_dir: str | None = None, token: str | None = None
) -> DatasetDict:
    """Load the Hub/local dataset or the `imagefolder`s named by `data_args`."""
    if data_args.dataset_name is not None:
        name = data_args.dataset_name
        if name.startswith(EMBEDDED_PREFIX):
            return load_embedded_dataset(name)
        if os.path.isfile(os.path.join(name, "dataset_dict.json")):
            return load_from_disk(name)
        if not os.path.isdir(name):
            hub_or_offline(f"dataset {name!r}")
        return _load(name, data_args.dataset_config_name, cache_dir=cache_dir, token=token)
    data_files = {}
    for split, folder in (("train", data_args.train_dir), ("validation", data_args.validation_dir)):
        if folder is not None:
            _check_image_folder(folder, split)
            data_files[split] = os.path.join(folder, "**")
    return _load("imagefolder", data_files=data_files, cache_dir=cache_dir)


def hub_or_offline(what: str, timeout: float = 3.0) -> bool:
    """Whether the Hub can be used; if not, put this process in offline mode (one log line).

    The Hub client retries a failed connection for about 25 s before giving up. One quick
    connection attempt decides instead: where it fails (or `HF_HUB_OFFLINE=1` is set),
    `huggingface_hub`, `transformers`, `datasets` and `evaluate` are told to use their caches
    only, so that what is cached loads at once and what is not fails at once.
    """
    import huggingface_hub.constants as hub_constants

    if not hub_constants.HF_HUB_OFFLINE:
        host = urlsplit(hub_constants.ENDPOINT)
        try:
            socket.create_connection((host.hostname, host.port or 443), timeout=timeout).close()
            return True
        except OSError:
            logger.info(
                f"The Hub ({hub_constants.ENDPOINT}) cannot be reached: looking up {what} and "
                "everything else in the local caches only (as with HF_HUB_OFFLINE=1)."
            )
    _go_offline()
    return False


def _go_offline() -> None:
    import datasets.config
    import huggingface_hub.constants as hub_constants

    for variable in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"):
        os.environ[variable] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    evaluate_config = sys.modules.get("evaluate.config")
    if evaluate_config is not None:
        evaluate_config.HF_EVALUATE_OFFLINE = True


def load_embedded_dataset(name: str) -> DatasetDict:
    """An offline dataset shipped with hf_afr (`hf_afr:digits`, ...; see `hf_afr.data.embedded`)."""
    from ..data.embedded import load_embedded_dataset as load

    return load(name)


def _load(path: str, *args: Any, **kwargs: Any) -> DatasetDict:
    from datasets.exceptions import DatasetNotFoundError

    try:
        return load_dataset(path, *args, **kwargs)
    except DatasetNotFoundError as err:
        raise ValueError(
            f"Dataset {path!r} not found: it is neither a local folder nor a dataset on the Hub "
            f"(or in the cache, offline). {err}"
        ) from err
    except ConnectionError as err:  # offline and not cached
        raise ValueError(
            f"Dataset {path!r} is not in the local cache and the Hub cannot be reached: "
            "download it once with Hub access, or pass a local folder."
        ) from err
    except ValueError as err:  # datasets' wording for an empty split
        if "corresponds to no data" not in str(err):
            raise
        raise ValueError(f"The dataset {path!r} has an empty split ({err}).") from err


def _check_image_folder(folder: str, split: str) -> None:
    """The folder exists and every image file in it can be read (checked before any work)."""
    if not os.path.isdir(folder):
        raise ValueError(f"The {split} folder {folder!r} does not exist (--{split}_dir).")
    paths = [os.path.join(root, f) for root, _, files in os.walk(folder) for f in sorted(files)]
    images = [p for p in paths if p.lower().endswith(tuple(ImageFolder.EXTENSIONS))]
    if not images:
        raise ValueError(
            f"The {split} folder {folder!r} is empty (no images): an imagefolder needs one sub-folder of "
            "images per class."
        )
    relative = [os.path.relpath(path, folder) for path in images]
    classes = sorted({rel.split(os.sep)[0] for rel in relative if os.sep in rel})
    if len(classes) < 2:
        where = f"one class folder ({classes[0]!r})" if classes else "no class sub-folder"
        raise ValueError(
            f"The {split} folder {folder!r} has {where}: an imagefolder needs one sub-folder "
            "of images per class, and at least two classes to learn."
        )
    for path in images:
        try:
            with Image.open(path) as image:
                image.draft("RGB", (64, 64))  # JPEG: decode at a reduced scale, all data read
                image.load()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            raise ValueError(
                f"{path} is not a readable image ({' '.join(str(err).split())}); remove or "
                "replace it."
            ) from None


def validate_split(dataset, split: str, image_column: str, label_column: str) -> None:
    """Raise a `ValueError` unless the split has rows, an image column and a ClassLabel column."""
    columns = list(dataset.column_names)
    if image_column not in columns:
        raise ValueError(
            f"The {split} split has no image column {image_column!r} (columns: {columns}); "
            "set `--image_column_name`."
        )
    if label_column not in columns:
        folder_hint = (
            " A folder of images gets a label column only with one sub-folder per class, two or "
            "more."
            if columns == [image_column]
            else ""
        )
        raise ValueError(
            f"The {split} split has no label column {label_column!r} (columns: {columns}); "
            f"set `--label_column_name`.{folder_hint}"
        )
    feature = dataset.features[label_column]
    if not isinstance(feature, ClassLabel):
        raise ValueError(
            f"The label column {label_column!r} must be a `datasets.ClassLabel` (class names and "
            f"ids), got {feature}. Convert it with `dataset.class_encode_column({label_column!r})` "
            "or cast it with `cast_column`."
        )
    if not isinstance(dataset.features[image_column], ImageFeature):
        raise ValueError(
            f"The image column {image_column!r} must be a `datasets.Image` feature, got "
            f"{dataset.features[image_column]}. Cast it with `cast_column(..., Image())`."
        )
    if len(dataset) == 0:
        raise ValueError(f"The {split} split is empty.")


def prepare_splits(
    dataset: DatasetDict, data_args: DataTrainingArguments, seed: int, need_validation: bool
) -> DatasetDict:
    """Validate the splits, split off validation if needed and truncate; all seeded."""
    train_name, eval_name = data_args.train_split_name, data_args.validation_split_name
    for name in (train_name, eval_name):
        if name is not None and name not in dataset:
            raise ValueError(f"The dataset has no {name!r} split (splits: {list(dataset)}).")
    image_column, label_column = data_args.image_column_name, data_args.label_column_name
    validate_split(dataset[train_name], "train", image_column, label_column)
    splits = {"train": dataset[train_name]}
    eval_name = eval_name or ("validation" if "validation" in dataset else None)
    if eval_name is not None:
        splits["validation"] = dataset[eval_name]
    elif need_validation:
        splits.update(_split_off_validation(dataset[train_name], data_args.train_val_split, seed))
    if data_args.max_train_samples is not None:
        splits["train"] = _truncate(splits["train"], data_args.max_train_samples, seed)
    if "validation" in splits:
        validate_split(splits["validation"], "validation", image_column, label_column)
        _check_same_classes(splits, label_column)
        if data_args.max_eval_samples is not None:
            splits["validation"] = _truncate(splits["validation"], data_args.max_eval_samples, seed)
    return DatasetDict(splits)


def _split_off_validation(train, fraction: float, seed: int) -> dict[str, Any]:
    if fraction <= 0.0:
        raise ValueError(
            "Evaluation needs a validation split: the dataset has none and `train_val_split` is 0."
        )
    if round(fraction * len(train)) < 1 or len(train) - round(fraction * len(train)) < 1:
        raise ValueError(
            f"Cannot split {len(train)} training examples with train_val_split={fraction}: "
            "one of the two parts would be empty."
        )
    parts = train.train_test_split(test_size=fraction, seed=seed)
    return {"train": parts["train"], "validation": parts["test"]}


def _truncate(dataset, n: int, seed: int):
    return dataset.shuffle(seed=seed).select(range(min(n, len(dataset))))


def _check_same_classes(splits: dict[str, Any], label_column: str) -> None:
    names = {split: ds.features[label_column].names for split, ds in splits.items()}
    if len({tuple(n) for n in names.values()}) > 1:
        raise ValueError(f"The splits have different class names: {names}.")


def label_maps(dataset, label_column: str) -> tuple[dict[str, int], dict[int, str]]:
    """`(label2id, id2label)` from the split's `ClassLabel` names."""
    names = dataset.features[label_column].names
    return {name: i for i, name in enumerate(names)}, dict(enumerate(names))
