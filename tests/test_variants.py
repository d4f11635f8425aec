"""Variants (export.variants): optimised, fp16 and int8 files made, validated and published in one run.

Real exporters, real ONNX Runtime transforms and sessions; the models are the reference pipeline's
digits CNN (trained for two quick epochs) and a small TransformerEncoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import onnxport
from conftest import TinyMLP, prototype_tokens, run_onnx
from onnxport import publish
from onnxport.errors import ConfigError, ExportError, ValidationError
from onnxport.hashing import file_sha256
from onnxport.publish import payload_bytes

ALL_KINDS = [
    {"name": "opt", "optimize": "ort"},
    {"name": "slim", "optimize": "slim"},
    {"name": "fp16", "precision": "fp16"},
    {"name": "int8", "precision": "int8"},
    {"name": "int8s", "precision": "int8", "quantization": "static"},
]


def _mlp() -> TinyMLP:
    """Seeded: int8 is judged on the top-1 of its class scores, and untrained scores may nearly tie."""
    torch.manual_seed(0)
    return TinyMLP()


def _files(directory: Path) -> dict[str, str]:
    return {path.name: file_sha256(path) for path in sorted(directory.iterdir()) if path.is_file()}


def _metadata(path: Path) -> dict[str, str]:
    header = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in header.metadata_props}


def _model(kind: str, request: pytest.FixtureRequest) -> tuple[torch.nn.Module, torch.Tensor, list]:
    """(model, example input, real batches) for the digits CNN or the small transformer."""
    if kind == "cnn":
        images, _ = request.getfixturevalue("digits")
        batches = [images[1400 + 32 * i : 1432 + 32 * i] for i in range(4)]
        return request.getfixturevalue("digits_cnn"), images[:2], batches
    batches = [prototype_tokens(32, seed=1000 + i)[0] for i in range(4)]
    return request.getfixturevalue("tiny_encoder"), prototype_tokens(2, seed=999)[0], batches


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("kind", ["cnn", "transformer"])
def test_every_kind_is_made_validated_and_published(tmp_path, exporter, kind, request):
    model, example, batches = _model(kind, request)
    output = tmp_path / "model.onnx"

    result = onnxport.export(
        model,
        example,
        output,
        exporter=exporter,
        variants=ALL_KINDS,
        calibration_samples=batches[:2],
        validation_samples=batches[2:],
    )

    assert [v.name for v in result.variants] == [k["name"] for k in ALL_KINDS]
    assert all(v.passed for v in result.variants)
    fp32 = onnx.load(str(output), load_external_data=False)
    fp32_props = _metadata(output)
    assert not any(key.startswith("onnxport.variant") for key in fp32_props)
    for variant in result.variants:
        assert variant.path == tmp_path / f"model.{variant.name}.onnx"
        assert variant.sha256 and variant.size_bytes == variant.path.stat().st_size
        props = _metadata(variant.path)
        assert props["onnxport.variant"] == variant.name
        assert props["onnxport.variant.source_sha256"] == result.sha256
        assert "onnxport==" in props["onnxport.variant.transform_versions"]
        assert json.loads(props["onnxport.variant.config"])["name"] == variant.name
        assert props["onnxport.config"] == fp32_props["onnxport.config"]
        # the caller's feed does not change: same input names and float32 in and out
        header = onnx.load(str(variant.path), load_external_data=False)
        assert [i.name for i in header.graph.input] == [i.name for i in fp32.graph.input]
        # it declares only the opsets it uses: ORT's quantizer declares every domain it knows
        used = {"", "ai.onnx"} | {node.domain for node in header.graph.node}
        used |= {f.domain for f in header.functions} | {n.domain for f in header.functions for n in f.node}
        assert {opset.domain for opset in header.opset_import} <= used
        (out,) = run_onnx(variant.path, {result.input_names[0]: batches[2].numpy()})
        assert out.dtype == np.float32

    # weight bytes: the graph itself is a large part of these small files (make bench has real ratios)
    weights = {v.name: payload_bytes(onnx.load(str(v.path)).graph.initializer) for v in result.variants}
    fp32_weights = payload_bytes(onnx.load(str(output)).graph.initializer)
    assert weights["fp16"] < 0.55 * fp32_weights
    assert weights["int8"] < 0.35 * fp32_weights and weights["int8s"] < 0.35 * fp32_weights
    sizes = {v.name: v.size_bytes for v in result.variants}

    report = json.loads(result.report_path.read_text())
    assert [row["name"] for row in report["files"]] == ["fp32", *sizes]
    assert all(row["passed"] == 1 and row["published"] == 1 for row in report["files"])
    assert {"ort_ms_batch1", "ort_ms_batch32"} <= set(report["files"][0])
    assert "fp16 (model.fp16.onnx)" in result.validation.summary()
    # int8 is judged on the real samples; the generated cases are reported, not judged
    assert report["variants"]["int8"]["unjudged_cases"] == ["batch=2", "batch=1", "batch=5"]
    assert report["variants"]["int8"]["top1"]["output"] >= 0.95


def test_int8_judged_by_agreement_and_fp16_by_tolerance_on_generated_inputs(
    tmp_path, digits_cnn, digits, caplog
):
    """Without real data every case is judged; the defaults hold on the trained CNN's generated inputs."""
    from onnxport.progress import is_progress

    images, _ = digits
    with caplog.at_level(logging.INFO, logger="onnxport"):
        result = onnxport.export(
            digits_cnn,
            images[:2],
            tmp_path / "model.onnx",
            variants=[{"name": "fp16", "precision": "fp16"}, {"name": "int8", "precision": "int8"}],
            validation={"latency_runs": 0},
        )

    progress = [r.getMessage().split(" done")[0] for r in caplog.records if is_progress(r)]
    assert progress == ["export", "check", "validate", "variant fp16", "variant int8", "publish"]
    fp16, int8 = result.validation.variants
    assert fp16.passed and fp16.criteria["atol"] == 1e-2 and fp16.criteria["min_cosine"] is None
    assert int8.passed and int8.criteria["atol"] is None and int8.criteria["min_cosine"] == 0.99
    assert int8.unjudged == [] and set(int8.top1) == {"output"}
    assert all(o.cosine > 0.99 and not o.judged_by_tolerance for case in int8.cases for o in case.outputs)
    metrics = result.validation.metrics()["variants"]
    assert metrics["int8"]["passed"] == 1 and 0.99 < metrics["int8"]["min_cosine"] <= 1.0
    numbers = json.dumps(metrics)
    assert all(isinstance(v, (int, float)) for m in metrics.values() for v in m.values()), numbers
    assert result.validation.files[0].latency_ms == {}  # latency_runs 0 times nothing


