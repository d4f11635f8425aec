"""onnxport.datasource: real batches for calibration and validation, never random unless asked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import onnxport
from conftest import TinyMLP
from onnxport import datasource
from onnxport.config import ExportConfig
from onnxport.errors import ConfigError
from onnxport.inputs import prepare_inputs

STATIC = {"name": "q", "precision": "int8", "quantization": "static"}


CALLS: list[str] = []


class ConstantData:
    """A datamodule whose batches are all ``value``: which source calibrated shows in the feeds."""

    def __init__(self, value: float = 3.0, rows: int = 24) -> None:
        self.value, self.rows = value, rows

    def prepare_data(self) -> None:
        CALLS.append("prepare_data")

    def setup(self, stage: str) -> None:
        CALLS.append(f"setup:{stage}")

    def val_dataloader(self) -> DataLoader:
        x = torch.full((self.rows, 4), self.value)
        return DataLoader(TensorDataset(x, torch.zeros(self.rows)), batch_size=8)


def _mlp() -> TinyMLP:
    torch.manual_seed(0)  # seeded: an untrained head's class scores may nearly tie
    return TinyMLP()


def _setup(tmp_path, **calibration):
    model = _mlp()
    config = ExportConfig.coerce(None, variants=[{**STATIC, "calibration": calibration}])
    example = prepare_inputs(model, torch.randn(2, 4), config)
    return model, config, example


def _npz(tmp_path, value: float, rows: int = 20, name: str = "x"):
    path = tmp_path / f"{name}-{value}.npz"
    np.savez(path, **{name: np.full((rows, 4), value, dtype=np.float32)})
    return path


def test_input_part_takes_what_forward_takes():
    model = _mlp()
    x = torch.randn(2, 4)
    assert datasource.input_part((x, torch.zeros(2)), model) is x
    assert datasource.input_part({"x": x, "label": 1}, model) == {"x": x}
    assert datasource.input_part({"image": x}, model) == {"image": x}  # names nothing forward takes: all
    assert datasource.input_part(x, model) is x
    assert datasource.single_loader([{"a": "first"}, "second"]) == "first"
    assert datasource.single_loader([]) is None


def test_calibration_sources_in_order(tmp_path):
    datamodule = {"_target_": "test_datasource.ConstantData", "value": 3.0}
    npz = _npz(tmp_path, 2.0)
    model, config, example = _setup(tmp_path, npz=str(npz), datamodule=datamodule, generated=True, batches=2)
    variant = config.variants[0]
    samples = [torch.full((5, 4), 1.0)] * 3

    def values(feeds):
        return {float(feed["x"].mean()) for feed in feeds}, len(feeds)

    assert values(datasource.calibration_feeds(variant, model, example, config, samples)) == ({1.0}, 2)
    assert values(datasource.calibration_feeds(variant, model, example, config)) == ({2.0}, 2)
    variant.calibration.npz = None
    assert values(datasource.calibration_feeds(variant, model, example, config)) == ({3.0}, 2)
    variant.calibration.datamodule = None
    feeds = datasource.calibration_feeds(variant, model, example, config)
    assert len(feeds) == 2 and feeds[0]["x"].shape == (2, 4) and values(feeds)[0] != {1.0, 2.0, 3.0}


def test_npz_is_cut_into_batches_and_checked(tmp_path):
    feeds = datasource.npz_batches(_npz(tmp_path, 1.0, rows=10), ["x"], 3, "key")
    assert [len(feed["x"]) for feed in feeds] == [3, 4, 3]
    assert [len(f["x"]) for f in datasource.npz_batches(_npz(tmp_path, 1.0, rows=70), ["x"], None, "k")] == [
        23,
        24,
        23,
    ]
    with pytest.raises(ConfigError, match=r"not the graph inputs \[.y.\]"):
        datasource.npz_batches(_npz(tmp_path, 1.0), ["y"], 2, "export.validation.data")
    (tmp_path / "bad.npz").write_text("not numpy")
    with pytest.raises(ConfigError, match=r"cannot be read as an \.npz"):
        datasource.npz_batches(tmp_path / "bad.npz", ["x"], 2, "key")


def test_datamodule_runs_prepare_and_setup_and_reads_the_split(tmp_path):
    source = _setup(tmp_path, datamodule={"_target_": "test_datasource.ConstantData"}, batches=2)[1].variants[
        0
    ]
    CALLS.clear()
    batches = datasource.datamodule_batches(source.calibration, _mlp())
    assert CALLS == ["prepare_data", "setup:fit"]
    assert len(batches) == 2 and all(torch.equal(b, torch.full((8, 4), 3.0)) for b in batches)
    source.calibration.split = "test"
    with pytest.raises(ConfigError, match="has no test_dataloader"):
        datasource.datamodule_batches(source.calibration, _mlp())


def test_static_int8_without_data_names_the_fix():
    config = ExportConfig.coerce(None, variants=[STATIC])
    with pytest.raises(ConfigError) as caught:
        datasource.check_calibration(config, None)
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert "export.variants[0].calibration.npz" in message and "generated=true" in message
    datasource.check_calibration(config, [torch.zeros(1, 4)])  # samples from a door are enough
    config.variants[0].calibration.npz = "missing.npz"
    with pytest.raises(ConfigError, match="is not a file"):
        datasource.check_calibration(config, None)


def test_static_int8_calibrates_on_an_npz(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "calibration.npz"
    np.savez(npz, x=rng.standard_normal((64, 4)).astype(np.float32))
    variants = [{**STATIC, "calibration": {"npz": str(npz), "batches": 4}}]

    result = onnxport.export(_mlp(), torch.randn(2, 4), tmp_path / "model.onnx", variants=variants)

    assert result.variants[0].passed and result.variants[0].path.name == "model.q.onnx"


def test_validation_data_adds_real_cases_and_int8_is_judged_on_them(tmp_path):
    npz = tmp_path / "validation.npz"
    np.savez(npz, x=np.random.default_rng(1).standard_normal((40, 4)).astype(np.float32))
    variants = [{"name": "int8", "precision": "int8"}]

    result = onnxport.export(
        _mlp(),
        torch.randn(2, 4),
        tmp_path / "model.onnx",
        validation={"data": str(npz)},
        variants=variants,
    )

    labels = [case.label for case in result.validation.cases]
    assert labels == ["batch=2", "batch=1", "batch=5", "sample_0", "sample_1"]
    assert [case.sizes["batch"] for case in result.validation.cases[3:]] == [20, 20]
    (int8,) = result.validation.variants
    assert int8.unjudged == ["batch=2", "batch=1", "batch=5"]
    assert json.loads(result.report_path.read_text())["cases"] == 5


def test_validation_samples_from_the_api_are_cases_too(tmp_path):
    samples = [torch.randn(3, 4), torch.randn(6, 4)]
    result = onnxport.export(_mlp(), torch.randn(2, 4), tmp_path / "model.onnx", validation_samples=samples)
    assert [case.label for case in result.validation.cases][-2:] == ["sample_0", "sample_1"]
