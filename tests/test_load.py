"""load_model() and file_sha256(): every kind of file training leaves behind, and every bad one."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import io
import os
import pickle
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule
from torch import nn

from conftest import TinyMLP
from onnxport.errors import CheckpointError, ConfigError, InputError
from onnxport.hashing import file_sha256
from onnxport.load import load_model, read_state_dict

# TorchScript is deprecated upstream but still what users have on disk.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

LIGHTNING_PACKAGES = ["pytorch_lightning", "lightning.pytorch"]


def _lit_classifier(package: str) -> type:
    pl = importlib.import_module(package)

    class LitClassifier(pl.LightningModule):
        def __init__(self, hidden: int = 8) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = TinyMLP(hidden=hidden)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    LitClassifier.__qualname__ = LitClassifier.__name__ = f"LitClassifier_{package.replace('.', '_')}"
    return LitClassifier


# Module-level so "test_load.LitClassifier_..." is an import path, as a user would give it.
LitClassifier_pytorch_lightning = _lit_classifier("pytorch_lightning")
LitClassifier_lightning_pytorch = _lit_classifier("lightning.pytorch")
LIT_CLASSES = {
    "pytorch_lightning": LitClassifier_pytorch_lightning,
    "lightning.pytorch": LitClassifier_lightning_pytorch,
}


@pytest.fixture(scope="module", params=LIGHTNING_PACKAGES)
def lightning_ckpt(request, tmp_path_factory) -> tuple[Path, nn.Module]:
    """A checkpoint written by a real Trainer after one training step, with a non-default hparam."""
    package = request.param
    pl = importlib.import_module(package)
    torch.manual_seed(0)
    model = LIT_CLASSES[package](hidden=6)
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    root = tmp_path_factory.mktemp("lightning")
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    path = root / "last.ckpt"
    trainer.save_checkpoint(path)
    return path, model


@pytest.fixture
def weights(tmp_path) -> tuple[Path, TinyMLP]:
    torch.manual_seed(0)
    model = TinyMLP().eval()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    return path, model


def assert_same_weights(loaded: nn.Module, original: nn.Module) -> None:
    original_state = original.state_dict()
    assert loaded.state_dict().keys() == original_state.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original_state[key]), key


# ---- Lightning checkpoints ----


def test_lightning_checkpoint_loads_with_its_class_and_saved_hparams(lightning_ckpt):
    path, trained = lightning_ckpt
    cls = type(trained)
    loaded = load_model(path, model_class=cls)
    assert type(loaded) is cls
    assert loaded.hparams.hidden == 6  # rebuilt from the checkpoint, not the class default
    assert_same_weights(loaded, trained)


def test_lightning_checkpoint_loads_with_class_given_as_import_path(lightning_ckpt):
    path, trained = lightning_ckpt
    loaded = load_model(path, model_class=f"test_load.{type(trained).__name__}")
    assert_same_weights(loaded, trained)


def test_lightning_checkpoint_loads_into_a_built_model(lightning_ckpt):
    path, trained = lightning_ckpt
    built = type(trained)(hidden=6)
    loaded = load_model(path, model=built)
    assert loaded is built
    assert_same_weights(loaded, trained)


def test_lightning_checkpoint_without_its_class_says_how_to_fix(lightning_ckpt):
    path, _ = lightning_ckpt
    with pytest.raises(
        CheckpointError, match="Lightning checkpoint and needs its LightningModule class"
    ) as caught:
        load_model(path)
    assert str(path) in str(caught.value)
    assert "model_class=" in caught.value.fix


def test_lightning_checkpoint_with_an_unimportable_class_names_it(lightning_ckpt):
    path, _ = lightning_ckpt
    with pytest.raises(InputError, match=r"'no_such_pkg\.Model' cannot be imported"):
        load_model(path, model_class="no_such_pkg.Model")


def test_lightning_checkpoint_with_a_plain_module_class_is_refused(lightning_ckpt):
    path, _ = lightning_ckpt
    with pytest.raises(InputError, match="TinyMLP is not a LightningModule"):
        load_model(path, model_class=TinyMLP)


# ---- state_dict files ----


def test_state_dict_loads_into_a_built_model(weights):
    path, original = weights
    target = TinyMLP()
    loaded = load_model(path, model=target)
    assert loaded is target
    assert_same_weights(loaded, original)


@pytest.mark.parametrize(
    "config",
    [
        {"_target_": "conftest.TinyMLP", "hidden": 8},
        pytest.param("omegaconf", id="DictConfig"),
    ],
)
def test_state_dict_loads_into_a_model_built_from_a_hydra_target(weights, config):
    if config == "omegaconf":
        from omegaconf import OmegaConf

        config = OmegaConf.create({"_target_": "conftest.TinyMLP", "hidden": 8})
    path, original = weights
    loaded = load_model(path, model=config)
    assert type(loaded) is TinyMLP
    assert_same_weights(loaded, original)


def test_state_dict_loads_into_a_model_class_built_without_arguments(weights):
    path, original = weights
    assert_same_weights(load_model(path, model_class=TinyMLP), original)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_state_dict_saved_from_nested_wrappers_loads_into_the_bare_model(tmp_path, suffix):
    torch.manual_seed(0)
    wrapped = nn.DataParallel(torch.compile(torch.optim.swa_utils.AveragedModel(TinyMLP()), backend="eager"))
    path = tmp_path / f"weights{suffix}"
    torch.save(wrapped.state_dict(), path)
    loaded = load_model(path, model=TinyMLP())
    assert_same_weights(loaded, wrapped.module._orig_mod.module)


def test_state_dict_inside_a_training_checkpoint_dict_loads(weights, tmp_path):
    _, original = weights
    path = tmp_path / "train_state.pt"
    torch.save({"epoch": 3, "model_state_dict": original.state_dict(), "optimizer": {}}, path)
    assert_same_weights(load_model(path, model=TinyMLP()), original)


def test_model_with_a_submodule_named_module_keeps_its_keys(tmp_path):
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)

    torch.manual_seed(0)
    original = Holder()
    path = tmp_path / "holder.pt"
    torch.save(original.state_dict(), path)
    assert_same_weights(load_model(path, model=Holder()), original)


def test_state_dict_loads_into_the_module_under_a_wrapper_given_as_model(weights):
    path, original = weights
    inner = TinyMLP()
    loaded = load_model(path, model=nn.DataParallel(inner))
    assert loaded is inner
    assert_same_weights(loaded, original)


def test_state_dict_without_a_model_says_to_pass_one(weights):
    path, _ = weights
    with pytest.raises(CheckpointError, match="no model was given") as caught:
        load_model(path)
    assert "model=" in caught.value.fix


def test_key_mismatch_names_first_missing_and_first_unexpected_key(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"fc1.weight": torch.zeros(8, 4), "encoder.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError) as caught:
        load_model(path, model=TinyMLP())
    message = str(caught.value)
    assert "3 missing (first: 'fc1.bias')" in message
    assert "1 unexpected (first: 'encoder.weight')" in message


def test_shape_mismatch_names_the_parameter(weights):
    path, _ = weights
    with pytest.raises(CheckpointError, match=r"size mismatch for fc1\.weight"):
        load_model(path, model=TinyMLP(hidden=16))


def test_unimportable_hydra_target_is_an_input_error_naming_it(weights):
    path, _ = weights
    with pytest.raises(InputError, match=r"'no_such_pkg\.Net'") as caught:
        load_model(path, model={"_target_": "no_such_pkg.Net"})
    assert not isinstance(caught.value, CheckpointError)


def test_model_config_without_target_is_an_input_error(weights):
    path, _ = weights
    with pytest.raises(InputError, match="Hydra config with _target_"):
        load_model(path, model={"hidden": 8})


def test_targets_and_classes_that_build_no_module_are_input_errors(weights):
    path, _ = weights
    with pytest.raises(InputError, match=r"_target_ 'collections.OrderedDict' built a OrderedDict") as built:
        load_model(path, model={"_target_": "collections.OrderedDict"})
    with pytest.raises(InputError, match=r"model_class='os.path.join' is a function, not a class") as named:
        load_model(path, model_class="os.path.join")
    assert built.value.fix and named.value.fix


# ---- TorchScript and ExportedProgram archives ----


@pytest.mark.parametrize("name", ["model.pt", "scripted.bin"])
def test_torchscript_file_loads_as_a_script_module(mlp, mlp_input, tmp_path, name):
    path = tmp_path / name
    torch.jit.save(torch.jit.trace(mlp, mlp_input), path)
    loaded = load_model(path)
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert torch.equal(loaded(mlp_input), mlp(mlp_input))


def test_pt2_file_loads_as_an_exported_program(mlp, mlp_input, tmp_path):
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(mlp, (mlp_input,)), path)
    loaded = load_model(path)
    assert isinstance(loaded, torch.export.ExportedProgram)
    assert torch.equal(loaded.module()(mlp_input), mlp(mlp_input))


def test_model_object_passes_through(mlp):
    assert load_model(mlp) is mlp


# ---- bad files ----


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.ckpt"
    with pytest.raises(CheckpointError, match="does not exist") as caught:
        load_model(path, model=TinyMLP())
    assert str(path) in str(caught.value)


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("kind", ["state_dict", "legacy_state_dict", "torchscript", "pt2", "garbage"])
def test_corrupt_or_truncated_file_is_one_line_naming_the_path(mlp, mlp_input, tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "state_dict":
        torch.save(mlp.state_dict(), path)
    elif kind == "legacy_state_dict":
        torch.save(mlp.state_dict(), path, _use_new_zipfile_serialization=False)
    elif kind == "torchscript":
        torch.jit.save(torch.jit.trace(mlp, mlp_input), path)
    elif kind == "pt2":
        path = path.with_suffix(".pt2")
        torch.export.save(torch.export.export(mlp, (mlp_input,)), path)
    else:
        path.write_bytes(b"this is not a checkpoint")
    if kind != "garbage":
        _truncate(path)
    with pytest.raises(CheckpointError, match="corrupt or truncated") as caught:
        load_model(path, model=TinyMLP())
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_pickled_module_without_a_model_names_both_ways_out(mlp, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(mlp, path)
    with pytest.raises(CheckpointError, match=r"holds a pickled conftest\.TinyMLP object") as caught:
        load_model(path)
    assert "model=" in caught.value.fix and "trust_checkpoint" in caught.value.fix
    assert "\n" not in str(caught.value)

    loaded = load_model(path, trust_checkpoint=True)
    assert isinstance(loaded, TinyMLP)
    assert_same_weights(loaded, mlp)


def test_pickled_module_weights_load_into_a_given_model_without_trust(mlp, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save({"model": mlp, "epoch": 3}, path)  # a training script's dict holding the module
    assert_same_weights(load_model(path, model=TinyMLP()), mlp)
    torch.save(mlp, path)
    assert_same_weights(load_model(path, model_class=TinyMLP), mlp)
    assert_same_weights(_into(read_state_dict(path)), mlp)


def _into(state_dict) -> TinyMLP:
    model = TinyMLP()
    model.load_state_dict(state_dict)
    return model


# ---- what a checkpoint pickles besides weights: read inertly, never run ----


@dataclasses.dataclass
class Settings:
    name: str = "digits"


class HydraLit(LightningModule):
    """Like the lightning-hydra-template's module: everything built by Hydra lands in hparams."""

    def __init__(self, net: nn.Module, optimizer, scheduler=None, settings=None, hook=None) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return self.hparams.optimizer(params=self.parameters())


