"""Push pruned checkpoints to the Hugging Face Hub: one repository, one commit.

Follows `huggingface_hub.ModelHubMixin.push_to_hub`: `create_repo(exist_ok=True)`, save into a
temporary folder, one `upload_folder` commit. The token is only handed to `huggingface_hub` (which
also finds it in `HF_TOKEN` or the saved login); it is never written to a file, log or card.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RevisionNotFoundError
from torch import nn

from .checkpoint.card_data import PrunedCardData
from .checkpoint.formats import MODEL_CARD_NAME, check_format, other_format_files
from .checkpoint.save import save_pruned_checkpoint
from .config import PrunerConfig
from .report import SparsityReport
from .structure.report import is_structured


def push_to_hub(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    pruner_config: PrunerConfig,
    repo_id: str,
    *,
    checkpoint_format: str = "dense",
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    image_processor: Any | None = None,
    card_data: PrunedCardData | None = None,
) -> CommitInfo:
    """Upload a pruned model (weights, pruning config, masks, model card, plot) in one commit.

    The repository is created if needed. Its existing README.md is updated rather than replaced;
    the other format's weight files are deleted in the same commit, so the repository never mixes
    formats. Nothing local is modified.

    Args:
        model (`nn.Module`): the pruned model.
        masks (`dict[str, Tensor]`): its masks (True = kept).
        pruner_config (`PrunerConfig`): the configuration the masks were selected with.
        repo_id (`str`): `"namespace/name"` on the Hub.
        checkpoint_format (`str`, defaults to `"dense"`): `"dense"` or `"compact"`.
        commit_message (`str`, *optional*): defaults to a summary of method and sparsity.
        private (`bool`, *optional*): visibility of a newly created repository.
        token (`str` or `bool`, *optional*): Hub token; defaults to `HF_TOKEN` or the saved login.
        revision (`str`, *optional*): an existing branch to commit to (default `main`).
        create_pr (`bool`, defaults to `False`): open a pull request instead of committing.
        image_processor (*optional*): saved alongside, e.g. a `ViTImageProcessor`.
        card_data (`PrunedCardData`, *optional*): what the card reports besides the pruning
            (`base_model`, `datasets`, `accuracy`, ...); its `repo_id` defaults to `repo_id`.

    Returns:
        `huggingface_hub.CommitInfo` of the commit.

    Raises:
        OSError: if the Hub refuses the upload (the message says why; local files are untouched).
    """
    check_format(checkpoint_format)
    structured = is_structured(model.config)
    if not masks and not structured:
        raise ValueError("Nothing pruned yet: call `pruner.prune(batches)` before pushing.")
    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    card_data = card_data or PrunedCardData()
    if card_data.repo_id is None:
        card_data = card_data.replace(repo_id=repo_id)
    report = SparsityReport.from_masks(dict(masks)) if masks else None
    pruned = ["structurally pruned"] if structured else []
    if report is not None:
        pruned.append(f"{report.sparsity:.1%} sparse")
    commit_message = commit_message or (
        f"Upload {pruner_config.method} {', '.join(pruned)} {type(model).__name__} "
        f"({checkpoint_format} checkpoint, hf_afr)"
    )
    with tempfile.TemporaryDirectory(prefix="hf_afr-push-") as workdir:
        folder = os.path.join(workdir, "upload")
        os.makedirs(folder)
        existing = _download_readme(api, repo_id, revision, token, os.path.join(workdir, "cache"))
        if existing is not None:
            shutil.copyfile(existing, os.path.join(folder, MODEL_CARD_NAME))
        save_pruned_checkpoint(
            folder,
            model,
            masks,
            pruner_config,
            checkpoint_format=checkpoint_format,
            image_processor=image_processor,
            card_data=card_data,
            report=report,
        )
        try:
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message,
                token=token,
                revision=revision,
                create_pr=create_pr,
                delete_patterns=list(other_format_files(checkpoint_format)),
            )
        except HfHubHTTPError as err:
            raise OSError(
                f"Uploading the pruned model to {repo_id!r} failed: {err}\nThe Hub did not accept "
                "the commit; nothing on this machine was changed. Retry `push_to_hub` once the "
                "problem is solved."
            ) from err


def _download_readme(
    api: HfApi, repo_id: str, revision: str | None, token: str | bool | None, cache_dir: str
) -> str | None:
    """The repository's README.md in a private cache folder, or None if it has none."""
    try:
        return api.hf_hub_download(
            repo_id=repo_id,
            filename=MODEL_CARD_NAME,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
        )
    except (RemoteEntryNotFoundError, RevisionNotFoundError):
        return None
