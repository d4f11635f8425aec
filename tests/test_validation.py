"""onnxport.validate: real torch.onnx exports checked by a real ONNX Runtime over a shape matrix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import onnxport
from conftest import TinyCNN, TinyMLP, TokenClassifier, TwoInputs, run_onnx, tiny_transformer, token_batch
from onnxport import validate
from onnxport.config import InputSpec
from onnxport.errors import (
    AxisNotDynamicError,
    CheckerError,
    ConfigError,
    ExportError,
    InputError,
    NonFiniteError,
    ParityError,
    SessionError,
    SignatureMismatchError,
    ValidationError,
)

# TorchScript exports on purpose (fast, and it bakes Python ints in): its deprecation is noise here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
    pytest.mark.filterwarnings("ignore:The feature will be removed"),
]


def torchscript_export(model, args, path, names, outputs=("output",), dynamic=None, kwargs=None):
    """The TorchScript exporter: fast, and it bakes Python ints in, which these tests need."""
    dynamic = dynamic if dynamic is not None else {name: {0: "batch"} for name in [*names, *outputs]}
    inputs = (*args, kwargs) if kwargs else args
    torch.onnx.export(
        model,
        inputs,
        str(path),
        dynamo=False,
        input_names=list(names),
        output_names=list(outputs),
        dynamic_axes=dynamic,
    )
    return path


class BakedBatch(nn.Module):
    """Reads the batch size as a Python int, so the traced Reshape keeps the export batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.reshape(int(x.shape[0]), -1))


class BatchInValues(nn.Module):
    """Runs at any batch, but the TorchScript trace bakes the export batch into the output's values:
    the file runs at every size (the exporter's axis check passes) and only parity can see it."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1)) + float(x.shape[0]) - 1


class DictInput(nn.Module):
    """forward takes one dict, as many data loaders hand batches over."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 2)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.proj(batch["features"]) * batch["scale"]


class ThreeLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory) -> tuple[TinyMLP, torch.Tensor, Path]:
    torch.manual_seed(0)
    model, x = TinyMLP().eval(), torch.randn(2, 4)
    path = torchscript_export(model, (x,), tmp_path_factory.mktemp("mlp") / "mlp.onnx", ["x"])
    return model, x, path


# -- a correct model --------------------------------------------------------------------------


def test_correct_model_passes_at_every_shape_and_the_json_holds_the_numbers(mlp_file, tmp_path):
    model, x, path = mlp_file

    report = validate(path, model, x, validation={"latency_runs": 3})

    assert report.passed
    assert [case.label for case in report.cases] == ["batch=2", "batch=1", "batch=5"]
    assert [case.outputs[0].shape for case in report.cases] == [(2, 3), (1, 3), (5, 3)]
    metrics = json.loads(Path(report.write_json(tmp_path / "mlp.validation.json")).read_text())
    assert metrics["passed"] == 1 and metrics["cases"] == 3 and metrics["failed_cases"] == 0
    assert 0 <= metrics["max_abs_diff"] < 1e-5
    assert metrics["torch_latency_ms"] > 0 and metrics["ort_latency_ms"] > 0
    per_shape = metrics["outputs"]["output"]
    assert set(per_shape) == {"batch=1", "batch=2", "batch=5"}
    assert set(per_shape["batch=5"]) >= {"max_abs_diff", "max_rel_diff", "mismatch_pct"}
    assert metrics["tolerances"] == {"atol": 1e-4, "rtol": 1e-3}
    assert set(metrics["run"]) >= {"git_commit", "git_dirty", "host", "time"}
    assert [row["case"] for row in metrics["latency"]] == ["batch=2", "batch=1", "batch=5"]
    assert all(row["torch_ms"] > 0 and row["onnxruntime_ms"] > 0 for row in metrics["latency"])
    numbers = [v for k, v in _flatten(metrics).items() if not k.startswith(("run.", "latency"))]
    assert all(isinstance(v, (int, float)) for v in numbers), "metric sections hold numbers only"


def test_configured_sizes_replace_the_default_matrix(mlp_file):
    model, x, path = mlp_file

    report = validate(path, model, x, validation={"sizes": [3, 16], "latency_runs": 0})

    assert [case.label for case in report.cases] == ["batch=2", "batch=3", "batch=16"]
    assert report.torch_latency_ms is None and "torch_latency_ms" not in report.to_dict()