def test_failing_variant_is_rejected_while_the_rest_publishes(tmp_path, caplog):
    output = tmp_path / "model.onnx"
    variants = [
        {"name": "int8", "precision": "int8", "min_cosine": 1.0, "on_mismatch": "skip"},
        {"name": "opt", "optimize": "ort"},
    ]

    with caplog.at_level(logging.WARNING, logger="onnxport"):
        result = onnxport.export(_mlp(), torch.randn(2, 4), output, variants=variants)

    assert [v.name for v in result.variants] == ["opt"]
    assert output.is_file() and (tmp_path / "model.opt.onnx").is_file()
    assert not (tmp_path / "model.int8.onnx").exists()
    rejected = tmp_path / "model.int8.rejected.onnx"
    assert _metadata(rejected)["onnxport.variant"] == "int8"
    rejected_report = json.loads((tmp_path / "model.int8.rejected.validation.json").read_text())
    assert rejected_report["passed"] == 0 and rejected_report["path"] == str(rejected)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "min_cosine=1" in warnings[0] and "on_mismatch=skip" in warnings[0]
    rows = {row.name: row for row in result.validation.files}
    assert not rows["int8"].passed and not rows["int8"].published and rows["opt"].passed
    assert result.validation.metrics()["variants"]["int8"]["passed"] == 0


def test_on_mismatch_warn_publishes_and_reports_the_failure(tmp_path):
    variants = [{"name": "int8", "precision": "int8", "min_cosine": 1.0, "on_mismatch": "warn"}]

    result = onnxport.export(_mlp(), torch.randn(2, 4), tmp_path / "model.onnx", variants=variants)

    (int8,) = result.variants
    assert not int8.passed and int8.path.is_file()
    assert json.loads(result.report_path.read_text())["files"][1]["passed"] == 0
    assert "✗ int8: variant 'int8' does not match" in result.validation.summary()


