"""`hf-afr`: convert pruned checkpoints between formats and print their sparsity.

    hf-afr densify SRC DST      compact -> dense (standard transformers checkpoint + masks)
    hf-afr compact SRC DST      dense -> compact (encoded masks + kept values)
    hf-afr report PATH          per-tensor sparsity of a pruned checkpoint (folder, file or Hub id)
    hf-afr bench PATH           dense vs converted for inference, per layer and end to end

SRC and PATH may be local folders or Hub repository ids.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from transformers.utils import logging

logger = logging.get_logger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hf-afr` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as err:
        print(f"hf-afr {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-afr", description="Convert and inspect checkpoints pruned with hf_afr."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, text in (
        ("densify", _densify, "compact -> dense: a standard transformers checkpoint plus masks"),
        ("compact", _compact, "dense -> compact: pruned tensors as encoded mask + kept values"),
    ):
        command = sub.add_parser(name, help=text, description=text)
        command.add_argument("src", metavar="SRC", help="source checkpoint: folder or Hub id")
        command.add_argument("dst", metavar="DST", help="destination folder")
        command.add_argument(
            "--overwrite", action="store_true", help="write into DST even if it is not empty"
        )
        command.add_argument("--revision", default=None, help="Hub revision of SRC")
        command.set_defaults(func=func)
    report = sub.add_parser("report", help="print the per-tensor sparsity of a pruned checkpoint")
    report.add_argument(
        "path", metavar="PATH", help="checkpoint folder, masks/compact file or Hub id"
    )
    report.add_argument("--markdown", action="store_true", help="print a markdown table")
    report.add_argument("--revision", default=None, help="Hub revision of PATH")
    report.set_defaults(func=_report)
    from .inference.bench import add_bench_arguments

    text = "time a pruned model dense vs converted for inference (per layer and end to end)"
    bench = sub.add_parser("bench", help=text, description=text)
    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)
    return parser


def _bench(args: argparse.Namespace) -> None:
    from .inference.bench import run_bench

    status = run_bench(args)
    if status:
        raise SystemExit(status)


def _densify(args: argparse.Namespace) -> None:
    from .compact import densify_checkpoint

    source = _local_source(args.src, args.revision)
    _check_destination(source, args.dst, args.overwrite)
    entries = densify_checkpoint(source, args.dst)
    print(f"Wrote a dense checkpoint to {args.dst} ({len(entries)} pruned tensors).")


def _compact(args: argparse.Namespace) -> None:
    from .compact import COMPACT_WEIGHTS_NAME
    from .config import PRUNER_CONFIG_NAME
    from .mask_io import MASKS_NAME
    from .pruner import AFRPruner

    source = _local_source(args.src, args.revision)
    _check_destination(source, args.dst, args.overwrite)
    if not os.path.isfile(os.path.join(source, MASKS_NAME)):
        raise ValueError(
            f"{args.src} has no {MASKS_NAME}: only checkpoints pruned and saved by hf_afr "
            "(AFRPruner.save_pretrained) can be made compact."
        )
    pruner = AFRPruner.from_pretrained(source)
    os.makedirs(args.dst, exist_ok=True)
    # Carry over the processor, plot and card (the card is then updated, not replaced).
    skip = {"config.json", MASKS_NAME, PRUNER_CONFIG_NAME, COMPACT_WEIGHTS_NAME}
    for name in os.listdir(source):
        path = os.path.join(source, name)
        is_weights = name.endswith((".safetensors", ".bin", ".safetensors.index.json"))
        if (
            os.path.isfile(path)
            and name not in skip
            and not is_weights
            and not name.startswith(".")
        ):
            shutil.copyfile(path, os.path.join(args.dst, name))
    pruner.save_pretrained(args.dst, checkpoint_format="compact")
    size = os.path.getsize(os.path.join(args.dst, COMPACT_WEIGHTS_NAME))
    print(f"Wrote a compact checkpoint to {args.dst} ({size / 2**20:.2f} MiB of weights).")


def _report(args: argparse.Namespace) -> None:
    from safetensors import SafetensorError, safe_open

    from .compact import COMPACT_FORMAT, information_bound, load_compact_masks, read_compact_header
    from .mask_io import load_masks
    from .report import SparsityReport

    path = _resolve_report_file(args.path, args.revision)
    try:
        with safe_open(path, framework="np") as f:
            file_format = (f.metadata() or {}).get("format")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"Cannot read {path}: {err}") from err
    if file_format == COMPACT_FORMAT:
        entries = read_compact_header(path)
        masks = load_compact_masks(path)
        header = (
            f"compact checkpoint {path}: {os.path.getsize(path)} bytes; information bound of the "
            f"pruned tensors {information_bound(entries):.0f} bytes"
        )
    else:
        masks = load_masks(path)
        header = f"pruning masks {path}"
    print(header)
    report = SparsityReport.from_masks(masks)
    print(report.to_markdown() if args.markdown else str(report))


def _resolve_report_file(path: str, revision: str | None) -> str:
    from .compact import COMPACT_WEIGHTS_NAME
    from .mask_io import MASKS_NAME

    if os.path.isfile(path):
        return path
    folder = (
        path
        if os.path.isdir(path)
        else _local_source(path, revision, [MASKS_NAME, COMPACT_WEIGHTS_NAME])
    )
    for name in (MASKS_NAME, COMPACT_WEIGHTS_NAME):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise ValueError(
        f"{path} holds neither {MASKS_NAME} nor {COMPACT_WEIGHTS_NAME}: not pruned by hf_afr."
    )


def _local_source(src: str, revision: str | None, allow: list[str] | None = None) -> str:
    if os.path.isdir(src):
        return src
    if os.path.exists(src):
        raise ValueError(f"{src} is a file; expected a checkpoint folder or a Hub repository id.")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(src, revision=revision, allow_patterns=allow)
    except Exception as err:  # noqa: BLE001 - reported as a CLI error with the cause
        raise OSError(
            f"{src} is neither a local folder nor a downloadable Hub repository: {err}"
        ) from err


def _check_destination(source: str, dst: str, overwrite: bool) -> None:
    if os.path.abspath(source) == os.path.abspath(dst):
        raise ValueError("SRC and DST must be different folders.")
    if os.path.isfile(dst):
        raise ValueError(f"DST {dst} is a file; expected a folder.")
    if os.path.isdir(dst) and os.listdir(dst) and not overwrite:
        raise ValueError(f"DST {dst} is not empty; pass --overwrite to write into it anyway.")


if __name__ == "__main__":
    sys.exit(main())
