"""Run torch.onnx: the dynamo exporter, the TorchScript exporter, or dynamo with a fallback.

``run_exporter`` writes the raw exported file; publishing (metadata, scrubbing,
external data, the atomic move) is :mod:`onnxport.publish`'s job.
"""

from __future__ import annotations

import contextlib
import errno
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from onnxport import publish
from onnxport.config import ExportConfig
from onnxport.errors import (
    ConfigError,
    ExportError,
    InputError,
    OnnxportError,
    OpsetNotProduced,
    UnsupportedOperatorError,
    one_line,
)
from onnxport.inputs import (
    ModelInputs,
    chosen_names,
    flatten_outputs,
    forward_signature,
    resolve_dynamic_axes,
)
from onnxport.model_state import preserved_state, probe

if TYPE_CHECKING:
    import onnx

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

# The dynamo exporter builds opset 18 graphs and converts them with onnxscript's
# version converter; torch declares the newest opset it targets in ONNX_MAX_OPSET.
DYNAMO_MIN_OPSET = 7


@dataclass
class ExporterRun:
    """What :func:`run_exporter` did."""

    exporter: str
    """``dynamo`` or ``torchscript``: the exporter that wrote the file."""
    fallback_reason: str | None
    """Why ``auto`` did not use dynamo (or why a model type forced an exporter)."""
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    """The symbolic axes of the written graph's inputs and outputs, torch.onnx form."""
    external_data: bool
    """The weights must be stored as external data (over 2 GB, or ``external_data: always``)."""


def supported_opsets(exporter: str) -> tuple[int, int]:
    """The inclusive opset range ``exporter`` can produce with the installed torch."""
    from torch.onnx import _constants

    if exporter == "torchscript":
        return _constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    return DYNAMO_MIN_OPSET, _constants.ONNX_MAX_OPSET


def run_exporter(model: Any, inputs: ModelInputs, path: str | Path, config: ExportConfig) -> ExporterRun:
    """Export ``model`` at ``inputs`` to ``path`` with the exporter(s) ``config`` asks for.

    ``auto`` tries dynamo and falls back to TorchScript when dynamo cannot capture
    the model, recording why. A dynamic axis the model specialises is an error in
    every mode: the fallback would only hide it.

    The caller holds :func:`~onnxport.model_state.preserved_state` around the whole export
    (:func:`onnxport.export` does); entering it again here is harmless and keeps this function
    safe to call on its own: eval mode from the first call, so batch norm does not update.
    """
    with preserved_state(model):
        return _run(model, inputs, Path(path), config)