HYDRA_LIT_CONFIG = {
    "_target_": "test_load.HydraLit",
    "net": {"_target_": "conftest.TinyMLP", "hidden": 6},
    "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
    "scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 1},
    "settings": {"_target_": "test_load.Settings", "name": "digits"},
}


@pytest.fixture(scope="module")
def hydra_ckpt(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A real Trainer's checkpoint of a module whose hparams hold Hydra partials, a module, a dataclass."""
    from hydra.utils import instantiate
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    model = instantiate(HYDRA_LIT_CONFIG, hook=functools.partial(print, "never"))
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    root = tmp_path_factory.mktemp("hydra_lit")
    trainer = Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        callbacks=[ModelCheckpoint(dirpath=root, save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    return root / "last.ckpt", model


def test_hydra_checkpoint_is_one_torch_weights_only_refuses(hydra_ckpt):
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(hydra_ckpt[0])
    assert "hydra._internal.target_policy._DeferredTarget" in unsafe
    assert "test_load.Settings" in unsafe and "functools.partial" in unsafe


def test_hydra_checkpoint_weights_load_into_the_model_node_without_trust(hydra_ckpt):
    path, trained = hydra_ckpt
    loaded = load_model(path, model=HYDRA_LIT_CONFIG)
    assert type(loaded) is HydraLit
    assert_same_weights(loaded, trained)
    assert_same_weights(_into_net(read_state_dict(path)), trained)


def _into_net(state_dict) -> HydraLit:
    from hydra.utils import instantiate

    model = instantiate(HYDRA_LIT_CONFIG)
    model.load_state_dict(state_dict)
    return model


def test_hydra_checkpoint_with_only_its_class_names_both_ways_out(hydra_ckpt):
    path, trained = hydra_ckpt
    with pytest.raises(CheckpointError, match="needs its pickled hyper-parameters") as caught:
        load_model(path, model_class=HydraLit)
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message
    assert "model=" in message and "trust_checkpoint" in message
    assert "_DeferredTarget" in message or "Settings" in message or "TinyMLP" in message

    assert_same_weights(load_model(path, model_class=HydraLit, trust_checkpoint=True), trained)


class Payload:
    """Unpickling this calls ``call(*args)``: the classic pickle attack."""

    def __init__(self, call, *args) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _payload_checkpoint(tmp_path: Path, payload: Payload) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "evil.ckpt"
    checkpoint = {
        "state_dict": TinyMLP().state_dict(),
        "pytorch-lightning_version": "2.6.6",
        "hyper_parameters": {"hidden": 8, "evil": payload},
    }
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("attack", ["os.system", "builtins.exec"])
def test_a_code_running_payload_is_refused_and_never_runs(tmp_path, attack):
    marker = tmp_path / "PAYLOAD_RAN"
    if attack == "os.system":
        payload = Payload(os.system, f"touch {marker}")
    else:
        payload = Payload(exec, f"open({str(marker)!r}, 'w').close()")
    path = _payload_checkpoint(tmp_path, payload)

    for load in (
        lambda: load_model(path, model=TinyMLP()),
        lambda: load_model(path, model_class=TinyMLP),
        lambda: read_state_dict(path),
    ):
        with pytest.raises(CheckpointError, match=r"is refused: unpickling it would call") as caught:
            load()
        message = str(caught.value)
        assert "is blocked" in message and ("posix.system" in message or "builtins.exec" in message)
        assert "corrupt" not in message and "\n" not in message
    assert not marker.exists()


def test_a_payload_outside_the_blocked_modules_stays_an_inert_placeholder(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    path = _payload_checkpoint(tmp_path, Payload(io.open, str(marker), "w"))  # would create the file
    torch.manual_seed(0)
    saved = TinyMLP()
    assert_same_weights(load_model(path, model=TinyMLP()), saved)
    with pytest.raises(CheckpointError, match=r"needs its pickled hyper-parameters \(io\.open\)"):
        load_model(path, model_class=LitClassifier_lightning_pytorch)
    assert not marker.exists()


@pytest.mark.parametrize("flag", ["false", "0", 0, 1, None, "True"])
def test_trust_checkpoint_accepts_only_a_real_bool(weights, flag):
    path, _ = weights
    with pytest.raises(ConfigError, match=r"trust_checkpoint=.* not a bool"):
        load_model(path, model=TinyMLP(), trust_checkpoint=flag)
    with pytest.raises(ConfigError, match=r"trust_checkpoint=.* not a bool"):
        read_state_dict(path, trust_checkpoint=flag)


def test_a_directory_given_as_checkpoint_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory") as caught:
        load_model(tmp_path, model=TinyMLP())
    assert "does not exist" not in str(caught.value)


def test_torch_weights_only_refusals_are_named_not_called_corrupt(tmp_path):
    # Pins the torch 2.13 wording _refused_global depends on (TORCH_FORCE_WEIGHTS_ONLY_LOAD path).
    from onnxport.load import _refused_global

    marker = tmp_path / "PAYLOAD_RAN"
    blocked = _payload_checkpoint(tmp_path, Payload(os.system, f"touch {marker}"))
    with pytest.raises(pickle.UnpicklingError) as caught:
        torch.load(blocked, weights_only=True)
    assert _refused_global(str(caught.value)) == "posix.system"
    torch.save({"opt": torch.optim.SGD}, tmp_path / "opt.pt")
    with pytest.raises(pickle.UnpicklingError) as caught:
        torch.load(tmp_path / "opt.pt", weights_only=True)
    assert _refused_global(str(caught.value)) == "torch.optim.sgd.SGD"
    assert not marker.exists()


def test_read_state_dict_reads_fsspec_urls(weights):
    import fsspec

    path, model = weights
    with fsspec.open("memory://onnxport-tests/weights.pt", "wb") as handle:
        handle.write(path.read_bytes())
    assert_same_weights(_into(read_state_dict("memory://onnxport-tests/weights.pt")), model)


# ---- file_sha256 ----


def test_file_sha256_streams_and_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert file_sha256(path, chunk_size=4096) == hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


# ---- the same refusal through the CLI's doors (in-process main) ----

PAYLOAD_PROJECT = """\
model:
  _target_: conftest.TinyMLP
checkpoint: evil.ckpt
output: model.onnx
export:
  inputs: [{name: x, shape: [2, 4]}]
"""


@pytest.mark.parametrize("command", ["export", "validate"])
def test_a_payload_checkpoint_never_runs_through_the_cli(tmp_path, monkeypatch, capsys, command):
    from onnxport.cli import main

    marker = tmp_path / "PAYLOAD_RAN"
    _payload_checkpoint(tmp_path, Payload(os.system, f"touch {marker}"))
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(PAYLOAD_PROJECT)
    (tmp_path / "model.onnx").write_bytes(b"")  # validate loads the checkpoint before reading it
    monkeypatch.chdir(tmp_path)

    args = ["--config-dir", "conf"] if command == "export" else ["model.onnx", "--config-dir", "conf"]
    assert main([command, *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"onnxport {command}: error: checkpoint evil.ckpt is refused")
    assert len(error.splitlines()) == 1 and "\x1b" not in error and "posix.system" in error
    assert not marker.exists() and not (tmp_path / "model.onnx").stat().st_size


def test_torch_force_weights_only_load_uses_torchs_own_loader_and_names_the_refusal(
    hydra_ckpt, weights, monkeypatch
):
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    path, model = weights
    assert_same_weights(load_model(path, model=TinyMLP()), model)  # plain weights still load
    with pytest.raises(CheckpointError, match="refused by torch's weights_only loader") as caught:
        load_model(hydra_ckpt[0], model=HYDRA_LIT_CONFIG)
    assert "corrupt" not in str(caught.value) and "\x1b" not in str(caught.value)


def test_a_pickle_cannot_rewrite_a_class_or_call_what_find_class_did_not_hand_out():
    from onnxport.inert import _pickle_module

    unpickle = _pickle_module(set()).load
    # GLOBAL torch.Tensor; BUILD (None, {"onnxport_pwned": 1}): would set a class attribute.
    build_on_class = b"\x80\x02ctorch\nTensor\nN}X\x0e\x00\x00\x00onnxport_pwnedK\x01s\x86b."
    with pytest.raises(pickle.UnpicklingError, match="refused to set the state of"):
        unpickle(io.BytesIO(build_on_class))
    assert not hasattr(torch.Tensor, "onnxport_pwned")
    # A placeholder stands in for any other global and calling it runs nothing.
    loaded = unpickle(io.BytesIO(b"\x80\x02cmy.pkg\nrun\nX\x01\x00\x00\x00x\x85R."))
    assert repr(loaded) == "<my.pkg.run: not loaded>" and loaded.args == ("x",)
    # Copyreg's process-wide extension registry is never consulted.
    with pytest.raises(pickle.UnpicklingError, match="EXT opcode"):
        unpickle(io.BytesIO(b"\x80\x02\x82\x01."))
