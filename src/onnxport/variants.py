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

import contextlib
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
    elif variant.precision == "int8":
        with _quantizer_logs_at_debug():
            if variant.quantization == "dynamic":
                path = quantize_dynamic(path, folder / "int8.onnx")
            else:
                path = quantize_static(path, folder / "int8.onnx", calibration)
    return path


def describe(variant: VariantConfig) -> tuple[str, str]:
    """``(transform, library versions)`` for the variant's metadata, e.g. ``("ort+int8-dynamic", ...)``."""
    import onnxruntime

    from onnxport import __version__

    steps, versions = [], {"onnxport": __version__}
    if variant.optimize == "ort":
        steps.append("ort-basic")
        versions["onnxruntime"] = onnxruntime.__version__
    elif variant.optimize == "slim":
        import onnxslim

        steps.append("onnxslim")
        versions["onnxslim"] = onnxslim.__version__
    if variant.precision == "fp16":
        steps.append("fp16-weights-io16" if variant.fp16_io else "fp16-weights")
    elif variant.precision == "int8":
        steps.append(f"int8-{variant.quantization}")
        versions["onnxruntime"] = onnxruntime.__version__  # onnxruntime.quantization
    return "+".join(steps) or "copy", ",".join(f"{k}=={v}" for k, v in sorted(versions.items()))


def provenance(
    variant: VariantConfig, source_sha256: str, calibration: Sequence[Feed] = ()
) -> dict[str, str]:
    """The variant's own ``metadata_props`` beside the fp32 file's: name, transform, source hash,
    config and, for static int8, the hash of the calibration data (it decides the scales)."""
    import dataclasses

    steps, versions = describe(variant)
    config = json.dumps(dataclasses.asdict(variant), sort_keys=True, separators=(",", ":"))
    props = {
        METADATA_KEY: variant.name,
        f"{METADATA_KEY}.transform": steps,
        f"{METADATA_KEY}.transform_versions": versions,
        f"{METADATA_KEY}.source_sha256": source_sha256,
        f"{METADATA_KEY}.config": config,
    }
    if calibration:
        props[f"{METADATA_KEY}.calibration_sha256"] = calibration_sha256(calibration)
    return props


def calibration_sha256(calibration: Sequence[Feed]) -> str:
    """sha256 over the calibration feeds: names, dtypes, shapes and bytes, in order."""
    import hashlib

    digest = hashlib.sha256()
    for feed in calibration:
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


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


def to_fp16(source: Path, target: Path, *, keep_io_types: bool = True) -> Path:
    """Weights stored as float16; with ``keep_io_types`` false the graph's float inputs and outputs too.

    Every float32 weight becomes a float16 initializer behind one ``Cast`` to float32, which ONNX
    Runtime folds when it loads the file: the file halves and the operators run in float32 on the
    float16-rounded weights. ONNX Runtime's CPU provider (the one validation runs) has no float16
    kernel for Conv, MatMul, Gemm, Add, Relu, Softmax and the rest of a network's compute, so a
    graph converted to float16 compute (``onnxruntime.transformers.float16``) only gains Cast pairs
    around every operator here, and crashed ONNX Runtime 1.32's full optimisation on a TorchScript
    TransformerEncoder. A float16-compute file for a GPU runtime is a conversion for that runtime.
    """
    model = _load(source)
    _store_weights_fp16(model.graph)
    if not keep_io_types:
        _float16_io(model.graph)
    return _save(model, target)


FP16_STORED_MIN_ELEMENTS = 16
"""float32 initializers with fewer elements stay as they are (scalars, shape helpers)."""