def test_on_mismatch_fail_fails_the_run_and_leaves_previous_files_byte_identical(tmp_path):
    output = tmp_path / "model.onnx"
    model = _mlp()
    onnxport.export(model, torch.randn(2, 4), output, variants=[{"name": "int8", "precision": "int8"}])
    before = _files(tmp_path)
    with torch.no_grad():
        model.fc1.weight.add_(0.5)  # a new model: its fp32 file would differ

    with pytest.raises(ValidationError) as caught:
        onnxport.export(
            model,
            torch.randn(2, 4),
            output,
            variants=[{"name": "int8", "precision": "int8", "min_cosine": 1.0}],
        )

    assert caught.value.exit_code == 1 and "nothing was published" in str(caught.value)
    after = _files(tmp_path)
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) == {"model.int8.rejected.onnx", "model.int8.rejected.validation.json"}


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_rerun_is_byte_identical(tmp_path, exporter, digits_cnn, digits):
    images, _ = digits
    variants = ALL_KINDS
    runs = []
    for name in ("a", "b"):
        result = onnxport.export(
            digits_cnn,
            images[:2],
            tmp_path / name / "model.onnx",
            exporter=exporter,
            variants=variants,
            calibration_samples=[images[:32], images[32:64]],
            validation_samples=[images[1400:1464]],  # static int8 is judged on data like its calibration
            validation={"latency_runs": 0},
        )
        runs.append({v.name: v.sha256 for v in result.variants})
        assert {v.name: file_sha256(v.path) for v in result.variants} == runs[-1]  # no external data here
    assert runs[0] == runs[1]
    assert not any(str(tmp_path) in text for text in _metadata(tmp_path / "a" / "model.int8s.onnx").values())


def test_variants_dropped_from_the_config_are_removed_and_foreign_files_kept(tmp_path):
    output = tmp_path / "model.onnx"
    model, x = _mlp(), torch.randn(2, 4)
    both = [{"name": "int8", "precision": "int8"}, {"name": "opt", "optimize": "ort"}]
    onnxport.export(model, x, output, variants=both)
    foreign = tmp_path / "model.notes.onnx"
    onnx.save(onnx.load(str(tmp_path / "model.opt.onnx")), str(foreign))  # an ONNX file onnxport did not name
    props = onnx.load(str(foreign))
    del props.metadata_props[:]
    onnx.save(props, str(foreign))
    kept_bytes = foreign.read_bytes()

    onnxport.export(model, x, output, variants=both[:1])
    assert (tmp_path / "model.int8.onnx").is_file() and not (tmp_path / "model.opt.onnx").exists()

    result = onnxport.export(model, x, output, variants=[])
    assert result.variants == [] and not (tmp_path / "model.int8.onnx").exists()
    assert foreign.read_bytes() == kept_bytes
    assert "files" not in json.loads(result.report_path.read_text())  # the report as without variants


def test_skipped_variant_does_not_leave_the_previous_model_s_variant_published(tmp_path):
    output = tmp_path / "model.onnx"
    model, x = _mlp(), torch.randn(2, 4)
    onnxport.export(model, x, output, variants=[{"name": "int8", "precision": "int8"}])

    strict = [{"name": "int8", "precision": "int8", "min_cosine": 1.0, "on_mismatch": "skip"}]
    onnxport.export(model, x, output, variants=strict)

    assert not (tmp_path / "model.int8.onnx").exists()  # it was made from the previous fp32 file
    assert (tmp_path / "model.int8.rejected.onnx").is_file()
    onnxport.export(model, x, output, variants=[{"name": "int8", "precision": "int8"}])
    assert (tmp_path / "model.int8.onnx").is_file() and not (tmp_path / "model.int8.rejected.onnx").exists()


def test_fp16_io_makes_the_graph_take_float16(tmp_path):
    variants = [{"name": "half", "precision": "fp16", "fp16_io": True}]

    result = onnxport.export(_mlp(), torch.randn(2, 4), tmp_path / "model.onnx", variants=variants)

    header = onnx.load(str(result.variants[0].path), load_external_data=False)
    assert header.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert result.variants[0].passed


