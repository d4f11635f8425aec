"""Publishing: output checks, scrubbing, provenance metadata, external data, the atomic move."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import REPO_ROOT, TinyMLP, run_onnx
from onnxport import publish
from onnxport.config import ExportConfig
from onnxport.errors import InputError
from onnxport.exporters import run_exporter
from onnxport.hashing import file_sha256
from onnxport.inputs import prepare_inputs


@pytest.fixture(scope="module")
def raw_dynamo(tmp_path_factory) -> Path:
    """One real dynamo export, shared: the raw file still carries the exporter's metadata."""
    torch.manual_seed(0)
    model = TinyMLP().eval()
    config = ExportConfig()
    path = tmp_path_factory.mktemp("raw") / "raw.onnx"
    run_exporter(model, prepare_inputs(model, torch.randn(2, 4), config), path, config)
    return path


def metadata_for(config: ExportConfig, **overrides) -> dict[str, str]:
    options = {"exporter": "dynamo", "fallback_reason": None, "weights_sha256": None, **overrides}
    return publish.provenance_metadata(config, **options)


def finalize(raw: Path, staged: Path, config: ExportConfig, *, external: bool = False, **overrides) -> None:
    publish.finalize(
        raw,
        staged,
        metadata=metadata_for(config, **overrides),
        model_version=config.model_version,
        external_data=external,
    )


# -- the output path ------------------------------------------------------------------------


def test_a_missing_output_directory_is_created_as_in_every_door(tmp_path):
    output = publish.check_output(tmp_path / "nope" / "deeper" / "model.onnx")
    assert output.parent.is_dir() and not output.exists()


def test_an_output_directory_that_cannot_be_created_is_an_input_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"output directory '.*/file/sub' cannot be created") as error:
        publish.check_output(tmp_path / "file" / "sub" / "model.onnx")
    assert "mkdir -p" in error.value.fix


def test_an_output_that_is_not_one_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=r"output=\['a.onnx', 'b.onnx'\] is not a path \(list\)"):
        publish.check_output(["a.onnx", "b.onnx"])


def test_the_output_must_be_an_onnx_file_path(tmp_path):
    with pytest.raises(InputError, match=r"does not end in \.onnx"):
        publish.check_output(tmp_path / "model.pt")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        publish.check_output(tmp_path / "dir.onnx")


def test_a_read_only_output_directory_is_an_input_error():
    # outside pytest's 0700 tmp tree, so an unprivileged user can reach it
    with tempfile.TemporaryDirectory() as scratch:
        Path(scratch).chmod(0o755)
        locked = Path(scratch) / "locked"
        locked.mkdir(mode=0o555)
        status, message = _check_output_unprivileged(locked / "model.onnx")
    assert status == 1, message
    assert message.startswith("InputError: output directory") and "is not writable" in message