def _run(model: Any, inputs: ModelInputs, path: Path, config: ExportConfig) -> ExporterRun:
    if isinstance(model, torch.nn.Module) and any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise InputError(
            "the model's weights are on the meta device: they hold no values to export",
            fix="materialise the model first (load its weights, e.g. load_state_dict(state, assign=True))",
        )
    candidates, forced_reason = _candidates(model, config)
    outputs = flatten_outputs(probe(model, inputs))
    if not outputs:
        raise ExportError(
            f"{type(model).__name__} returned no tensors for the example inputs",
            fix="return a tensor (or a tuple/dict of tensors) from forward",
        )
    derived = [name for name, _ in outputs]
    output_names = chosen_names("output_names", config.output_names, derived, "the model returns")
    dynamic_axes = resolve_dynamic_axes(inputs, output_names, config, [t for _, t in outputs], model=model)
    axis_names = dynamic_axes
    if isinstance(model, torch.export.ExportedProgram):
        # The program's shapes are fixed already: its symbolic dims get these names,
        # and only the axes the user named are required to be dynamic.
        dynamic_axes = {name: axes for name, axes in dynamic_axes.items() if name in config.dynamic_axes}
    traced = _grow_unit_axes(inputs, dynamic_axes)

    target, traced = _exportable(model, traced)

    failures: list[tuple[str, BaseException]] = []
    for exporter in candidates:
        try:
            axes = axis_names if exporter == "dynamo" else dynamic_axes
            job = _Job(target, traced, path, config.opset, output_names, axes)
            _export_dynamo(job) if exporter == "dynamo" else _export_torchscript(job)
            written = _check_file(path, inputs.names, dynamic_axes, config.opset, exporter)
        except OpsetNotProduced as error:
            if exporter == candidates[-1]:
                raise
            failures.append((exporter, error))  # TorchScript may still write that opset
            continue
        except OnnxportError:
            raise
        except Exception as error:
            _remove(path)
            full = next((c for c in causes(error) if isinstance(c, OSError) and c.errno in _DISK_FULL), None)
            if full is not None:  # no fallback can help: the disk is full
                raise publish.disk_error(full, path.parent) from error
            specialised = _specialised_axis(error, inputs.names)
            if specialised is not None:
                raise _specialised_error(specialised, dynamic_axes) from error
            failures.append((exporter, error))
            continue
        reasons = [f"{name} failed: {one_line(error)}" for name, error in failures]
        reason = "; ".join(([forced_reason] if forced_reason else []) + reasons) or None
        # Judged on the written file, not the model: folded constants or duplicated tied weights count too.
        external = config.external_data == "always" or (
            config.external_data == "auto"
            and publish.payload_bytes(written.graph.initializer) >= publish.PROTOBUF_LIMIT
        )
        return ExporterRun(
            exporter, reason, list(inputs.names), output_names, _symbolic_axes(written), external
        )
    failure = _export_failure(failures, config.opset)
    if failure is failures[0][1]:
        raise failure
    raise failure from failures[-1][1]


def _candidates(model: Any, config: ExportConfig) -> tuple[list[str], str | None]:
    requested = config.exporter
    if isinstance(model, torch.jit.ScriptModule):
        if requested == "dynamo":
            raise ConfigError(
                "export.exporter='dynamo' cannot export a torch.jit.ScriptModule",
                fix="use exporter: torchscript or auto, or export the original nn.Module",
            )
        candidates = ["torchscript"]
        reason = (
            "a ScriptModule can only go through the TorchScript exporter" if requested == "auto" else None
        )
    elif isinstance(model, torch.export.ExportedProgram):
        if requested == "torchscript":
            raise ConfigError(
                "export.exporter='torchscript' cannot export a torch.export.ExportedProgram",
                fix="use exporter: dynamo or auto",
            )
        candidates, reason = ["dynamo"], None
    else:
        candidates = ["dynamo", "torchscript"] if requested == "auto" else [requested]
        reason = None

    able = [name for name in candidates if _opset_ok(name, config.opset)]
    if not able:
        ranges = ", ".join(
            f"{name} {low}-{high}" for name in candidates for low, high in [supported_opsets(name)]
        )
        raise ConfigError(
            f"export.opset={config.opset} cannot be produced by the {' or '.join(candidates)} exporter "
            f"of torch (supported: {ranges})",
            fix="choose an opset in the supported range",
        )
    if able != candidates:
        reason = f"opset {config.opset} is outside the dynamo exporter's range"
    return able, reason


def _opset_ok(exporter: str, opset: int) -> bool:
    low, high = supported_opsets(exporter)
    return low <= opset <= high


@dataclass
class _Job:
    """One exporter attempt: what to export, to where, and the graph's names and dynamic axes."""

    model: Any
    inputs: ModelInputs
    path: Path
    opset: int
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]


def _export_dynamo(job: _Job) -> None:
    is_program = isinstance(job.model, torch.export.ExportedProgram)
    with _quiet():
        program = torch.onnx.export(
            job.model,
            job.inputs.args,
            kwargs=job.inputs.kwargs,
            dynamo=True,
            opset_version=job.opset,
            input_names=job.inputs.names,
            output_names=job.output_names,
            dynamic_shapes=None if is_program else _dynamic_shapes(job.model, job.inputs, job.dynamic_axes),
            optimize=True,
            verbose=False,
        )
        if is_program:
            program.rename_axes(_symbol_names(program.model.graph.inputs, job.dynamic_axes))
        # weights stream to raw.onnx.data; publish decides the final layout without a copy in memory
        program.save(str(job.path), external_data=True)


