"""The output folder of a run: checked before any work, and never left empty by a failed run.

A run writes everything at the end, in one staged save (model, masks, card and the results
files: see `results_files`), so that a folder never holds results without their model, or an
old model beside new results. Trainer checkpoints (`checkpoint-*`) are written during training,
as resuming needs them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from ..checkpoint.formats import PRUNER_CONFIG_NAME

_CREATED: list[str] = []  # output folders this process created (see `remove_empty_outputs`)


def check_output_dir(output_dir: str, overwrite: bool, resuming: bool = False) -> None:
    """Refuse, before any work, an `output_dir` that is a file, or a folder holding files
    (another model, another run's results) unless `overwrite` or `resuming` (a resumed run
    writes into its own folder). Hidden entries (`.DS_Store`, a killed save's staging folder)
    do not count.

    Raises:
        `ValueError`: one line saying what is there and how to go on.
    """
    if os.path.isfile(output_dir):
        raise ValueError(
            f"--output_dir {output_dir} is a file; pass a folder (it is created if needed)."
        )
    if not os.path.isdir(output_dir):
        _CREATED.append(os.path.abspath(output_dir))
        return
    entries = sorted(name for name in os.listdir(output_dir) if not name.startswith("."))
    if not entries or overwrite or resuming:
        return
    if "config.json" in entries or PRUNER_CONFIG_NAME in entries:
        what = "a model"
    elif any(name.startswith("checkpoint-") for name in entries):
        what = "training checkpoints (resume with --resume_from_checkpoint last)"
    else:
        what = f"other files (e.g. {entries[0]})"
    raise ValueError(
        f"--output_dir {output_dir} already holds {what}; pass --overwrite_output_dir to write "
        "into it, or choose another folder."
    )


def remove_empty_outputs() -> list[str]:
    """Remove the output folders this process created that hold no file (after a failure).

    Only empty folders are removed (bottom up), never a file. Returns the removed folders.
    """
    removed = []
    while _CREATED:
        folder = _CREATED.pop()
        if not os.path.isdir(folder):
            continue
        for root, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(root)  # fails (and keeps the folder) unless it is empty
                removed.append(root)
            except OSError:
                pass
    return removed


def forget_outputs() -> None:
    """Forget the output folders created so far (a run ended: they are its results)."""
    _CREATED.clear()


def results_files(
    results: Mapping[str, Mapping[str, Any]], trainer_state: Any | None = None
) -> dict[str, str]:
    """The results files of a run, as `Trainer.save_metrics` and `save_state` write them:
    `<split>_results.json` for each split, `all_results.json` with all of them and
    `trainer_state.json` (with a `TrainerState`), to be saved with the model."""
    files, everything = {}, {}
    if trainer_state is not None:
        state = json.dumps(dataclasses.asdict(trainer_state), indent=2, sort_keys=True)
        files["trainer_state.json"] = state + "\n"
    for split, metrics in results.items():
        files[f"{split}_results.json"] = json.dumps(metrics, indent=4, sort_keys=True) + "\n"
        everything.update(metrics)
    files["all_results.json"] = json.dumps(everything, indent=4, sort_keys=True) + "\n"
    return files