def _check_output_unprivileged(output: Path) -> tuple[int, str]:
    """Run ``check_output`` in a forked child that dropped root (root ignores permission bits).

    The child already has onnxport imported, so it works wherever the clone sits (a 0700 home
    or ``mktemp -d`` folder that the unprivileged user could not import from). Returns the
    child's status (0 accepted, 1 refused) and the error line it sent back.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 2
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                publish.check_output(output)
                status = 0
            except Exception as error:
                os.write(write_end, f"{type(error).__name__}: {error}".encode())
                status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status), message


def test_the_staging_directory_is_removed_whatever_happens(tmp_path):
    output = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError), publish.staging_dir(output) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(f".model.onnx.pid{os.getpid()}.")
        (staging / "partial.onnx").write_bytes(b"half")
        raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


# -- scrubbing and metadata -----------------------------------------------------------------


def test_the_raw_dynamo_file_carries_stack_traces_that_finalize_removes(raw_dynamo, tmp_path):
    raw = onnx.load(str(raw_dynamo))
    assert any(p.key == "pkg.torch.onnx.stack_trace" for n in raw.graph.node for p in n.metadata_props)
    assert str(REPO_ROOT).encode() in raw_dynamo.read_bytes()  # the test file's absolute path

    staged = tmp_path / "model.onnx"
    finalize(raw_dynamo, staged, ExportConfig())
    published = onnx.load(str(staged))
    assert not any(n.metadata_props or n.doc_string for n in published.graph.node)
    assert not published.graph.metadata_props
    assert not any(v.metadata_props for v in published.graph.value_info)
    data = staged.read_bytes()
    for run_specific in (str(REPO_ROOT), str(tmp_path), socket.gethostname(), "stack_trace"):
        assert run_specific.encode() not in data
    assert (published.producer_name, published.producer_version) == ("onnxport", "0.1.0")
    onnx.checker.check_model(published, full_check=True)


def test_provenance_metadata_is_in_the_file(raw_dynamo, tmp_path):
    config = ExportConfig.coerce(None, model_version=7, metadata={"dataset": "digits", "owner": "ml"})
    staged = tmp_path / "model.onnx"
    finalize(raw_dynamo, staged, config, fallback_reason="dynamo failed: X", weights_sha256="ab" * 32)
    model = onnx.load(str(staged))
    props = {p.key: p.value for p in model.metadata_props}

    assert model.model_version == 7
    assert all(key.startswith("onnxport.") for key in props)
    assert props["onnxport.version"] == "0.1.0"
    assert props["onnxport.schema_version"] == "1"
    # The settings that shape the graph and weights; validation settings live in the report.
    shaping = json.loads(props["onnxport.config"])
    assert "validation" not in shaping
    assert ExportConfig.from_dict(shaping) == ExportConfig.coerce(
        config, validation=ExportConfig().validation.__dict__
    )
    assert props["onnxport.config_sha256"] == hashlib.sha256(props["onnxport.config"].encode()).hexdigest()
    assert props["onnxport.torch_version"] == torch.__version__
    assert props["onnxport.onnx_version"] == onnx.__version__
    assert props["onnxport.exporter"] == "dynamo"
    assert props["onnxport.fallback_reason"] == "dynamo failed: X"
    assert props["onnxport.weights_sha256"] == "ab" * 32
    assert props["onnxport.validation_enabled"] == "true"
    assert props["onnxport.user.dataset"] == "digits" and props["onnxport.user.owner"] == "ml"


def test_finalizing_the_same_export_twice_gives_the_same_bytes(raw_dynamo, tmp_path):
    first, second = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
    for staged in (first, second):
        staged.parent.mkdir()
        finalize(raw_dynamo, staged, ExportConfig())
    assert file_sha256(first) == file_sha256(second)


# -- external data and the move -------------------------------------------------------------


def test_external_data_always_writes_a_relative_data_file_that_moves_with_the_model(raw_dynamo, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    staged = staging / "weights.onnx"
    finalize(raw_dynamo, staged, ExportConfig(), external=True)
    output = tmp_path / "out" / "weights.onnx"
    output.parent.mkdir()
    publish.commit(publish.Layouts(staged, staged, external_data=True), output)

    (data,) = publish.data_files(output)
    assert re.fullmatch(r"weights\.onnx\.[0-9a-f]{12}\.data", data.name)  # named after its content
    assert data.name[len("weights.onnx.") : -len(".data")] == file_sha256(data)[:12]
    assert sorted(p.name for p in output.parent.iterdir()) == ["weights.onnx", data.name]
    assert output.stat().st_size < 2000  # the weights are not inline

    moved = tmp_path / "elsewhere"
    shutil.copytree(output.parent, moved)  # relative paths: the pair still loads
    x = np.ones((3, 4), np.float32)
    torch.manual_seed(0)
    expected = TinyMLP().eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(run_onnx(moved / "weights.onnx", {"x": x})[0], expected, atol=1e-5)


def test_moving_a_single_file_removes_a_stale_data_file_and_replaces_the_old_model(raw_dynamo, tmp_path):
    output = tmp_path / "model.onnx"
    output.write_bytes(b"old model")
    Path(f"{output}.data").write_bytes(b"old weights")
    staging = tmp_path / "staging"
    staging.mkdir()
    staged = staging / "model.onnx"
    finalize(raw_dynamo, staged, ExportConfig())
    publish.commit(publish.Layouts(staged, staged, external_data=False), output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "staging"]
    onnx.checker.check_model(str(output))


def test_the_previous_data_file_goes_only_after_the_header_switched(raw_dynamo, tmp_path):
    output = tmp_path / "model.onnx"
    names = []
    for seed in (0, 1):  # two weight sets: two data file names, one header name
        staging = tmp_path / f"staging{seed}"
        staging.mkdir()
        torch.manual_seed(seed)
        model = TinyMLP().eval()
        config = ExportConfig(external_data="always")
        run_exporter(model, prepare_inputs(model, torch.randn(2, 4), config), staging / "raw.onnx", config)
        finalize(staging / "raw.onnx", staging / "model.onnx", config, external=True)
        publish.commit(publish.Layouts(staging / "model.onnx", staging / "model.onnx", True), output)
        names.append(publish.data_files(output)[0].name)
    assert names[0] != names[1]
    assert sorted(p.name for p in tmp_path.glob("model.onnx*")) == ["model.onnx", names[1]]


def test_a_rejected_file_is_kept_beside_the_output(tmp_path):
    staged = tmp_path / "staged.onnx"
    staged.write_bytes(b"rejected")
    rejected = publish.keep_rejected(staged, tmp_path / "model.onnx")
    assert rejected == tmp_path / "model.rejected.onnx" and rejected.read_bytes() == b"rejected"


def test_streamed_weights_parse_back_to_the_exported_tensors_in_order(raw_dynamo, tmp_path):
    staged = tmp_path / "model.onnx"
    finalize(raw_dynamo, staged, ExportConfig())
    exported = onnx.load(str(raw_dynamo))  # with its external data
    published = onnx.load(str(staged))
    assert [t.name for t in published.graph.initializer] == [t.name for t in exported.graph.initializer]
    for ours, theirs in zip(published.graph.initializer, exported.graph.initializer, strict=True):
        assert ours.data_location == onnx.TensorProto.DEFAULT and not ours.external_data
        np.testing.assert_array_equal(
            onnx.numpy_helper.to_array(ours), onnx.numpy_helper.to_array(theirs, str(raw_dynamo.parent))
        )
    onnx.checker.check_model(str(staged), full_check=True)


def test_an_inline_torchscript_export_can_be_published_with_external_data(tmp_path):
    torch.manual_seed(0)
    model = TinyMLP().eval()
    config = ExportConfig.coerce(None, exporter="torchscript", external_data="always")
    raw = tmp_path / "raw.onnx"
    run = run_exporter(model, prepare_inputs(model, torch.randn(2, 4), config), raw, config)
    assert run.external_data and not Path(f"{raw}.data").exists()  # TorchScript wrote one file

    staged = tmp_path / "ts.onnx"
    finalize(raw, staged, config, external=True)
    header = onnx.load(str(staged), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer)
    x = np.ones((3, 4), np.float32)
    expected = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(run_onnx(staged, {"x": x})[0], expected, atol=1e-5)
