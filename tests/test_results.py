"""DVC metrics and plot data written by an export: few stable numbers, readable at DVC's precision."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import onnxport
from conftest import TinyMLP, TwoInputs
from onnxport.parity import compare

DVC_PRECISION = 5  # dvc metrics show/diff: round(value, 5)


def test_tolerance_use_is_the_worst_diff_over_its_allowance():
    expected = np.array([0.0, 10.0, -2.0])
    actual = expected + np.array([5e-5, 1e-3, 0.0])
    check = compare("y", expected, actual, atol=1e-4, rtol=1e-3)
    # element 0: 5e-5 / 1e-4 = 0.5; element 1: 1e-3 / (1e-4 + 1e-2) = 0.099
    assert check.tolerance_use == pytest.approx(0.5)
    assert check.passed
    failing = compare("y", expected, expected + np.array([3e-4, 0, 0]), atol=1e-4, rtol=1e-3)
    assert failing.tolerance_use == pytest.approx(3.0) and not failing.passed
    exact = compare("y", np.zeros(2), np.array([0.0, 1e-9]), atol=0.0, rtol=1e-3)
    assert exact.tolerance_use > 1.0 and np.isfinite(exact.tolerance_use)  # JSON-safe


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("results")
    result = onnxport.export(
        TwoInputs().eval(),
        (torch.randn(2, 4), torch.randn(2, 4)),
        root / "model.onnx",
        exporter="torchscript",
        validation={"metrics": str(root / "metrics" / "validation.json"), "plots": str(root / "plots")},
    )
    return root, result


def test_metrics_file_holds_few_numbers_readable_at_dvc_precision(two_outputs):
    root, result = two_outputs
    metrics = json.loads((root / "metrics" / "validation.json").read_text())
    flat = {
        f"{key}.{inner}" if isinstance(value, dict) else key: inner_value
        for key, value in metrics.items()
        for inner, inner_value in (value.items() if isinstance(value, dict) else [(None, value)])
    }
    assert len(flat) <= 8
    assert all(isinstance(value, (int, float)) for value in flat.values()), flat
    assert flat["passed"] == 1
    assert set(metrics["tolerance_use_by_output"]) == set(result.output_names)
    worst_abs = max(o.max_abs_diff for case in result.validation.cases for o in case.outputs)
    if worst_abs:  # what DVC prints is not 0.0 for a non-zero difference
        assert round(flat["max_abs_diff_e6"], DVC_PRECISION) != 0.0
        assert round(flat["tolerance_use"], DVC_PRECISION) != 0.0
    assert flat["max_abs_diff_e6"] == pytest.approx(1e6 * worst_abs, rel=1e-4)
    full = json.loads(result.report_path.read_text())  # the run context stays in the full report
    assert "run" in full and "run" not in metrics and "host" in full["run"]


def test_plots_hold_parity_per_case_and_output_and_latency_per_case(two_outputs):
    root, result = two_outputs
    parity = json.loads((root / "plots" / "parity.json").read_text())
    cases = [case.label for case in result.validation.cases]
    assert len(parity) == len(cases) * 2
    assert {row["output"] for row in parity} == set(result.output_names)
    assert all(0 <= row["tolerance_use"] < 1 for row in parity)
    assert len({row["label"] for row in parity}) == len(parity)  # one bar each
    latency = json.loads((root / "plots" / "latency.json").read_text())
    assert [row["case"] for row in latency] == cases
    assert sorted(row["batch"] for row in latency) == sorted(
        case.sizes["batch"] for case in result.validation.cases
    )
    assert all(row["torch_ms"] > 0 and row["onnxruntime_ms"] > 0 for row in latency)


def test_nothing_for_dvc_unless_asked(tmp_path):
    torch.manual_seed(0)
    onnxport.export(TinyMLP().eval(), torch.randn(2, 4), tmp_path / "m.onnx", exporter="torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.validation.json"]


def test_disabled_validation_replaces_the_metrics_with_not_validated(tmp_path):
    torch.manual_seed(0)
    metrics, plots = tmp_path / "metrics.json", tmp_path / "plots"
    settings = {"metrics": str(metrics), "plots": str(plots)}
    onnxport.export(
        TinyMLP().eval(), torch.randn(2, 4), tmp_path / "m.onnx", exporter="torchscript", validation=settings
    )
    assert json.loads(metrics.read_text())["passed"] == 1
    onnxport.export(
        TinyMLP().eval(),
        torch.randn(2, 4),
        tmp_path / "m.onnx",
        exporter="torchscript",
        validation={**settings, "enabled": False},
    )
    assert json.loads(metrics.read_text()) == {"passed": 0, "validated": 0}  # no stale "passed" for DVC
    assert json.loads((plots / "parity.json").read_text()) == []
