"""The reference pipeline's stage code on its own: real scikit-learn data, real Trainer, real ONNX Runtime.

The DVC wiring of the same stages is tested end to end in test_dvc_pipeline.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from onnxport.hydra_config import model_from_config
from pipelines.config import compose
from pipelines.evaluate import evaluate
from pipelines.model import DigitsCNN
from pipelines.prepare import prepare
from pipelines.summary import summary
from pipelines.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF = REPO_ROOT / "conf"


def tmp_config(root: Path, *overrides: str):
    """The real conf/, with every path under ``root`` and a one-epoch Trainer."""
    return compose(
        [
            f"paths.data_dir={root}/data",
            f"paths.checkpoint_dir={root}/checkpoints",
            f"paths.model={root}/models/model.onnx",
            f"paths.validation_report={root}/models/model.validation.json",
            f"paths.accuracy={root}/metrics/accuracy.json",
            f"paths.latency_plot={root}/plots/latency.json",
            "trainer.max_epochs=2",
            *overrides,
        ],
        config_dir=CONF,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """Prepared data and a trained checkpoint (the ONNX callback left out: it has its own tests)."""
    root = tmp_path_factory.mktemp("pipeline")
    cfg = tmp_config(root, "~callbacks.onnx_export")
    prepare(cfg)
    train(cfg)
    return cfg


def md5(path: str | Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# -- config -------------------------------------------------------------------------------


def test_paths_are_defined_once_and_interpolated_everywhere():
    cfg = compose(config_dir=CONF)
    assert cfg.checkpoint == cfg.paths.checkpoint == "checkpoints/best.ckpt"
    assert cfg.output == cfg.paths.model == "models/model.onnx"
    # The default report place: the callback (config: ${export}) cannot clobber it.
    assert (
        cfg.export.validation.report is None and cfg.paths.validation_report == "models/model.validation.json"
    )
    assert cfg.data.dir == cfg.paths.data_dir
    saver = cfg.callbacks.model_checkpoint
    assert f"{saver.dirpath}/{saver.filename}.ckpt" == cfg.paths.checkpoint
    assert saver.monitor == "val_loss" and saver.save_top_k == 1
    assert cfg.callbacks.onnx_export._target_ == "onnxport.OnnxExportCallback"


def test_conf_needs_no_running_hydra_app():
    # DVC composes conf/ with OmegaConf.resolve outside @hydra.main: ${hydra:...} would fail there.
    offenders = [str(p) for p in CONF.rglob("*.yaml") if "${hydra:" in p.read_text()]
    assert offenders == []


def test_committed_params_yaml_is_conf_composed_as_dvc_composes_it():
    # `dvc exp run` rewrites params.yaml from conf/; if the committed file differed, the first
    # experiment would re-run stages nobody changed.
    committed = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert committed == OmegaConf.to_container(compose(config_dir=CONF)), (
        "params.yaml is stale: run `python -m pipelines.config` and commit it"
    )


def test_dvc_yaml_declares_the_stages_metrics_and_model_artifact():
    dvc_yaml = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    stages = dvc_yaml["stages"]
    assert list(stages) == ["prepare", "train", "export", "evaluate"]
    # The stage alone writes DVC's metrics and plots: the training callback shares `export` but not these.
    assert stages["export"]["cmd"].split() == [
        "onnxport",
        "export",
        "--config-dir",
        "conf",
        "export.validation.metrics=${paths.validation_metrics}",
        "export.validation.plots=${paths.export_plots}",
    ]
    assert "conf/export" in stages["export"]["deps"]
    assert "export" in stages["export"]["params"]
    assert stages["evaluate"]["metrics"] == [{"${paths.accuracy}": {"cache": False}}]
    # The export stage keeps its previous results when it fails: DVC would delete its outs first.
    assert stages["export"]["metrics"] == [{"${paths.validation_metrics}": {"cache": False, "persist": True}}]
    assert {"${paths.model_dir}": {"persist": True}} in stages["export"]["outs"]
    assert "${paths.model}" in stages["evaluate"]["deps"]  # the file inside the export stage's out
    plots = {name: spec for entry in dvc_yaml["plots"] for name, spec in entry.items()}
    assert {"parity", "validation-latency", "latency"} <= set(plots)
    artifact = dvc_yaml["artifacts"]["digits-cnn"]
    assert artifact["path"] == "${paths.model}"
    assert artifact["type"] == "model"
    assert {"opset", "inputs"} <= set(artifact["meta"])
    # Every configured variant is a declared artifact, in the export stage's out, scored by evaluate.
    names = [variant.name for variant in compose(config_dir=CONF).export.variants]
    assert names == ["opt", "fp16", "int8"]
    for name in names:
        variant = dvc_yaml["artifacts"][f"digits-cnn-{name}"]
        assert (variant["path"], variant["type"]) == (f"${{paths.model_dir}}/model.{name}.onnx", "model")
    assert "export.variants" in stages["evaluate"]["params"]
    latency = plots["latency"]["y"]["${paths.latency_plot}"]
    assert [f"{name}_ms" for name in names] == [field for field in latency if field[:-3] in names]
    # int8 calibrates on the training data: the export stage depends on it and the datamodule's code.
    assert {"${paths.data_dir}", "pipelines/data.py", "conf/data"} <= set(stages["export"]["deps"])


def test_int8_calibrates_on_the_training_split_through_the_pipelines_datamodule(tmp_path: Path):
    from hydra.utils import instantiate

    from onnxport.config import ExportConfig
    from pipelines.data import DigitsDataModule, load_split

    cfg = tmp_config(tmp_path)
    config = ExportConfig.from_dict(OmegaConf.to_container(cfg.export))
    (int8,) = [variant for variant in config.variants if variant.precision == "int8"]
    assert (int8.quantization, int8.calibration.split, int8.calibration.npz) == ("static", "train", None)
    assert int8.calibration.datamodule == OmegaConf.to_container(cfg.data)  # ${data}, resolved
    # The training callback shares the config (callbacks.onnx_export.config: ${export}), and
    # Hydra hands it over as data: the datamodule is built by the export, not by instantiate.
    assert cfg.callbacks.onnx_export.config.variants == cfg.export.variants
    callback = instantiate(cfg.callbacks.onnx_export)
    assert callback.config.variants[2].calibration.datamodule == OmegaConf.to_container(cfg.data)

    data = instantiate(int8.calibration.datamodule)
    assert isinstance(data, DigitsDataModule) and data.data_dir == tmp_path / "data"
    data.prepare_data()  # writes the splits `prepare` would write, when missing
    images, _ = load_split(tmp_path / "data", "train")
    first = next(iter(data.train_dataloader()))[0]
    assert first.shape == (cfg.data.batch_size, 1, 8, 8)
    assert any(np.array_equal(first[0].numpy(), image) for image in images)


def test_export_settings_never_retrain():
    # The callback's config is ${export}: export settings re-run the export stage, never training.
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["train"]
    assert not any(p in ("callbacks", "callbacks.onnx_export") or ".config" in p for p in stage["params"])
    assert not any(p == "export" or p.startswith("export.") for p in stage["params"])
    assert "conf/export" not in stage["deps"]


def test_dvc_config_enables_hydra_composition_from_conf():
    from configobj import ConfigObj

    config = ConfigObj(str(REPO_ROOT / ".dvc" / "config"))
    assert config["hydra"]["enabled"] == "true"
    assert config["hydra"].get("config_dir", "conf") == "conf"


# -- prepare ------------------------------------------------------------------------------


def test_prepare_splits_all_digits_scaled_to_unit_range(tmp_path: Path):
    cfg = tmp_config(tmp_path)
    counts = prepare(cfg)
    assert sum(counts.values()) == 1797  # every image of load_digits, once
    assert counts["val"] == counts["test"] == 270
    for split, count in counts.items():
        with np.load(tmp_path / "data" / f"{split}.npz") as arrays:
            images, labels = arrays["image"], arrays["label"]
        assert images.shape == (count, 1, 8, 8) and images.dtype == np.float32
        assert images.min() == 0.0 and images.max() == 1.0
        assert set(labels.tolist()) == set(range(10))  # stratified: every class in every split


def test_prepare_is_byte_reproducible_and_seeded(tmp_path: Path):
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        prepare(tmp_config(tmp_path / name, f"data.split_seed={seed}"))
    first, again, other = (
        md5(tmp_path / name / "data" / "train.npz") for name in ("first", "again", "other")
    )
    assert first == again  # fixed zip timestamps: same data, same md5 for DVC
    assert other != first


# -- model --------------------------------------------------------------------------------


def test_digits_cnn_maps_images_to_ten_logits():
    model = DigitsCNN().eval()
    assert tuple(model.example_input_array.shape) == (2, 1, 8, 8)  # batch 2: stays dynamic when traced
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)


# -- train --------------------------------------------------------------------------------


def test_train_keeps_the_best_checkpoint_at_paths_checkpoint(trained):
    checkpoint = torch.load(trained.paths.checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1  # two epochs, 0-based
    saver = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert saver["monitor"] == "val_loss"
    assert Path(saver["best_model_path"]).resolve() == Path(trained.paths.checkpoint).resolve()


def test_train_is_deterministic(trained, tmp_path: Path):
    cfg = tmp_config(tmp_path, "~callbacks.onnx_export", f"paths.data_dir={trained.paths.data_dir}")
    train(cfg)
    first = torch.load(trained.paths.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    again = torch.load(cfg.paths.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert first.keys() == again.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)


def test_export_stage_loads_a_lightning_class_path(trained):
    # `model: package.Class` instead of a `_target_` mapping: LightningModule.load_from_checkpoint.
    cfg = OmegaConf.create({"model": "pipelines.model.DigitsCNN", "trust_checkpoint": False})
    model = model_from_config(cfg, trained.paths.checkpoint)
    assert isinstance(model, DigitsCNN)
    saved = torch.load(trained.paths.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(tensor, saved[name]) for name, tensor in model.state_dict().items())


# -- evaluate and summary -----------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(trained):
    """The trained checkpoint exported as the export stage does (with conf/export's variants), evaluated."""
    from onnxport.cli import export_from_config

    result = export_from_config(trained)
    assert [Path(v.path).name for v in result.variants] == [
        "model.opt.onnx",
        "model.fp16.onnx",
        "model.int8.onnx",
    ]
    return evaluate(trained)


def test_evaluate_scores_onnx_runtime_beside_pytorch(trained, evaluated):
    written = json.loads(Path(trained.paths.accuracy).read_text())
    assert written == evaluated
    assert written["test_samples"] == 270
    assert written["onnx_accuracy"] > 0.8  # two epochs on digits is plenty for a CNN
    assert written["prediction_agreement"] == 1.0
    assert abs(written["onnx_accuracy"] - written["torch_accuracy"]) < 1e-9
    assert written["max_abs_logit_diff_e6"] < 1e3


def test_evaluate_scores_each_variant_file(trained, evaluated):
    variants = evaluated["variants"]
    assert list(variants) == ["opt", "fp16", "int8"]
    model = Path(trained.paths.model)
    for name, row in variants.items():
        assert row["size_bytes"] == model.with_name(f"model.{name}.onnx").stat().st_size
        assert row["accuracy"] > 0.8 and row["prediction_agreement"] >= 0.95, (name, row)
    assert variants["opt"]["accuracy"] == evaluated["onnx_accuracy"]  # same arithmetic, fp32 tolerances
    assert variants["int8"]["size_bytes"] < 0.5 * model.stat().st_size


def test_evaluate_plots_latency_per_batch_size(trained, evaluated):
    rows = json.loads(Path(trained.paths.latency_plot).read_text())
    assert [row["batch_size"] for row in rows] == list(trained.evaluate.batch_sizes)
    assert all(row["onnxruntime_ms"] > 0 and row["torch_ms"] > 0 for row in rows)
    assert all(row[f"{name}_ms"] > 0 for row in rows for name in ("opt", "fp16", "int8"))


def test_evaluate_leaves_out_a_configured_variant_whose_file_is_missing(trained, evaluated, tmp_path, capsys):
    model = Path(trained.paths.model)
    shutil.copy2(model, tmp_path / "model.onnx")
    shutil.copy2(model.with_name("model.fp16.onnx"), tmp_path / "model.fp16.onnx")
    cfg = OmegaConf.merge(
        trained,
        {
            "paths": {
                "model": str(tmp_path / "model.onnx"),
                "accuracy": str(tmp_path / "accuracy.json"),
                "latency_plot": str(tmp_path / "latency.json"),
            },
            "evaluate": {"batch_sizes": [2], "latency_runs": 1},
        },
    )
    metrics = evaluate(cfg)
    assert list(metrics["variants"]) == ["fp16"]
    assert "variant opt was not published" in capsys.readouterr().out
    (row,) = json.loads((tmp_path / "latency.json").read_text())
    assert set(row) == {"batch_size", "onnxruntime_ms", "fp16_ms", "torch_ms"}


def test_summary_says_where_the_model_is_and_its_accuracy(trained, evaluated):
    Path(trained.paths.validation_report).parent.mkdir(parents=True, exist_ok=True)
    Path(trained.paths.validation_report).write_text(json.dumps({"passed": True}))
    text = summary(trained)
    assert str(Path(trained.paths.model).resolve()) in text
    assert f"{evaluated['onnx_accuracy']:.4f} in ONNX Runtime" in text
    assert re.search(r"opset \d+\)", text)
    assert "validation:  passed" in text
    for name, row in evaluated["variants"].items():
        assert re.search(rf"^  {name} +{row['accuracy']:.4f}  agreement ", text, re.M), text


def test_summary_names_what_is_missing(tmp_path: Path):
    text = summary(tmp_config(tmp_path))
    assert text.startswith("not built yet:")
    assert str(tmp_path / "models" / "model.onnx") in text
