"""Variants: the fp32 export optimised and/or reduced in precision, in the workflow's transform slot.

One function per kind; each reads a file (the staged fp32 artifact, or the previous step's
result), writes one self-contained ``.onnx`` into a folder of the staging directory and
returns its path. :func:`transform` chains them as a :class:`~onnxport.config.VariantConfig`
asks: the graph optimisation first (``optimize``), then the precision (``precision``).
:func:`provenance` is the metadata the published variant carries besides the fp32 file's.

The results are byte-identical on re-run: every tool writes to a fixed name in a fresh
folder, nothing here records a path or a time, and ``publish.finalize`` then scrubs doc
strings, fixes the producer and sorts the metadata as it does for the fp32 file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxport.config import VariantConfig
from onnxport.errors import ExportError, one_line

logger = logging.getLogger(__name__)

METADATA_KEY = "onnxport.variant"
"""The metadata key a variant file carries its name under (stale variant files are found by it)."""

Feed = dict[str, np.ndarray]


def transform(source: Path, folder: Path, variant: VariantConfig, calibration: Sequence[Feed] = ()) -> Path:
    """``source`` turned into ``variant`` inside ``folder`` (created); returns the new file's path.

    ``calibration`` is the feeds static int8 calibrates on (see :mod:`onnxport.datasource`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    # A self-contained copy: the tools write data references relative to their input's folder.
    source = path = _save(_load(source), folder / "source.onnx")
    if variant.optimize == "ort":
        path = optimize_ort(path, folder / "ort.onnx")
    elif variant.optimize == "slim":
        path = optimize_slim(path, folder / "slim.onnx")
    if variant.precision == "fp16":
        path = to_fp16(path, folder / "fp16.onnx", keep_io_types=not variant.fp16_io)
    elif variant.precision == "int8" and variant.quantization == "dynamic":
        path = quantize_dynamic(path, folder / "int8.onnx")
    elif variant.precision == "int8":
        path = quantize_static(path, folder / "int8.onnx", calibration)
    return path


def describe(variant: VariantConfig) -> tuple[str, str]:
    """``(transform, library versions)`` for the variant's metadata, e.g. ``("ort+int8-dynamic", ...)``."""
    import onnxruntime

    steps, versions = [], {}
    if variant.optimize == "ort":
        steps.append("ort-basic")
        versions["onnxruntime"] = onnxruntime.__version__
    elif variant.optimize == "slim":
        import onnxslim

        steps.append("onnxslim")
        versions["onnxslim"] = onnxslim.__version__
    if variant.precision == "fp16":
        steps.append("fp16-io16" if variant.fp16_io else "fp16")
        versions["onnxruntime"] = onnxruntime.__version__  # onnxruntime.transformers.float16
    elif variant.precision == "int8":
        steps.append(f"int8-{variant.quantization}")
        versions["onnxruntime"] = onnxruntime.__version__  # onnxruntime.quantization
    return "+".join(steps) or "copy", ",".join(f"{k}=={v}" for k, v in sorted(versions.items()))


def provenance(variant: VariantConfig, source_sha256: str) -> dict[str, str]:
    """The variant's own ``metadata_props`` beside the fp32 file's: name, transform, source hash, config."""
    import dataclasses

    steps, versions = describe(variant)
    config = json.dumps(dataclasses.asdict(variant), sort_keys=True, separators=(",", ":"))
    return {
        METADATA_KEY: variant.name,
        f"{METADATA_KEY}.transform": steps,
        f"{METADATA_KEY}.transform_versions": versions,
        f"{METADATA_KEY}.source_sha256": source_sha256,
        f"{METADATA_KEY}.config": config,
    }


# -- graph optimisation ------------------------------------------------------------------------


def optimize_ort(source: Path, target: Path) -> Path:
    """ONNX Runtime's offline optimiser at ``ORT_ENABLE_BASIC``: constant folding, redundant node
    removal and fusions made of standard ONNX operators only, so the file runs on any runtime
    (the extended and layout levels insert ``com.microsoft`` operators and CPU-specific layouts)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = os.fspath(target)
    try:
        ort.InferenceSession(os.fspath(source), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise _failed("optimize=ort", source, error) from error
    return _save(_load(target), target)  # ORT writes weights inline; re-saved without its doc strings


def optimize_slim(source: Path, target: Path) -> Path:
    """onnxslim's default pipeline: constant folding, dead code and shape-op elimination, fusions."""
    import onnxslim

    try:
        model = onnxslim.slim(_load(source))
    except Exception as error:
        raise _failed("optimize=slim", source, error) from error
    return _save(model, target)


# -- precision ---------------------------------------------------------------------------------


FP16_ALWAYS_BLOCKED = ("Range", "Resize", "Upsample", "NonMaxSuppression", "TopK", "RoiAlign")
"""Kept in float32 whatever ORT has kernels for: their float inputs are sizes or coordinates."""


def to_fp16(source: Path, target: Path, *, keep_io_types: bool = True) -> Path:
    """Weights and compute in float16, except operators ORT's CPU provider has no float16 kernel for.

    Those (see :func:`cpu_fp16_blocklist`) stay float32 behind Cast nodes, so the file runs and
    validates on this machine; GPU runtimes would run more of it in float16. ``keep_io_types``
    keeps the graph's float inputs and outputs float32, so a caller's feed does not change.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = _load(source)
    blocked = set(FP16_ALWAYS_BLOCKED) | cpu_fp16_blocklist(
        {node.op_type for node in _all_nodes(model.graph)}
    )
    for _ in range(8):  # a kernel missing for one type combination shows only in a session
        converted = convert_float_to_float16(
            onnx.ModelProto.FromString(model.SerializeToString()),
            keep_io_types=keep_io_types,
            op_block_list=sorted(blocked),
            disable_shape_infer=False,
        )
        _drop_cast_round_trips(converted.graph)
        _store_weights_fp16(converted.graph)
        _sort_nodes(converted.graph)  # the converter appends its Cast nodes at the end
        del converted.graph.value_info[:]  # typed before the passes above; inference redoes it
        missing = _missing_kernel(converted)
        if missing is None:
            return _save(converted, target)
        if missing in blocked:
            break
        blocked.add(missing)
    raise ExportError(
        f"precision=fp16: onnxruntime cannot run {source.name} in float16 (no CPU kernel for {missing})",
        fix="use precision int8 or fp32 for this model, or report the operator",
    )


def _drop_cast_round_trips(graph: Any) -> None:
    """Remove ``Cast(float16) -> Cast(float)`` pairs the converter puts between two blocked operators:
    they only round an activation to float16 and back, costing time and precision for nothing."""
    import onnx

    def cast_to(node: Any) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {value.name for value in graph.output}
    dropped: set[int] = set()
    rename: dict[str, str] = {}
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT16 or node.output[0] in outputs:
            continue
        users = consumers.get(node.output[0], [])
        if not users or any(
            cast_to(user) != onnx.TensorProto.FLOAT or user.output[0] in outputs for user in users
        ):
            continue
        dropped.add(id(node))
        for user in users:
            dropped.add(id(user))
            rename[user.output[0]] = node.input[0]
    kept = [node for node in graph.node if id(node) not in dropped]
    for node in kept:
        for index, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[index] = name
    del graph.node[:]
    graph.node.extend(kept)


def _sort_nodes(graph: Any) -> None:
    """Order ``graph.node`` so every node comes after the producers of its inputs (stable otherwise)."""
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    nodes = list(graph.node)
    order: list[int] = []
    state: dict[int, int] = {}  # 1 visiting, 2 placed
    for start in range(len(nodes)):
        stack = [(start, iter(nodes[start].input))]
        while stack:
            index, inputs = stack[-1]
            state[index] = state.get(index, 1)
            for name in inputs:
                before = producer.get(name)
                if before is not None and before not in state:
                    stack.append((before, iter(nodes[before].input)))
                    break
            else:
                stack.pop()
                if state[index] != 2:
                    state[index] = 2
                    order.append(index)
    del graph.node[:]
    graph.node.extend(nodes[index] for index in order)


FP16_STORED_MIN_ELEMENTS = 16
"""float32 initializers with fewer elements stay as they are (scalars, shape helpers)."""


def _store_weights_fp16(graph: Any) -> None:
    """The float32 weights a blocked operator still reads, stored as float16 behind one Cast each.

    The file halves like a float16 model's; ONNX Runtime folds the Cast when it loads the file, so
    the operator runs in float32 on float16-rounded weights, as it would after a float16 export.
    """
    import onnx
    from onnx import numpy_helper

    used = {name for node in graph.node for name in node.input} - {value.name for value in graph.input}
    casts = []
    for tensor in graph.initializer:
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        if (
            tensor.data_type != onnx.TensorProto.FLOAT
            or count < FP16_STORED_MIN_ELEMENTS
            or tensor.name not in used
        ):
            continue
        name = tensor.name
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), f"{name}_fp16")
        tensor.CopyFrom(half)
        casts.append(
            onnx.helper.make_node(
                "Cast", [half.name], [name], name=f"{name}_to_fp32", to=onnx.TensorProto.FLOAT
            )
        )
    stale = [value for value in graph.value_info if value.name in {cast.output[0] for cast in casts}]
    for value in stale:  # typed float16 by the converter's shape inference
        graph.value_info.remove(value)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # still sorted: the casts read initializers only


def cpu_fp16_blocklist(op_types: set[str]) -> set[str]:
    """Of ``op_types`` (default domain), those without a float16 kernel in ORT's CPU provider."""
    from onnxruntime.capi import _pybind_state

    with_fp16 = {
        kernel.op_name
        for kernel in _pybind_state.get_all_opkernel_def()
        if kernel.provider == "CPUExecutionProvider"
        and kernel.domain in ("", "ai.onnx")
        and any("tensor(float16)" in types for types in kernel.type_constraints.values())
    }
    return {op for op in op_types if op not in with_fp16}


def _missing_kernel(model: Any) -> str | None:
    """The operator ORT cannot find a kernel for when it loads ``model``, or ``None`` when it loads."""
    import re

    import onnxruntime as ort

    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as error:
        match = re.search(r"implementation for (\w+)\(", str(error))
        if match:
            return match.group(1)
        raise ExportError(
            f"precision=fp16 produced a file onnxruntime cannot load: {one_line(error)}",
            fix="use precision int8 or fp32 for this model, or report the model",
        ) from error
    return None


def quantize_dynamic(source: Path, target: Path) -> Path:
    """Weights int8 (per tensor), activations quantized at run time: ``MatMulInteger`` and friends.

    Convolutions are quantized with uint8 weights: ORT's CPU provider has ``ConvInteger`` for
    uint8 weights only.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as quantize

    prepared = _prepare(source, target.parent / "int8.prepared.onnx")
    try:
        quantize(
            prepared,
            target,
            weight_type=QuantType.QInt8 if not _has_conv(prepared) else QuantType.QUInt8,
        )
    except Exception as error:
        raise _failed("int8 dynamic quantization", source, error) from error
    return _save(_load(target), target)


def quantize_static(source: Path, target: Path, calibration: Sequence[Feed]) -> Path:
    """QDQ int8 (weights per channel, activations int8) calibrated with MinMax on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as quantize

    if not calibration:
        raise ExportError(
            f"int8 static quantization of {source.name} got no calibration batches",
            fix="give calibration data (export.variants[].calibration)",
        )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds: Iterator[Feed] = iter(calibration)

        def get_next(self) -> Feed | None:
            return next(self._feeds, None)

        def rewind(self) -> None:
            self._feeds = iter(calibration)

    prepared = _prepare(source, target.parent / "int8.prepared.onnx")
    try:
        quantize(
            prepared,
            target,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
    except Exception as error:
        raise _failed("int8 static quantization", source, error) from error
    return _save(_load(target), target)


def _prepare(source: Path, target: Path) -> Path:
    """ORT's quantization pre-processing: symbolic shape inference and basic optimisation, so every
    tensor has the shape the quantizer needs. Falls back to the file as it is when it cannot run."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(os.fspath(source), os.fspath(target), skip_symbolic_shape=False)
    except Exception as error:  # symbolic shape inference does not know every operator
        logger.info("quantization pre-processing skipped for %s: %s", source.name, one_line(error))
        return _save(_load(source), target)
    return target


def _has_conv(path: Path) -> bool:
    return any(node.op_type == "Conv" for node in _all_nodes(_load(path).graph))


# -- files -------------------------------------------------------------------------------------


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(os.fspath(path))  # external data (the staged fp32 layout) read in


def _save(model: Any, target: Path) -> Path:
    """One self-contained file; over 2 GB the weights go to ``<target>.data`` beside it."""
    import onnx

    from onnxport.publish import PROTOBUF_LIMIT, payload_bytes

    large = payload_bytes(model.graph.initializer) >= PROTOBUF_LIMIT - (64 << 20)
    onnx.save_model(
        model,
        os.fspath(target),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=f"{target.name}.data",
    )
    return target


def _all_nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _all_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_nodes(subgraph)


def _failed(step: str, source: Path, error: BaseException) -> ExportError:
    return ExportError(
        f"{step} failed on {source.name}: {one_line(error)}",
        fix="remove or change this variant in export.variants, or report the model",
    )
