"""`hf-afr export --format onnx`: a structured checkpoint as ONNX, checked against PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from families import IMAGE_SIZE, tiny_classifier
from test_structured_checkpoint import images, logits, structured_classifier

from hf_afr import PrunerConfig
from hf_afr.checkpoint.save import save_pruned_checkpoint
from hf_afr.checkpoint.widths import count_parameters
from hf_afr.cli import main as cli_main
from hf_afr.export import export_onnx

pytestmark = pytest.mark.usefixtures("single_thread")


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": x.numpy()})[0]


def test_export_command_writes_the_narrow_model_with_a_dynamic_batch(tmp_path, capsys):
    model = structured_classifier("vit")
    save_pruned_checkpoint(tmp_path / "ckpt", model, {}, PrunerConfig())
    status = cli_main(["export", str(tmp_path / "ckpt"), "--output", str(tmp_path / "onnx")])
    assert status == 0
    assert "ONNX Runtime logits within" in capsys.readouterr().out
    path = tmp_path / "onnx" / "model.onnx"
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["layer_num_attention_heads"] == [1, 3]
    for batch in (1, 5):  # neither is the export's batch of 2
        x = images(batch)
        np.testing.assert_allclose(run_onnx(path, x), logits(model, x).numpy(), atol=1e-4, rtol=0)
    graph = onnx.load(str(path)).graph
    shapes = {tuple(sorted(t.dims)) for t in graph.initializer}
    # The narrow projections (1 and 3 heads of 8 dims; 5 and 6 MLP units), not the dense ones.
    assert {(8, 32), (24, 32), (5, 32), (6, 32)} <= shapes and (32, 64) not in shapes
    stored = sum(int(np.prod(t.dims)) for t in graph.initializer)
    assert stored < count_parameters(tiny_classifier("vit", num_attention_heads=4))


def test_a_failed_check_is_one_line_and_writes_nothing(tmp_path, capsys):
    save_pruned_checkpoint(tmp_path / "ckpt", structured_classifier("vit"), {}, PrunerConfig())
    out = tmp_path / "onnx"
    status = cli_main(["export", str(tmp_path / "ckpt"), "--output", str(out), "--atol", "-1"])
    err = capsys.readouterr().err.strip()
    assert status != 0 and "\n" not in err
    assert "differs from PyTorch" in err and "atol -1" in err
    assert not (out / "model.onnx").exists()


@pytest.mark.slow
def test_swin_exports_through_the_fallback_exporter_when_needed(tmp_path):
    model = structured_classifier("swin")
    save_pruned_checkpoint(tmp_path / "ckpt", model, {}, PrunerConfig())
    result = export_onnx(tmp_path / "ckpt", tmp_path / "onnx")
    assert result.exporter in ("dynamo", "torchscript") and result.max_abs_diff <= 1e-4
    x = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(9))
    np.testing.assert_allclose(
        run_onnx(result.path, x), logits(model, x).numpy(), atol=1e-4, rtol=0
    )