def _symbol_names(graph_inputs: Any, dynamic_axes: dict[str, dict[int, str]]) -> dict[str, str]:
    """``{symbol: axis name}`` for the symbolic input dims torch.export named ``s0``, ``s77``, ..."""
    mapping = {}
    for value in graph_inputs:
        shape = value.shape or ()
        for axis, name in dynamic_axes.get(value.name, {}).items():
            symbol = getattr(shape[axis], "value", None) if axis < len(shape) else None
            if isinstance(symbol, str):
                mapping[symbol] = name
    return mapping


def _export_torchscript(job: _Job) -> None:
    inputs = job.inputs
    # TorchScript reads a trailing dict argument as keyword arguments; binding
    # everything positionally, plus an empty trailing dict, keeps dicts as values.
    args = (*inputs.args, *inputs.kwargs.values())
    if args and isinstance(args[-1], dict):
        args = (*args, {})
    with _quiet():
        torch.onnx.export(
            job.model,
            args,
            str(job.path),
            dynamo=False,
            opset_version=job.opset,
            input_names=inputs.names,
            output_names=job.output_names,
            dynamic_axes=job.dynamic_axes,
            do_constant_folding=True,
        )


def _exportable(model: Any, inputs: ModelInputs) -> tuple[Any, ModelInputs]:
    """The module to hand to torch.onnx, and its inputs.

    torch.export cannot attach dynamic shapes to values collected by ``**kwargs``
    and TorchScript cannot pass them at all, so such a model is called through
    :class:`_KeywordsAsPositional`.
    """
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return model, inputs
    parameters = forward_signature(model).parameters.values()
    named = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if all(key in named for key in inputs.kwargs):
        return model, inputs
    adapter = _KeywordsAsPositional(model, len(inputs.args), list(inputs.kwargs))
    positional = ModelInputs((*inputs.args, *inputs.kwargs.values()), {}, inputs.names, inputs.specs)
    return adapter, positional


class _KeywordsAsPositional(torch.nn.Module):
    """Calls ``model(*values[:n], **dict(zip(keys, values[n:])))``.

    It shares the model's parameter, buffer and submodule registries instead of
    holding the model as a submodule, so initializer names carry no prefix.
    """

    def __init__(self, model: torch.nn.Module, positional: int, keys: list[str]) -> None:
        super().__init__()
        self._parameters = model._parameters
        self._buffers = model._buffers
        self._modules = model._modules
        object.__setattr__(self, "wrapped", model)  # not registered: that would prefix names
        self.positional = positional
        self.keys = keys

    def forward(self, *values: Any) -> Any:
        n = self.positional
        return self.wrapped(*values[:n], **dict(zip(self.keys, values[n:], strict=True)))


def _dynamic_shapes(
    model: Any, inputs: ModelInputs, dynamic_axes: dict[str, dict[int, str]]
) -> dict[str, Any]:
    """torch.onnx's ``{name: {axis: name}}`` as torch.export ``dynamic_shapes``, keyed by parameter.

    Axis names are given as strings: torch.onnx turns them into ``Dim.DYNAMIC``
    (which errors when the model specialises the axis) and names the ONNX dims after them.
    """
    import inspect

    from torch.utils._pytree import tree_flatten, tree_unflatten

    specs = iter(dynamic_axes.get(name) or None for name in inputs.names)
    leaves, tree = tree_flatten((inputs.args, inputs.kwargs))
    leaves = [next(specs) if isinstance(leaf, torch.Tensor) else None for leaf in leaves]
    args, kwargs = tree_unflatten(leaves, tree)

    parameters = list(forward_signature(model).parameters.values())
    by_kind = {p.kind: p.name for p in parameters}
    shapes: dict[str, Any] = {}
    positional = [p.name for p in parameters if p.kind == inspect.Parameter.POSITIONAL_ONLY]
    shapes.update(zip(positional, args, strict=False))
    if len(args) > len(positional):
        shapes[by_kind[inspect.Parameter.VAR_POSITIONAL]] = tuple(args[len(positional) :])
    named = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    for key, spec in kwargs.items():
        if key in named:
            shapes[key] = spec
        else:  # an extra keyword collected by **kwargs: torch.export nests it under that name
            shapes.setdefault(by_kind[inspect.Parameter.VAR_KEYWORD], {})[key] = spec
    return shapes


