"""Run torch.onnx: the dynamo exporter, the TorchScript exporter, or dynamo with a fallback.

``run_exporter`` writes the raw exported file; publishing (metadata, scrubbing,
external data, the atomic move) is :mod:`onnxport.publish`'s job.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

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

logger = logging.getLogger(__name__)

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


def run_exporter(
    model: Any,
    inputs: ModelInputs,
    path: str | Path,
    config: ExportConfig,
    *,
    logs_beside: str | Path | None = None,
) -> ExporterRun:
    """Export ``model`` at ``inputs`` to ``path`` with the exporter(s) ``config`` asks for.

    ``auto`` tries dynamo and falls back to TorchScript when dynamo cannot capture
    the model, recording why. A dynamic axis the model specialises is an error in
    every mode: the fallback would only hide it.

    What the exporters print (torch.export's graph dumps, C++ warnings; file descriptors 1 and 2)
    never reaches the console: a failed attempt's output and traceback go to
    :func:`failure_log` beside ``logs_beside`` (default ``path``; the workflow passes the output),
    and onnxport logs one line with the reason and that path. A successful attempt's output is dropped.

    The caller holds :func:`~onnxport.model_state.preserved_state` around the whole export
    (:func:`onnxport.export` does); entering it again here is harmless and keeps this function
    safe to call on its own: eval mode from the first call, so batch norm does not update.
    """
    with preserved_state(model):
        return _run(model, inputs, Path(path), config, Path(logs_beside or path))


def failure_log(output: Path, exporter: str) -> Path:
    """Where a failed ``exporter`` attempt's output goes: ``<stem>.rejected.<exporter>.log``.

    Beside the output, under the ``*.rejected.*`` pattern that ``.gitignore`` and ``.dvcignore``
    already hold for a file that failed validation, so a fallback never changes a tracked directory.
    """
    return output.with_name(f"{output.stem}.rejected.{exporter}.log")


def _run(model: Any, inputs: ModelInputs, path: Path, config: ExportConfig, beside: Path) -> ExporterRun:
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

    target, for_dynamo = _exportable(model, traced)

    failures: list[tuple[str, BaseException]] = []
    logs: list[Path] = []
    for exporter in candidates:
        log = failure_log(beside, exporter)
        try:
            with _attempt(log):
                axes = axis_names if exporter == "dynamo" else dynamic_axes
                if exporter == "dynamo":
                    _export_dynamo(_Job(target, for_dynamo, path, config.opset, output_names, axes))
                else:
                    keyworded, positional = _by_keyword(model, traced)
                    _export_torchscript(_Job(keyworded, positional, path, config.opset, output_names, axes))
                written = _check_file(path, inputs.names, dynamic_axes, config.opset, exporter)
                if exporter == "torchscript":
                    _check_traced_axes(path, model, traced, dynamic_axes)
        except OpsetNotProduced as error:
            if exporter == candidates[-1]:
                _point_at([*logs, log], error)
                raise
            _falling_back(exporter, error, log, candidates)
            failures.append((exporter, error))  # TorchScript may still write that opset
            logs.append(log)
            continue
        except OnnxportError as error:
            _point_at([log], error)
            raise
        except Exception as error:
            _remove(path)
            full = next((c for c in causes(error) if isinstance(c, OSError) and c.errno in _DISK_FULL), None)
            if full is not None:  # no fallback can help: the disk is full
                raise publish.disk_error(full, path.parent) from error
            specialised = _specialised_axis(error, inputs.names)
            if specialised is not None:
                raise _point_at([log], _specialised_error(specialised, dynamic_axes)) from error
            _falling_back(exporter, error, log, candidates)
            failures.append((exporter, error))
            logs.append(log)
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
    raise _point_at(logs, failure) from failures[-1][1]


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
    """The module to hand to the dynamo exporter, and its inputs.

    torch.export cannot attach dynamic shapes to values collected by ``**kwargs``, so such a
    model is called through :class:`_KeywordsAsPositional` (TorchScript always is: :func:`_by_keyword`).
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


def _by_keyword(model: Any, inputs: ModelInputs) -> tuple[Any, ModelInputs]:
    """The module and inputs for the TorchScript exporter: keyword inputs are passed by keyword.

    The legacy exporter binds arguments positionally and fills in the defaults of the
    parameters after them; a decorator that passes one of those again by keyword
    (transformers 5 re-injects ``use_cache``) then gets it twice. ``forward(*values)`` of
    :class:`_KeywordsAsPositional` has no defaults to fill and calls the model by keyword.
    """
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return model, inputs
    adapter = _KeywordsAsPositional(model, len(inputs.args), list(inputs.kwargs))
    return adapter, ModelInputs((*inputs.args, *inputs.kwargs.values()), {}, inputs.names, inputs.specs)


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
        # torch.onnx restores the adapter's mode after exporting, recursively into the shared submodules
        self.training = model.training
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


# -- what the exporters print ----------------------------------------------------------------


@contextlib.contextmanager
def _attempt(log: Path) -> Iterator[None]:
    """One exporter attempt with its output captured: kept at ``log`` if it fails, dropped if not.

    A log left by an earlier failure of the same exporter goes once it succeeds: it would
    describe a fallback that no longer happens.
    """
    with tempfile.TemporaryFile() as sink:
        try:
            with _captured(sink):
                yield
        except BaseException as error:
            _write_log(log, sink, error)
            raise
    with contextlib.suppress(OSError):
        log.unlink(missing_ok=True)


@contextlib.contextmanager
def _captured(sink: IO[bytes]) -> Iterator[None]:
    """Send file descriptors 1 and 2, and Python's ``sys.stdout``/``sys.stderr``, to ``sink``.

    At the descriptor level, so C++ output and ``print`` (torch.export's graph dumps) are caught
    too; the Python streams as well, for hosts (pytest, notebooks) that replaced them.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: dict[int, int] = {}
    for fd in (1, 2):
        with contextlib.suppress(OSError):  # closed (a daemon's): nothing reaches a console there
            saved[fd] = os.dup(fd)
    try:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        with (
            open(sink.fileno(), "wb", closefd=False) as raw,
            io.TextIOWrapper(raw, errors="replace", write_through=True) as text,
            contextlib.redirect_stdout(text),
            contextlib.redirect_stderr(text),
            _quiet(),
        ):
            yield
    finally:
        for fd, original in saved.items():
            os.dup2(original, fd)
            os.close(original)


def _write_log(log: Path, sink: IO[bytes], error: BaseException) -> None:
    """What the attempt printed, then the full traceback onnxport's one-line message summarises."""
    sink.seek(0)
    try:
        with open(log, "wb") as out:
            shutil.copyfileobj(sink, out)
            out.write(b"\n--- the exception ---\n")
            out.write("".join(traceback.format_exception(error)).encode("utf-8", "replace"))
    except OSError:  # a full disk, a read-only directory: no log, and no half-written one either
        with contextlib.suppress(OSError):
            log.unlink(missing_ok=True)


def _falling_back(exporter: str, error: BaseException, log: Path, candidates: list[str]) -> None:
    """The one console line of a failed attempt that another exporter follows."""
    rest = candidates[candidates.index(exporter) + 1 :]
    if rest:
        logger.warning(
            "%s could not export the model (%s); trying %s. Its output: %s",
            exporter,
            one_line(error),
            rest[0],
            log,
        )


def _point_at(logs: list[Path], error: OnnxportError) -> OnnxportError:
    """Add the logs of the failed attempts to ``error``'s fix."""
    kept = [str(log) for log in logs if log.is_file()]
    if kept:
        where = f"what the exporter printed is in {', '.join(kept)}"
        error.fix = f"{error.fix.rstrip('.')} ({where})" if error.fix else where
    return error


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


def _check_traced_axes(
    path: Path, model: Any, inputs: ModelInputs, dynamic_axes: dict[str, dict[int, str]]
) -> None:
    """Raise if the TorchScript file does not follow its dynamic input axes as eager PyTorch does.

    The TorchScript exporter names every axis it is told to, whatever the trace did: a size the
    trace baked in (a constant of the traced shape, a reshape to it) shows only when the file runs
    at another size. torch.export refuses such a model; here the file runs in ONNX Runtime with
    each dynamic axis one longer, and its output shapes are compared with eager PyTorch's. Where
    ONNX Runtime cannot run the file at all, validation says why.
    """
    import onnxruntime

    sizes = _axis_sizes(inputs, dynamic_axes)
    if not sizes:
        return
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # validation reports a file ONNX Runtime cannot load, with its own error
        return
    if _runs_like_eager(session, model, _grown(inputs, dynamic_axes, set(sizes))):
        return
    if not _runs_like_eager(session, model, inputs):
        return  # wrong at the traced size too: not an axis problem, validation names it
    for axis_name in sizes:  # the first axis that alone breaks it
        grown = _grown(inputs, dynamic_axes, {axis_name})
        if _runs_like_eager(session, model, grown):
            continue
        name, axis = next(
            (name, axis)
            for name in inputs.names
            for axis, named in dynamic_axes.get(name, {}).items()
            if named == axis_name
        )
        _remove(path)
        error = _specialised_error((name, axis, sizes[axis_name]), dynamic_axes)
        with contextlib.suppress(Exception):
            grown.call(model)  # eager PyTorch takes the size: the trace is what fixed it
            error.message = error.message.replace("the model fixes it", "the TorchScript trace fixes it")
            error.fix = (
                "compute sizes with tensor operations, not Python numbers (len(), int(), .item()), "
                f"or use exporter: dynamo; {error.fix}"
            )
        raise error


def _axis_sizes(inputs: ModelInputs, dynamic_axes: dict[str, dict[int, str]]) -> dict[str, int]:
    """``{axis name: traced size}`` of the dynamic input axes."""
    sizes: dict[str, int] = {}
    for name, tensor in zip(inputs.names, inputs.tensors(), strict=True):
        for axis, axis_name in dynamic_axes.get(name, {}).items():
            if axis < tensor.dim():
                sizes.setdefault(axis_name, tensor.shape[axis])
    return sizes


def _grown(inputs: ModelInputs, dynamic_axes: dict[str, dict[int, str]], names: set[str]) -> ModelInputs:
    """``inputs`` with the axes called ``names`` one longer, repeating their first entries (ids stay ids)."""
    tensors = []
    for name, tensor in zip(inputs.names, inputs.tensors(), strict=True):
        for axis, axis_name in dynamic_axes.get(name, {}).items():
            if axis_name in names and axis < tensor.dim():
                size = tensor.shape[axis]
                index = torch.arange(size + 1, device=tensor.device) % size
                tensor = tensor.index_select(axis, index)
        tensors.append(tensor)
    return inputs.with_tensors(tensors)


def _runs_like_eager(session: Any, model: Any, inputs: ModelInputs) -> bool:
    """Whether the file runs on ``inputs`` and returns tensors of eager PyTorch's shapes."""
    feed = inputs.feed()
    wanted = {value.name for value in session.get_inputs()}
    try:
        eager = flatten_outputs(inputs.call(model))
    except Exception:  # eager PyTorch refuses the size: the axis is not dynamic
        return False
    try:
        got = session.run(None, {name: value for name, value in feed.items() if name in wanted})
    except Exception:
        return False
    return len(got) == len(eager) and all(
        tuple(ours.shape) == tuple(theirs.shape) for ours, (_, theirs) in zip(got, eager, strict=True)
    )


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
