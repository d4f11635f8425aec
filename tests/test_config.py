"""ExportConfig: one schema, strict about keys, types, values and versions."""

from __future__ import annotations

import pytest

from onnxport.config import ExportConfig, config_reference
from onnxport.errors import ConfigError


def test_options_override_config_and_merge_nested_validation():
    config = ExportConfig.coerce(
        {"opset": 17, "validation": {"rtol": 0.01}}, exporter="torchscript", validation={"atol": 1e-3}
    )
    assert (config.opset, config.exporter) == (17, "torchscript")
    assert (config.validation.atol, config.validation.rtol) == (1e-3, 0.01)


def test_hash_follows_content_not_construction_order():
    first = ExportConfig.coerce(None, opset=17, dynamic_batch=False)
    second = ExportConfig.coerce({"dynamic_batch": False}, opset=17)
    assert first.sha256() == second.sha256()
    assert first.sha256() != ExportConfig().sha256()


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"opst": 17}, ["export.opst", "valid keys", "opset"]),
        ({"validation": {"atl": 1}}, ["export.validation.atl", "atol"]),
        ({"opset": "abc"}, ["export.opset='abc'", "integer"]),
        ({"dynamic_batch": "yes"}, ["export.dynamic_batch", "true or false"]),
        ({"exporter": "onnx"}, ["'onnx'", "auto, dynamo, torchscript"]),
        ({"external_data": "sometimes"}, ["'sometimes'", "auto, always, never"]),
        ({"schema_version": 2}, ["schema_version=2", "[1]"]),
        ({"opset": 3}, ["export.opset=3"]),
        ({"inputs": [{"name": "x", "dtype": "float99"}]}, ["float99", "float32"]),
    ],
)
def test_bad_options_are_one_line_errors_naming_value_and_choices(options, names):
    with pytest.raises(ConfigError) as caught:
        ExportConfig.coerce(None, **options)
    message = str(caught.value)
    assert "\n" not in message
    assert "Fix:" in message
    for name in names:
        assert name in message


def test_reference_documents_every_field():
    reference = config_reference()
    for key in ("export.opset", "export.validation.on_mismatch", "export.inputs[].dtype"):
        assert f"`{key}`" in reference
    assert "| |" not in reference.replace("| `` |", "")  # every row has a description