def test_per_output_thresholds_override_the_variant_s(tmp_path):
    from conftest import TwoInputs

    variants = [
        {
            "name": "int8",
            "precision": "int8",
            "min_cosine": 1.0,
            "per_output": {"output_0": {"min_cosine": 0.9}, "output_1": {"min_cosine": 0.9}},
        }
    ]
    result = onnxport.export(
        TwoInputs(), (torch.randn(2, 4), torch.randn(2, 4)), tmp_path / "m.onnx", variants=variants
    )

    assert result.variants[0].passed
    assert result.validation.variants[0].criteria["per_output"] == {}  # both outputs use the same override


def test_static_int8_without_data_is_refused_before_exporting(tmp_path):
    output = tmp_path / "model.onnx"
    with pytest.raises(ConfigError) as caught:
        onnxport.export(
            _mlp(),
            torch.randn(2, 4),
            output,
            variants=[{"name": "q", "precision": "int8", "quantization": "static"}],
        )
    assert caught.value.exit_code == 2
    assert "calibration.npz" in str(caught.value) and "calibration_samples" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_variant_report_hash_matches_the_published_bytes(tmp_path):
    result = onnxport.export(
        _mlp(), torch.randn(2, 4), tmp_path / "model.onnx", variants=[{"name": "opt", "optimize": "slim"}]
    )
    report = json.loads(result.report_path.read_text())
    assert (
        report["variants"]["opt"]["sha256"]
        == hashlib.sha256(result.variants[0].path.read_bytes()).hexdigest()
    )


def test_external_data_variants_get_content_named_data_files_that_go_with_them(tmp_path):
    output = tmp_path / "model.onnx"
    variants = [{"name": "int8", "precision": "int8"}, {"name": "fp16", "precision": "fp16"}]

    result = onnxport.export(_mlp(), torch.randn(2, 4), output, external_data="always", variants=variants)

    for variant in result.variants:
        (data,) = publish.data_files(variant.path)
        assert data.name.startswith(f"{variant.path.name}.") and data.name.endswith(".data")
        assert variant.size_bytes == variant.path.stat().st_size + data.stat().st_size
        run_onnx(variant.path, {"x": np.zeros((3, 4), np.float32)})
    int8_data = publish.data_files(result.variants[0].path)

    onnxport.export(_mlp(), torch.randn(2, 4), output, external_data="always", variants=variants[1:])

    assert not result.variants[0].path.exists() and not int8_data[0].exists()
    assert publish.data_files(result.variants[1].path)[0].is_file()


def test_a_variant_that_cannot_be_made_follows_its_on_mismatch(tmp_path, caplog):
    output = tmp_path / "model.onnx"
    wrong = [torch.randn(4, 7)]  # calibration batches of the wrong width: quantize_static cannot run them
    static = {"name": "q", "precision": "int8", "quantization": "static"}

    with pytest.raises(ExportError, match="int8 static quantization failed"):
        onnxport.export(_mlp(), torch.randn(2, 4), output, variants=[static], calibration_samples=wrong)
    assert not output.exists()

    with caplog.at_level(logging.WARNING, logger="onnxport"):
        result = onnxport.export(
            _mlp(),
            torch.randn(2, 4),
            output,
            variants=[{**static, "on_mismatch": "skip"}],
            calibration_samples=wrong,
        )
    assert output.is_file() and result.variants == [] and not (tmp_path / "model.q.onnx").exists()
    assert any("variant 'q' not made (on_mismatch=skip)" in r.getMessage() for r in caplog.records)


def test_static_int8_without_held_out_data_is_judged_on_its_calibration_batches(tmp_path, digits_cnn, digits):
    """Random inputs far outside the digits' range would fail it (cosine 0.80); its own data does not."""
    images, _ = digits
    variants = [{"name": "q", "precision": "int8", "quantization": "static"}]

    result = onnxport.export(
        digits_cnn,
        images[:2],
        tmp_path / "model.onnx",
        variants=variants,
        calibration_samples=[images[i : i + 64] for i in range(0, 256, 64)],
        validation={"latency_runs": 0},
    )

    (report,) = result.validation.variants
    assert [case.label for case in report.cases][-2:] == ["calibration_0", "calibration_1"]
    assert report.unjudged == ["batch=2", "batch=1", "batch=5"]
    assert report.passed and report.top1["output"] >= 0.95 and report.top1_rows["output"] == 128
    assert [case.label for case in result.validation.cases] == [
        "batch=2",
        "batch=1",
        "batch=5",
    ]  # fp32 unchanged
