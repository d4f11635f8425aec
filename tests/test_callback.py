"""OnnxExportCallback with a real Lightning Trainer, real exporters and real ONNX Runtime sessions."""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset, TensorDataset

from conftest import REPO_ROOT, TinyMLP, run_onnx
from onnxport import OnnxExportCallback
from onnxport.errors import CheckpointError, ConfigError, InputError, ValidationError

DDP_SCRIPT = REPO_ROOT / "tests" / "ddp_scripts" / "fit_export.py"
FAST_VALIDATION = {"latency_runs": 0}


class Regressor(pl.LightningModule):
    """TinyMLP trained with MSE; ``score`` is a metric the test controls per epoch."""

    def __init__(self, *, example: bool = True, noisy: bool = False, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyMLP()
        self.noisy = noisy
        self.lr = lr
        if example:
            self.example_input_array = torch.randn(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        # Random output: whatever ONNX Runtime computes cannot match, so validation fails.
        return y + torch.rand_like(y) if self.noisy else y

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def on_train_epoch_end(self) -> None:
        # Lower is better and epoch 0 scores best, so "best" and "last" weights differ.
        self.log("score", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def regression_data(n: int = 16, batch_size: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(n, 4, generator=generator), torch.randn(n, 3, generator=generator))
    return DataLoader(dataset, batch_size=batch_size)


def make_trainer(root: Path, callbacks: list, **options) -> pl.Trainer:
    settings = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    return pl.Trainer(callbacks=callbacks, **{**settings, **options})


def onnx_matches(path: Path, module: torch.nn.Module, x: torch.Tensor, input_name: str = "x") -> bool:
    (ort_out,) = run_onnx(path, {input_name: x.numpy()})
    with torch.no_grad():
        expected = module.eval()(x).numpy()
    return np.allclose(ort_out, expected, atol=1e-5, rtol=1e-4)


PROBE = torch.randn(5, 4, generator=torch.Generator().manual_seed(7))


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"on_error": "ignore"}, "on_error='ignore'"),
        ({"ckpt_path": 3}, "ckpt_path=3"),
        ({"every_n_epochs": 0}, "every_n_epochs=0"),
        ({"opset": 3}, "opset=3"),
        ({"exporter": "onnxruntime"}, "exporter='onnxruntime'"),
        ({"validation": {"on_mismatch": "ignore"}}, "on_mismatch='ignore'"),
        ({"opst": 17}, "export.opst"),
    ],
)
def test_bad_options_are_rejected_in_init_naming_the_value(options, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[")) as caught:
        OnnxExportCallback("model.onnx", **options)
    assert caught.value.fix


def test_export_options_and_config_merge_into_one_export_config():
    callback = OnnxExportCallback(
        config={"opset": 17, "validation": {"atol": 1e-2}}, validation={"rtol": 0.5}
    )
    assert callback.config.opset == 17
    assert (callback.config.validation.atol, callback.config.validation.rtol) == (1e-2, 0.5)


def test_state_dict_round_trip_and_state_key_follow_output():
    first, second = OnnxExportCallback("a.onnx"), OnnxExportCallback("b.onnx")
    assert first.state_key != second.state_key
    first.last_path, first.last_sha256 = "/x/a.onnx", "ab" * 32
    restored = OnnxExportCallback("a.onnx")
    restored.load_state_dict(first.state_dict())
    assert (restored.last_path, restored.last_sha256) == ("/x/a.onnx", "ab" * 32)
    restored.load_state_dict({})  # a checkpoint from before the keys existed
    assert restored.last_path == "/x/a.onnx"


def test_hydra_config_instantiates_the_callback():
    from hydra import compose, initialize
    from hydra.utils import instantiate

    from onnxport.hydra_config import register_configs

    register_configs()  # the callback config ships in the package, in Hydra's ConfigStore
    with initialize(version_base="1.3"):
        cfg = compose(
            "callbacks/onnx_export",
            overrides=["callbacks.onnx_export.ckpt_path=best", "callbacks.onnx_export.config.opset=17"],
        )
    callback = instantiate(cfg.callbacks.onnx_export)
    assert isinstance(callback, OnnxExportCallback)
    assert (callback.ckpt_path, callback.on_error, callback.output) == ("best", "raise", None)
    assert callback.config.opset == 17
    assert callback.config.validation.atol == 1e-4


def test_hydra_callback_can_take_the_whole_export_config_unmixed():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "callbacks.onnx_export.config=${export}",
                "export.opset=17",
                "export.validation.atol=0.01",
            ],
        )
    callback = instantiate(cfg.callbacks.onnx_export)
    # Nothing from the packaged callback config (opset 18, atol 1e-4) overrides what conf/export says.
    assert (callback.config.opset, callback.config.validation.atol) == (17, 0.01)
    assert callback.config.output_names == ["logits"]
    assert [spec.name for spec in callback.config.inputs] == ["image"]


