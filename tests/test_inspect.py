"""`onnxport inspect`: signature, opset, sizes, operators and provenance, without torch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import onnxport
from conftest import TinyMLP
from onnxport.errors import InputError
from onnxport.inspection import format_report, inspect_model

ONNXPORT = str(Path(sys.executable).with_name("onnxport"))
MLP_WEIGHT_BYTES = 4 * (4 * 8 + 8 + 8 * 3 + 3)  # float32 fc1 + fc2


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TinyMLP exported by onnxport, weights in an external .data file, report beside it."""
    torch.manual_seed(0)
    output = tmp_path_factory.mktemp("inspect") / "mlp.onnx"
    onnxport.export(
        TinyMLP().eval(),
        torch.randn(2, 4),
        output,
        opset=17,
        external_data="always",
        checkpoint_sha256="ab" * 32,
        validation={"latency_runs": 0},
    )
    return output


def test_signature_shows_dtypes_and_dynamic_dims_by_name(exported):
    info = inspect_model(exported)
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    assert info["outputs"] == [{"name": "output", "dtype": "float32", "shape": ["batch", 3]}]
    assert info["opset"]["ai.onnx"] == 17


def test_sizes_count_external_weights_without_loading_them(exported):
    info = inspect_model(exported)
    (data,) = info["external_data"]
    assert re.fullmatch(r"mlp\.onnx\.[0-9a-f]{12}\.data", data)  # named after its content
    assert info["weights"] == {"count": 4, "bytes": MLP_WEIGHT_BYTES}
    assert info["external_data_bytes"] == (exported.parent / data).stat().st_size
    assert info["file_bytes"] == exported.stat().st_size


def test_operator_histogram_counts_every_node(exported):
    info = inspect_model(exported)
    assert info["operators"].get("Relu") == 1
    assert sum(info["operators"].values()) == info["nodes"] >= 3


def test_provenance_is_read_back_from_metadata(exported):
    info = inspect_model(exported)
    provenance = info["provenance"]
    assert provenance["config"]["opset"] == 17  # the JSON config comes back as data
    assert len(provenance["weights_sha256"]) == 64  # the checkpoint's own hash is in the report
    assert provenance["exporter"] in ("dynamo", "torchscript")
    assert provenance["torch_version"] == torch.__version__
    assert info["validation"]["passed"] is True
    assert "git_commit" in info["validation"]["run"]


def test_a_report_vouching_for_other_bytes_is_not_shown(exported, tmp_path):
    # The report names the sha256 of the file it validated; a replaced model must not inherit it.
    copy = tmp_path / "mlp.onnx"
    shutil.copy2(exported, copy)
    (data,) = inspect_model(exported)["external_data"]
    shutil.copy2(exported.with_name(data), tmp_path / data)
    report = json.loads(exported.with_name("mlp.validation.json").read_text())
    (tmp_path / "mlp.validation.json").write_text(json.dumps(report))
    assert inspect_model(copy)["validation"]["passed"] is True  # same bytes: the report holds

    report["run"]["onnx_sha256"] = "0" * 64
    (tmp_path / "mlp.validation.json").write_text(json.dumps(report))
    assert inspect_model(copy)["validation"] is None


def test_text_report_lists_signature_operators_and_provenance(exported):
    text = format_report(inspect_model(exported))
    assert "x  float32  [batch, 4]" in text
    assert "Relu" in text
    assert "weights_sha256" in text
    assert "validation: passed" in text


