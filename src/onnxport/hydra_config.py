"""Hydra glue, in one place: schema registration, composition, and reading a composed config.

- :func:`register_configs` puts onnxport's schemas in Hydra's ConfigStore
  (``onnxport/export_schema``) and the packaged callback config
  (``callbacks/onnx_export``), so a user's defaults list can name them with no copied file.
- :func:`compose` composes a config dir the way ``onnxport validate`` and tests read it.
- :func:`read_command_config` turns a composed config into a checked :class:`CommandConfig`,
  resolving only the keys onnxport reads (``checkpoint``, ``output``, ``model``,
  ``trust_checkpoint``, ``export``): the rest of a training config (the
  lightning-hydra-template's ``${hydra:runtime.output_dir}`` paths, loggers, trainer) is never
  resolved, so it need not resolve outside the training run.
- :func:`model_from_config` builds the ``model`` node and loads the checkpoint into it.
- :func:`resolve_class` is the one way a class path in a config becomes a class.

Module imports are standard library only (plus onnxport's own torch-free modules):
configs are read and checked before torch is imported, so bad config fails fast.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from onnxport.classpath import resolve_class
from onnxport.config import ExportConfig, build
from onnxport.errors import ConfigError, InputError

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch import nn

PACKAGED_CONF = Path(__file__).with_name("conf")
# Configs registered in the ConfigStore, kept off Hydra's search path (the packaged conf/ is the
# CLI's primary config path): a file there named like a ConfigStore entry would shadow it.
STORED_CONF = PACKAGED_CONF / "configstore"
# Ahead of the user's overrides: onnxport configures its own logging (no log file, no colorlog
# handler that may not be installed) and runs in the current directory (no timestamped run dir,
# whatever the config's hydra/ group says, e.g. the lightning-hydra-template's hydra/default.yaml).
HYDRA_OVERRIDES = (
    "hydra/job_logging=none",
    "hydra/hydra_logging=none",
    "hydra.run.dir=.",
    "hydra.sweep.dir=.",
    "hydra.sweep.subdir=.",
    "hydra.output_subdir=null",
    "hydra.job.chdir=false",
    "hydra.job.name=onnxport",
    "hydra.help.app_name=onnxport",
)
# rootutils (the lightning-hydra-template's train.py) sets PROJECT_ROOT to the directory holding
# this marker file; configs interpolate ${oc.env:PROJECT_ROOT}.
PROJECT_ROOT_ENV = "PROJECT_ROOT"
PROJECT_ROOT_MARKER = ".project-root"


@dataclass
class CommandConfig:
    """The top-level keys ``onnxport export`` and ``onnxport validate`` read from the config."""

    checkpoint: Optional[str] = None
    """Checkpoint to export: a Lightning ``.ckpt``, a state_dict file, TorchScript or a ``.pt2`` program."""
    output: Optional[str] = None
    """ONNX file to write (its directory is created). Nothing is written there unless validation passes."""
    model: Any = None
    """Model to load the checkpoint into: a ``_target_`` mapping, a LightningModule class path, or null."""
    trust_checkpoint: bool = False
    """Allow full unpickling of the checkpoint (it can run code from the file): true only if you trust it."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """The export settings (``ExportConfig``, the ``export.*`` keys below)."""


COMMAND_KEYS = tuple(CommandConfig.__dataclass_fields__)


# -- registration and composition ----------------------------------------------------------


def register_configs() -> None:
    """Register onnxport's configs in Hydra's ConfigStore.

    - ``onnxport/export_schema``: the ``ExportConfig`` schema. A user's export config lists
      ``/onnxport/export_schema@_here_`` first in its defaults, so typos and wrong types in
      ``export.*`` fail at composition.
    - ``callbacks/onnx_export``: the Lightning callback config shipped in the package
      (``onnxport/conf/configstore/callbacks/onnx_export.yaml``): one line, ``- onnx_export``, in a
      project's ``callbacks`` defaults list adds it.

    The ``hydra_plugins.onnxport`` package calls this on import, which is how both reach any
    Hydra app and DVC's own composition in ``dvc exp run``.
    """
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    store.store(group="onnxport", name="export_schema", node=ExportConfig, provider="onnxport")
    callback = OmegaConf.load(STORED_CONF / "callbacks" / "onnx_export.yaml")
    # Plain data, not the typed schema: `config: ${export}` must be able to replace it.
    callback.onnx_export.config = ExportConfig().to_dict()
    store.store(group="callbacks", name="onnx_export", node=callback, provider="onnxport")


def compose(
    config_dir: str | os.PathLike[str], config_name: str, overrides: Sequence[str] = ()
) -> DictConfig:
    """Compose ``config_dir/config_name`` with ``overrides``, onnxport's configs registered.

    Nothing is resolved: read the keys onnxport needs with :func:`read_command_config`.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    provide_project_root()
    with initialize_config_dir(str(Path(config_dir).resolve()), version_base=None):
        return hydra_compose(
            config_name, overrides=[*HYDRA_OVERRIDES, *own_key_overrides(overrides, config_dir)]
        )


