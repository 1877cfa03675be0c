"""Accuracy through `evaluate.load("accuracy")`, and its numpy fallback where it cannot load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import evaluate
import numpy as np
import pytest
from transformers import EvalPrediction

from hf_afr.workflow.results import accuracy_metric_fn, load_accuracy_metric

# Hand-worked: argmax rows -> [1, 0, 2, 2], labels [1, 0, 1, 2]: 3 of 4 right.
LOGITS = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.5], [0.0, 0.2, 0.3], [-1.0, -2.0, 0.0]])
LABELS = np.array([1, 0, 1, 2])

# Stands in for the Hub's `evaluate-metric/accuracy` script in evaluate's module cache: a real
# `evaluate.Metric`, loaded by evaluate's own offline code path. Its extra "count" shows that
# the scores came through it.
CACHED_METRIC = """
import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Top-1 accuracy.",
            citation="",
            inputs_description="predictions, references: class ids",
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references):
        right = sum(int(p == r) for p, r in zip(predictions, references))
        return {"accuracy": right / len(references), "count": len(references)}
"""


def test_without_the_metric_offline_the_numpy_fallback_gives_the_same_accuracy(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "empty-modules")
    with caplog.at_level("WARNING"):
        metric = load_accuracy_metric(str(tmp_path / "cache"))
    assert metric is None
    assert "Could not load evaluate's 'accuracy' metric" in caplog.text
    scores = accuracy_metric_fn(None)(EvalPrediction(predictions=LOGITS, label_ids=LABELS))
    assert scores == {"accuracy": 0.75}
    # Trainer hands `(logits, ...)` tuples when the model returns more than logits.
    scores = accuracy_metric_fn(None)(EvalPrediction(predictions=(LOGITS,), label_ids=LABELS))
    assert scores == {"accuracy": 0.75}


def test_the_cached_evaluate_metric_is_loaded_and_used(tmp_path):
    modules = tmp_path / "modules"
    script = modules / "evaluate_modules/metrics/evaluate-metric--accuracy" / ("0" * 64)
    script.mkdir(parents=True)
    (script / "accuracy.py").write_text(CACHED_METRIC)
    # A fresh process: evaluate reads its module cache location when it is imported.
    code = textwrap.dedent(
        f"""
        import inspect, json
        import numpy as np
        from transformers import EvalPrediction
        from hf_afr.workflow.results import accuracy_metric_fn, load_accuracy_metric

        metric = load_accuracy_metric({str(tmp_path / "cache")!r})
        fn = accuracy_metric_fn(metric)
        logits, labels = np.array({LOGITS.tolist()}), np.array({LABELS.tolist()})
        print(json.dumps({{
            "file": inspect.getfile(type(metric)),
            "scores": fn(EvalPrediction(predictions=logits, label_ids=labels)),
        }}))
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(modules), "HF_EVALUATE_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(modules))
    assert out["scores"] == pytest.approx({"accuracy": 0.75, "count": 4})
