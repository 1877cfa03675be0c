"""Files on disk and on the Hub: atomic writes, staged folders, and finding one file.

Everything hf_afr writes goes through `atomic_path` / `staged_directory`: a file either appears
complete or not at all, with the permissions a plain `open(path, "w")` would give (the umask is
respected, as for `save_pretrained`). `resolve_file` finds a file in a local folder or a Hub
repository and tells "this file does not exist" apart from every other failure.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from transformers.utils import logging

from .untrusted import CheckpointError, read_json_file

logger = logging.get_logger(__name__)


def _default_file_mode() -> int:
    """0o666 minus the process umask: the mode of a file created with `open(path, "w")`."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_file_mode())  # mkstemp creates 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in `path`, read with bounded size and depth (`untrusted.read_json_file`).

    Raises:
        CheckpointError: (a `ValueError`) naming the file, if it is not one bounded JSON object.
    """
    return read_json_file(path)


def check_folder_target(save_directory: str | os.PathLike) -> str:
    """`save_directory` as a string; a `ValueError` if it names an existing file."""
    save_directory = os.fspath(save_directory)
    if os.path.isfile(save_directory):
        raise ValueError(f"`save_directory` must be a folder, but {save_directory} is a file.")
    return save_directory


def check_local_folder(name_or_path: str | os.PathLike) -> None:
    """Raise a `ValueError` unless `name_or_path` is a folder or can be a Hub repository id.

    A name that can only be a local path (it starts with `.`, `/` or `~`, or has more than one
    `/`) must be an existing folder: a mistyped path is reported as a path that does not exist,
    not as a malformed repository id.
    """
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        return
    if os.path.exists(name):
        raise ValueError(f"{name} is a file; expected a checkpoint folder or a Hub repository id.")
    if (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    ):
        raise ValueError(
            f"{name} does not exist: expected a checkpoint folder or a Hub repository id "
            "('org/name'); check the path."
        )


@contextlib.contextmanager
def staged_directory(
    save_directory: str | os.PathLike, stale: tuple[str, ...] = ()
) -> Iterator[str]:
    """Yield an empty staging folder; on success move its files into `save_directory`.

    Files are moved one by one with `os.replace` (atomic), weights first and `config.json` after
    them, so the folder never holds a config pointing at weights that are not fully written. Then
    the names in `stale` (glob patterns, e.g. the other format's weights) are removed. If the block
    fails, the files of `save_directory` are left as they were (a folder it created is removed).
    """
    save_directory = check_folder_target(save_directory)
    created = not os.path.isdir(save_directory)
    os.makedirs(save_directory, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".hf_afr-staging-", dir=save_directory)
    try:
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if created:  # a folder this call made is not left behind, empty
                with contextlib.suppress(OSError):
                    os.rmdir(save_directory)
            raise
        produced = sorted(os.listdir(staging), key=_commit_order)
        for name in produced:
            _make_readable(os.path.join(staging, name))
            os.replace(os.path.join(staging, name), os.path.join(save_directory, name))
        for name in os.listdir(save_directory):
            if name not in produced and any(fnmatch.fnmatchcase(name, p) for p in stale):
                logger.info(
                    f"Removing {name} from {save_directory}: it belongs to the other format."
                )
                os.remove(os.path.join(save_directory, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _make_readable(path: str) -> None:
    if os.path.isfile(path):
        os.chmod(path, _default_file_mode())


def _commit_order(name: str) -> tuple[int, str]:
    if name.endswith((".safetensors", ".bin")):
        return 0, name
    return (2, name) if name == "config.json" else (1, name)


def contained_file(folder: str | os.PathLike, name: str) -> str | None:
    """The path of `name` in a local checkpoint folder, or None if the folder has no such entry.

    A checkpoint may come from a stranger: a link is followed only to a regular file inside the
    folder (or, for a Hub cache snapshot, inside that repository's `blobs` folder), never out.

    Raises:
        CheckpointError: if the entry is a link out of the folder or not a regular file.
    """
    folder = os.fspath(folder)
    path = os.path.join(folder, name)
    if not os.path.lexists(path):
        return None
    real, root = os.path.realpath(path), os.path.realpath(folder)
    roots = [root]
    if os.path.basename(os.path.dirname(root)) == "snapshots":  # the Hub cache's layout
        roots.append(os.path.join(os.path.dirname(os.path.dirname(root)), "blobs"))
    if not any(os.path.commonpath([real, r]) == r for r in roots):
        raise CheckpointError(
            path,
            None,
            f"is a link to {real}, outside the checkpoint folder; hf_afr does not follow links "
            "out of a checkpoint. Copy the file into the folder instead.",
        )
    if not os.path.isfile(real):
        raise CheckpointError(path, None, "is not a regular file.")
    return path


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    missing_ok: bool = False,
    unreachable_ok: bool = False,
    **hub_kwargs: Any,
) -> str | None:
    """The local path of `filename` in a local folder or a Hub repository (downloaded and cached).

    Only a file that certainly does not exist gives `None` (with `missing_ok`): absent from the
    local folder, answered 404 by the Hub, or recorded as absent in the cache. A Hub that cannot
    be reached (or `HF_HUB_OFFLINE=1`) while the file is not cached is an `OSError`, unless
    `unreachable_ok` (then `None` too: for optional files such as `pruner_config.json`, whose
    absence only means "not pruned by hf_afr"). Every other failure raises.

    Args:
        name_or_path (`str` or `os.PathLike`): a local folder or a Hub repository id.
        filename (`str`): the file's name inside it.
        missing_ok (`bool`, defaults to `False`): return `None` for a file that does not exist.
        unreachable_ok (`bool`, defaults to `False`): return `None` when the Hub cannot be asked.
        hub_kwargs: `revision`, `token`, `cache_dir` for `huggingface_hub.hf_hub_download`.
    """
    name_or_path = os.fspath(name_or_path)
    if os.path.isdir(name_or_path):
        path = contained_file(name_or_path, filename)
        if path is not None:
            return path
        if missing_ok:
            return None
        raise ValueError(f"No {filename} in {name_or_path}.")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    hub_kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    try:
        return hf_hub_download(name_or_path, filename, **hub_kwargs)
    except RemoteEntryNotFoundError:
        if missing_ok:
            return None
        raise OSError(f"The Hub repository {name_or_path} has no {filename}.") from None
    except LocalEntryNotFoundError:
        cached = try_to_load_from_cache(
            name_or_path,
            filename,
            cache_dir=hub_kwargs.get("cache_dir"),
            revision=hub_kwargs.get("revision"),
        )
        if cached is _CACHED_NO_EXIST and missing_ok:
            return None
        if unreachable_ok:
            logger.info(f"Could not check the Hub for {name_or_path}/{filename} (offline).")
            return None
        raise OSError(
            f"Cannot get {filename} of {name_or_path}: the Hub cannot be reached or answered "
            "with an error (or HF_HUB_OFFLINE=1), and the file is not in the cache. Retry with "
            "Hub access, or pass a local folder."
        ) from None