def test_docstring_example_runs(tmp_path, monkeypatch):
    import doctest

    import onnxport.callback

    monkeypatch.chdir(tmp_path)
    assert doctest.testmod(onnxport.callback, raise_on_error=True).attempted >= 4


# -- single process ----------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_exports_a_valid_file_in_log_dir_and_leaves_the_module_training(tmp_path, caplog):
    module = Regressor()
    callback = OnnxExportCallback(validation=FAST_VALIDATION)
    trainer = make_trainer(tmp_path, [callback], logger=CSVLogger(tmp_path, name="logs"))
    with caplog.at_level(logging.INFO):
        trainer.fit(module, regression_data())

    output = tmp_path / "logs" / "version_0" / "model.onnx"
    assert callback.output_path == output
    assert output.is_file()
    result = callback.last_result
    assert result is not None and Path(result.path) == output
    assert result.validation.passed
    assert (callback.last_path, callback.last_sha256) == (str(output), result.sha256)
    assert all(m.training for m in module.modules())
    assert module.device.type == "cpu"
    assert onnx_matches(output, module, PROBE)

    metrics = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    for name in ("export/passed", "export/max_abs_diff", "export/size_mb", "export/seconds"):
        assert name in header
    row = dict(zip(header, metrics[-1].split(","), strict=True))
    assert float(row["export/passed"]) == 1.0
    assert f"OnnxExportCallback: wrote {output}" in caplog.text


@pytest.mark.slow
def test_config_input_spec_wins_over_example_input_array(tmp_path):
    spec = [{"name": "x", "shape": [3, 4]}]
    callback = OnnxExportCallback(inputs=spec, dynamic_batch=False, validation=FAST_VALIDATION)
    # No logger and no checkpoints: nothing but the export creates the default_root_dir.
    make_trainer(tmp_path / "fresh", [callback]).fit(Regressor(), regression_data(n=4))

    import onnx

    assert callback.last_path == str(tmp_path / "fresh" / "model.onnx")
    (graph_input,) = onnx.load(callback.last_path).graph.input
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [3, 4]


@pytest.mark.slow
def test_runs_in_the_unified_lightning_packages_trainer(tmp_path):
    import lightning.pytorch as L

    class LightningRegressor(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyMLP()
            self.example_input_array = torch.randn(2, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    checkpoint = L.callbacks.ModelCheckpoint(tmp_path / "ckpt", save_last=True)
    callback = OnnxExportCallback(tmp_path / "model.onnx", validation=FAST_VALIDATION)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[callback, checkpoint],
    )
    trainer.fit(LightningRegressor(), regression_data(n=4))

    assert callback.last_result.validation.passed
    saved = torch.load(checkpoint.last_model_path, weights_only=False)["callbacks"]
    assert callback.state_key in saved


class DictBatches(Dataset):
    """Dict samples under a key ``forward`` does not know; the module's hook renames it."""

    def __init__(self) -> None:
        self.features = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[index], "target": torch.zeros(3)}


class DictRegressor(Regressor):
    def on_before_batch_transfer(self, batch, dataloader_idx):
        return {"x": batch["features"], "y": batch["target"]}

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self(batch["x"]), batch["y"])