def _grow_unit_axes(inputs: ModelInputs, dynamic_axes: dict[str, dict[int, str]]) -> ModelInputs:
    """Repeat inputs along dynamic axes of size 1 to size 2: traced at 1, an axis is specialised to 1."""
    tensors = []
    for name, tensor in zip(inputs.names, inputs.tensors(), strict=True):
        for axis in dynamic_axes.get(name, {}):
            if tensor.shape[axis] == 1:
                tensor = tensor.repeat_interleave(2, dim=axis)
        tensors.append(tensor)
    return inputs.with_tensors(tensors)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch.onnx's deprecation and tracer chatter; errors still propagate."""
    import logging

    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# -- checking the written file ---------------------------------------------------------------


def _check_file(
    path: Path, input_names: list[str], dynamic_axes: dict[str, dict[int, str]], opset: int, exporter: str
) -> onnx.ModelProto:
    """The written file (external weights stay on disk) once it has the asked opset and dynamic axes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    produced = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if produced != opset:
        _remove(path)
        raise OpsetNotProduced(
            f"export.opset={opset} could not be produced by the {exporter} exporter for this model "
            f"(it wrote opset {produced})",
            fix=f"use opset {produced} or an opset the model's operators can be converted to",
        )
    graph_inputs = {value.name: value for value in model.graph.input}
    for name in input_names:
        value = graph_inputs.get(name)
        if value is None:
            continue
        dims = value.type.tensor_type.shape.dim
        for axis in dynamic_axes.get(name, {}):
            if axis < len(dims) and dims[axis].HasField("dim_value"):
                _remove(path)
                raise _specialised_error((name, axis, dims[axis].dim_value), dynamic_axes)
    return model


def _symbolic_axes(model: onnx.ModelProto) -> dict[str, dict[int, str]]:
    axes = {}
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        named = {axis: dim.dim_param for axis, dim in enumerate(dims) if dim.dim_param}
        if named:
            axes[value.name] = named
    return axes


# torch.export names a specialised axis only in the text of a plain ValueError (torch 2.13), the
# cause of the typed TorchExportError: "... but tracing inferred a static shape of 2 for dimension
# inputs['x'].shape[0]". The text is read only in the cause chain of that typed error, as a last
# resort; test_exporters pins the wording.
_SPECIALISED = re.compile(
    r"static shape of (\d+) for dimension "
    r"inputs\[['\"]?([^\]'\"]+)['\"]?\]((?:\[[^\]]+\])*)\.shape\[(\d+)\]"
)
# The dynamo exporter's DispatchError carries the FX node target only in its message:
# "No ONNX function found for <OpOverload(op='ns.name', overload='default')>".
_DISPATCH_TARGET = re.compile(r"<OpOverload\(op='([\w.]+)'")
# TorchScript's UnsupportedOperatorError is built from the operator name: "... operator 'aten::foo' ..."
# or "... unrecognized namespace ns::op".
_TORCHSCRIPT_OPERATOR = re.compile(r"(\w+::\w+(?:\.\w+)*)")


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from (``__cause__``, else ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _typed(error: BaseException, kind: type | None) -> BaseException | None:
    """The first exception of type ``kind`` in ``error``'s cause chain."""
    if kind is None:
        return None
    return next((cause for cause in causes(error) if isinstance(cause, kind)), None)