def test_real_samples_add_cases_beside_the_generated_inputs(mlp_file):
    model, x, path = mlp_file
    samples = [torch.randn(3, 4), torch.randn(7, 4)]

    report = validate(path, model, x, samples=samples, validation={"latency_runs": 0})

    assert [(case.label, case.sizes) for case in report.cases] == [
        ("batch=2", {"batch": 2}),
        ("batch=1", {"batch": 1}),
        ("batch=5", {"batch": 5}),
        ("sample_0", {"batch": 3}),
        ("sample_1", {"batch": 7}),
    ]
    assert report.passed


class Independent(nn.Module):
    """Two inputs whose first axes never meet, so each may have a size of its own."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, y.sum(dim=-1)


def test_every_axis_is_varied_alone_and_all_together(tmp_path):
    model, x, y = Independent(), torch.randn(2, 4), torch.randn(2, 4)
    dynamic = {"x": {0: "batch"}, "y": {0: "rows"}, "output_0": {0: "batch"}, "output_1": {0: "rows"}}
    path = torchscript_export(
        model, (x, y), tmp_path / "two.onnx", ["x", "y"], ("output_0", "output_1"), dynamic
    )

    report = validate(path, model, (x, y), validation={"latency_runs": 0})

    labels = [case.label for case in report.cases]
    assert labels == [
        "batch=2,rows=2",
        "batch=1,rows=2",
        "batch=5,rows=2",
        "batch=2,rows=1",
        "batch=2,rows=5",
        "batch=5,rows=5",
    ]
    assert report.passed


def test_a_size_eager_pytorch_refuses_is_an_axis_that_is_not_dynamic_not_a_parity_failure(tmp_path):
    torch.manual_seed(0)
    model, x, y = TwoInputs().eval(), torch.randn(2, 4), torch.randn(2, 4)
    # the file says x and y have independent first axes; the model adds them
    dynamic = {"x": {0: "batch"}, "y": {0: "rows"}, "output_0": {0: "batch"}, "output_1": {0: "batch"}}
    path = torchscript_export(
        model, (x, y), tmp_path / "two.onnx", ["x", "y"], ("output_0", "output_1"), dynamic
    )

    with pytest.raises(AxisNotDynamicError) as raised:
        validate(path, model, (x, y), validation={"latency_runs": 0, "on_mismatch": "warn"})

    error = raised.value
    assert str(error).startswith(
        "the model does not accept batch = 5: this axis is not dynamic (batch is x axis 0;"
    )
    assert "at batch=5,rows=2 torch raised RuntimeError" in str(error)
    assert "export.dynamic_axes={x: {}} (or export.dynamic_batch=false)" in error.fix
    assert "export.validation.sizes" in error.fix and "atol" not in error.fix
    assert error.axes == {"batch": 5} and error.exit_code == 2
    # sizes the model takes validate
    assert validate(path, model, (x, y), validation={"latency_runs": 0, "sizes": [1]}).passed


class Positional(nn.Module):
    """Token and position embeddings: a sequence longer than its position table is refused."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(50, 4), nn.Embedding(10, 4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.tokens(input_ids) + self.positions(torch.arange(input_ids.shape[1]))


def test_a_refused_sequence_length_keeps_the_batch_in_the_fix(tmp_path):
    model, ids = Positional().eval(), torch.randint(0, 50, (2, 6))
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "output": {0: "batch", 1: "sequence"}}
    path = torchscript_export(model, (ids,), tmp_path / "positional.onnx", ["input_ids"], dynamic=dynamic)

    with pytest.raises(
        AxisNotDynamicError, match=r"does not accept sequence = 13: this axis is not"
    ) as raised:
        validate(path, model, ids, validation={"latency_runs": 0})

    assert "export.dynamic_axes={input_ids: {0: batch}}, or list the sizes" in raised.value.fix
    assert validate(path, model, ids, validation={"latency_runs": 0, "sizes": [1, 9]}).passed


def test_a_refused_axis_fails_the_export_and_publishes_nothing(tmp_path):
    model = TinyMLP().eval()
    # The TorchScript path runs the file with each dynamic axis changed before validation does.
    with pytest.raises(ExportError, match=r"'x' axis 1 \('features'\) was asked to be dynamic but the model"):
        onnxport.export(
            model,
            torch.randn(2, 4),
            tmp_path / "mlp.onnx",
            exporter="torchscript",
            dynamic_axes={"x": {0: "batch", 1: "features"}},
        )
    assert [path.name for path in tmp_path.iterdir()] == ["mlp.rejected.torchscript.log"]  # the evidence