@pytest.mark.slow
def test_first_batch_goes_through_the_batch_hooks_and_training_goes_on_as_without_export(tmp_path):
    def fit(callbacks: list) -> DictRegressor:
        module = DictRegressor(example=False)  # seeds the global RNG, which shuffles the batches
        loader = DataLoader(DictBatches(), batch_size=4, shuffle=True)
        make_trainer(tmp_path, callbacks, max_epochs=2).fit(module, loader)
        return module

    callback = OnnxExportCallback(tmp_path / "model.onnx", every_n_epochs=1, validation=FAST_VALIDATION)
    module, untouched = fit([callback]), fit([])

    assert callback.last_result.input_names == ["x"]
    assert onnx_matches(tmp_path / "model.onnx", module, PROBE)
    # Drawing the first batch after epoch 0 did not change how epoch 1 was shuffled.
    for name, tensor in untouched.state_dict().items():
        assert torch.equal(module.state_dict()[name], tensor), name


@pytest.mark.slow
def test_failed_export_warns_or_raises_and_never_writes_the_output(tmp_path):
    output = tmp_path / "model.onnx"
    output.write_bytes(b"previous export")

    warn = OnnxExportCallback(output, on_error="warn", validation=FAST_VALIDATION)
    with pytest.warns(UserWarning, match="export failed"):
        make_trainer(tmp_path, [warn]).fit(Regressor(noisy=True), regression_data())
    assert warn.last_result is None and warn.last_path is None
    assert output.read_bytes() == b"previous export"

    raising = OnnxExportCallback(output, validation=FAST_VALIDATION)
    with pytest.raises(ValidationError):
        make_trainer(tmp_path, [raising]).fit(Regressor(noisy=True), regression_data())
    assert output.read_bytes() == b"previous export"

    # on_mismatch="warn" is not a failure: the file is published and the loggers see passed=0.
    published = OnnxExportCallback(output, validation={**FAST_VALIDATION, "on_mismatch": "warn"})
    logger = CSVLogger(tmp_path, name="warn")
    make_trainer(tmp_path, [published], logger=logger).fit(Regressor(noisy=True), regression_data())
    assert output.read_bytes() != b"previous export"
    assert not published.last_result.validation.passed
    metrics = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    row = dict(zip(metrics[0].split(","), metrics[-1].split(","), strict=True))
    assert float(row["export/passed"]) == 0.0


@pytest.mark.slow
def test_best_and_last_checkpoints_export_their_weights_and_leave_the_module_alone(tmp_path):
    import onnx

    from onnxport.hashing import file_sha256
    from onnxport.provenance import weights_sha256

    module = Regressor(lr=0.5)
    checkpoint = ModelCheckpoint(tmp_path / "best", monitor="score", mode="min")
    # last.ckpt is only refreshed when its callback saves, so "last" comes from one saving every epoch.
    latest = ModelCheckpoint(tmp_path / "latest", save_last=True)
    best = OnnxExportCallback(tmp_path / "best.onnx", ckpt_path="best", validation=FAST_VALIDATION)
    last = OnnxExportCallback(tmp_path / "last.onnx", ckpt_path="last", validation=FAST_VALIDATION)
    callbacks = [best, last, checkpoint, latest]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=3, enable_checkpointing=True)
    trainer.fit(module, regression_data())

    assert Path(checkpoint.best_model_path).name.startswith("epoch=0")
    best_module, last_module = Regressor(), Regressor()
    best_module.load_state_dict(torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"])
    last_module.load_state_dict(torch.load(latest.last_model_path, weights_only=True)["state_dict"])
    # The Trainer's module keeps its last weights, in training mode.
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, last_module.state_dict()[name]), name
    assert module.training

    assert onnx_matches(tmp_path / "best.onnx", best_module, PROBE)
    assert not onnx_matches(tmp_path / "best.onnx", last_module, PROBE)
    assert onnx_matches(tmp_path / "last.onnx", last_module, PROBE)
    # Each file names the weights it holds; its report names the checkpoint they came from.
    for onnx_file, ckpt in (("best.onnx", checkpoint.best_model_path), ("last.onnx", latest.last_model_path)):
        props = {p.key: p.value for p in onnx.load(tmp_path / onnx_file).metadata_props}
        assert props["onnxport.weights_sha256"] == weights_sha256(torch.load(ckpt, weights_only=True))
        report = json.loads((tmp_path / onnx_file).with_suffix(".validation.json").read_text())
        assert report["run"]["checkpoint_sha256"] == file_sha256(ckpt)


