"""Triton model repository and model card from a published file, checked with Triton's own proto."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import onnxport
from onnxport.cli import main
from onnxport.errors import InputError
from onnxport.serving import model_card, triton_repository
from pipelines.model import DigitsCNN


def triton_model_config():
    """``ModelConfig`` from the ``model_config_pb2`` that tritonclient ships (no grpc needed)."""
    package = importlib.util.find_spec("tritonclient")
    if package is None:
        pytest.skip("tritonclient is not installed (pip install -e '.[test]')")
    path = Path(package.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config(path: Path):
    from google.protobuf import text_format

    proto = triton_model_config()
    return text_format.Parse(path.read_text(), proto.ModelConfig()), proto


class SequencePair(nn.Module):
    """Two inputs sharing a batch and a dynamic sequence axis; two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 4)
        self.proj = nn.Linear(4, 4)

    def forward(self, tokens: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.proj(self.embed(tokens)) * weights.unsqueeze(-1)
        return hidden, hidden.mean(dim=1)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    output = tmp_path_factory.mktemp("digits") / "model.onnx"
    onnxport.export(DigitsCNN(), None, output, output_names=["logits"], validation={"latency_runs": 0})
    return output


@pytest.fixture(scope="module")
def sequence_pair(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    output = tmp_path_factory.mktemp("pair") / "pair.onnx"
    onnxport.export(
        SequencePair().eval(),
        (torch.randint(0, 20, (2, 5)), torch.rand(2, 5)),
        output,
        exporter="torchscript",
        input_names=["tokens", "weights"],
        output_names=["hidden", "pooled"],
        dynamic_axes={
            "tokens": {0: "batch", 1: "seq"},
            "weights": {0: "batch", 1: "seq"},
            "hidden": {0: "batch", 1: "seq"},
            "pooled": {0: "batch"},
        },
        validation={"latency_runs": 0},
    )
    return output


def onnx_signature(path: Path) -> dict[str, tuple[int, list]]:
    model = onnx.load(str(path), load_external_data=False)
    values = [*model.graph.input, *model.graph.output]
    return {
        v.name: (
            v.type.tensor_type.elem_type,
            [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    }


@pytest.mark.parametrize("fixture", ["digits", "sequence_pair"])
def test_triton_config_parses_with_model_config_proto_and_matches_the_file(fixture, request, tmp_path):
    source = request.getfixturevalue(fixture)
    layout = triton_repository(source, tmp_path / "repo", name="served", version=3)
    config, proto = parse_config(layout.config)
    assert layout.model == tmp_path / "repo" / "served" / "3" / "model.onnx"
    assert layout.model.read_bytes() == source.read_bytes()
    assert config.name == "served" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == layout.max_batch_size == 64  # axis 0 is the batch axis everywhere

    expected = onnx_signature(source)
    onnx_to_triton = {1: "TYPE_FP32", 7: "TYPE_INT64"}
    served = list(config.input) + list(config.output)
    assert [t.name for t in config.input] + [t.name for t in config.output] == list(expected)
    for tensor in served:
        elem_type, dims = expected[tensor.name]
        assert proto.DataType.Name(tensor.data_type) == onnx_to_triton[elem_type]
        assert dims[0] == -1 and list(tensor.dims) == dims[1:]  # the batch axis is implied


def test_sequence_axis_is_minus_one_and_dtypes_follow_the_inputs(sequence_pair, tmp_path):
    config, proto = parse_config(triton_repository(sequence_pair, tmp_path / "repo").config)
    by_name = {t.name: t for t in [*config.input, *config.output]}
    assert config.name == "pair"  # the file's stem
    assert (
        list(by_name["tokens"].dims) == [-1]
        and proto.DataType.Name(by_name["tokens"].data_type) == "TYPE_INT64"
    )
    assert list(by_name["hidden"].dims) == [-1, 4] and list(by_name["pooled"].dims) == [4]


def test_without_batching_dims_are_whole(digits, tmp_path):
    layout = triton_repository(digits, tmp_path / "repo", max_batch_size=0)
    config, _ = parse_config(layout.config)
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, 1, 8, 8]


def test_model_card_has_signature_opset_provenance_validation_and_metrics(digits, tmp_path):
    metrics = tmp_path / "accuracy.json"
    metrics.write_text(json.dumps({"onnx_accuracy": 0.9926, "note": "strings are left out"}))
    card = model_card(digits, name="digits", metrics=metrics)
    assert card.startswith("# digits\n")
    assert "| input | `image` | float32 | [batch, 1, 8, 8] |" in card
    assert "opset ai.onnx 18" in card
    assert "weights sha256: " in card
    assert "**passed**" in card and "model.validation.json" in card
    assert "| onnx_accuracy | 0.9926 |" in card and "strings" not in card


def test_cli_writes_the_layout_and_the_card(digits, tmp_path, capsys):
    assert main(["triton", str(digits), "--repo", str(tmp_path / "repo"), "--name", "digits", "--card"]) == 0
    assert "max_batch_size 64" in capsys.readouterr().out
    assert sorted(str(p.relative_to(tmp_path / "repo")) for p in (tmp_path / "repo").rglob("*")) == [
        "digits",
        "digits/1",
        "digits/1/model.onnx",
        "digits/README.md",
        "digits/config.pbtxt",
    ]


def test_bad_name_is_an_input_error_and_writes_nothing(digits, tmp_path):
    with pytest.raises(InputError, match="not a plain directory name"):
        triton_repository(digits, tmp_path / "repo", name="../escape")
    assert not (tmp_path / "repo").exists()
    assert main(["triton", str(tmp_path / "missing.onnx"), "--repo", str(tmp_path / "repo")]) == 2
