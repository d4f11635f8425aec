"""Prove an ONNX file computes what the PyTorch model computes, before anyone ships it.

Checks run in order and each failure is its own :class:`~onnxport.errors.ValidationError`:

1. ``onnx.checker`` with ``full_check=True``, by path (files over 2 GB and external
   data work); a full check includes strict shape inference with type checks.
2. An ONNX Runtime CPU session can be created.
3. The graph's inputs and outputs match the example inputs and the model's outputs in
   count and in the names ``export`` gives them.
4. Parity with eager PyTorch in float32 (TF32 off) over a shape matrix built from the
   graph's own symbolic dimensions: every dynamic axis at 1, the export size and a
   larger size, with seeded inputs shaped like the example's values (padded masks, type-id
   segments, integer ranges: :func:`onnxport.inputs.generate_like`) or the caller's real samples.
   A size eager PyTorch itself refuses is an :class:`~onnxport.errors.AxisNotDynamicError`.

PyTorch's ``verify=True`` only warns and only at the export inputs; here a parity
failure raises unless ``validation.on_mismatch`` is ``warn``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from onnxport.config import ExportConfig, ValidationConfig, VariantConfig
from onnxport.conventions import padded_positions
from onnxport.errors import (
    AxisNotDynamicError,
    CheckerError,
    ConfigError,
    InputError,
    NonFiniteError,
    ParityError,
    SessionError,
    SignatureMismatchError,
    one_line,
)
from onnxport.hashing import artifact_sha256
from onnxport.inputs import ModelInputs, flatten_outputs, generate_like, prepare_inputs
from onnxport.model_state import preserved_state, probe
from onnxport.parity import compare, first_divergence, to_numpy
from onnxport.progress import done, phase
from onnxport.provenance import run_context
from onnxport.report import CaseResult, OutputCheck, ValidationReport, VariantReport

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["ValidationReport", "validate"]

logger = logging.getLogger(__name__)

# Seconds of timed calls per case and runtime (torch, ORT) beyond the parity call itself.
LATENCY_BUDGET_S = 0.25


def validate(
    onnx_path: str | os.PathLike[str],
    model: torch.nn.Module | torch.export.ExportedProgram,
    example_inputs: Any = None,
    *,
    config: ExportConfig | Mapping[str, Any] | None = None,
    samples: Optional[Sequence[Any]] = None,
    **options: Any,
) -> ValidationReport:
    """Check ``onnx_path`` against ``model`` over a matrix of shapes.

    Args:
        onnx_path: the ONNX file (external data, if any, beside it).
        model: the eager module the file was exported from.
        example_inputs: the export inputs (tensor, tuple, dict or prepared ``ModelInputs``).
        config: an ``ExportConfig``, a mapping or ``None``; ``options`` are merged into it,
            e.g. ``validation={"atol": 1e-3, "on_mismatch": "warn"}``.
        samples: real inputs in the same structure as ``example_inputs``; each is one more
            case beside the generated shape matrix.

    Returns:
        The :class:`ValidationReport`; ``report.passed`` is ``False`` only with
        ``on_mismatch="warn"``. Nothing is written: ``report.write_json(path)`` saves it.
        ``validation.enabled`` is ``export``'s switch; called directly, this always validates.

    Raises:
        CheckerError, SessionError, SignatureMismatchError: the file is broken or does not fit.
        ParityError (NonFiniteError for NaN/Inf): outputs differ and ``on_mismatch="fail"``.
        AxisNotDynamicError (a ConfigError, exit 2): eager PyTorch itself refuses a size the graph's
            dynamic axis allows, whatever ``on_mismatch`` says: the axis is not dynamic.

    Example::

        report = onnxport.validate("model.onnx", model, torch.randn(2, 4), validation={"atol": 1e-3})
        print(report.summary())
        report.write_json("model.validation.json")  # a DVC metrics file
    """
    config = ExportConfig.coerce(config, **options)
    path = Path(onnx_path)
    if not path.is_file():
        problem = (
            "is a directory" if path.is_dir() else "is not a file" if path.exists() else "does not exist"
        )
        raise InputError(f"ONNX file {str(path)!r} {problem}", fix="pass the path of an exported file")
    _check_model(model)
    with preserved_state(model):
        example = prepare_inputs(model, example_inputs, config)  # as export prepares them
        return run_validation(path, model, example, config, samples=samples)


def run_validation(
    path: Path,
    model: Any,
    example: ModelInputs,
    config: ExportConfig,
    *,
    samples: Optional[Sequence[Any]] = None,
    onnx_sha256: Optional[str] = None,
    published_as: Optional[Path] = None,
) -> ValidationReport:
    """:func:`validate` on prepared inputs; :func:`onnxport.export` calls it on its staged file.

    ``onnx_sha256`` is the hash of the bytes the report vouches for, when the caller has it
    (export hashed them while writing); otherwise the file at ``path`` is hashed. ``published_as``
    is the path the report names when ``path`` is a staged copy (export's output).
    """
    from onnxport.inspection import load_header
    from onnxport.publish import data_files

    settings = config.validation
    check_tolerances(settings)
    try:
        with phase("check"):
            check_file(path)
    except CheckerError:
        load_header(path)  # a file that is no ONNX model at all is bad input (exit 2), not a failed check
        raise
    started = time.perf_counter()
    session = open_session(path)
    graph_inputs = session.get_inputs()
    graph_outputs = [meta.name for meta in session.get_outputs()]

    with preserved_state(model), _exact_float32():  # a no-op inside export's own preserved_state
        output_names = [name for name, _ in flatten_outputs(probe(model, example))]
        _check_signature(path, graph_inputs, graph_outputs, example, config.output_names or output_names)
        axes = _dynamic_axes(graph_inputs, example)
        cases = [_Case(_label(axes.export_sizes), axes.export_sizes, example)]
        from onnxport.conventions import vocab_size

        cases += _generated_cases(example, axes, settings, vocab_size(model))
        cases += [_sample_case(i, model, sample, axes, config) for i, sample in enumerate(samples or ())]
        tolerances = {name: _tolerance(settings, name) for name in graph_outputs}  # (atol, rtol, allow)
        runs = settings.latency_runs
        results = [_run_case(case, model, session, graph_outputs, tolerances, runs) for case in cases]
        _refuse_sizes_the_model_rejects(model, example, axes, cases, results)
        divergence = _localize(path, model, cases, results, settings) if settings.localize else None

    report = ValidationReport(
        onnx_path=str(published_as or path),
        cases=results,
        atol=settings.atol,
        rtol=settings.rtol,
        per_output={
            name: {"atol": atol, "rtol": rtol, **({"allow_nonfinite": 1} if allow else {})}
            for name, (atol, rtol, allow) in tolerances.items()
            if (atol, rtol, allow) != (settings.atol, settings.rtol, False)
        },
        torch_latency_ms=results[0].torch_ms,  # the export shape
        ort_latency_ms=results[0].ort_ms,
        first_divergence=divergence,
        # The file's hash ties the report to the exact bytes it vouches for (`onnxport inspect`).
        run={**run_context(), "onnx_sha256": onnx_sha256 or artifact_sha256(path, data_files(path))},
        reference=Reference(cases, graph_outputs, axes, example),
    )
    if report.passed:
        done("validate", started)
        logger.info("%s", report.summary())
        return report
    error_type = NonFiniteError if report.non_finite else ParityError
    if settings.on_mismatch == "fail":
        # The error stays one line; the table of what failed goes to the log, as on success.
        logger.error("%s", report.summary())
        raise error_type(
            report.failure_message(),
            fix="see error.report.summary(); fix the model or its dynamic axes, or loosen "
            "export.validation.atol/rtol (per_output for one output)",
            report=report,
        )
    logger.warning(
        "validation failed (on_mismatch=warn, so the file is not rejected): %s\n%s",
        report.failure_message(),
        report.summary(),
    )
    return report


# -- file checks -----------------------------------------------------------------------------


def check_file(path: Path) -> None:
    """``onnx.checker`` by path with ``full_check`` (strict shape inference and type checks)."""
    import onnx

    try:
        # By path, not ModelProto: protobuf cannot hold more than 2 GB and the C++ checker
        # resolves external data relative to the file.
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise CheckerError(
            f"onnx.checker rejected {path.name}: {one_line(error)}",
            fix="re-export with a supported opset, or report the exporter bug with this file",
        ) from error


def open_session(path: Path) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for ``path``."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    options = ort.SessionOptions()
    # Prepacking copies every MatMul/Gemm weight into a second, packed buffer up front: a full
    # extra copy of the weights and seconds of start-up for a large model. Without it ONNX Runtime
    # maps the external data file and runs the same operators on the unpacked weights.
    options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        if isinstance(error, ort_errors.NotImplemented) and _uses_bfloat16(path):
            raise SessionError(
                f"onnxruntime {ort.__version__} cannot run {path.name}: no bf16 kernel in ORT's CPU provider "
                f"({one_line(error)})",
                fix="export the model in float32 (model.float() and float32 inputs); cast to bf16 afterwards "
                "for a runtime that has bf16 kernels",
            ) from error
        raise SessionError(
            f"onnxruntime {ort.__version__} cannot load {path.name}: {one_line(error)}",
            fix="export with an opset this onnxruntime supports, or upgrade onnxruntime",
        ) from error


def _uses_bfloat16(path: Path) -> bool:
    import onnx

    header = onnx.load(os.fspath(path), load_external_data=False)
    bf16 = onnx.TensorProto.BFLOAT16
    values = [*header.graph.input, *header.graph.output, *header.graph.value_info]
    return any(t.data_type == bf16 for t in header.graph.initializer) or any(
        v.type.tensor_type.elem_type == bf16 for v in values
    )


def check_tolerances(settings: ValidationConfig) -> None:
    """Refuse NaN and Inf tolerances: they pass everything, and JSON cannot hold them."""
    import math

    values = [("atol", settings.atol), ("rtol", settings.rtol)]
    for name, override in settings.per_output.items():
        values += [(f"per_output.{name}.atol", override.atol), (f"per_output.{name}.rtol", override.rtol)]
    for key, value in values:
        if value is not None and not math.isfinite(value):
            raise ConfigError(
                f"export.validation.{key}={value} is not a finite number", fix="use a finite tolerance >= 0"
            )


def _check_signature(
    path: Path,
    graph_inputs: list[Any],
    graph_outputs: list[str],
    example: ModelInputs,
    output_names: list[str],
) -> None:
    """The count checks torch.onnx makes internally, and the names ``export`` gives inputs and outputs."""
    names = [meta.name for meta in graph_inputs]
    tensors = example.tensors()
    problems = []
    if len(names) != len(tensors):
        problems.append(
            f"the graph has {len(names)} inputs ({', '.join(names)}) but the example inputs "
            f"flatten to {len(tensors)} tensors"
        )
    elif example.names != names:
        problems.append(f"graph inputs are named {names}, the example inputs {example.names}")
    if len(graph_outputs) != len(output_names):
        problems.append(
            f"the graph has {len(graph_outputs)} outputs ({', '.join(graph_outputs)}) but the model "
            f"returns {len(output_names)} tensors"
        )
    elif output_names != graph_outputs:
        problems.append(f"graph outputs are named {graph_outputs}, the model's outputs {output_names}")
    for meta, tensor in zip(graph_inputs, tensors, strict=False):
        if len(meta.shape) != tensor.dim():
            problems.append(f"graph input {meta.name} has rank {len(meta.shape)}, the example {tensor.dim()}")
    if problems:
        raise SignatureMismatchError(
            f"{path.name} does not fit the model: {'; '.join(problems)}",
            fix="validate with the model, example inputs and input/output names the file was exported with",
        )


# -- the inputs of each case -----------------------------------------------------------------


def _sample_case(index: int, model: Any, sample: Any, axes: _Axes, config: ExportConfig) -> _Case:
    inputs = prepare_inputs(model, sample, config)
    sizes = {
        symbol: inputs.tensors()[where[0][0]].shape[where[0][1]] for symbol, where in axes.positions.items()
    }
    return _Case(f"sample_{index}", sizes, inputs, real=True)


# -- the shape matrix ----------------------------------------------------------------------


@dataclass
class _Axes:
    """Dynamic axes read from the graph: symbol -> [(input index, axis)], and their export sizes."""

    positions: dict[str, list[tuple[int, int]]]
    export_sizes: dict[str, int]


@dataclass
class _Case:
    label: str
    sizes: dict[str, int]
    inputs: ModelInputs
    real: bool = False
    """The caller's data, not generated inputs."""
    expected: Optional[list[np.ndarray]] = None
    """The eager outputs, once computed (``None``: torch could not run this case)."""
    seed: Optional[int] = None
    """The seed of generated inputs; ``None`` for the example and the caller's samples."""
    vocab: Optional[int] = None
    padded: Optional[np.ndarray] = None
    """Padded ``(batch, sequence)`` positions of a transformers model's ``attention_mask``: not compared."""


@dataclass
class Reference:
    """What the fp32 validation computed and the variants are compared with: cases, eager outputs."""

    cases: list[_Case]
    output_names: list[str]
    axes: _Axes
    example: ModelInputs


def _dynamic_axes(graph_inputs: list[Any], example: ModelInputs) -> _Axes:
    """Every non-constant graph input dim; one symbol shared by inputs varies them together."""
    positions: dict[str, list[tuple[int, int]]] = {}
    export_sizes: dict[str, int] = {}
    for index, (meta, tensor) in enumerate(zip(graph_inputs, example.tensors(), strict=True)):
        for axis, dim in enumerate(meta.shape):
            if isinstance(dim, int):
                continue
            # unnamed dynamic dims get a name of their own (dots would nest the DVC metric keys)
            symbol = dim if isinstance(dim, str) and dim else f"{meta.name}_axis{axis}"
            positions.setdefault(symbol, []).append((index, axis))
            export_sizes.setdefault(symbol, int(tensor.shape[axis]))
    return _Axes(positions, export_sizes)


def _generated_cases(
    example: ModelInputs, axes: _Axes, settings: ValidationConfig, vocab: Optional[int]
) -> list[_Case]:
    """Vary one symbol at a time over its sizes, then all symbols at their largest size."""
    matrix: list[dict[str, int]] = []
    largest = {}
    for symbol, export_size in axes.export_sizes.items():
        sizes = sorted(set(settings.sizes or (1, 2 * export_size + 1)) - {export_size})
        largest[symbol] = max([export_size, *sizes])
        matrix += [{**axes.export_sizes, symbol: size} for size in sizes]
    if len(axes.export_sizes) > 1 and largest not in matrix and largest != axes.export_sizes:
        matrix.append(largest)
    cases = []
    for number, sizes in enumerate(matrix, start=1):
        inputs = _random_inputs(example, axes, sizes, settings.seed + number, vocab)
        cases.append(_Case(_label(sizes), sizes, inputs, seed=settings.seed + number, vocab=vocab))
    return cases


def _random_inputs(
    example: ModelInputs, axes: _Axes, sizes: dict[str, int], seed: int, vocab: Optional[int] = None
) -> ModelInputs:
    """Seeded inputs like ``example`` with the dynamic axes resized: values as the example shows them."""
    resized: dict[str, dict[int, int]] = {}
    for symbol, where in axes.positions.items():
        for index, axis in where:
            resized.setdefault(example.names[index], {})[axis] = sizes[symbol]
    return generate_like(example, resized, seed, vocab_size=vocab)


def _refuse_sizes_the_model_rejects(
    model: Any, example: ModelInputs, axes: _Axes, cases: list[_Case], results: list[CaseResult]
) -> None:
    """Raise :class:`AxisNotDynamicError` when eager PyTorch fails at a generated size.

    The same generated values at the export sizes tell the two causes apart: if the model runs on
    them, the sizes are what it refuses (the axis is not dynamic); if not, the values are, and the
    case stays a failed case of the report.
    """
    for case, result in zip(cases, results, strict=True):
        if case.seed is None or not (result.error or "").startswith("torch raised"):
            continue
        at_export = _random_inputs(example, axes, axes.export_sizes, case.seed, case.vocab)
        try:
            at_export.call(model)
        except Exception:
            continue  # the generated values, not the sizes, are what the model refuses
        changed = {s: n for s, n in case.sizes.items() if n != axes.export_sizes[s]}
        raise AxisNotDynamicError(
            f"the model does not accept {' with '.join(f'{s} = {n}' for s, n in changed.items())}: "
            f"{'this axis is' if len(changed) == 1 else 'these axes are'} not dynamic "
            f"({'; '.join(_where(example, axes, s) for s in changed)}; at {case.label} {result.error})",
            fix=_static_fix(example, axes, changed),
            axes=changed,
        )


def _where(example: ModelInputs, axes: _Axes, symbol: str) -> str:
    places = ", ".join(f"{example.names[index]} axis {axis}" for index, axis in axes.positions[symbol])
    return f"{symbol} is {places}"


def _static_fix(example: ModelInputs, axes: _Axes, changed: dict[str, int]) -> str:
    """The settings that keep the refused axes static (the inputs' other axes stay), or other sizes."""
    kept: dict[str, dict[int, str]] = {}
    for symbol, where in axes.positions.items():
        for index, axis in where:
            entry = kept.setdefault(example.names[index], {})
            if symbol not in changed:
                entry[axis] = symbol
    touched = sorted({example.names[index] for symbol in changed for index, _ in axes.positions[symbol]})
    setting = ", ".join(f"{name}: {_axis_text(kept[name])}" for name in touched)
    batch = " (or export.dynamic_batch=false)" if set(changed) == {"batch"} else ""
    return (
        f"keep the axis static with export.dynamic_axes={{{setting}}}{batch}, or list the sizes the "
        "model takes in export.validation.sizes"
    )


def _axis_text(mapping: dict[int, str]) -> str:
    return "{" + ", ".join(f"{axis}: {name}" for axis, name in sorted(mapping.items())) + "}"


def _label(sizes: dict[str, int]) -> str:
    return ",".join(f"{symbol}={size}" for symbol, size in sizes.items()) or "export"


# -- parity ----------------------------------------------------------------------------------


def _run_case(
    case: _Case,
    model: Any,
    session: onnxruntime.InferenceSession,
    output_names: list[str],
    tolerances: dict[str, tuple[float, float, bool]],
    latency_runs: int,
) -> CaseResult:
    result = CaseResult(case.label, case.sizes)
    feed = case.inputs.feed()
    try:
        expected, result.torch_ms = _timed(lambda: case.inputs.call(model), latency_runs)
        expected = _flat_outputs(expected)
        case.expected = [to_numpy(value) for value in expected]
    except Exception as error:  # the model itself cannot run at this size
        result.error = f"torch raised {type(error).__name__}: {one_line(error)}"
        return result
    try:
        actual, result.ort_ms = _timed(lambda: session.run(None, feed), latency_runs)
    except Exception as error:  # e.g. a Reshape that baked in the export size
        result.error = f"onnxruntime raised {one_line(error)}"
        return result
    if len(expected) != len(actual):
        result.error = f"torch returned {len(expected)} tensors, onnxruntime {len(actual)}"
        return result
    case.padded = padded_positions(model, case.inputs.names, case.inputs.tensors())
    for name, torch_value, ort_value in zip(output_names, expected, actual, strict=True):
        atol, rtol, allow = tolerances[name]
        torch_value = to_numpy(torch_value)
        ort_value, skipped = _unpadded(torch_value, np.asarray(ort_value), case.padded)
        check = compare(name, torch_value, ort_value, atol, rtol, allow_nonfinite=allow)
        check.padding_skipped = skipped
        result.outputs.append(check)
    return result


def _unpadded(
    expected: np.ndarray, actual: np.ndarray, padded: Optional[np.ndarray]
) -> tuple[np.ndarray, int]:
    """``actual`` with torch's values at padded positions (outputs shaped ``(batch, sequence, ...)``),
    and how many elements that left out."""
    if padded is None or actual.shape != expected.shape or actual.shape[:2] != padded.shape:
        return actual, 0
    where = np.broadcast_to(padded.reshape(padded.shape + (1,) * (actual.ndim - 2)), actual.shape)
    return np.where(where, expected, actual), int(where.sum())


def _localize(
    path: Path, model: Any, cases: list[_Case], results: list[CaseResult], settings: ValidationConfig
) -> Optional[str]:
    """Name the first diverging operator at the first case whose outputs could be compared."""
    for case, result in zip(cases, results, strict=True):
        if not result.passed and result.error is None:
            divergence = first_divergence(path, model, case.inputs, settings.atol, settings.rtol)
            return f"{divergence} at {case.label}" if divergence else None
    return None


def _flat_outputs(outputs: Any) -> list[torch.Tensor]:
    return [tensor for _, tensor in flatten_outputs(outputs)]


def _tolerance(settings: ValidationConfig, name: str) -> tuple[float, float, bool]:
    override = settings.per_output.get(name)
    if override is None:
        return settings.atol, settings.rtol, False
    return (
        settings.atol if override.atol is None else override.atol,
        settings.rtol if override.rtol is None else override.rtol,
        override.allow_nonfinite,
    )


def _timed(function: Any, runs: int) -> tuple[Any, Optional[float]]:
    """The parity call's result, and its median milliseconds over up to ``runs`` calls.

    The parity call itself is the warm-up. Timing stops once it has taken
    :data:`LATENCY_BUDGET_S` (a large model gets one timed call, not ``runs``), so latency
    never dominates validation; ``runs`` 0 times nothing.
    """
    start = time.perf_counter()
    value = function()
    first = time.perf_counter() - start
    if runs <= 0:
        return value, None
    timings = [first]
    if first < LATENCY_BUDGET_S:
        timings = []
        spent = first
        while len(timings) < runs and spent < LATENCY_BUDGET_S:
            start = time.perf_counter()
            function()
            timings.append(time.perf_counter() - start)
            spent += timings[-1]
    return value, 1000.0 * statistics.median(timings)


# -- context ----------------------------------------------------------------------------------


def _check_model(model: Any) -> None:
    if not callable(model) and not isinstance(model, torch.export.ExportedProgram):
        raise InputError(
            f"validate() needs the PyTorch model, got {type(model).__name__}",
            fix="pass the nn.Module the file was exported from",
        )


@contextlib.contextmanager
def _exact_float32() -> Iterator[None]:
    """TF32 off: it would make torch, not the ONNX file, the inexact side on Ampere GPUs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# -- variants --------------------------------------------------------------------------------

FP16_ATOL = 1e-2
"""Default absolute tolerance of an fp16 variant. Its weights round at ~5e-4 relative; measured worst
differences: 1.2e-3 on a 4-layer d=256 TransformerEncoder (outputs ~1), 1.1e-2 on the trained digits
CNN's logits (magnitude ~10, inside ``FP16_RTOL``)."""
FP16_RTOL = 1e-2
"""Default relative tolerance of an fp16 variant."""
INT8_MIN_COSINE = 0.99
"""Default smallest cosine similarity of an int8 variant's output with PyTorch's, per case. Measured:
0.99995+ (digits CNN, dynamic and static on real digits), 0.9992 (TransformerEncoder 4x256, static)."""
INT8_MIN_TOP1 = 0.95
"""Default smallest top-1 agreement of an int8 variant's class scores with PyTorch's (measured 1.0
on the trained digits CNN over 320 real images, dynamic and static)."""


def variant_criteria(variant: VariantConfig, settings: ValidationConfig, output: str) -> dict[str, Any]:
    """``atol``, ``rtol``, ``min_cosine``, ``min_top1`` for one output of ``variant`` (``None``: not checked).

    Defaults by precision: fp32 (optimised) keeps ``export.validation``'s tolerances, fp16 uses
    :data:`FP16_ATOL`/:data:`FP16_RTOL`, int8 is judged by agreement (:data:`INT8_MIN_COSINE`,
    :data:`INT8_MIN_TOP1`). The variant's values override them, ``per_output`` overrides those.
    """
    atol, rtol, allow = _tolerance(settings, output)
    defaults: dict[str, Optional[float]] = {
        "fp32": {"atol": atol, "rtol": rtol, "min_cosine": None, "min_top1": None},
        "fp16": {"atol": FP16_ATOL, "rtol": FP16_RTOL, "min_cosine": None, "min_top1": None},
        "int8": {"atol": None, "rtol": None, "min_cosine": INT8_MIN_COSINE, "min_top1": INT8_MIN_TOP1},
    }[variant.precision]
    override = variant.per_output.get(output)
    chosen = {}
    for key, default in defaults.items():
        value = getattr(override, key, None) if override is not None else None
        chosen[key] = (
            value
            if value is not None
            else getattr(variant, key)
            if getattr(variant, key) is not None
            else default
        )
    if chosen["atol"] is not None or chosen["rtol"] is not None:
        chosen["atol"] = chosen["atol"] or 0.0
        chosen["rtol"] = chosen["rtol"] or 0.0
    chosen["allow_nonfinite"] = allow  # export.validation.per_output.<name>.allow_nonfinite holds here too
    return chosen


def validate_variant(
    path: Path,
    reference: Reference,
    variant: VariantConfig,
    settings: ValidationConfig,
    *,
    published_as: Path,
    extra_cases: Sequence[_Case] = (),
) -> VariantReport:
    """Compare the variant at ``path`` with the eager outputs the fp32 validation computed.

    Every case of the fp32 validation is run, then ``extra_cases`` (:func:`calibration_cases`).
    For int8, when real data was among the cases (``validation_samples``, ``export.validation.data``,
    calibration batches), generated cases are reported but not judged: a quantized model is
    calibrated to its data's range, and random inputs outside it say nothing about its accuracy.
    Never raises for a mismatch: the caller applies ``on_mismatch``.
    """
    names = reference.output_names
    criteria = {name: variant_criteria(variant, settings, name) for name in names}
    report = VariantReport(variant.name, str(published_as), {}, on_mismatch=variant.on_mismatch)
    try:
        check_file(path)
        session = open_session(path)
    except (CheckerError, SessionError) as error:  # a broken variant is rejected like a mismatching one
        report.cases = [CaseResult("load", {}, error=error.message)]
        return report
    cases = [*reference.cases, *extra_cases]
    real = any(case.real for case in cases)
    unjudged = [
        case.label
        for case in cases
        if case.expected is None or (variant.precision == "int8" and real and not case.real)
    ]
    agreement: dict[str, list[np.ndarray]] = {}
    results = []
    for case in cases:
        result = CaseResult(case.label, case.sizes)
        results.append(result)
        if case.expected is None:
            result.error = "torch could not run this case (see the fp32 validation)"
            continue
        try:
            actual = session.run(None, _feed_for(session, case.inputs.feed()))
        except Exception as error:
            result.error = f"onnxruntime raised {one_line(error)}"
            continue
        for name, expected, value in zip(names, case.expected, actual, strict=True):
            value, skipped = _unpadded(expected, np.asarray(value), case.padded)
            result.outputs.append(_variant_check(name, expected, value, criteria[name]))
            result.outputs[-1].padding_skipped = skipped
            if (
                criteria[name]["min_top1"] is not None
                and _class_scores(expected)
                and case.label not in unjudged
            ):
                agreement.setdefault(name, []).append(expected.argmax(-1) == np.asarray(value).argmax(-1))
    first = criteria[names[0]] if names else {}
    report.criteria = {"precision": variant.precision, **first, "per_output": _differing(criteria)}
    report.cases = results
    rows = {name: np.concatenate(matches) for name, matches in agreement.items()}
    report.top1 = {name: float(match.mean()) for name, match in rows.items()}
    report.top1_rows = {name: len(match) for name, match in rows.items()}
    report.min_top1 = {
        name: criteria[name]["min_top1"]
        for name, match in rows.items()
        if _enough_rows(len(match), criteria[name]["min_top1"])
    }
    report.unjudged = unjudged
    report.latency_ms = session_latency(session, reference, settings.latency_runs)  # the session at hand
    return report


CALIBRATION_CASES = 2
"""Calibration batches a static int8 variant is also judged on when no real validation data was given."""


def calibration_cases(
    model: Any, reference: Reference, feeds: Sequence[dict[str, np.ndarray]]
) -> list[_Case]:
    """The first :data:`CALIBRATION_CASES` calibration batches as real cases, with their eager outputs.

    Static int8 is calibrated to its data's range: without held-out data (``export.validation.data``)
    it is judged on the data it was calibrated on rather than on random inputs outside that range
    (measured on the digits CNN: cosine 0.99996 on digits, 0.80 on standard-normal inputs).
    """
    from onnxport.datasource import as_inputs

    cases = []
    with preserved_state(model), _exact_float32():
        for index, feed in enumerate(feeds[:CALIBRATION_CASES]):
            inputs = as_inputs(feed, reference.example)
            tensors = inputs.tensors()
            sizes = {
                symbol: tensors[where[0][0]].shape[where[0][1]]
                for symbol, where in reference.axes.positions.items()
            }
            case = _Case(f"calibration_{index}", sizes, inputs, real=True)
            case.expected = [to_numpy(value) for value in _flat_outputs(inputs.call(model))]
            case.padded = padded_positions(model, inputs.names, inputs.tensors())
            cases.append(case)
    return cases


def _enough_rows(rows: int, min_top1: float) -> bool:
    """Top-1 agreement is judged over enough rows that one disagreement can stay above ``min_top1``
    (20 rows at 0.95): over the 8 rows of a generated shape matrix, one near-tie of an untrained
    head flipping would fail a variant whose scores agree to a cosine of 0.9999."""
    return min_top1 >= 1.0 or rows * (1.0 - min_top1) >= 1.0 - 1e-9


def _differing(criteria: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    first = next(iter(criteria.values()))
    return {name: values for name, values in criteria.items() if values != first}


def _variant_check(
    name: str, expected: np.ndarray, actual: np.ndarray, criteria: dict[str, Any]
) -> OutputCheck:
    judged = criteria["atol"] is not None
    allow = criteria["allow_nonfinite"]
    check = compare(
        name, expected, actual, criteria["atol"] or 0.0, criteria["rtol"] or 0.0, allow_nonfinite=allow
    )
    check.judged_by_tolerance = judged
    if np.issubdtype(expected.dtype, np.floating) and check.error is None:
        check.cosine = cosine(expected, actual)
        check.min_cosine = criteria["min_cosine"]
    return check


def cosine(expected: np.ndarray, actual: np.ndarray) -> float:
    """Cosine similarity of two tensors as flat vectors; 1.0 when both are all zeros."""
    a = expected.astype(np.float64).ravel()
    b = actual.astype(np.float64).ravel()
    finite = np.isfinite(a) & np.isfinite(b)  # NaN/Inf are judged by compare, not here
    a, b = a[finite], b[finite]
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.clip(a @ b / norms, -1.0, 1.0))


def _class_scores(value: np.ndarray) -> bool:
    """A 2-D float output with several columns: one row of class scores per sample."""
    return value.ndim == 2 and value.shape[1] > 1 and np.issubdtype(value.dtype, np.floating)


def _feed_for(session: onnxruntime.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feed`` cast to the session's input types (an fp16 variant with ``fp16_io`` takes float16)."""
    types = {meta.name: meta.type for meta in session.get_inputs()}
    return {
        name: value.astype(np.float16) if types.get(name) == "tensor(float16)" else value
        for name, value in feed.items()
    }


LATENCY_BATCHES = (1, 32)
"""Batch sizes each file of a run is timed at, when its batch axis is dynamic."""


def file_latency(path: Path, reference: Reference, runs: int) -> dict[str, float]:
    """:func:`session_latency` of the file at ``path`` in a session of its own."""
    return session_latency(open_session(path), reference, runs) if runs > 0 else {}


def session_latency(
    session: onnxruntime.InferenceSession, reference: Reference, runs: int
) -> dict[str, float]:
    """Median ONNX Runtime milliseconds at batch 1 and 32 (the first input's axis 0 when it is
    dynamic; else at the export shape), time-boxed like the validation's latency."""
    if runs <= 0:
        return {}
    axes, example = reference.axes, reference.example
    batch = next((symbol for symbol, where in axes.positions.items() if (0, 0) in where), None)
    sizes = [{**axes.export_sizes, batch: n} for n in LATENCY_BATCHES] if batch else [axes.export_sizes]
    timings = {}
    for number, case_sizes in enumerate(sizes):
        inputs = _random_inputs(example, axes, case_sizes, seed=number) if batch else example
        feed = _feed_for(session, inputs.feed())
        try:
            _, milliseconds = _timed(lambda feed=feed: session.run(None, feed), runs)
        except Exception:  # a file that cannot run at this size says so in its validation
            continue
        if milliseconds is not None:
            timings[f"{batch}={case_sizes[batch]}" if batch else "export"] = milliseconds
    return timings
