"""Peel training wrappers off a model so the exporter sees the module that holds the weights.

Wrappers leak into exports: DataParallel, compiled and ``AveragedModel`` graphs
carry ``module.`` / ``_orig_mod.`` prefixes in their initializer names,
DistributedDataParallel fails under the dynamo exporter and a compiled module
fails under the TorchScript exporter. Unwrapping first avoids all of it, and
``strip_wrapper_prefixes`` does the same for a state_dict saved from a wrapped model.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from onnxport.errors import InputError

if TYPE_CHECKING:
    from torch.export import ExportedProgram

# (module that defines the wrapper, class name, attribute holding the wrapped module).
# Looked up in sys.modules only: an object cannot be an instance of a class whose module
# was never imported, so optional packages (dynamo, Lightning, Fabric) are never imported here.
_WRAPPERS: tuple[tuple[str, str, str], ...] = (
    ("torch.nn.parallel.data_parallel", "DataParallel", "module"),
    ("torch.nn.parallel.distributed", "DistributedDataParallel", "module"),
    ("torch.optim.swa_utils", "AveragedModel", "module"),
    ("torch._dynamo.eval_frame", "OptimizedModule", "_orig_mod"),
    # Fabric keeps the user's module beside the (possibly DDP-wrapped) forward module.
    ("lightning.fabric.wrappers", "_FabricModule", "_original_module"),
    ("lightning_fabric.wrappers", "_FabricModule", "_original_module"),
    # Lightning < 2.1 wrapped the LightningModule inside its strategies.
    ("pytorch_lightning.overrides.base", "_LightningModuleWrapperBase", "_forward_module"),
    ("pytorch_lightning.overrides.base", "_LightningPrecisionModuleWrapperBase", "_forward_module"),
    ("lightning.pytorch.overrides.base", "_LightningModuleWrapperBase", "_forward_module"),
    ("lightning.pytorch.overrides.base", "_LightningPrecisionModuleWrapperBase", "_forward_module"),
)

# Prefixes the wrappers above add to state_dict keys.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_forward_module.")

# AveragedModel's step counter: a buffer of the wrapper, not of the model.
_WRAPPER_BUFFERS = ("n_averaged",)

_MAX_DEPTH = 32  # a wrapper chain this deep is a cycle, not a model


def _wrapped_module(obj: object) -> Any:
    """The module ``obj`` wraps, or ``None`` when ``obj`` is not a known wrapper."""
    for module_name, class_name, attribute in _WRAPPERS:
        wrapper_class = getattr(sys.modules.get(module_name), class_name, None)
        if wrapper_class is not None and isinstance(obj, wrapper_class):
            return getattr(obj, attribute)
    return None


def unwrap(model: Any) -> nn.Module | ExportedProgram:
    """Return the innermost module under any nesting of training wrappers.

    Peels ``DataParallel``, ``DistributedDataParallel``, ``torch.compile``'s
    ``OptimizedModule``, ``torch.optim.swa_utils.AveragedModel`` (its averaged
    copy is what gets exported), Lightning Fabric's ``_FabricModule`` and the
    module wrappers of Lightning < 2.1. The returned object is the wrapped module
    itself, never a copy. ``ScriptModule`` and ``ExportedProgram`` come back unchanged.

    >>> import torch
    >>> inner = torch.nn.Linear(2, 2)
    >>> unwrap(torch.nn.DataParallel(torch.optim.swa_utils.AveragedModel(inner))).weight.shape
    torch.Size([2, 2])

    Raises:
        InputError: ``model`` is neither an ``nn.Module`` nor an ``ExportedProgram``.
    """
    from torch.export import ExportedProgram

    if isinstance(model, ExportedProgram):
        return model
    current = model
    for _ in range(_MAX_DEPTH):
        inner = _wrapped_module(current)
        if inner is None:
            break
        current = inner
    else:
        raise InputError(
            f"model {type(model).__name__} is wrapped more than {_MAX_DEPTH} levels deep",
            fix="pass the inner module, e.g. model.module",
        )
    if not isinstance(current, nn.Module):
        raise InputError(
            f"model must be a torch.nn.Module, ScriptModule or ExportedProgram, got {_type_name(current)}",
            fix="pass the model object itself, or build one with onnxport.load_model(path)",
        )
    return current


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``, ``_forward_module.``, nested) from keys.

    A prefix is stripped only when every key carries it, so a bare model whose
    own submodule happens to be called ``module`` keeps its keys. AveragedModel's
    ``n_averaged`` counter is dropped when the rest of the keys are prefixed.

    >>> strip_wrapper_prefixes({"module._orig_mod.fc.weight": 1, "n_averaged": 0})
    {'fc.weight': 1}
    """
    state = dict(state_dict)
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if _all_keys_start_with(state, p)), None)
        if prefix is None:
            return state
        state = {key[len(prefix) :]: value for key, value in state.items() if key not in _WRAPPER_BUFFERS}


def _all_keys_start_with(state: Mapping[str, Any], prefix: str) -> bool:
    keys = [key for key in state if key not in _WRAPPER_BUFFERS]
    return bool(keys) and all(key.startswith(prefix) for key in keys)


def _type_name(obj: object) -> str:
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