@pytest.mark.parametrize(
    ("ckpt_path", "export_options", "checkpoint", "message", "trained"),
    [
        ("best", {}, None, "has no ModelCheckpoint", False),
        ("last", {}, {}, "has save_last set", False),
        ("best", {}, {"every_n_epochs": 2}, "saved no best checkpoint", True),
        # ModelCheckpoint saves after the other callbacks' epoch-end hooks: nothing yet after epoch 0.
        ("last", {"every_n_epochs": 1}, {"save_last": True}, "saved no last checkpoint", True),
        ("gone.ckpt", {}, None, "not a file", True),
    ],
)
def test_missing_checkpoint_is_a_checkpoint_error(
    tmp_path, ckpt_path, export_options, checkpoint, message, trained
):
    callback = OnnxExportCallback(tmp_path / "model.onnx", ckpt_path=ckpt_path, **export_options)
    callbacks = [callback] if checkpoint is None else [callback, ModelCheckpoint(tmp_path, **checkpoint)]
    trainer = make_trainer(tmp_path, callbacks, enable_checkpointing=checkpoint is not None)
    with pytest.raises(CheckpointError, match=message):
        trainer.fit(Regressor(), regression_data(n=4))
    # A checkpoint the Trainer can never provide is refused in setup(), before any training step.
    assert trainer.global_step == (1 if trained else 0)
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow
def test_epoch_exports_are_recorded_in_the_next_checkpoint(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path / "ckpt", save_last=True)
    output = tmp_path / "exports" / "model.onnx"  # its directory is made when the file is written
    callback = OnnxExportCallback(output, every_n_epochs=1, validation=FAST_VALIDATION)
    make_trainer(tmp_path, [callback, checkpoint], enable_checkpointing=True).fit(
        Regressor(), regression_data(n=4)
    )
    saved = torch.load(checkpoint.last_model_path, weights_only=False)["callbacks"][callback.state_key]
    assert saved == {"last_path": str(output), "last_sha256": callback.last_sha256}


@pytest.mark.slow
def test_compiled_module_exports_its_current_and_best_weights(tmp_path):
    module = Regressor(lr=0.5)
    compiled = torch.compile(module, backend="eager")  # dynamo wrapping without a C++ toolchain
    checkpoint = ModelCheckpoint(tmp_path / "ckpt", monitor="score", mode="min")
    current = OnnxExportCallback(tmp_path / "current.onnx", validation=FAST_VALIDATION)
    best = OnnxExportCallback(tmp_path / "best.onnx", ckpt_path="best", validation=FAST_VALIDATION)
    trainer = make_trainer(tmp_path, [current, best, checkpoint], max_epochs=2, enable_checkpointing=True)
    trainer.fit(compiled, regression_data())

    assert "forward" in vars(module)  # Lightning left the dynamo-wrapped forward on the module
    assert current.last_result.validation.passed and best.last_result.validation.passed
    best_module = Regressor()
    best_module.load_state_dict(torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"])
    assert onnx_matches(tmp_path / "current.onnx", module, PROBE)
    assert onnx_matches(tmp_path / "best.onnx", best_module, PROBE)
    assert not onnx_matches(tmp_path / "best.onnx", module, PROBE)


@pytest.mark.slow
def test_ema_weight_averaging_exports_the_averaged_weights(tmp_path):
    import onnx
    from pytorch_lightning.callbacks import WeightAveraging
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    class RawWeights(pl.Callback):
        def on_train_end(self, trainer, pl_module):  # runs before WeightAveraging's, by list order
            self.net = copy.deepcopy(pl_module.net)

    module, raw = Regressor(lr=0.5), RawWeights()
    ema = WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(0.5))
    callback = OnnxExportCallback(tmp_path / "model.onnx", validation=FAST_VALIDATION)
    make_trainer(tmp_path, [raw, ema, callback], max_epochs=2).fit(module, regression_data())

    # WeightAveraging copies the average into the module when training ends, before on_fit_end.
    assert onnx_matches(tmp_path / "model.onnx", module, PROBE)
    assert not onnx_matches(tmp_path / "model.onnx", raw.net, PROBE)
    names = [init.name for init in onnx.load(tmp_path / "model.onnx").graph.initializer]
    assert names and not any(name.startswith(("module.", "_orig_mod.")) for name in names)


