"""What the published file says about itself: only what shaped its graph and weights.

Real torch exports, a real Lightning Trainer and checkpoint; nothing mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

import onnxport
from conftest import TinyCNN, TinyMLP
from onnxport.hashing import file_sha256
from onnxport.provenance import weights_sha256


def props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


# -- the weights' own hash ---------------------------------------------------------------------


def test_weights_hash_is_the_same_for_a_module_its_state_dict_and_a_checkpoint_dict(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN()  # parameters and buffers (batch norm statistics)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": model.state_dict(), "callbacks": {"dirpath": str(tmp_path)}}, path)
    expected = weights_sha256(model)
    assert weights_sha256(model.state_dict()) == expected
    assert weights_sha256(dict(reversed(model.state_dict().items()))) == expected  # order-free
    assert weights_sha256(torch.load(path, weights_only=True)) == expected  # a Lightning-style dict


def test_weights_hash_sees_a_changed_byte_dtype_or_name():
    torch.manual_seed(0)
    state = TinyMLP().state_dict()
    base = weights_sha256(state)
    nudged = {**state, "fc1.bias": state["fc1.bias"].clone()}
    nudged["fc1.bias"][0] = torch.nextafter(nudged["fc1.bias"][0], torch.tensor(1.0))
    assert weights_sha256(nudged) != base
    assert weights_sha256({**state, "fc1.bias": state["fc1.bias"].double()}) != base
    renamed = {("fc3.bias" if k == "fc1.bias" else k): v for k, v in state.items()}
    assert weights_sha256(renamed) != base
    bf16 = {k: v.bfloat16() for k, v in state.items()}  # numpy has no bfloat16: hashed as bytes
    assert weights_sha256(bf16) == weights_sha256({k: v.clone() for k, v in bf16.items()})


@pytest.mark.slow
def test_lightning_checkpoints_at_two_paths_give_byte_identical_files(tmp_path):
    """Lightning stores ModelCheckpoint's absolute dirpath: the ckpt bytes differ, the ONNX bytes must not."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from pipelines.model import DigitsCNN

    data = torch.utils.data.TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    torch.manual_seed(0)
    module = DigitsCNN()
    saver = ModelCheckpoint(dirpath=tmp_path / "a" / "checkpoints", filename="best")
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[saver],
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    first = Path(saver.best_model_path)
    second = tmp_path / "b" / "checkpoints" / "best.ckpt"  # as a clone at another path would save it
    second.parent.mkdir(parents=True)
    saved = torch.load(first, weights_only=False)
    for state in saved["callbacks"].values():
        for key in ("dirpath", "best_model_path", "last_model_path"):
            if state.get(key):
                state[key] = str(state[key]).replace(str(tmp_path / "a"), str(tmp_path / "b"))
    torch.save(saved, second)
    assert file_sha256(first) != file_sha256(second)

    results = []
    for checkpoint in (first, second):
        model = onnxport.load_model(checkpoint, model_class=DigitsCNN)
        results.append(
            onnxport.export(
                model,
                torch.randn(2, 1, 8, 8),
                checkpoint.parent / "model.onnx",
                checkpoint_sha256=file_sha256(checkpoint),
                validation={"latency_runs": 0},
            )
        )
    assert results[0].sha256 == results[1].sha256
    assert props(results[0].path)["onnxport.weights_sha256"] == weights_sha256(
        torch.load(first, weights_only=False)
    )
    for result, checkpoint in zip(results, (first, second), strict=True):
        report = json.loads(result.report_path.read_text())
        assert report["run"]["checkpoint_sha256"] == file_sha256(checkpoint)  # in the report only
        assert file_sha256(checkpoint).encode() not in result.path.read_bytes()


# -- validation settings do not shape the file ---------------------------------------------------


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One validated export of a TinyMLP: the bytes every variation below must reproduce."""
    torch.manual_seed(0)
    model = TinyMLP().eval()
    root = tmp_path_factory.mktemp("baseline")
    result = onnxport.export(model, torch.randn(2, 4), root / "model.onnx", exporter="torchscript")
    return model, result


@pytest.mark.parametrize(
    "validation",
    [
        {"atol": 1e-5},
        {"rtol": 1e-2},
        {"latency_runs": 0},
        {"sizes": [3, 7]},
        {"seed": 11},
        {"report": "elsewhere/report.json"},
        {"per_output": {"output": {"atol": 1e-2}}},
        {"on_mismatch": "warn"},
    ],
    ids=lambda v: next(iter(v)),
)
def test_changing_only_validation_settings_keeps_the_bytes(baseline, tmp_path, validation):
    model, first = baseline
    if "report" in validation:
        (tmp_path / "elsewhere").mkdir()
        validation = {"report": str(tmp_path / validation["report"])}
    result = onnxport.export(
        model,
        torch.randn(2, 4),
        tmp_path / "model.onnx",
        exporter="torchscript",
        checkpoint_sha256="c0ffee" * 10,  # another checkpoint file with the same weights
        validation=validation,
    )
    assert result.validation.passed
    assert result.sha256 == first.sha256


def test_what_shapes_the_file_is_in_it_and_nothing_else(baseline):
    model, result = baseline
    metadata = props(result.path)
    config = json.loads(metadata["onnxport.config"])
    assert "validation" not in config and config["opset"] == result.config.opset
    assert metadata["onnxport.weights_sha256"] == weights_sha256(model)
    assert metadata["onnxport.validation_enabled"] == "true"
    assert "onnxport.checkpoint_sha256" not in metadata
    # A setting that does shape the graph changes the bytes.
    other = onnxport.export(
        model, torch.randn(2, 4), result.path.with_name("v2.onnx"), exporter="torchscript", model_version=2
    )
    assert other.sha256 != result.sha256
