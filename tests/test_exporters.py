"""run_exporter: both torch.onnx exporters for real, auto fallback, opsets, dynamic axes, bad operators."""

from __future__ import annotations

import fnmatch
import functools
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from conftest import Mysterious, TinyCNN, TinyMLP, TokenClassifier, run_onnx
from onnxport.config import ExportConfig
from onnxport.errors import ConfigError, ExportError, InputError, UnsupportedOperatorError
from onnxport.exporters import causes, failure_log, run_exporter, supported_opsets
from onnxport.inputs import prepare_inputs
from onnxport.model_state import preserved_state

# -- operators for the fallback and unsupported-operator cases --------------------------------
# Real torch.library ops: one only TorchScript can translate (a symbolic is registered),
# one that no exporter can translate.


@torch.library.custom_op("onnxport_tests::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@double.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


torch.onnx.register_custom_op_symbolic(
    "onnxport_tests::double",
    lambda g, x: g.op("Mul", x, g.op("Constant", value_t=torch.tensor(2.0))),
    9,
)


class Doubles(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return double(self.fc(x))


class FixedBatch(nn.Module):
    """Specialises axis 0 to 2 whatever the exporter is told."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(2, 4)


class Keywords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, **features: torch.Tensor) -> torch.Tensor:
        return self.fc(features["dense"]) * features["weight"]


class Noisy(nn.Module):
    """Prints while an exporter captures it (Python and file descriptor 2); dynamo cannot translate it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            print("printed by forward")
            os.write(2, b"written to fd 2 by forward\n")
        return double(self.fc(x))


def reinjects_use_cache(forward):
    """What transformers 5's decorators do: pass an argument again, by keyword."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        kwargs["use_cache"] = False
        return forward(self, *args, **kwargs)

    return wrapper


class Decorated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    @reinjects_use_cache
    def forward(self, x, mask=None, use_cache=None, output_attentions=None):
        return self.fc(x) * mask


class CountsRows(nn.Module):
    """Dynamic in eager PyTorch and under dynamo; a TorchScript trace bakes ``len(x)`` in as 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.arange(len(x)).unsqueeze(1)


def export(model, example, path, **options):
    config = ExportConfig.coerce(None, **options)
    return run_exporter(model, prepare_inputs(model, example, config), path, config)


def graph_dims(path) -> dict[str, list]:
    model = onnx.load(str(path), load_external_data=False)
    return {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*model.graph.input, *model.graph.output]
    }


def opset_of(path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# -- both exporters -------------------------------------------------------------------------


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_each_exporter_writes_a_batch_dynamic_file_that_matches_eager(tmp_path, exporter):
    torch.manual_seed(0)
    model = TinyMLP().eval()
    path = tmp_path / "mlp.onnx"
    # example batch of 1: traced at 1, the axis would be specialised away
    run = export(model, torch.randn(1, 4), path, exporter=exporter)

    assert run.exporter == exporter and run.fallback_reason is None
    assert run.input_names == ["x"] and run.output_names == ["output"]
    assert graph_dims(path) == {"x": ["batch", 4], "output": ["batch", 3]}
    for batch in (1, 3):
        x = torch.randn(batch, 4)
        (got,) = run_onnx(path, {"x": x.numpy()})
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_forward_kwargs_models_export_with_unprefixed_weights(tmp_path, exporter):
    model = Keywords().eval()
    example = {"dense": torch.randn(2, 4), "weight": torch.randn(2, 2)}
    path = tmp_path / "kw.onnx"
    run = export(model, example, path, exporter=exporter)
    assert run.input_names == ["dense", "weight"]
    initializers = {t.name for t in onnx.load(str(path)).graph.initializer}
    assert {"fc.weight", "fc.bias"} <= initializers
    feed = {"dense": np.ones((3, 4), np.float32), "weight": np.full((3, 2), 2, np.float32)}
    (got,) = run_onnx(path, feed)
    expected = model(dense=torch.ones(3, 4), weight=torch.full((3, 2), 2.0))
    np.testing.assert_allclose(got, expected.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_torch_onnx_style_dynamic_axes_work_with_both_exporters(tmp_path, exporter):
    torch.manual_seed(0)
    model = TokenClassifier(vocab=50).eval()
    path = tmp_path / "tokens.onnx"
    # a sequence of 1 in the example: traced at 2, so the axis is not specialised away
    run = export(
        model,
        torch.randint(0, 50, (2, 1)),
        path,
        exporter=exporter,
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}},
    )

    assert run.exporter == exporter
    assert graph_dims(path) == {"input_ids": ["batch", "seq"], "output": ["batch", 2]}
    ids = torch.randint(0, 50, (3, 7))
    (got,) = run_onnx(path, {"input_ids": ids.numpy()})
    np.testing.assert_allclose(got, model(ids).detach().numpy(), atol=1e-5)


# -- auto, ScriptModule, ExportedProgram ----------------------------------------------------


def test_auto_falls_back_to_torchscript_and_records_why(tmp_path):
    model = Doubles().eval()
    path = tmp_path / "doubles.onnx"
    run = export(model, torch.randn(2, 4), path)
    assert run.exporter == "torchscript"
    assert "dynamo failed" in run.fallback_reason
    assert "onnxport_tests.double" in run.fallback_reason
    x = torch.randn(3, 4)
    np.testing.assert_allclose(run_onnx(path, {"x": x.numpy()})[0], model(x).detach().numpy(), atol=1e-5)


def test_a_fallback_shows_one_line_and_keeps_what_the_exporter_printed_in_a_log(tmp_path, capfd, caplog):
    path, output = tmp_path / "staged.onnx", tmp_path / "model.onnx"
    config = ExportConfig.coerce(None)
    model = Noisy().eval()
    inputs = prepare_inputs(model, torch.randn(2, 4), config)
    capfd.readouterr()
    run = run_exporter(model, inputs, path, config, logs_beside=output)

    assert run.exporter == "torchscript"
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # neither dynamo's nor TorchScript's attempt printed anything
    log = tmp_path / "model.rejected.dynamo.log"  # beside the output, under the *.rejected.* ignores
    (line,) = [r.getMessage() for r in caplog.records if r.name == "onnxport.exporters"]
    assert line.startswith("dynamo could not export the model (") and line.endswith(f"Its output: {log}")
    assert "onnxport_tests.double" in line and "\n" not in line
    text = log.read_text()
    assert "printed by forward" in text and "written to fd 2 by forward" in text  # Python and C level
    assert "DispatchError" in text  # the full traceback the one line summarises
    assert not (tmp_path / "model.rejected.torchscript.log").exists()  # it succeeded: nothing kept

    # once dynamo succeeds there, its old log would describe a fallback that no longer happens
    export_inputs = prepare_inputs(TinyMLP(), torch.randn(2, 4), config)
    assert run_exporter(TinyMLP(), export_inputs, path, config, logs_beside=output).exporter == "dynamo"
    assert not log.exists()


def test_the_logs_fall_under_the_rejected_pattern_dvc_already_ignores():
    patterns = [line for line in (Path(__file__).parents[1] / ".dvcignore").read_text().splitlines() if line]
    log = failure_log(Path("models/model.onnx"), "dynamo")
    assert log == Path("models/model.rejected.dynamo.log")
    assert any(fnmatch.fnmatch(log.name, pattern) for pattern in patterns if not pattern.startswith("#"))


def test_when_every_exporter_fails_the_error_names_their_logs(tmp_path, capfd):
    with pytest.raises(UnsupportedOperatorError) as error:
        export(Mysterious(), torch.randn(2, 4), tmp_path / "m.onnx")
    assert capfd.readouterr().out == ""
    logs = [tmp_path / "m.rejected.dynamo.log", tmp_path / "m.rejected.torchscript.log"]
    assert all(log.is_file() for log in logs)
    assert f"what the exporter printed is in {logs[0]}, {logs[1]}" in str(error.value)


def test_torchscript_passes_keyword_inputs_by_keyword(tmp_path):
    # The legacy exporter alone fills mask's followers positionally, then the decorator passes
    # use_cache again: "got multiple values for argument 'use_cache'".
    model = Decorated().eval()
    example = {"x": torch.randn(2, 4), "mask": torch.ones(2, 2)}
    with pytest.raises(TypeError, match="multiple values for argument 'use_cache'"):
        torch.onnx.export(
            model, (example["x"], {"mask": example["mask"]}), tmp_path / "bare.onnx", dynamo=False
        )
    path = tmp_path / "decorated.onnx"
    run = export(model, example, path, exporter="torchscript")
    assert run.input_names == ["x", "mask"]
    feed = {"x": np.ones((3, 4), np.float32), "mask": np.full((3, 2), 2, np.float32)}
    expected = model(torch.ones(3, 4), mask=torch.full((3, 2), 2.0))
    np.testing.assert_allclose(run_onnx(path, feed)[0], expected.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("model", [FixedBatch(), CountsRows()], ids=["model", "trace"])
def test_torchscript_checks_that_dynamic_axes_stay_dynamic(tmp_path, model):
    # TorchScript names the axis in the file whatever the trace baked in; the file is run at another size
    path = tmp_path / "fixed.onnx"
    with pytest.raises(ExportError, match=r"input 'x' axis 0 \('batch'\) .* fixes it to 2") as error:
        export(model, torch.randn(2, 4), path, exporter="torchscript", dynamic_axes={"x": {0: "batch"}})
    assert "dynamic_batch=false" in error.value.fix
    traced = isinstance(model, CountsRows)  # eager PyTorch takes batch 3: the trace is to blame
    assert ("the TorchScript trace fixes it" in error.value.message) is traced
    assert ("len(), int(), .item()" in error.value.fix) is traced
    assert not path.exists()
    run = export(model, torch.randn(2, 4), path, exporter="torchscript", dynamic_batch=False)
    assert graph_dims(path)["x"] == [2, 4] and run.exporter == "torchscript"


def test_a_script_module_always_goes_through_torchscript(tmp_path):
    scripted = torch.jit.script(TinyMLP().eval())
    run = export(scripted, torch.randn(2, 4), tmp_path / "scripted.onnx")
    assert run.exporter == "torchscript"
    assert "ScriptModule" in run.fallback_reason
    with pytest.raises(ConfigError, match=r"'dynamo' cannot export a torch\.jit\.ScriptModule"):
        export(scripted, torch.randn(2, 4), tmp_path / "no.onnx", exporter="dynamo")


def test_an_exported_program_goes_through_dynamo_with_its_own_dynamic_shapes(tmp_path):
    model = TinyMLP().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.randn(2, 4),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / "program.onnx"
    run = export(program, torch.randn(2, 4), path)
    assert run.exporter == "dynamo"
    assert graph_dims(path)["x"] == ["batch", 4]
    assert run.dynamic_axes["x"] == {0: "batch"}  # what the file holds, not only what was asked
    with pytest.raises(ConfigError, match=r"'torchscript' cannot export a torch\.export\.ExportedProgram"):
        export(program, torch.randn(2, 4), tmp_path / "no.onnx", exporter="torchscript")


# -- opsets ---------------------------------------------------------------------------------


def test_opset_ranges_come_from_the_installed_torch():
    low, high = supported_opsets("torchscript")
    assert (low, high) == (7, 20)
    assert supported_opsets("dynamo")[1] >= 18


def test_an_opset_the_exporter_cannot_produce_is_refused_before_exporting(tmp_path):
    path = tmp_path / "no.onnx"
    with pytest.raises(ConfigError, match=r"opset=21 cannot be produced by the torchscript exporter.*7-20"):
        export(TinyMLP(), torch.randn(2, 4), path, exporter="torchscript", opset=21)
    with pytest.raises(ConfigError, match=r"opset=40 cannot be produced by the auto exporter"):
        export(TinyMLP(), torch.randn(2, 4), path, opset=40)
    assert not path.exists()


def test_dynamo_converts_to_an_older_opset_or_says_it_could_not(tmp_path):
    path = tmp_path / "mlp17.onnx"
    export(TinyMLP().eval(), torch.randn(2, 4), path, exporter="dynamo", opset=17)
    assert opset_of(path) == 17
    # onnx's converter has no Relu adapter below 14: torch.onnx keeps opset 18 and only logs it
    path = tmp_path / "mlp13.onnx"
    with pytest.raises(
        ConfigError, match=r"opset=13 could not be produced by the dynamo exporter.*wrote opset 18"
    ):
        export(TinyMLP().eval(), torch.randn(2, 4), path, exporter="dynamo", opset=13)
    assert not path.exists()


def test_torchscript_writes_an_older_opset(tmp_path):
    path = tmp_path / "mlp11.onnx"
    export(TinyMLP().eval(), torch.randn(2, 4), path, exporter="torchscript", opset=11)
    assert opset_of(path) == 11


# -- failures that name what is wrong -------------------------------------------------------


@pytest.mark.parametrize("exporter", ["auto", "dynamo", "torchscript"])
def test_an_operator_no_exporter_supports_is_named(tmp_path, exporter):
    path = tmp_path / "mystery.onnx"
    with pytest.raises(UnsupportedOperatorError, match="operator onnxport_tests::mystery cannot be") as error:
        export(Mysterious(), torch.randn(2, 4), path, exporter=exporter)
    assert error.value.operator == "onnxport_tests::mystery"
    assert not path.exists()


def test_an_axis_the_model_specialises_is_an_error_naming_the_axis(tmp_path):
    path = tmp_path / "fixed.onnx"
    with pytest.raises(ExportError, match=r"input 'x' axis 0 \('batch'\) .* fixes it to 2"):
        export(FixedBatch(), torch.randn(2, 4), path, dynamic_axes={"x": {0: "batch"}})
    assert not path.exists()
    # dynamic_batch alone asks only where the model runs at another batch size: here it stays static
    run = export(FixedBatch(), torch.randn(2, 4), path)
    assert graph_dims(path)["x"] == [2, 4] and run.dynamic_axes == {}


def test_output_names_from_the_config_must_match_the_outputs(tmp_path):
    path = tmp_path / "a.onnx"
    run = export(TinyMLP().eval(), torch.randn(2, 4), path, exporter="torchscript", output_names=["scores"])
    assert run.output_names == ["scores"]
    with pytest.raises(ConfigError, match=r"has 2 names but the model returns 1 tensors \(output\)"):
        export(TinyMLP(), torch.randn(2, 4), tmp_path / "b.onnx", output_names=["a", "b"])


# -- the caller's model ---------------------------------------------------------------------


def test_preserved_state_restores_modes_and_grad_flags_even_on_error():
    model = TinyCNN().train()
    model.drop.eval()
    model.conv.weight.requires_grad_(False)
    with pytest.raises(RuntimeError), preserved_state(model):
        assert not model.training and not model.bn.training
        raise RuntimeError("export failed")
    assert model.training and model.bn.training and not model.drop.training
    assert not model.conv.weight.requires_grad and model.head.weight.requires_grad


def test_exporting_a_training_model_leaves_its_batch_norm_statistics_alone(tmp_path):
    model = TinyCNN().train()
    running_mean = model.bn.running_mean.clone()
    batches_seen = int(model.bn.num_batches_tracked)
    export(model, torch.randn(2, 1, 8, 8), tmp_path / "cnn.onnx", exporter="torchscript")
    assert torch.equal(model.bn.running_mean, running_mean)
    assert int(model.bn.num_batches_tracked) == batches_seen
    assert model.training and model.bn.training


def test_inputs_that_bind_but_break_forward_are_an_input_error(tmp_path):
    expected = r"TinyMLP raised RuntimeError on the example inputs \(x\(2, 5\)\)"
    with pytest.raises(InputError, match=expected) as error:
        export(TinyMLP(), torch.randn(2, 5), tmp_path / "m.onnx")
    assert "forward(x: torch.Tensor)" in error.value.fix


def test_auto_falls_back_when_dynamo_cannot_reach_the_opset(tmp_path):
    path = tmp_path / "mlp13.onnx"
    run = export(TinyMLP().eval(), torch.randn(2, 4), path, opset=13)
    assert run.exporter == "torchscript" and opset_of(path) == 13
    assert "dynamo failed: export.opset=13 could not be produced" in run.fallback_reason


# -- torch's errors, recognised by type --------------------------------------------------------


def test_the_torch_messages_onnxport_reads_are_pinned():
    """Two texts are read from torch's typed errors, as a last resort: if torch rewords them, this fails."""
    from torch.onnx._internal.exporter._errors import DispatchError, TorchExportError

    with pytest.raises(TorchExportError) as error:  # the specialised axis: a ValueError under it
        torch.onnx.export(
            FixedBatch().eval(), (torch.randn(2, 4),), dynamo=True, dynamic_shapes={"x": {0: "batch"}}
        )
    texts = [str(cause) for cause in causes(error.value)]
    assert any("static shape of 2 for dimension inputs['x'].shape[0]" in text for text in texts)

    with pytest.raises(torch.onnx.errors.OnnxExporterError) as error:  # no ONNX function for an op
        torch.onnx.export(Mysterious().eval(), (torch.randn(2, 4),), dynamo=True)
    (dispatch,) = [cause for cause in causes(error.value) if isinstance(cause, DispatchError)]
    assert "No ONNX function found for <OpOverload(op='onnxport_tests.mystery'" in str(dispatch)


class CrashesWhileTracing(nn.Module):
    """Runs eagerly; raises a KeyError (no torch error) only while TorchScript traces it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            raise KeyError("a bug, not an unsupported model")
        return x + 1


def test_a_crash_onnxport_does_not_recognise_is_raised_as_it_is(tmp_path):
    # Not dressed up as an ExportError (exit 2): the CLI reports it as unexpected (exit 3).
    with pytest.raises(KeyError, match="a bug"):
        export(CrashesWhileTracing(), torch.randn(2, 4), tmp_path / "crash.onnx", exporter="torchscript")


def test_fix_hints_name_only_options_onnxport_passes(tmp_path):
    with pytest.raises(UnsupportedOperatorError) as error:
        export(Mysterious(), torch.randn(2, 4), tmp_path / "m.onnx", exporter="dynamo")
    assert "custom_translation_table" not in str(error.value) and "report=True" not in str(error.value)