def provide_project_root(start: str | os.PathLike[str] | None = None) -> None:
    """Set ``PROJECT_ROOT`` as rootutils would, when it is unset and a ``.project-root`` is found.

    The lightning-hydra-template's ``paths.root_dir`` is ``${oc.env:PROJECT_ROOT}``, which its
    ``train.py`` sets at start-up; onnxport runs without that script.
    """
    if os.environ.get(PROJECT_ROOT_ENV):
        return
    here = Path(start or os.getcwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / PROJECT_ROOT_MARKER).is_file():
            os.environ[PROJECT_ROOT_ENV] = str(directory)
            return


def own_key_overrides(
    overrides: Sequence[str], config_dir: str | os.PathLike[str] | None = None
) -> list[str]:
    """``key=value`` for onnxport's own keys as ``++key=value`` (set, or add when absent).

    A training config rarely has ``trust_checkpoint`` or an ``export`` node; onnxport's keys
    never need Hydra's ``+``. A key that is a config group in ``config_dir`` (the template's
    ``model=mnist``) is a group choice and passes unchanged, as do other keys and overrides
    with a prefix.
    """
    rewritten = []
    for override in overrides:
        key, equals, _ = override.partition("=")
        own = key in COMMAND_KEYS or key.startswith("export.")
        group = config_dir is not None and Path(config_dir, *key.split(".")).is_dir()
        rewritten.append(f"++{override}" if equals and own and key[:1].isalpha() and not group else override)
    return rewritten


# -- reading a composed config ----------------------------------------------------------------


def read_command_config(cfg: DictConfig, *, overrides: Mapping[str, Any] | None = None) -> CommandConfig:
    """The keys onnxport reads from ``cfg``, resolved one by one and type-checked.

    A key that cannot be resolved is named with its fix; the rest of ``cfg`` is never
    resolved. ``overrides`` replace keys after resolution (e.g. ``validate --checkpoint``).
    """
    data: dict[str, Any] = {}
    for key in COMMAND_KEYS:
        value = _resolved(cfg, key)
        if value is not None:
            data[key] = value
    data.update({key: value for key, value in (overrides or {}).items() if value is not None})
    export = data.pop("export", None)
    command = build(CommandConfig, data)
    command.export = ExportConfig.from_dict(export)
    if command.model is None or isinstance(command.model, (str, Mapping)):
        return command
    raise ConfigError(
        f"model={command.model!r} is neither a _target_ mapping nor a class path",
        fix="set model._target_ to your nn.Module class, or model to a LightningModule class path",
    )