def test_an_unnamed_dynamic_dim_is_varied_too(mlp_file, tmp_path):
    model, x, source = mlp_file
    proto = onnx.load(str(source))
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].Clear()  # dynamic, without a dim_param
    onnx.save(proto, str(tmp_path / "unnamed.onnx"))

    report = validate(tmp_path / "unnamed.onnx", model, x, validation={"latency_runs": 0})

    assert [case.label for case in report.cases] == ["x_axis0=2", "x_axis0=1", "x_axis0=5"]


def test_the_summary_is_a_table_with_marks_and_tolerances(mlp_file):
    model, x, path = mlp_file

    summary = validate(path, model, x, validation={"atol": 2e-4, "latency_runs": 0}).summary()

    assert "passed: 3 of 3 cases" in summary and "atol=0.0002" in summary
    rows = [line for line in summary.splitlines() if line.startswith("✓")]
    assert len(rows) == 3 and all("output" in row and "0.0002" in row for row in rows)


def test_model_mode_is_restored_and_dropout_does_not_count(tmp_path):
    torch.manual_seed(0)
    model, image = TinyCNN(), torch.randn(2, 1, 8, 8)
    model.eval()
    path = torchscript_export(model, (image,), tmp_path / "cnn.onnx", ["image"])
    model.train()
    model.bn.eval()  # a frozen batch norm inside a training model

    report = validate(path, model, image, validation={"latency_runs": 0})

    assert report.passed, report.summary()
    assert model.training and model.drop.training and not model.bn.training


# -- a graph wrong only at other batch sizes -----------------------------------------------------


def test_baked_batch_size_passes_at_the_export_shape_but_fails_with_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model, x = BakedBatch().eval(), torch.randn(2, 2, 4)
    with pytest.warns(torch.jit.TracerWarning):
        path = torchscript_export(model, (x,), tmp_path / "baked.onnx", ["x"])
    (onnx_output,) = run_onnx(path, {"x": x.numpy()})
    np.testing.assert_allclose(onnx_output, model(x).detach().numpy(), atol=1e-6)

    with pytest.raises(ParityError) as raised:
        validate(path, model, x, validation={"latency_runs": 0})

    report = raised.value.report
    assert [case.passed for case in report.cases] == [True, False, False]
    assert str(raised.value).startswith("2 of 3 validation cases failed: ")
    assert "\n" not in str(raised.value)
    assert "✗" in report.summary()


def test_export_refuses_to_publish_a_file_that_fails_with_dynamic_batch(tmp_path):
    from onnxport import export

    torch.manual_seed(0)
    model, x = BatchInValues().eval(), torch.randn(2, 2, 4)
    output = tmp_path / "model.onnx"
    output.write_bytes(b"previous artifact")

    with pytest.raises(ValidationError):
        export(model, x, output, exporter="torchscript", validation={"latency_runs": 0})

    assert output.read_bytes() == b"previous artifact"
    rejected = tmp_path / "model.rejected.onnx"
    assert rejected.exists()
    (onnx_output,) = run_onnx(rejected, {"x": x.numpy()})  # the rejected file is kept for debugging
    assert onnx_output.shape == (2, 3)
    rejected_report = json.loads((tmp_path / "model.rejected.validation.json").read_text())
    assert rejected_report["passed"] == 0 and rejected_report["failed_cases"] == 2
    assert not (tmp_path / "model.validation.json").exists()  # the published model's report slot


# -- NaN, tolerances --------------------------------------------------------------------------------


class NaNOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x - 10.0)


def test_nan_output_fails_and_says_nan_was_found(tmp_path):
    model, x = NaNOutput(), torch.randn(2, 4)
    path = torchscript_export(model, (x,), tmp_path / "nan.onnx", ["x"])

    with pytest.raises(NonFiniteError, match="NaN found in the torch and onnxruntime output"):
        validate(path, model, x, validation={"latency_runs": 0})


class MaskedLogits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.masked_fill(x > 0, float("-inf"))


