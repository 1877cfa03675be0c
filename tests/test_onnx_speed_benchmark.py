"""`benchmarks/onnx_speed.py` runs end to end on toy sizes, so it cannot rot (no timing asserts)."""

import json

import pytest
from test_benchmarks import load


@pytest.mark.slow
def test_onnx_speed_quick_writes_its_table(tmp_path):
    bench = load("onnx_speed")
    result = bench.main(
        ["--quick", "--rounds", "1", "--threads", "1", "--output_dir", str(tmp_path)]
    )
    assert max(result["max_abs_diff"].values()) <= 1e-4
    assert result["params"]["structured"] < result["params"]["dense"]
    saved = json.loads((tmp_path / "onnx_speed.json").read_text())
    assert set(saved["seconds"]) == set(bench.VARIANTS)
    table = (tmp_path / "onnx_speed.md").read_text()
    assert "| ort structured |" in table and "ratio of ratios" in table