def test_cli_answers_without_importing_torch(exported):
    script = (
        "import sys, json\n"
        "from onnxport.cli import main\n"
        f"status = main(['inspect', {str(exported)!r}, '--json'])\n"
        "print(json.dumps({'status': status,"
        " 'torch': 'torch' in sys.modules}), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.splitlines()[-1]) == {"status": 0, "torch": False}
    assert json.loads(done.stdout) == json.loads(json.dumps(inspect_model(exported)))


def test_non_onnx_file_is_one_line_exit_2(tmp_path):
    bogus = tmp_path / "weights.pt"
    bogus.write_text("not a model\n")
    before = sorted(tmp_path.iterdir())
    done = subprocess.run([ONNXPORT, "inspect", str(bogus)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("onnxport inspect: error: ") and len(done.stderr.splitlines()) == 1
    assert "is not an ONNX model" in done.stderr
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("content", [b"", b"\x08\x07", b"hello world"], ids=["empty", "header only", "text"])
def test_files_protobuf_accepts_are_still_not_onnx(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match="is not an ONNX model"):
        inspect_model(path)


def test_missing_file_or_a_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        inspect_model(tmp_path / "nope.onnx")
    with pytest.raises(InputError, match="is not a file"):
        inspect_model(tmp_path)


# -- variants --------------------------------------------------------------------------------

VARIANTS = [
    {"name": "opt", "optimize": "ort"},
    {"name": "fp16", "precision": "fp16"},
    # An untrained TinyMLP's near-tied class scores flip under int8: top-1 is loosened, cosine holds.
    {"name": "int8", "precision": "int8", "quantization": "dynamic", "min_top1": 0.5},
    # Nothing is that close to float32: rejected, kept as model.bad.rejected.onnx, the rest publishes.
    {"name": "bad", "precision": "int8", "quantization": "dynamic", "min_cosine": 1.0, "on_mismatch": "skip"},
]


@pytest.fixture(scope="module")
def with_variants(tmp_path_factory: pytest.TempPathFactory):
    """A TinyMLP exported with an optimised, an fp16, an int8 and a rejected variant."""
    torch.manual_seed(0)
    output = tmp_path_factory.mktemp("variants") / "model.onnx"
    return onnxport.export(TinyMLP().eval(), torch.randn(2, 4), output, variants=VARIANTS)


def test_one_row_per_file_of_the_run_from_the_report(with_variants):
    info = inspect_model(with_variants.path)
    rows = {row["name"]: row for row in info["files"]}
    assert list(rows) == ["fp32", "opt", "fp16", "int8", "bad"]
    for name, row in rows.items():
        assert row["size_bytes"] > 0, name
        if row["published"]:
            assert row["ort_ms_batch1"] > 0 and row["ort_ms_batch32"] > 0, name
    assert [rows[name]["passed"] for name in rows] == [1, 1, 1, 1, 0]
    assert rows["bad"]["published"] == 0 and not with_variants.path.with_name("model.bad.onnx").exists()
    assert rows["int8"]["min_cosine"] > 0.99 and "max_abs_diff" in rows["fp16"]

    text = format_report(info)
    table = text[text.index("files of this run:") :].splitlines()
    assert table[1].split()[:4] == ["file", "size", "b1", "ms"]
    lines = {line.split()[0]: line for line in table[2:]}
    assert "(model.int8.onnx)" in lines["int8"] and "cosine 0.99" in lines["int8"]
    assert "max |diff|" in lines["fp16"] and lines["fp16"].endswith("passed")
    assert "cosine" not in lines["fp32"]  # the fp32 file is held to tolerances only
    assert lines["bad"].endswith("FAILED (rejected)")


def test_a_variant_shows_its_provenance_and_its_fp32_files_report(with_variants):
    path = with_variants.path.with_name("model.int8.onnx")
    info = inspect_model(path)
    variant = info["variant"]
    assert variant["name"] == "int8" and variant["source_sha256"] == with_variants.sha256
    assert "int8" in variant["transform"] and "onnxruntime" in variant["transform_versions"]
    assert info["validation"]["passed"] is True
    assert info["validation"]["path"] == str(with_variants.path.with_name("model.validation.json"))
    assert [row["name"] for row in info["files"]] == ["fp32", "opt", "fp16", "int8", "bad"]
    text = format_report(info)
    assert f"variant: int8, transform {variant['transform']}" in text
    assert f"made from the fp32 file with sha256 {with_variants.sha256}" in text
    assert inspect_model(with_variants.path)["variant"] is None  # the fp32 file is no variant


def test_a_variant_made_again_since_the_report_gets_no_verdict(with_variants, tmp_path):
    for source in with_variants.path.parent.iterdir():
        shutil.copy2(source, tmp_path / source.name)
    report_path = tmp_path / "model.validation.json"
    report = json.loads(report_path.read_text())
    report["variants"]["int8"]["sha256"] = "0" * 64
    report_path.write_text(json.dumps(report))
    assert inspect_model(tmp_path / "model.int8.onnx")["validation"] is None
    assert inspect_model(tmp_path / "model.fp16.onnx")["validation"]["passed"] is True


def test_cli_inspects_a_variant_without_importing_torch(with_variants):
    path = with_variants.path.with_name("model.fp16.onnx")
    script = (
        "import sys, json\n"
        "from onnxport.cli import main\n"
        f"status = main(['inspect', {str(path)!r}])\n"
        "print(json.dumps({'status': status, 'torch': 'torch' in sys.modules}), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.splitlines()[-1]) == {"status": 0, "torch": False}
    assert "variant: fp16" in done.stdout and "files of this run:" in done.stdout