def test_inf_in_the_reference_fails_unless_allowed_for_that_output(tmp_path):
    model, x = MaskedLogits(), torch.randn(2, 4)
    path = torchscript_export(model, (x,), tmp_path / "masked.onnx", ["x"])

    # matching Inf on both sides is no proof the model works: all-Inf outputs would pass
    with pytest.raises(NonFiniteError, match="allow_nonfinite=true if they are expected"):
        validate(path, model, x, validation={"latency_runs": 0})

    allowed = {"latency_runs": 0, "per_output": {"output": {"allow_nonfinite": True}}}
    report = validate(path, model, x, validation=allowed)
    assert report.passed
    assert report.to_dict()["outputs"]["output"]["batch=2"]["inf"] == 2 * int((x > 0).sum())
    assert report.to_dict()["tolerances"]["output"]["allow_nonfinite"] == 1


def test_nan_in_the_reference_matches_only_where_onnxruntime_has_nan_too():
    from onnxport.parity import compare

    expected = np.array([np.nan, 1.0, np.inf], np.float32)
    assert not compare("y", expected, expected.copy(), 1e-4, 1e-3).passed
    assert compare("y", expected, expected.copy(), 1e-4, 1e-3, allow_nonfinite=True).passed
    moved = np.array([1.0, np.nan, np.inf], np.float32)
    assert not compare("y", expected, moved, 1e-4, 1e-3, allow_nonfinite=True).passed