def _store_weights_fp16(graph: Any) -> None:
    """Each float32 weight stored as float16 behind one Cast to float32, placed first in the graph."""
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
    nodes = []
    for node in graph.node:  # the TorchScript exporter keeps some weights in Constant nodes
        nodes.append(node)
        value = (
            next((a.t for a in node.attribute if a.name == "value"), None)
            if node.op_type == "Constant"
            else None
        )
        if (
            value is None
            or value.data_type != onnx.TensorProto.FLOAT
            or int(np.prod(value.dims)) < FP16_STORED_MIN_ELEMENTS
        ):
            continue
        name = node.output[0]
        half = numpy_helper.from_array(numpy_helper.to_array(value).astype(np.float16), value.name)
        value.CopyFrom(half)
        node.output[0] = f"{name}_fp16"
        nodes.append(
            onnx.helper.make_node(
                "Cast", [node.output[0]], [name], name=f"{name}_to_fp32", to=onnx.TensorProto.FLOAT
            )
        )
    del graph.node[:]
    graph.node.extend(casts + nodes)  # still sorted: the casts read initializers only
    del graph.value_info[:]  # retyped values: inference redoes them


def _float16_io(graph: Any) -> None:
    """Float32 graph inputs and outputs become float16, cast to and from float32 at the edges."""
    import onnx

    first, last = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            inner = _float16_edge(graph, value, fields=("input",))
            first.append(_cast(value.name, inner, onnx.TensorProto.FLOAT, name=f"{inner}_cast"))
    for value in graph.output:
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            inner = _float16_edge(graph, value, fields=("input", "output"))
            last.append(_cast(inner, value.name, onnx.TensorProto.FLOAT16, name=f"{inner}_cast"))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(first + nodes + last)
    del graph.value_info[:]  # renamed values: inference redoes them


def _float16_edge(graph: Any, value: Any, fields: tuple[str, ...]) -> str:
    """Make graph input/output ``value`` float16; the nodes' uses of it (in ``fields``) read or
    write ``<name>_fp32`` instead, which is returned."""
    import onnx

    inner = f"{value.name}_fp32"
    for node in graph.node:
        for field in fields:
            names = getattr(node, field)
            for index, name in enumerate(names):
                if name == value.name:
                    names[index] = inner
    value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    return inner


def _cast(source: str, target: str, to: int, name: str) -> Any:
    import onnx

    return onnx.helper.make_node("Cast", [source], [target], name=name, to=to)


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
    """QDQ int8 (weights int8 per channel, activations uint8) calibrated with MinMax on ``calibration``.

    uint8 activations with int8 weights (U8S8) is ONNX Runtime's CPU format: its x86 kernels for
    int8 activations are slow (TransformerEncoder 4x256, batch 32: 0.84x the fp32 latency with int8
    activations, 0.42x with uint8)."""
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
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
    except Exception as error:
        raise _failed("int8 static quantization", source, error) from error
    return _save(_load(target), target)


@contextlib.contextmanager
def _quantizer_logs_at_debug() -> Iterator[None]:
    """onnxruntime.quantization logs its advice on the root logger (per-channel axes of LayerNorm
    weights, pre-processing hints), a wall of warnings for every export: here it goes to DEBUG."""

    def demote(record: logging.LogRecord) -> bool:
        if "onnxruntime" in record.pathname and record.levelno < logging.ERROR:
            logger.debug("onnxruntime.quantization: %s", record.getMessage())
            return False
        return True

    root = logging.getLogger()
    root.addFilter(demote)
    try:
        yield
    finally:
        root.removeFilter(demote)


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

    _drop_unused_opsets(model)
    large = payload_bytes(model.graph.initializer) >= PROTOBUF_LIMIT - (64 << 20)
    onnx.save_model(
        model,
        os.fspath(target),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=f"{target.name}.data",
    )
    return target


def _drop_unused_opsets(model: Any) -> None:
    """Keep the opset imports the graph uses: ONNX Runtime's quantizer declares every domain it
    knows (com.microsoft, training, ...), which tells a runtime the file needs what it does not."""
    used = {"", "ai.onnx"} | {node.domain for node in _all_nodes(model.graph)}
    for function in model.functions:
        used |= {function.domain} | {node.domain for node in function.node}
    kept = [opset for opset in model.opset_import if opset.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


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
