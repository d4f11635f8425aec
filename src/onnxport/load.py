"""Build a model from what training left on disk.

Four kinds of file are understood, told apart by their content rather than
their suffix:

* a Lightning ``.ckpt`` (needs the LightningModule class, or a built ``model``),
* a state_dict file (``.pt`` / ``.pth`` / ``.bin``) plus a ``model`` to load it into,
  given as a module or as a Hydra ``_target_`` config,
* a TorchScript archive (``torch.jit.save``),
* an ExportedProgram archive (``torch.export.save``, ``.pt2``).

Pickled checkpoints are read without importing or calling anything the file names
(:mod:`onnxport.inert`): the tensors come out real, every other pickled object (Hydra
partials, optimizer classes, whole modules, callback state) as an inert placeholder, so the
weights of any checkpoint load with no trust flag. Only building a model *from* pickled
objects (``load_from_checkpoint`` with pickled hyper-parameters, ``torch.save(model)`` with
no ``model`` to load into) needs ``trust_checkpoint=True``, which unpickles fully and can run
arbitrary code.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxport.classpath import resolve_class
from onnxport.errors import CheckpointError, ConfigError, InputError, one_line
from onnxport.inert import Placeholder, RefusedGlobal, find_placeholders, inert_load, module_state_dict

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.export import ExportedProgram

PathLike = str | os.PathLike

# Where common training scripts keep the weights inside a checkpoint dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")

# Spelled as every door spells the option (API keyword, CLI key, callback argument).
_TRUST = "set trust_checkpoint only if you trust where the file came from (full unpickling runs its code)"
_MODEL_OR_TRUST_FIX = (
    "give the model node (model=, the module or the _target_ config that built it) so only the "
    f"weights are read, or {_TRUST}"
)


def load_model(
    source: Any,
    *,
    model: Any = None,
    model_class: type | str | None = None,
    trust_checkpoint: bool = False,
    map_location: Any = "cpu",
) -> nn.Module | torch.jit.ScriptModule | ExportedProgram:
    """Load a model from a checkpoint, weights, TorchScript or ExportedProgram file.

    Args:
        source: path to the file. A model object is returned unchanged.
        model: the module to load a state_dict into: an ``nn.Module`` already built,
            or a Hydra config (mapping or DictConfig) with a ``_target_`` to build it.
        model_class: the LightningModule class of a ``.ckpt``, or its import path
            ``"package.module.Class"``. For a plain state_dict, a class built with no arguments.
        trust_checkpoint: allow full unpickling (``weights_only=False``), which runs code from the
            file. Needed only to build a model from pickled objects (a Lightning checkpoint's
            pickled hyper-parameters with no ``model``, or ``torch.save(model)``). A real bool.
        map_location: passed to ``torch.load`` / ``torch.jit.load``.

    Raises:
        CheckpointError: the file is missing, corrupt, refused (it names ``os.system`` and the
            like), needs trust to build its model, or does not fit the model.
        InputError: ``model`` or ``model_class`` cannot be built or imported.
        ConfigError: ``trust_checkpoint`` is not a bool.

    >>> import tempfile, torch
    >>> net = torch.nn.Linear(2, 2)
    >>> path = tempfile.mkdtemp() + "/weights.pt"
    >>> torch.save(torch.nn.DataParallel(net).state_dict(), path)
    >>> load_model(path, model=torch.nn.Linear(2, 2)).weight.equal(net.weight)
    True
    """
    import torch
    from torch.export import ExportedProgram

    check_trust_flag(trust_checkpoint)
    if isinstance(source, torch.nn.Module | ExportedProgram):
        return source
    if not isinstance(source, str | os.PathLike):
        raise InputError(
            f"source must be a path to a checkpoint or a model, got {type(source).__name__}",
            fix="pass the path of a .ckpt, .pt, .pth, .bin or .pt2 file",
        )
    path = existing_checkpoint(Path(source))

    kind = _archive_kind(path)
    if kind == "torchscript":
        return _guarded(path, lambda: torch.jit.load(str(path), map_location=map_location))
    if kind == "exported_program":
        return _guarded(path, lambda: torch.export.load(str(path)))

    checkpoint, pickled = _read(path, trust_checkpoint=trust_checkpoint, map_location=map_location)
    if isinstance(checkpoint, torch.nn.Module):  # torch.save(model), trusted
        return checkpoint
    if isinstance(checkpoint, Placeholder):  # torch.save(model), read inertly: its weights only
        if model is None and model_class is None:
            raise CheckpointError(
                f"checkpoint {path} holds a pickled {checkpoint.pickled_global} object; "
                "building it runs code from the file",
                fix=_MODEL_OR_TRUST_FIX,
            )
        state_dict = _pickled_module_weights(checkpoint, path)
        target = _build_target(model, model_class, path)
        _load_state_dict(target, state_dict, path)
        return target
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a model or a state_dict",
            fix="save model.state_dict() or the model itself",
        )

    if _is_lightning_checkpoint(checkpoint) and model is None:
        if model_class is None:
            raise CheckpointError(
                f"checkpoint {path} is a Lightning checkpoint and needs its LightningModule class",
                fix='pass model_class="package.module.ClassName" (or the class itself)',
            )
        cls = resolve_class(model_class, "model_class", error=InputError)
        if pickled:  # load_from_checkpoint would have to unpickle them, running code from the file
            in_hparams = [
                entry.partition(": ")[2] for entry in find_placeholders(checkpoint.get("hyper_parameters"))
            ]
            what = "its pickled hyper-parameters" if in_hparams else "pickled objects beside its weights"
            raise CheckpointError(
                f"checkpoint {path}: building {cls.__qualname__} with load_from_checkpoint needs {what} "
                f"({_first(sorted(set(in_hparams)) or pickled)}), which only full unpickling restores",
                fix=_MODEL_OR_TRUST_FIX,
            )
        del checkpoint  # Lightning reads the file again; do not hold two copies
        # Nothing in the file needed a placeholder, so torch's weights_only load reads all of it.
        return _load_lightning(path, cls, trust_checkpoint, map_location)

    state_dict = _find_state_dict(checkpoint, path)
    target = _build_target(model, model_class, path)
    _load_state_dict(target, state_dict, path)
    return target


def read_state_dict(
    source: PathLike, *, trust_checkpoint: bool = False, map_location: Any = "cpu"
) -> Mapping[str, torch.Tensor]:
    """The weights (state_dict) of a checkpoint, read without running anything from the file.

    ``source`` is a local path or an fsspec URL (``s3://...``, where fsspec has the filesystem).
    Works for Lightning checkpoints whatever else they pickle, training dicts
    (``model_state_dict`` / ``model`` keys), bare state_dicts and ``torch.save(model)`` files.

    Raises:
        CheckpointError: missing, corrupt, refused, or holding no state_dict.
        ConfigError: ``trust_checkpoint`` is not a bool.
    """
    check_trust_flag(trust_checkpoint)
    if "://" not in os.fspath(source):
        source = existing_checkpoint(Path(source))
    checkpoint, _ = _read(source, trust_checkpoint=trust_checkpoint, map_location=map_location)
    if isinstance(checkpoint, Placeholder):
        return _pickled_module_weights(checkpoint, source)
    if hasattr(checkpoint, "state_dict") and not isinstance(checkpoint, Mapping):  # trusted module
        return checkpoint.state_dict()
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"checkpoint {source} holds a {type(checkpoint).__name__}, not a state_dict",
            fix="pass a checkpoint written by Lightning or torch.save(model.state_dict())",
        )
    return _find_state_dict(checkpoint, source)


def _archive_kind(path: Path) -> str:
    """``torchscript``, ``exported_program`` or ``pickle`` (torch.save, zip or legacy format)."""
    if not zipfile.is_zipfile(path):
        return "pickle"
    try:
        with zipfile.ZipFile(path) as archive:
            # Every torch archive keeps its records under one top-level folder.
            records = {name.split("/", 1)[-1] for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: {error}", fix="re-save or re-download it"
        ) from error
    if "constants.pkl" in records and any(name.startswith("code/") for name in records):
        return "torchscript"
    if "archive_format" in records or any(name.startswith("models/") for name in records):
        return "exported_program"
    return "pickle"


def check_trust_flag(trust_checkpoint: Any) -> None:
    """``trust_checkpoint`` must be a real bool: ``bool("false")`` would turn full unpickling on."""
    if type(trust_checkpoint) is not bool:
        raise ConfigError(
            f"trust_checkpoint={trust_checkpoint!r} is a {type(trust_checkpoint).__name__}, not a bool",
            fix="pass True or False (true/false in YAML and on the command line, unquoted)",
        )


def existing_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path when it is a checkpoint file; a one-line CheckpointError otherwise.

    Standard library only: the CLI calls it before torch is imported.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a directory, not a file",
            fix="give the checkpoint file inside it (e.g. checkpoints/last.ckpt)",
        )
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist", fix="check the path (relative paths start at the cwd)"
        )
    return path


def _read(source: Any, *, trust_checkpoint: bool, map_location: Any) -> tuple[Any, list[str]]:
    """The unpickled checkpoint and the globals that became placeholders (none when trusted)."""
    import pickle

    try:
        if not trust_checkpoint:
            return inert_load(source, map_location=map_location)
        return _trusted_load(source, map_location), []
    except RefusedGlobal as error:
        raise CheckpointError(
            f"checkpoint {source} is refused: unpickling it would call {error.name} ({error}); "
            "nothing from the file was imported or run",
            fix="do not load this file; if you wrote it yourself, save model.state_dict() instead",
        ) from error
    except pickle.UnpicklingError as error:
        refused = _refused_global(str(error))
        if refused:  # torch's weights_only unpickler (TORCH_FORCE_WEIGHTS_ONLY_LOAD) said no
            raise CheckpointError(
                f"checkpoint {source} is refused by torch's weights_only loader (it stores {refused})",
                fix=_TRUST,
            ) from error
        raise _corrupt(source, error) from error
    except ImportError as error:  # a trusted pickle whose classes are not importable here
        raise CheckpointError(
            f"checkpoint {source} needs {error.name or 'a module'} which cannot be imported ({error})",
            fix="load it where the model's code is importable, or save model.state_dict() instead",
        ) from error
    except Exception as error:  # torch.load reports damage through many types (IndexError, KeyError, ...)
        raise _corrupt(source, error) from error


def _trusted_load(source: Any, map_location: Any) -> Any:
    import torch

    if "://" in os.fspath(source):
        from fsspec.core import url_to_fs

        fs, remote = url_to_fs(os.fspath(source))
        with fs.open(remote, "rb") as handle:
            return torch.load(handle, map_location=map_location, weights_only=False)
    # mmap keeps a large checkpoint's tensors on disk until they are copied into the model.
    mmap = zipfile.is_zipfile(source)
    return torch.load(source, map_location=map_location, weights_only=False, mmap=mmap)


def _refused_global(message: str) -> str | None:
    """The global torch's weights_only loading refused, or None when the failure is corruption."""
    match = re.search(r"GLOBAL (\S+) was not an allowed global", message) or re.search(
        r"unsupported GLOBAL (\S+) whose module \S+ is blocked", message
    )
    # A truncated pickle yields a cut name such as "torch._utils.".
    if match and not match.group(1).endswith("."):
        return match.group(1)
    return None


def _first(names: list[str], count: int = 3) -> str:
    shown = ", ".join(names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")


def _pickled_module_weights(pickled: Placeholder, path: Any) -> dict[str, Any]:
    try:
        return module_state_dict(pickled)
    except ValueError as error:
        raise CheckpointError(
            f"checkpoint {path} holds a pickled {pickled.pickled_global}, not a module or a state_dict",
            fix="save model.state_dict() or the model itself",
        ) from error


def _corrupt(path: Path, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {one_line(error)})",
        fix="re-save or re-download the file and compare its sha256",
    )


def _guarded(path: Path, load: Any) -> Any:
    try:
        return load()
    except (RuntimeError, ValueError, KeyError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise _corrupt(path, error) from error


def _is_lightning_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    return "state_dict" in checkpoint and "pytorch-lightning_version" in checkpoint


def _find_state_dict(checkpoint: Mapping[str, Any], path: Any) -> Mapping[str, Any]:
    import torch

    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return checkpoint
    for key in _STATE_DICT_KEYS:
        found = checkpoint.get(key)
        if isinstance(found, Placeholder):  # {"model": model, ...} read inertly
            return _pickled_module_weights(found, path)
        if isinstance(found, Mapping):
            pickled = find_placeholders(found)
            if pickled:  # e.g. a module's get_extra_state() object
                raise CheckpointError(
                    f"checkpoint {path}'s {key} holds pickled objects, not only tensors ({_first(pickled)})",
                    fix=_TRUST,
                )
            return found
    raise CheckpointError(
        f"checkpoint {path} holds no state_dict (top-level keys: {sorted(map(str, checkpoint))[:8]})",
        fix=f"save model.state_dict(), or a dict with one of {list(_STATE_DICT_KEYS)}",
    )


def _load_lightning(path: Path, cls: type, trust_checkpoint: bool, map_location: Any) -> nn.Module:
    # Duck-typed so pytorch_lightning and lightning.pytorch modules both work without importing either.
    if not callable(getattr(cls, "load_from_checkpoint", None)):
        raise InputError(
            f"model_class {cls.__qualname__} is not a LightningModule; it cannot load checkpoint {path}",
            fix="pass the LightningModule subclass that was trained, or build it and pass model=",
        )
    try:
        return cls.load_from_checkpoint(path, map_location=map_location, weights_only=not trust_checkpoint)
    except (RuntimeError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{cls.__qualname__}.load_from_checkpoint({path}) failed: {one_line(error)}",
            fix="check that model_class is the class this checkpoint was trained with",
        ) from error


def _build_target(model: Any, model_class: type | str | None, path: Path) -> nn.Module:
    from torch import nn

    from onnxport.unwrap import unwrap

    if isinstance(model, nn.Module):
        return unwrap(model)  # load into the module that owns the parameter names
    if model is not None:
        return _instantiate(model)
    if model_class is not None:
        cls = resolve_class(model_class, "model_class", error=InputError)
        try:
            built = cls()
        except TypeError as error:
            raise InputError(
                f"model_class {cls.__qualname__} cannot be built without arguments ({error})",
                fix="build the model yourself and pass model=, or pass a Hydra _target_ config",
            ) from error
        return unwrap(built)
    raise CheckpointError(
        f"checkpoint {path} holds only weights (a state_dict) and no model was given to load them into",
        fix="pass model=<nn.Module> or model={'_target_': 'package.module.Class', ...}",
    )


def _instantiate(config: Any) -> nn.Module:
    from torch import nn

    target = config.get("_target_") if isinstance(config, Mapping) else None
    if target is None:
        raise InputError(
            f"model must be an nn.Module or a Hydra config with _target_, got {type(config).__name__}",
            fix="pass model={'_target_': 'package.module.Class', ...} or a built module",
        )
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        built = instantiate(config)
    except InstantiationException as error:
        raise InputError(
            f"model _target_ {target!r} could not be built: {one_line(error)}",
            fix="check the import path and arguments of _target_ (it must import from the cwd)",
        ) from error
    if not isinstance(built, nn.Module):
        raise InputError(
            f"model _target_ {target!r} built a {type(built).__name__}, not an nn.Module",
            fix="point _target_ at the model's class (or a function returning an nn.Module)",
        )
    return built


def _load_state_dict(target: nn.Module, state_dict: Mapping[str, Any], path: Path) -> None:
    from onnxport.unwrap import strip_wrapper_prefixes

    expected = set(target.state_dict())
    # Strip only when the keys do not already fit: a bare model may own a submodule named "module".
    if set(state_dict) != expected:
        state_dict = strip_wrapper_prefixes(state_dict)
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {path} do not fit {type(target).__name__}: "
            f"{len(missing)} missing (first: {missing[0] if missing else None!r}), "
            f"{len(unexpected)} unexpected (first: {unexpected[0] if unexpected else None!r})",
            fix="build the same architecture the weights were saved from",
        )
    try:
        target.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # same keys, different shapes
        detail = next(
            (line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error)
        )
        raise CheckpointError(
            f"weights in {path} do not fit {type(target).__name__}: {detail[:200]}",
            fix="build the model with the hyperparameters the weights were trained with",
        ) from error
