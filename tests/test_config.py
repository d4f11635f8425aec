"""ExportConfig: one schema, strict about keys, types, values and versions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from onnxport.config import OPSET_RANGES, REFERENCE_SECTIONS, ExportConfig, config_reference, option_rows
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
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    assert len(rows) == sum(len(dataclasses.fields(cls)) for cls, _ in REFERENCE_SECTIONS)
    undocumented = [row for row in rows if row.rstrip().endswith("|  |")]
    assert not undocumented  # an empty meaning cell renders as "|  |"


def test_the_documentation_check_catches_an_undocumented_field():
    @dataclasses.dataclass
    class Partly:
        documented: int = 0
        """Has a meaning."""
        bare: int = 0

    rows = option_rows(Partly, "x.")
    assert rows == [("x.documented", "0", "Has a meaning."), ("x.bare", "0", "")]


CONF_EXPORT = Path(__file__).resolve().parents[1] / "conf" / "export" / "default.yaml"


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


def test_conf_export_holds_only_values_that_differ_from_the_schema():
    import yaml

    declared = {k: v for k, v in (yaml.safe_load(CONF_EXPORT.read_text()) or {}).items() if k != "defaults"}
    assert declared, "conf/export/default.yaml sets nothing: drop it or keep a value that differs"
    defaults = _leaves(ExportConfig().to_dict())
    restated = {
        key: value for key, value in _leaves(declared).items() if defaults.get(key, object()) == value
    }
    assert not restated, f"equal to the ExportConfig default, remove from {CONF_EXPORT.name}: {restated}"


def test_opset_ranges_match_the_installed_torch():
    # Kept as constants so a bad opset fails before torch is imported; pinned to torch's own.
    from torch.onnx import _constants

    assert OPSET_RANGES["torchscript"] == (
        _constants.ONNX_MIN_OPSET,
        _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET,
    )
    assert OPSET_RANGES["dynamo"][1] == _constants.ONNX_MAX_OPSET


@pytest.mark.parametrize("exporter, opset", [("torchscript", 21), ("auto", 99), ("dynamo", 6)])
def test_an_opset_outside_the_exporters_range_is_a_config_error(exporter, opset):
    with pytest.raises(ConfigError, match=f"export.opset={opset} cannot be produced by the {exporter}"):
        ExportConfig.coerce(None, exporter=exporter, opset=opset)


def test_unknown_keys_name_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown key export.opst; did you mean export.opset\?"):
        ExportConfig.coerce(None, opst=17)


def test_the_packaged_callback_config_names_and_comments_every_argument():
    import inspect

    import yaml

    from onnxport.callback import OnnxExportCallback
    from onnxport.hydra_config import STORED_CONF

    path = STORED_CONF / "callbacks" / "onnx_export.yaml"
    lines = path.read_text().splitlines()
    declared = set(yaml.safe_load(path.read_text())["onnx_export"]) - {"_target_", "_recursive_"}
    commented = {line.split(":")[0].strip("# ") for line in lines if line.startswith("  # config:")}
    parameters = inspect.signature(OnnxExportCallback.__init__).parameters
    arguments = {name for name, p in parameters.items() if name != "self" and p.kind is not p.VAR_KEYWORD}
    assert declared | commented == arguments
    for index, line in enumerate(lines):
        if line.startswith("  ") and not line.startswith(("  #", "  _target_")):
            assert lines[index - 1].lstrip().startswith("#"), f"{path.name}: {line.strip()} has no comment"
