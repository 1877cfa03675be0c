"""`hf-afr`: convert pruned checkpoints between formats and inspect them.

    hf-afr densify SRC DST      compact -> dense (standard transformers checkpoint + masks)
    hf-afr compact SRC DST      dense -> compact (encoded masks + kept values)
    hf-afr report PATH          per-tensor sparsity of a pruned checkpoint, checked against
                                its weights (folder or Hub id)
    hf-afr bench PATH           dense vs shrunk vs converted for inference, per layer and
                                end to end
    hf-afr export PATH --format onnx --output DIR
                                ONNX file with a dynamic batch axis, checked against PyTorch

SRC and PATH may be local folders or Hub repository ids. Errors are one line on stderr with a
non-zero exit; `--debug` shows the traceback. Every import beyond argparse happens inside the
command that needs it, so `hf-afr --help` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys

from .cli_errors import debug_requested, run_reporting_errors

PROG = "hf-afr"
EXPORT_FORMATS = ("onnx",)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hf-afr` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    debug = args.debug or debug_requested([])
    try:
        run_reporting_errors(f"{PROG} {args.command}", lambda: args.func(args), debug)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Convert and inspect checkpoints pruned with hf_afr."
    )
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, text in (
        ("densify", _densify, "compact -> dense: a standard transformers checkpoint plus masks"),
        ("compact", _compact, "dense -> compact: pruned tensors as encoded mask + kept values"),
    ):
        command = sub.add_parser(name, help=text, description=text, parents=[debug])
        command.add_argument("src", metavar="SRC", help="source checkpoint: folder or Hub id")
        command.add_argument("dst", metavar="DST", help="destination folder")
        command.add_argument(
            "--overwrite", action="store_true", help="write into DST even if it is not empty"
        )
        command.add_argument("--revision", default=None, help="Hub revision of SRC")
        command.set_defaults(func=func)
    report = sub.add_parser(
        "report",
        help="print the per-tensor sparsity of a pruned checkpoint, checked against its weights",
        parents=[debug],
    )
    report.add_argument("path", metavar="PATH", help="checkpoint folder or Hub id")
    report.add_argument("--markdown", action="store_true", help="print a markdown table")
    report.add_argument("--revision", default=None, help="Hub revision of PATH")
    report.set_defaults(func=_report)
    text = "time a pruned model dense vs shrunk vs converted for inference"
    bench = sub.add_parser("bench", help=text, description=text, parents=[debug])
    _add_bench_arguments(bench)
    bench.set_defaults(func=_bench)
    text = "export a checkpoint to ONNX (dynamic batch), checked against PyTorch's logits"
    export = sub.add_parser("export", help=text, description=text, parents=[debug])
    export.add_argument("path", metavar="PATH", help="checkpoint folder or Hub id")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="(default: onnx)")
    export.add_argument("--output", required=True, metavar="DIR", help="folder to write")
    export.add_argument(
        "--atol", type=float, default=1e-4, help="largest allowed logit difference (1e-4)"
    )
    export.add_argument(
        "--overwrite", action="store_true", help="write into DIR even if it is not empty"
    )
    export.add_argument("--revision", default=None, help="Hub revision of PATH")
    export.set_defaults(func=_export)
    parser.set_defaults(debug=False)
    return parser


def _bench(args: argparse.Namespace) -> None:
    import torch

    from .checkpoint.formats import PRUNER_CONFIG_NAME
    from .files import atomic_write_text
    from .inference.bench import bench_batch, format_tables, results_json
    from .inference.config import KERNELS, SparseInferenceConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if any(b < 1 for b in args.batch_size) or args.rounds < 1 or args.layer_rounds < 1:
        raise ValueError("--batch-size, --rounds and --layer-rounds must be positive integers.")
    if args.dtype not in (None, "float32", "float16", "bfloat16"):
        raise ValueError(f"--dtype must be float32, float16 or bfloat16, got {args.dtype!r}.")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is available here.")
    config = SparseInferenceConfig(
        shrink=not args.no_shrink,
        kernels=tuple(args.kernels or KERNELS),
        timing_rounds=args.layer_rounds,
    )
    if os.path.isdir(args.model) and not os.path.isfile(
        os.path.join(args.model, PRUNER_CONFIG_NAME)
    ):
        print(
            f"Note: {args.model} was not pruned by hf_afr (no {PRUNER_CONFIG_NAME}): every model "
            "below is the same dense model; prune it first (scripts/prune.py) to see a speed-up."
        )
    load = {"device": args.device, "dtype": args.dtype, "revision": args.revision}
    results = [bench_batch(args.model, b, config, args.rounds, **load) for b in args.batch_size]
    text = format_tables(args.model, results)
    print(text)
    if args.output:
        atomic_write_text(args.output, text + "\n")
        atomic_write_text(args.output.rsplit(".", 1)[0] + ".json", results_json(results))


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `hf-afr bench` to an (empty) argument parser."""
    parser.add_argument("model", metavar="MODEL_DIR", help="pruned checkpoint: folder or Hub id")
    parser.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        nargs="+",
        default=[1, 8],
        help="batch sizes to convert for and time (default: 1 8)",
    )
    parser.add_argument(
        "--kernels",
        nargs="+",
        default=None,
        help="kernels to consider (dense csr bsr semi_structured; default: all)",
    )
    parser.add_argument("--no-shrink", action="store_true", help="skip exact shrinking")
    parser.add_argument("--rounds", type=int, default=7, help="end-to-end timing rounds (7)")
    parser.add_argument(
        "--layer-rounds", type=int, default=5, help="per-layer timing rounds at conversion (5)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="device to run on (cpu, cuda, ...)")
    parser.add_argument("--dtype", default=None, help="e.g. float16 or bfloat16 (default: saved)")
    parser.add_argument("--output", default=None, help="also write the tables to this .md file")
    parser.add_argument("--revision", default=None, help="Hub revision of MODEL_DIR")


def _densify(args: argparse.Namespace) -> None:
    from .checkpoint.convert import densify_checkpoint

    source = _local_source(args.src, args.revision)
    _check_destination(source, args.dst, args.overwrite)
    entries = densify_checkpoint(source, args.dst)
    print(f"Wrote a dense checkpoint to {args.dst} ({len(entries)} pruned tensors).")


def _compact(args: argparse.Namespace) -> None:
    from .checkpoint.convert import compact_checkpoint
    from .checkpoint.formats import COMPACT_WEIGHTS_NAME

    source = _local_source(args.src, args.revision)
    _check_destination(source, args.dst, args.overwrite)
    compact_checkpoint(source, args.dst)
    size = os.path.getsize(os.path.join(args.dst, COMPACT_WEIGHTS_NAME))
    print(f"Wrote a compact checkpoint to {args.dst} ({size / 2**20:.2f} MiB of weights).")


def _report(args: argparse.Namespace) -> None:
    from .checkpoint.load import inspect_checkpoint

    source = _local_source(args.path, args.revision)
    header, report = inspect_checkpoint(source)
    print(header)
    print(report.to_markdown() if args.markdown else str(report))


def _export(args: argparse.Namespace) -> None:
    from .export import export_onnx

    source = _local_source(args.path, args.revision)
    _check_destination(source, args.output, args.overwrite)
    result = export_onnx(source, args.output, atol=args.atol)
    print(
        f"Wrote {result.path} ({result.exporter} exporter, dynamic batch); ONNX Runtime logits "
        f"within {result.max_abs_diff:.1e} of PyTorch on a batch of {result.check_batch}."
    )


def _local_source(src: str, revision: str | None) -> str:
    from .files import check_local_folder

    check_local_folder(src)
    if os.path.isdir(src):
        return src
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(src, revision=revision)
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