def _resolved(cfg: DictConfig, key: str) -> Any:
    """``cfg[key]`` as plain data, ``None`` when absent or ``???``; resolution errors name the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except OmegaConfBaseException as error:
        raise unresolvable(key, error) from error
    return value


def unresolvable(key: str, error: BaseException) -> ConfigError:
    """A ConfigError for an interpolation that cannot be resolved outside the training run."""
    full_key = getattr(error, "full_key", None) or key
    message = " ".join(str(error).splitlines()[0].split()) if str(error) else type(error).__name__
    if "HydraConfig was not set" in message or "hydra:" in message:
        fix = (
            f"set {full_key} to a plain path: ${{hydra:...}} exists only inside a @hydra.main run "
            f"(e.g. {full_key}=logs/onnxport in the config onnxport composes)"
        )
    elif PROJECT_ROOT_ENV in message:
        fix = (
            f"export {PROJECT_ROOT_ENV}=$PWD, add an empty {PROJECT_ROOT_MARKER} file at the project root, "
            f"or set paths.root_dir=."
        )
    else:
        fix = f"set {full_key} to a value that resolves without the training run"
    return ConfigError(f"{full_key} cannot be resolved ({message})", fix=fix)


def first_unresolvable(cfg: Any, prefix: str = "") -> tuple[str, BaseException] | None:
    """The first key of ``cfg`` whose interpolation fails to resolve, and its error (``???`` is fine)."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    keys = list(cfg.keys()) if isinstance(cfg, DictConfig) else list(range(len(cfg)))
    for key in keys:
        full = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}" if prefix else str(key)
        try:
            if not OmegaConf.is_interpolation(cfg, key) and OmegaConf.is_config(cfg._get_node(key)):
                found = first_unresolvable(cfg._get_node(key), full)
                if found:
                    return found
                continue
            cfg[key]  # resolves this value
        except MissingMandatoryValue:
            continue
        except OmegaConfBaseException as error:
            return full, error
    return None


def check_paths(command: CommandConfig, *, need_output: bool = True) -> None:
    """Fail before any heavy import: checkpoint must be a file, output must be creatable."""
    if not command.checkpoint:
        raise ConfigError(
            "checkpoint is not set", fix="set checkpoint=... in the config or on the command line"
        )
    from onnxport.load import existing_checkpoint  # standard library only at import

    existing_checkpoint(command.checkpoint)
    if not need_output:
        return
    if not command.output:
        raise ConfigError("output is not set", fix="set output=... in the config or on the command line")
    for key, path in (
        ("output", command.output),
        ("export.validation.report", command.export.validation.report),
    ):
        if path:
            check_writable_path(key, path)


def check_writable_path(key: str, path: str | os.PathLike[str]) -> None:
    """Refuse a file path that is a directory or whose directory cannot be created."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{key}={str(path)!r} is a directory", fix=f"set {key} to a file path")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(
                    f"{key}={str(path)!r}: its directory cannot be created ({parent} is a file)",
                    fix=f"set {key} to a path in a writable directory",
                )
            return


# -- building the model -------------------------------------------------------------------


def model_from_config(command: CommandConfig | DictConfig, checkpoint: str | None = None) -> nn.Module | Any:
    """Build the ``model`` node and load the checkpoint into it (see :func:`onnxport.load_model`).

    ``model`` may be a ``_target_`` mapping (instantiated, then the checkpoint's state_dict is
    loaded), the class path of a LightningModule (``load_from_checkpoint``), or absent when the
    checkpoint is self-contained (TorchScript, ``torch.export`` program). A composed DictConfig
    is read with :func:`read_command_config` first.
    """
    from onnxport.load import load_model

    if not isinstance(command, CommandConfig):
        command = read_command_config(command, overrides={"checkpoint": checkpoint})
    checkpoint = checkpoint or command.checkpoint
    model_class = check_model(command)
    trust = command.trust_checkpoint
    if isinstance(command.model, str):
        return load_model(checkpoint, model_class=model_class, trust_checkpoint=trust)
    return load_model(checkpoint, model=command.model, trust_checkpoint=trust)


def check_model(command: CommandConfig) -> type | None:
    """The class the ``model`` node names, imported (a clearer error than instantiate's)."""
    spec = command.model
    if spec is None:
        return None
    if isinstance(spec, str):
        return resolve_class(spec, "model")
    if "_target_" not in spec:
        raise ConfigError(
            "model has no _target_",
            fix="set model._target_ to your nn.Module class, or model to a LightningModule class path",
        )
    return resolve_class(spec["_target_"], "model._target_")