@pytest.mark.parametrize("tolerance", ["atol", "rtol"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_tolerances_are_a_config_error(mlp_file, tolerance, value):
    model, x, path = mlp_file
    with pytest.raises(ConfigError, match=rf"validation.{tolerance}=(inf|nan) is not a finite number"):
        validate(path, model, x, validation={tolerance: value})


def test_a_file_that_is_not_onnx_is_bad_input_not_a_failed_validation(tmp_path, mlp_file):
    model, x, _ = mlp_file
    bogus = tmp_path / "model.onnx"
    bogus.write_text("not a model")
    with pytest.raises(InputError, match="is not an ONNX model") as error:
        validate(bogus, model, x)
    assert error.value.exit_code == 2


@pytest.fixture
def drifted(mlp_file):
    """The exported file against a copy of the model whose weights moved slightly after export."""
    model, x, path = mlp_file
    moved = TinyMLP().eval()
    moved.load_state_dict(model.state_dict())
    with torch.no_grad():
        moved.fc2.bias += 1e-2
    return moved, x, path


def test_tolerance_breach_fails_by_default_and_logs_the_table_of_failures(drifted, caplog):
    model, x, path = drifted

    with caplog.at_level(logging.ERROR, logger="onnxport.validation"), pytest.raises(ParityError) as raised:
        validate(path, model, x, validation={"latency_runs": 0})

    assert type(raised.value) is ParityError
    assert "output at batch=2 max_abs_diff=1.0e-02 > atol=1e-04" in str(raised.value)
    assert raised.value.report.to_dict()["passed"] == 0
    failed_rows = [line for line in caplog.text.splitlines() if line.startswith("✗  output")]
    assert len(failed_rows) == 3, caplog.text  # one row per output and shape, in the log


def test_tolerance_breach_only_warns_with_on_mismatch_warn(drifted, caplog):
    model, x, path = drifted

    with caplog.at_level(logging.WARNING, logger="onnxport.validation"):
        report = validate(path, model, x, validation={"on_mismatch": "warn", "latency_runs": 0})

    assert not report.passed and len(report.failed_cases) == 3
    assert "on_mismatch=warn" in caplog.text and "max_abs_diff=1.0e-02" in caplog.text


def test_per_output_tolerance_overrides_the_global_one(drifted):
    model, x, path = drifted

    report = validate(
        path, model, x, validation={"per_output": {"output": {"atol": 2e-2}}, "latency_runs": 0}
    )

    assert report.passed
    assert report.cases[0].outputs[0].atol == 2e-2
    assert report.to_dict()["tolerances"]["output"] == {"atol": 2e-2, "rtol": 1e-3}


class Drifting(nn.Module):
    """Counts its calls in a buffer the exported graph cannot update, so eager drifts from the file."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x) + 0.01 * self.calls


def test_export_publishes_despite_a_breach_with_on_mismatch_warn(tmp_path, caplog):
    from onnxport import export

    torch.manual_seed(0)
    output = tmp_path / "model.onnx"

    with caplog.at_level(logging.WARNING, logger="onnxport.validation"):
        result = export(
            Drifting().eval(),
            torch.randn(2, 4),
            output,
            exporter="torchscript",
            validation={"on_mismatch": "warn", "latency_runs": 0},
        )

    assert output.exists() and not (tmp_path / "model.rejected.onnx").exists()
    assert not result.validation.passed and "the file is not rejected" in caplog.text
    assert json.loads(result.report_path.read_text())["passed"] == 0


def test_export_fails_on_the_same_breach_by_default(tmp_path):
    from onnxport import export

    torch.manual_seed(0)

    with pytest.raises(ParityError, match=r"3 of 3 validation cases failed: output at batch=2 max_abs_diff"):
        export(Drifting().eval(), torch.randn(2, 4), tmp_path / "model.onnx", exporter="torchscript")

    assert not (tmp_path / "model.onnx").exists() and (tmp_path / "model.rejected.onnx").exists()


# -- inputs of every kind ---------------------------------------------------------------------------


def test_integer_token_ids_are_generated_within_the_spec_range(tmp_path):
    torch.manual_seed(0)
    model = TokenClassifier(vocab=50).eval()
    ids = torch.randint(0, 50, (2, 6))
    path = torchscript_export(
        model,
        (ids,),
        tmp_path / "tokens.onnx",
        ["input_ids"],
        dynamic={"input_ids": {0: "batch", 1: "seq"}, "output": {0: "batch"}},
    )
    in_vocab = [InputSpec(name="input_ids", shape=[2, 6], dtype="int64", low=0, high=50)]

    report = validate(path, model, ids, inputs=in_vocab, validation={"latency_runs": 0})

    assert report.passed, report.summary()
    assert {"batch=1,seq=6", "batch=2,seq=13", "batch=5,seq=13"} <= {case.label for case in report.cases}
    # the spec is what bounds the ids: beyond the vocabulary the embedding itself refuses
    beyond = [InputSpec(name="input_ids", shape=[2, 6], dtype="int64", low=50, high=60)]
    with pytest.raises(ParityError, match="torch raised IndexError"):
        validate(path, model, ids, inputs=beyond, validation={"latency_runs": 0})


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "padded"), [("clip", "right"), ("bert", "left")])
def test_text_models_with_padded_masks_validate(tmp_path, kind, padded):
    """Generated masks stay padded as the example's: CLIP's text model attends causally, and the
    random 0/1 masks validation drew left rows with nothing to attend, where the exported graph
    averages and eager PyTorch gives 0 (issue 14). Left padding leaves such rows in a causal model
    whatever validation draws: the example's own padded positions differ, so BERT shows that side.
    """
    model = tiny_transformer(kind)
    result = onnxport.export(
        model, token_batch(padded=padded), tmp_path / f"{kind}.onnx", validation={"latency_runs": 0}
    )
    assert result.validation.passed and len(result.validation.cases) >= 3


def test_dict_inputs_validate(tmp_path):
    torch.manual_seed(0)
    model = DictInput().eval()
    batch = {"features": torch.randn(2, 4), "scale": torch.rand(2, 1)}
    path = torchscript_export(
        model, (batch, {}), tmp_path / "dict.onnx", ["features", "scale"], outputs=("output",)
    )

    report = validate(path, model, batch, validation={"latency_runs": 0})

    assert report.passed and [case.label for case in report.cases] == ["batch=2", "batch=1", "batch=5"]


def test_keyword_inputs_validate(tmp_path):
    torch.manual_seed(0)
    model, x, y = TwoInputs().eval(), torch.randn(2, 4), torch.randn(2, 4)
    path = torchscript_export(
        model, (x, y), tmp_path / "two.onnx", ["x", "y"], outputs=("output_0", "output_1")
    )

    report = validate(path, model, {"x": x, "y": y}, validation={"latency_runs": 0})

    assert report.passed and len(report.cases) == 3


def test_initializers_kept_as_graph_inputs_are_not_counted_as_inputs(tmp_path):
    # Old-style files list every weight as a graph input too; the count check must not trip on them.
    torch.manual_seed(0)
    model, x = TinyMLP().eval(), torch.randn(2, 4)
    path = tmp_path / "kept.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["output"],
        dynamic_axes={"x": {0: "batch"}, "output": {0: "batch"}},
        keep_initializers_as_inputs=True,
    )
    assert len(onnx.load(str(path)).graph.input) == 5  # x and the four weights

    assert validate(path, model, x, validation={"latency_runs": 0}).passed


def test_external_data_validates_by_path(mlp_file, tmp_path):
    model, x, source = mlp_file
    path = tmp_path / "external.onnx"
    onnx.save_model(onnx.load(str(source)), str(path), save_as_external_data=True, size_threshold=0)
    assert onnx.external_data_helper.uses_external_data(
        onnx.load(str(path), load_external_data=False).graph.initializer[0]
    )

    assert validate(path, model, x, validation={"latency_runs": 0}).passed


def test_export_with_external_data_always_is_validated_by_path(tmp_path):
    from onnxport import export

    torch.manual_seed(0)
    model, x = TinyMLP().eval(), torch.randn(2, 4)

    result = export(model, x, tmp_path / "model.onnx", exporter="torchscript", external_data="always")

    assert result.validation.passed and result.data_path.name.startswith("model.onnx.")
    assert result.data_path.exists() and result.data_path.suffix == ".data"
    assert validate(result.path, model, x, validation={"latency_runs": 0}).passed


def test_an_exported_program_is_validated_like_its_module(mlp_file):
    model, x, path = mlp_file
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))

    report = validate(path, program, x, validation={"latency_runs": 0})

    assert report.passed and len(report.cases) == 3, report.summary()


# -- broken files ---------------------------------------------------------------------------------


def _save_graph(path: Path, nodes, inputs, outputs, domain_opsets=()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    opsets = [helper.make_opsetid("", 18), *domain_opsets]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_a_file_failing_strict_shape_inference_is_a_checker_error(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    path = _save_graph(tmp_path / "bad.onnx", [helper.make_node("Add", ["x", "y"], ["out"])], [x, y], [out])

    with pytest.raises(CheckerError, match=r"onnx\.checker rejected bad\.onnx"):
        validate(path, TwoInputs(), (torch.randn(2, 3), torch.randn(4)))


def test_a_file_onnxruntime_cannot_load_is_a_session_error(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 4])
    node = helper.make_node("Frobnicate", ["x"], ["output"], domain="com.example")
    path = _save_graph(tmp_path / "custom.onnx", [node], [x], [out], [helper.make_opsetid("com.example", 1)])

    with pytest.raises(SessionError, match=r"cannot load custom\.onnx"):
        validate(path, TinyMLP(), torch.randn(2, 4))


def test_inputs_that_do_not_fit_the_graph_are_a_signature_mismatch(mlp_file):
    model, x, path = mlp_file

    with pytest.raises(SignatureMismatchError, match=r"graph has 1 inputs .* flatten to 2 tensors"):
        validate(path, TwoInputs(), (x, x))
    with pytest.raises(
        SignatureMismatchError, match=r"graph outputs are named \['output'\], .* \['logits'\]"
    ):
        validate(path, model, x, output_names=["logits"])


def test_inputs_the_model_cannot_run_are_an_input_error(mlp_file):
    _, _, path = mlp_file

    with pytest.raises(InputError, match=r"TinyMLP raised RuntimeError on the example inputs \(x\(2, 5\)\)"):
        validate(path, TinyMLP(), torch.randn(2, 5))


# -- localization ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_localize_names_the_first_diverging_operator_of_a_dynamo_export(tmp_path):
    torch.manual_seed(0)
    model, x = ThreeLayers().eval(), torch.randn(2, 4)
    path = tmp_path / "three.onnx"
    torch.onnx.export(
        model, (x,), str(path), dynamo=True, input_names=["x"], output_names=["logits"], external_data=False
    )
    with torch.no_grad():
        model.fc2.weight += 0.05  # the file now differs from the model from the second layer on

    with pytest.raises(ParityError) as raised:
        validate(path, model, x, output_names=["logits"], validation={"localize": True, "latency_runs": 0})

    divergence = raised.value.report.first_divergence
    assert divergence.startswith("Gemm 'linear_1' (aten.linear.default)"), divergence
    assert "first diverging operator: Gemm 'linear_1'" in str(raised.value)


def test_localize_says_nothing_when_value_names_are_not_fx_names(drifted):
    model, x, path = drifted  # a TorchScript export: values are named onnx::Gemm_..., not after FX nodes

    with pytest.raises(ParityError) as raised:
        validate(path, model, x, validation={"localize": True, "latency_runs": 0})

    assert raised.value.report.first_divergence is None


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
