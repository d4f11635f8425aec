"""onnxport.export end to end: real exporters, real ONNX Runtime, real validation, real files."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import onnxport
from conftest import REPO_ROOT, Mysterious, TinyCNN, TinyMLP, run_onnx
from onnxport import publish
from onnxport.errors import ConfigError, InputError, UnsupportedOperatorError, ValidationError
from onnxport.hashing import file_sha256
from onnxport.provenance import weights_sha256


class FixedBatch(nn.Module):
    """Runs at any batch, but TorchScript bakes the export batch (2) into the graph's values.

    (Baked into a shape, the export itself would fail: onnxport runs a TorchScript file at another size.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + float(x.shape[0]) - 1


class FixedBatchWeights(nn.Module):
    """FixedBatch with its ones as a parameter: an initializer that goes to external data."""

    def __init__(self) -> None:
        super().__init__()
        self.ones = nn.Parameter(torch.ones(2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ones.mean(dim=0) * (float(x.shape[0]) - 1)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


# -- one real export of a model in training mode, shared by the checks below -----------------


@pytest.fixture(scope="module")
def cnn_export(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyCNN().train()
    model.conv.weight.requires_grad_(False)
    before = {
        "modes": {name: m.training for name, m in model.named_modules()},
        "grads": {name: p.requires_grad for name, p in model.named_parameters()},
        "ptrs": {name: t.data_ptr() for name, t in model.state_dict().items()},
        "state": {name: t.clone() for name, t in model.state_dict().items()},
    }
    out = tmp_path_factory.mktemp("published")
    # a batch of 1: the pipeline traces the batch axis at 2 so it stays dynamic
    result = onnxport.export(model, torch.randn(1, 1, 8, 8), out / "cnn.onnx")
    return model, result, before


def test_export_publishes_a_validated_batch_dynamic_file(cnn_export):
    model, result, _ = cnn_export
    assert result.exporter == "dynamo" and result.fallback_reason is None
    assert result.input_names == ["image"] and result.output_names == ["output"]
    assert result.path.is_file() and result.size_bytes == result.path.stat().st_size
    assert result.sha256 == file_sha256(result.path)
    assert result.validation is not None and result.validation.passed
    assert listing(result.path.parent) == ["cnn.onnx", "cnn.validation.json"]  # nothing stray

    model.eval()
    try:
        for batch in (1, 5):
            image = torch.randn(batch, 1, 8, 8)
            (got,) = run_onnx(result.path, {"image": image.numpy()})
            np.testing.assert_allclose(got, model(image).detach().numpy(), atol=1e-5)
    finally:
        model.train()
        model.conv.weight.requires_grad_(False)


def test_the_callers_model_comes_back_unchanged_and_uncopied(cnn_export):
    model, _, before = cnn_export
    assert {name: m.training for name, m in model.named_modules()} == before["modes"]
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before["grads"]
    assert {name: t.data_ptr() for name, t in model.state_dict().items()} == before["ptrs"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before["state"][name]), name
        assert tensor.dtype == before["state"][name].dtype and tensor.device.type == "cpu"


def test_run_context_goes_to_the_result_and_report_never_into_the_file(cnn_export):
    _, result, _ = cnn_export
    assert {"git_commit", "git_dirty", "host", "time"} <= set(result.run_context)
    report = json.loads(result.report_path.read_text())
    assert report["passed"] == 1
    assert report["run"]["host"] == socket.gethostname() == result.run_context["host"]

    data = result.path.read_bytes()
    assert socket.gethostname().encode() not in data
    assert result.run_context["time"].encode() not in data
    metadata = props(result.path)
    assert not {"onnxport.git_commit", "onnxport.host", "onnxport.time"} & set(metadata)
    assert metadata["onnxport.exporter"] == "dynamo"
    # The export settings that shape the file (validation settings go to the report only).
    assert (
        metadata["onnxport.config_sha256"] == hashlib.sha256(metadata["onnxport.config"].encode()).hexdigest()
    )
    assert json.loads(metadata["onnxport.config"])["opset"] == result.config.opset


# -- options as keywords, other model kinds -------------------------------------------------


def test_options_are_keyword_arguments(tmp_path, mlp, mlp_input):
    result = onnxport.export(
        mlp, mlp_input, tmp_path / "mlp.onnx", exporter="torchscript", opset=17, dynamic_axes={"x": {0: "n"}}
    )
    model = onnx.load(str(result.path))
    assert result.exporter == "torchscript" and result.config.opset == 17
    assert [o.version for o in model.opset_import if o.domain == ""] == [17]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "n"


def test_a_config_mapping_and_keywords_merge(tmp_path, mlp, mlp_input):
    config = {"exporter": "torchscript", "model_version": 3, "validation": {"atol": 1e-3}}
    result = onnxport.export(mlp, mlp_input, tmp_path / "m.onnx", config=config, validation={"rtol": 0.0})
    assert result.config.model_version == 3
    assert (result.config.validation.atol, result.config.validation.rtol) == (1e-3, 0.0)
    assert onnx.load(str(result.path)).model_version == 3


def test_an_exported_program_exports_and_validates(tmp_path, mlp, mlp_input):
    program = torch.export.export(mlp, (mlp_input,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    result = onnxport.export(program, mlp_input, tmp_path / "program.onnx")
    assert result.exporter == "dynamo" and result.validation.passed
    (got,) = run_onnx(result.path, {"x": np.ones((3, 4), np.float32)})
    np.testing.assert_allclose(got, mlp(torch.ones(3, 4)).detach().numpy(), atol=1e-5)


def test_validation_off_publishes_unchecked_and_says_so(tmp_path, mlp, mlp_input):
    result = onnxport.export(
        mlp, mlp_input, tmp_path / "m.onnx", exporter="torchscript", validation={"enabled": False}
    )
    assert result.validation is None
    assert props(result.path)["onnxport.validation_enabled"] == "false"
    assert listing(tmp_path) == ["m.onnx", "m.validation.json"]
    # the report says so: a previous "passed" report must not sit beside an unvalidated model
    report = json.loads(result.report_path.read_text())
    assert report["passed"] == 0 and report["validated"] == 0
    assert report["run"]["onnx_sha256"] == result.sha256


def test_provenance_includes_the_checkpoint_hash_and_git_state(git_repo, mlp, mlp_input):
    (git_repo / "README").write_text("x\n")
    subprocess.run(["git", "add", "README"], cwd=git_repo, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=git_repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=git_repo, capture_output=True, text=True).stdout
    result = onnxport.export(
        mlp, mlp_input, git_repo / "m.onnx", exporter="torchscript", checkpoint_sha256="c0ffee" * 10
    )
    assert result.run_context["git_commit"] == head.strip()
    assert result.run_context["git_dirty"] is False  # untracked outputs do not make it dirty
    # The checkpoint file's hash goes to the report; the file names the weights' own hash.
    assert "onnxport.checkpoint_sha256" not in props(result.path)
    assert json.loads(result.report_path.read_text())["run"]["checkpoint_sha256"] == "c0ffee" * 10
    assert props(result.path)["onnxport.weights_sha256"] == weights_sha256(mlp)


# -- bad input: a clear error and nothing written -------------------------------------------


BAD_INPUTS = {
    "not a module": (lambda out: onnxport.export({"weights": 1}, torch.randn(2, 4), out), InputError),
    "inputs do not fit forward": (
        lambda out: onnxport.export(TinyMLP(), (torch.randn(2, 4), torch.randn(2, 4)), out),
        InputError,
    ),
    "unknown config key": (
        lambda out: onnxport.export(TinyMLP(), torch.randn(2, 4), out, colour=1),
        ConfigError,
    ),
    "opset the exporter cannot produce": (
        lambda out: onnxport.export(TinyMLP(), torch.randn(2, 4), out, exporter="torchscript", opset=21),
        ConfigError,
    ),
    "operator no exporter supports": (
        lambda out: onnxport.export(Mysterious(), torch.randn(2, 4), out),
        UnsupportedOperatorError,
    ),
}
BAD_INPUT_MESSAGES = {
    "not a module": r"model must be a torch.nn.Module, ScriptModule or ExportedProgram, got dict",
    "inputs do not fit forward": r"do not fit forward\(x: torch.Tensor\) -> torch.Tensor",
    "unknown config key": r"unknown key export.colour; valid keys of export: .*dynamic_axes",
    "opset the exporter cannot produce": r"opset=21 cannot be produced by the torchscript exporter",
    "operator no exporter supports": r"operator onnxport_tests::mystery cannot be exported",
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_leaves_a_previous_file_untouched(tmp_path, case):
    call, error_type = BAD_INPUTS[case]
    output = tmp_path / "model.onnx"
    output.write_bytes(b"the previous, good model")
    with pytest.raises(error_type, match=BAD_INPUT_MESSAGES[case]) as error:
        call(output)
    assert error.value.fix  # every error says how to fix it
    assert "\n" not in str(error.value)
    # what failed exporter attempts printed is kept under the *.rejected.* names, nothing else
    logs = ["model.rejected.dynamo.log", "model.rejected.torchscript.log"] if "operator" in case else []
    assert listing(tmp_path) == ["model.onnx", *logs]
    assert output.read_bytes() == b"the previous, good model"


def test_missing_output_and_report_directories_are_created_as_in_every_door(tmp_path, mlp, mlp_input):
    report = tmp_path / "metrics" / "validation.json"
    result = onnxport.export(
        mlp,
        mlp_input,
        tmp_path / "missing" / "model.onnx",
        exporter="torchscript",
        validation={"report": str(report)},
    )
    assert result.path.is_file() and result.report_path == report and report.is_file()


def test_a_file_that_fails_validation_is_rejected_and_the_output_untouched(tmp_path):
    output = tmp_path / "model.onnx"
    output.write_bytes(b"the previous, good model")
    with pytest.raises(ValidationError, match="validation cases failed") as error:
        onnxport.export(FixedBatch(), torch.randn(2, 4), output, exporter="torchscript")
    assert error.value.exit_code == 1 and error.value.report is not None
    assert output.read_bytes() == b"the previous, good model"
    assert listing(tmp_path) == ["model.onnx", "model.rejected.onnx", "model.rejected.validation.json"]
    onnx.checker.check_model(str(tmp_path / "model.rejected.onnx"))


def test_a_rejected_external_data_file_keeps_its_own_weights(tmp_path):
    output = tmp_path / "model.onnx"
    output.write_bytes(b"the previous, good model")
    Path(f"{output}.data").write_bytes(b"its weights")
    with pytest.raises(ValidationError):
        onnxport.export(
            FixedBatchWeights(), torch.randn(2, 4), output, exporter="torchscript", external_data="always"
        )
    assert output.read_bytes() == b"the previous, good model"
    assert Path(f"{output}.data").read_bytes() == b"its weights"
    rejected = tmp_path / "model.rejected.onnx"
    assert (tmp_path / "model.rejected.onnx.data").is_file()
    x = np.ones((2, 4), np.float32)
    (got,) = run_onnx(rejected, {"x": x})  # loads: it points at its own .data, not the published one
    np.testing.assert_allclose(got, x + 1)


# -- no weight copy, reproducibility --------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples this process's resident memory on a thread; ``extra`` is the peak above the start."""

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.start = self.peak = _rss_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.extra = self.peak - self.start


@pytest.mark.slow
def test_the_default_export_does_not_copy_the_weights_of_a_large_model(tmp_path):
    model = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 8)).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # ~64 MiB
    pointers = [p.data_ptr() for p in model.parameters()]
    example = torch.randn(2, 4096)
    options = {"validation": {"enabled": False}}  # the default exporter; ORT would need its own copy
    onnxport.export(model, example, tmp_path / "warmup.onnx", **options)

    with PeakRss() as memory:
        result = onnxport.export(model, example, tmp_path / "big.onnx", **options)
    gc.collect()
    retained = _rss_bytes() - memory.start
    assert result.exporter == "dynamo" and result.size_bytes > weight_bytes
    assert [p.data_ptr() for p in model.parameters()] == pointers
    # Measured: dynamo needs a fixed ~31 MiB whatever the model size (0.48x here, 0.24x at 128 MiB);
    # one copy of the weights would add 1x. (TorchScript peaks at 2x inside torch.onnx itself.)
    assert memory.extra < 0.75 * weight_bytes, f"peak {memory.extra / 2**20:.0f} MiB above the start"
    assert retained < weight_bytes / 4, f"export kept {retained / 2**20:.0f} MiB after returning"


@pytest.mark.slow
def test_a_validated_export_needs_less_than_two_copies_of_the_weights(tmp_path):
    # Issue 2: "a 1 GB model must not need 2 GB extra", with validation on (the default).
    model = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 8)).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # ~64 MiB
    example = torch.randn(2, 4096)
    onnxport.export(model, example, tmp_path / "warmup.onnx", validation={"latency_runs": 0})

    with PeakRss() as memory:
        result = onnxport.export(model, example, tmp_path / "big.onnx", validation={"latency_runs": 0})
    assert result.validation.passed
    # ONNX Runtime's session holds its own copy (about 1.3x); onnx.checker reads only the graph.
    assert memory.extra < 2 * weight_bytes, f"peak {memory.extra / 2**20:.0f} MiB above the start"


@pytest.mark.slow
def test_an_external_data_export_with_validation_holds_about_one_copy_of_the_weights(tmp_path, monkeypatch):
    # Issue 12: the path of models over 2 GB, made small by lowering the protobuf limit. ONNX
    # Runtime's view of the weights is the floor; the checker, hashing and publishing stream.
    monkeypatch.setattr(publish, "PROTOBUF_LIMIT", 1024)
    model = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 8)).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # ~64 MiB
    example = torch.randn(2, 4096)
    onnxport.export(model, example, tmp_path / "warmup.onnx", validation={"latency_runs": 0})

    with PeakRss() as memory:
        result = onnxport.export(model, example, tmp_path / "big.onnx")
    assert result.external_data and result.validation.passed
    # Measured: 1.0x, dynamo's fixed ~31 MiB included; one more copy of the weights would add 1x.
    assert memory.extra < 1.5 * weight_bytes, f"peak {memory.extra / weight_bytes:.2f}x the weights"


REPRO_MODEL = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 10)

    def forward(self, image):
        return self.head(torch.relu(self.conv(image)).mean(dim=(2, 3))).softmax(-1)
