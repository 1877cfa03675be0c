"""Export a checkpoint to ONNX, checked against PyTorch (`hf-afr export FOLDER --format onnx`).

The model is loaded as hf_afr loads any checkpoint (dense, compact, structured: the ONNX graph
of a structurally pruned model has its narrower shapes), wrapped to map `pixel_values` to
`logits`, and exported with `torch.onnx.export` with a dynamic batch axis: the dynamo exporter
first, the TorchScript exporter where dynamo cannot trace a family (Swin's window partition on
torch 2.13). ONNX Runtime then runs the file on a batch of another size than the export's and
its logits must match PyTorch's within `atol`, or the export fails. The output folder holds
`model.onnx` plus the checkpoint's `config.json` and image processor, the layout of optimum's
ONNX exports. Needs the `onnx` extra: `pip install "hf_afr[onnx]"`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .checkpoint.formats import CONFIG_NAME, IMAGE_PROCESSOR_NAME
from .checkpoint.load import load_classifier
from .files import staged_directory

ONNX_NAME = "model.onnx"
_EXPORT_BATCH, _CHECK_BATCH = 2, 3


@dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote and how well ONNX Runtime reproduced PyTorch."""

    path: str
    exporter: str
    max_abs_diff: float
    check_batch: int


class LogitsModel(nn.Module):
    """`pixel_values -> logits` of a transformers image classifier (the exported signature)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def image_shape(config: Any) -> tuple[int, int, int]:
    """`(channels, height, width)` of the model's input images, from its config."""
    vision = getattr(config, "vision_config", None) or config
    size = getattr(vision, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(getattr(vision, "num_channels", 3)), int(height), int(width)


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session for `path` (`threads`: intra-op threads; default: ORT's).

    Its threads sleep between runs instead of spinning (ORT's default), so that PyTorch code
    running between two calls, such as a side-by-side timing, gets the cores.
    """
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def export_model_onnx(model: nn.Module, path: str | os.PathLike) -> str:
    """Write `model` (a loaded classifier) to an ONNX file with a dynamic batch axis.

    Returns:
        `str`: the exporter that succeeded, `"dynamo"` or `"torchscript"`.
    """
    _require("onnx")
    wrapped = LogitsModel(model).eval()
    example = torch.randn(_EXPORT_BATCH, *image_shape(model.config))
    common = dict(input_names=["pixel_values"], output_names=["logits"])
    # One self-contained file unless protobuf's 2 GB limit needs the weights beside it.
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5 * 2**30
    errors = []
    for exporter in ("dynamo", "torchscript"):
        if exporter == "dynamo":
            _require("onnxscript")
            batch = {"pixel_values": {0: torch.export.Dim("batch")}}
            kwargs = dict(dynamo=True, dynamic_shapes=batch, verbose=False, external_data=big)
        else:
            kwargs = dict(dynamo=False, dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
        try:
            with warnings.catch_warnings(), torch.no_grad(), _quiet_torch_logs():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapped, (example,), os.fspath(path), **common, **kwargs)
            return exporter
        except Exception as err:  # noqa: BLE001 - the other exporter is tried; both reported
            errors.append(f"{exporter}: {' '.join(str(err).split())[:300]}")
    raise ValueError(
        f"torch.onnx.export could not export {type(model).__name__}: {'; '.join(errors)}"
    )


def check_onnx(
    model: nn.Module, path: str | os.PathLike, atol: float = 1e-4, batch: int = _CHECK_BATCH
) -> float:
    """Max |ONNX Runtime - PyTorch| logits on a random batch; a `ValueError` above `atol`."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *image_shape(model.config), generator=generator)
    with torch.no_grad():
        expected = LogitsModel(model).eval()(x).numpy()
    got = onnx_session(path).run(["logits"], {"pixel_values": x.numpy()})[0]
    diff = float(abs(got - expected).max())
    if not diff <= atol:
        raise ValueError(
            f"The ONNX export of {type(model).__name__} differs from PyTorch by {diff:.2e} "
            f"(> atol {atol:g}) on a batch of {batch}; the file was not written."
        )
    return diff


def export_onnx(
    source: str | os.PathLike, output_dir: str | os.PathLike, atol: float = 1e-4
) -> ExportResult:
    """Export a checkpoint folder to `output_dir/model.onnx`, checked against PyTorch.

    Args:
        source (`str` or `os.PathLike`): a checkpoint folder (dense, compact or structured).
        output_dir (`str` or `os.PathLike`): the folder to write (replaced atomically).
        atol (`float`, defaults to 1e-4): largest allowed |ONNX Runtime - PyTorch| logit.

    Returns:
        `ExportResult`: the file, the exporter used and the measured difference.
    """
    source = os.fspath(source)
    model = load_classifier(source).float().eval()
    with staged_directory(output_dir) as staging:
        path = os.path.join(staging, ONNX_NAME)
        exporter = export_model_onnx(model, path)
        diff = check_onnx(model, path, atol)
        for name in (CONFIG_NAME, IMAGE_PROCESSOR_NAME):
            if os.path.isfile(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), os.path.join(staging, name))
    return ExportResult(
        os.path.join(os.fspath(output_dir), ONNX_NAME), exporter, diff, _CHECK_BATCH
    )


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """Keep the exporters' progress lines and notes about optional operators off the console."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f'ONNX export needs `{module}`: install the extra with `pip install "hf_afr[onnx]"`.'
        ) from None