# -- DDP -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_exports_once_on_rank_zero_and_every_rank_agrees(tmp_path):
    # Launched like `python train.py`: Lightning starts rank 1 itself. The unified `lightning`
    # package is used here, so this also covers its Trainer and the callback's base class.
    done = subprocess.run(
        [sys.executable, str(DDP_SCRIPT), str(tmp_path), "ok", "lightning"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["exported_here"] for r in ranks] == [True, False]
    assert ranks[0]["validation_passed"]
    assert ranks[0]["last_path"] == ranks[1]["last_path"] == str(tmp_path / "model.onnx")
    assert ranks[0]["last_sha256"] == ranks[1]["last_sha256"]
    assert all(r["is_callback_of_trainer_package"] and r["imported_at_start"] == [] for r in ranks)
    assert run_onnx(tmp_path / "model.onnx", {"x": PROBE.numpy()})[0].shape == (5, 3)


@pytest.mark.slow
def test_ddp_rank_zero_failure_ends_every_rank_promptly(tmp_path):
    # Launched like torchrun: one process per rank, so each exit status is visible here.
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": "0"}
        env["LOCAL_RANK"] = str(rank)
        command = [sys.executable, str(DDP_SCRIPT), str(tmp_path), "fail", "pytorch_lightning"]
        with open(tmp_path / f"rank{rank}.log", "w") as log:
            procs.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log))
    try:
        # A rank left waiting would sit in the barrier until the process group's 30-minute timeout:
        # the wait's timeout is a hang guard, not a speed bound.
        codes = [proc.wait(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()

    assert all(code != 0 for code in codes), codes
    assert "ParityError" in (tmp_path / "rank0.error").read_text()
    assert "global rank 0 failed" in (tmp_path / "rank1.error").read_text()
    assert not (tmp_path / "model.onnx").exists()


# -- checkpoints as users have them: template projects, fsspec paths, hostile files ------------


@pytest.mark.slow
def test_template_project_exports_its_best_checkpoint_with_no_trust_flag(template_project, caplog):
    """Issue 9's headline: a lightning-hydra-template project, the callback added in its config."""
    from src.models.digits_module import DigitsLitModule
    from src.train import train

    from conftest import compose_template

    output = template_project / "model.onnx"
    cfg = compose_template(
        template_project,
        [
            "trainer.max_epochs=3",
            "test=False",
            # The lowest accuracy is "best", so the best weights are surely not the final ones.
            "callbacks.model_checkpoint.mode=min",
            "+callbacks.onnx_export._target_=onnxport.OnnxExportCallback",
            "+callbacks.onnx_export.ckpt_path=best",
            f"+callbacks.onnx_export.output={output}",
            "+callbacks.onnx_export.validation.latency_runs=0",
        ],
    )
    with caplog.at_level(logging.INFO):
        _, objects = train(cfg)

    (callback,) = [cb for cb in objects["callbacks"] if isinstance(cb, OnnxExportCallback)]
    assert callback.trust_checkpoint is False
    assert callback.last_result.validation.passed and output.is_file()
    best_path = objects["trainer"].checkpoint_callback.best_model_path
    # Trusted here only because this test wrote the file: the reference the export must match.
    best = DigitsLitModule.load_from_checkpoint(best_path, weights_only=False).eval()
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    (ort_logits,) = run_onnx(output, {"x": images.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(ort_logits, best(images).numpy(), atol=1e-4, rtol=1e-3)
        final = objects["model"].eval()(images).numpy()
    assert not np.allclose(ort_logits, final, atol=1e-3)  # the best epoch, not the last weights
    # Progress, phase by phase, through Lightning's rank-zero log.
    assert (
        "OnnxExportCallback: load done in" in caplog.text and f"(the weights of {best_path})" in caplog.text
    )
    assert "OnnxExportCallback: example inputs from the first train batch" in caplog.text


@pytest.mark.slow
def test_ckpt_path_is_opened_through_fsspec(tmp_path):
    import fsspec

    saved = ModelCheckpoint(tmp_path / "ckpt", save_last=True)
    make_trainer(tmp_path, [saved], enable_checkpointing=True).fit(Regressor(lr=0.5), regression_data())
    url = "memory://onnxport-tests/remote.ckpt"
    with fsspec.open(url, "wb") as remote:
        remote.write(Path(saved.last_model_path).read_bytes())
    reference = Regressor()
    reference.load_state_dict(torch.load(saved.last_model_path, weights_only=True)["state_dict"])

    callback = OnnxExportCallback(tmp_path / "model.onnx", ckpt_path=url, validation=FAST_VALIDATION)
    make_trainer(tmp_path / "second", [callback]).fit(Regressor(lr=0.0), regression_data(n=4))
    assert onnx_matches(tmp_path / "model.onnx", reference, PROBE)
    assert not onnx_matches(tmp_path / "model.onnx", Regressor(), PROBE)


class _Payload:
    def __init__(self, call, *args) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def test_a_payload_checkpoint_never_runs_through_the_callback(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "evil.ckpt"
    state = {"state_dict": Regressor().state_dict(), "pytorch-lightning_version": pl.__version__}
    torch.save({**state, "hyper_parameters": {"x": _Payload(os.system, f"touch {marker}")}}, evil)
    callback = OnnxExportCallback(tmp_path / "model.onnx", ckpt_path=evil)
    trainer = make_trainer(tmp_path, [callback], max_steps=1)
    with pytest.raises(CheckpointError, match=r"refused: unpickling it would call posix\.system") as caught:
        trainer.fit(Regressor(), regression_data(n=4))
    assert "\n" not in str(caught.value) and "corrupt" not in str(caught.value)
    assert not marker.exists() and not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("flag", ["false", 0, None])
def test_trust_checkpoint_must_be_a_real_bool(flag):
    with pytest.raises(ConfigError, match=r"trust_checkpoint=.* not a bool"):
        OnnxExportCallback("model.onnx", trust_checkpoint=flag)


def test_a_directory_as_ckpt_path_says_so(tmp_path):
    callback = OnnxExportCallback(tmp_path / "model.onnx", ckpt_path=tmp_path)
    with pytest.raises(CheckpointError, match="is a directory"):
        make_trainer(tmp_path, [callback], max_steps=1).fit(Regressor(), regression_data(n=4))


def test_fast_dev_run_exports_nothing(tmp_path, caplog):
    callback = OnnxExportCallback(tmp_path / "model.onnx", every_n_epochs=1)
    trainer = make_trainer(tmp_path, [callback], fast_dev_run=True)
    with caplog.at_level(logging.INFO):
        trainer.fit(Regressor(), regression_data(n=4), regression_data(n=4))
    assert callback.last_result is None and not (tmp_path / "model.onnx").exists()
    assert "no export under fast_dev_run" in caplog.text


# -- static int8 calibration from the run's own loaders --------------------------------------


def static_int8(**calibration) -> list[dict]:
    # skip: the tiny regressor's int8 file may miss the agreement thresholds; calibration is what is tested
    return [
        {
            "name": "int8",
            "precision": "int8",
            "quantization": "static",
            "calibration": {"batches": 2, **calibration},
            "on_mismatch": "skip",
        }
    ]


class RegressionData(pl.LightningDataModule):
    """A train loader shuffled by its own seeded generator and a val loader of other samples."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.train = TensorDataset(
            torch.randn(16, 4, generator=generator), torch.randn(16, 3, generator=generator)
        )
        self.val = TensorDataset(
            torch.randn(12, 4, generator=generator), torch.randn(12, 3, generator=generator)
        )
        self.shuffle = torch.Generator().manual_seed(0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=4, shuffle=True, generator=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=4)


def test_calibration_batches_are_the_first_batches_of_the_configured_split(tmp_path):
    from onnxport.callback import _calibration_batches
    from onnxport.config import ExportConfig

    data = RegressionData()
    module = Regressor()
    trainer = make_trainer(tmp_path, [])
    trainer.fit(module, datamodule=data)

    val = _calibration_batches(trainer, module, ExportConfig.coerce(variants=static_int8()))
    assert [batch.tolist() for batch in val] == [
        data.val.tensors[0][:4].tolist(),
        data.val.tensors[0][4:8].tolist(),
    ]

    state = data.shuffle.get_state()
    train = _calibration_batches(
        trainer, module, ExportConfig.coerce(variants=static_int8(split="train", batches=3))
    )
    assert len(train) == 3 and all(batch.shape == (4, 4) for batch in train)
    assert torch.equal(data.shuffle.get_state(), state)  # the loader's own generator is put back

    # A variant with data of its own (npz, datamodule) or none that is static int8: nothing drawn.
    for variants in (
        static_int8(npz="calibration.npz"),
        static_int8(datamodule={"_target_": "x.Data"}),
        [{"name": "q", "precision": "int8", "quantization": "dynamic"}, {"name": "h", "precision": "fp16"}],
    ):
        assert _calibration_batches(trainer, module, ExportConfig.coerce(variants=variants)) is None


def test_calibration_from_a_split_the_run_lacks_is_an_input_error_naming_it(tmp_path):
    callback = OnnxExportCallback(
        tmp_path / "model.onnx", variants=static_int8(split="test"), validation=FAST_VALIDATION
    )
    trainer = make_trainer(tmp_path, [callback])
    with pytest.raises(InputError, match="the test loader") as caught:
        trainer.fit(Regressor(), regression_data())
    assert caught.value.fix and "\n" not in str(caught.value)
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow
def test_static_int8_calibrates_on_the_run_loader_and_training_goes_on_as_without_export(tmp_path, caplog):
    def fit(callbacks: list) -> Regressor:
        module = Regressor()
        make_trainer(tmp_path, callbacks, max_epochs=2).fit(module, datamodule=RegressionData())
        return module

    callback = OnnxExportCallback(
        tmp_path / "model.onnx",
        every_n_epochs=1,
        variants=static_int8(split="train"),
        validation=FAST_VALIDATION,
    )
    with caplog.at_level(logging.INFO):
        module = fit([callback])
    untouched = fit([])

    assert "calibrating on 2 batches of the train loader" in caplog.text
    assert "validating on 2 batches of the val loader too" in caplog.text
    # Those real batches are cases of the report, beside the generated shape matrix.
    report = json.loads((tmp_path / "model.validation.json").read_text())
    assert report["cases"] > 3  # batch 1, 2, 5 and the real ones
    assert onnx_matches(tmp_path / "model.onnx", module, PROBE)
    published = tmp_path / "model.int8.onnx"
    rejected = tmp_path / "model.int8.rejected.onnx"
    assert published.is_file() != rejected.is_file()  # validated either way, against the PyTorch model
    # Drawing calibration batches after epoch 0 did not change how epoch 1 was shuffled.
    for name, tensor in untouched.state_dict().items():
        assert torch.equal(module.state_dict()[name], tensor), name