"""

REPRO_SCRIPT = """
import sys, torch, onnxport
sys.path.insert(0, sys.argv[1])  # this copy of the model's source: stack traces would name it
from repro_net import Net
torch.manual_seed(0)
result = onnxport.export(Net(), torch.randn(2, 1, 8, 8), sys.argv[2])
print(result.sha256)
"""


@pytest.mark.slow
def test_two_processes_in_different_places_write_byte_identical_files(tmp_path):
    runs = []
    for name in ("first", "second"):
        checkout = tmp_path / name / "checkout"
        workdir = tmp_path / name / "cwd"
        outdir = tmp_path / name / "artifacts" / name
        for directory in (checkout, workdir, outdir):
            directory.mkdir(parents=True)
        (checkout / "repro_net.py").write_text(textwrap.dedent(REPRO_MODEL))
        output = outdir / f"{name}-model.onnx"
        process = subprocess.Popen(
            [sys.executable, "-c", REPRO_SCRIPT, str(checkout), str(output)],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")},
        )
        runs.append((process, output))
    digests = []
    for process, output in runs:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
        digests.append(stdout.strip().splitlines()[-1])
        assert digests[-1] == file_sha256(output)
    assert digests[0] == digests[1]
    first = runs[0][1].read_bytes()
    assert str(tmp_path).encode() not in first and b"repro_net" not in first


def test_a_lightning_module_exports_from_its_example_input_array(tmp_path):
    import lightning.pytorch as pl

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyMLP()
            self.example_input_array = torch.randn(1, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).softmax(-1)

    torch.manual_seed(0)
    module = Classifier()
    result = onnxport.export(module, None, tmp_path / "lit.onnx", exporter="torchscript")
    assert result.input_names == ["x"] and result.validation.passed
    initializers = {t.name for t in onnx.load(str(result.path)).graph.initializer}
    assert "net.fc1.weight" in initializers
    (got,) = run_onnx(result.path, {"x": np.ones((3, 4), np.float32)})
    np.testing.assert_allclose(got, module(torch.ones(3, 4)).detach().numpy(), atol=1e-5)


def test_float_inputs_follow_a_double_model_which_stays_double(tmp_path):
    torch.manual_seed(0)
    model = TinyMLP().double().eval()
    result = onnxport.export(model, torch.randn(2, 4), tmp_path / "double.onnx", exporter="torchscript")
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert result.validation.passed
    x = np.ones((3, 4), np.float64)
    (got,) = run_onnx(result.path, {"x": x})
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-9)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_auto_moves_weights_to_a_data_file_past_the_protobuf_limit(tmp_path, monkeypatch, exporter):
    # A real >2 GiB model does not fit this machine's test budget: lower the limit instead.
    monkeypatch.setattr(publish, "PROTOBUF_LIMIT", 1024)
    model = TinyMLP(in_features=64, hidden=64).eval()  # ~17 KiB of weights
    x = torch.randn(2, 64)

    result = onnxport.export(model, x, tmp_path / "model.onnx", exporter=exporter)

    assert result.external_data and result.validation.passed
    data = result.data_path
    assert sorted(p.name for p in tmp_path.glob("model.onnx*")) == ["model.onnx", data.name]
    locations = {
        entry.value
        for tensor in onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert locations == {data.name}  # relative: the pair can move together
    (got,) = run_onnx(tmp_path / "model.onnx", {"x": x.numpy()})
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)


class ConstantTable(nn.Module):
    """Weights in a plain tensor attribute: no parameter or buffer, but an initializer of the file."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.randn(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.table