def _torch_error_types() -> dict[str, type | None]:
    """torch's typed exporter errors; those in private modules are looked up defensively."""
    import importlib

    import torch.onnx.errors

    def find(module: str, name: str) -> type | None:
        try:
            return getattr(importlib.import_module(module), name, None)
        except ImportError:  # moved in another torch: the generic ExportError remains
            return None

    errors = "torch.onnx._internal.exporter._errors"
    return {
        "exporter": torch.onnx.errors.OnnxExporterError,
        "unsupported": torch.onnx.errors.UnsupportedOperatorError,
        "dispatch": find(errors, "DispatchError"),
        "export": find(errors, "TorchExportError"),
        "dynamo": find("torch._dynamo.exc", "TorchDynamoException"),
    }


def _specialised_axis(error: BaseException, names: list[str]) -> tuple[str, int, int] | None:
    """The ``(input, axis, size)`` torch.export says the model fixes, from its constraint error."""
    capture = _typed(error, _torch_error_types()["export"])
    if capture is None:
        return None
    match = next(filter(None, (_SPECIALISED.search(str(cause)) for cause in causes(capture))), None)
    if match is None:
        return None
    size, argument, nested, axis = match.groups()
    keys = re.findall(r"\[['\"]?([^\]'\"]+)['\"]?\]", nested)
    candidates = [".".join([argument, *keys]), *keys[-1:], argument]
    name = next((c for c in candidates if c in names), candidates[0])
    return name, int(axis), int(size)


def _specialised_error(where: tuple[str, int, int], dynamic_axes: dict[str, dict[int, str]]) -> ExportError:
    name, axis, size = where
    axis_name = dynamic_axes.get(name, {}).get(axis, "?")
    return ExportError(
        f"input {name!r} axis {axis} ({axis_name!r}) was asked to be dynamic but the model fixes it "
        f"to {size}",
        fix=f"remove the size-{size} assumption from the model, or make the axis static with "
        f'dynamic_axes={{"{name}": {{}}}} (or dynamic_batch=false)',
    )


def _export_failure(failures: list[tuple[str, BaseException]], opset: int) -> BaseException:
    """The error to raise when every exporter failed.

    torch's own errors (typed exporter errors, dynamo errors, the RuntimeErrors its tracers
    raise) mean the model cannot be exported as it is: an :class:`ExportError`. Anything else
    (a TypeError, KeyError, AssertionError, ... escaping torch.onnx) is a crash onnxport does
    not recognise and is re-raised as it is, for the CLI's exit 3.
    """
    tried = " or ".join(name for name, _ in failures)
    for _, error in failures:
        operator = _unsupported_operator(error)
        if operator is not None:
            return UnsupportedOperatorError(
                operator,
                f"operator {operator} cannot be exported to ONNX opset {opset} by the {tried} exporter",
                fix=f"replace {operator} in the model with operators ONNX has, or export with another opset",
            )
    if not any(_recognised(error) for _, error in failures):
        return failures[0][1]
    details = "; ".join(f"{name}: {one_line(error)}" for name, error in failures)
    return ExportError(
        f"torch.onnx could not export the model ({details})",
        fix="change the part of the model the message names, or try export.exporter=torchscript "
        "(error.__cause__ holds torch's full message)",
    )


def _recognised(error: BaseException) -> bool:
    types = _torch_error_types()
    typed = tuple(kind for kind in (types["exporter"], types["dynamo"]) if kind is not None)
    return any(isinstance(cause, typed) or type(cause) is RuntimeError for cause in causes(error))


def _unsupported_operator(error: BaseException) -> str | None:
    """The ``namespace::name`` of an operator the exporter has no translation for, if that is the error."""
    types = _torch_error_types()
    dispatch = _typed(error, types["dispatch"])
    if dispatch is not None:
        match = _DISPATCH_TARGET.search(str(dispatch))
        if match:  # dynamo names the overload packet as namespace.name
            namespace, _, name = match.group(1).partition(".")
            return f"{namespace}::{name}"
    unsupported = _typed(error, types["unsupported"])
    if unsupported is not None:
        match = _TORCHSCRIPT_OPERATOR.search(str(unsupported))
        return match.group(1) if match else None
    return None


def _remove(path: Path) -> None:
    for leftover in (path, Path(f"{path}.data")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