def test_auto_counts_the_weights_the_file_holds_not_the_parameters(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "PROTOBUF_LIMIT", 1024)
    model = ConstantTable()
    assert not [*model.parameters(), *model.buffers()]

    # dynamo lifts the table into an initializer (TorchScript keeps it in a Constant node)
    result = onnxport.export(model, torch.randn(2, 64), tmp_path / "model.onnx", exporter="dynamo")

    assert result.external_data and result.data_path.stat().st_size >= 64 * 64 * 4


def test_never_refuses_weights_past_the_protobuf_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "PROTOBUF_LIMIT", 1024)
    output = tmp_path / "model.onnx"
    with pytest.raises(onnxport.PublishError, match="do not fit in one ONNX file") as error:
        onnxport.export(TinyMLP(64, 64).eval(), torch.randn(2, 64), output, external_data="never")
    assert "external_data" in error.value.fix
    assert not output.exists()


def test_external_data_keeps_shape_data_inline_so_strict_shape_inference_passes(tmp_path):
    # TinyCNN's mean reads its axes from an int64 initializer: shape inference must see it.
    torch.manual_seed(0)
    result = onnxport.export(
        TinyCNN().eval(), torch.randn(2, 1, 8, 8), tmp_path / "cnn.onnx", external_data="always"
    )
    assert result.validation.passed
    header = onnx.load(str(result.path), load_external_data=False)
    layout = {
        (t.data_type == onnx.TensorProto.INT64, t.data_location == onnx.TensorProto.EXTERNAL)
        for t in header.graph.initializer
    }
    assert layout == {(True, False), (False, True)}  # integers inline, float weights external
