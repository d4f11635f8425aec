"""Turn a raw exported file into the published artifact, and put it in place atomically.

The published bytes depend only on the weights, the config and the tool versions:
exporter stack traces, absolute paths and symbol tables are scrubbed, producer
fields are fixed, and provenance goes into ``metadata_props`` under ``onnxport.``.
Everything is staged in a private directory beside the output (same filesystem),
and moved with ``os.replace`` only once the caller says so.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxport.config import ExportConfig
from onnxport.errors import InputError, PublishError

if TYPE_CHECKING:
    import onnx

METADATA_PREFIX = "onnxport."
PRODUCER_NAME = "onnxport"
PROTOBUF_LIMIT = 2**31
"""Bytes one protobuf message (one ``.onnx`` file with inline weights) can hold."""


def check_output(output: str | os.PathLike) -> Path:
    """The absolute output path, after checking its directory exists and is writable."""
    path = Path(output).expanduser().absolute()
    if path.suffix != ".onnx":
        raise InputError(f"output {str(output)!r} does not end in .onnx", fix="name the output file *.onnx")
    if path.is_dir():
        raise InputError(f"output {str(output)!r} is a directory", fix="give a file path such as model.onnx")
    directory = path.parent
    if not directory.is_dir():
        raise InputError(
            f"output directory {str(directory)!r} does not exist",
            fix=f"create it first (mkdir -p {directory}) or choose an existing directory",
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(
            f"output directory {str(directory)!r} is not writable",
            fix="choose a directory you can write to, or fix its permissions",
        )
    return path


@contextlib.contextmanager
def staging_dir(output: Path) -> Iterator[Path]:
    """A private directory beside ``output``, removed with everything in it on exit."""
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    except OSError as error:
        raise InputError(
            f"cannot write in output directory {str(output.parent)!r}: {error.strerror}",
            fix="choose a directory you can write to",
        ) from None
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def provenance_metadata(
    config: ExportConfig,
    *,
    exporter: str,
    fallback_reason: str | None,
    weights_sha256: str | None,
) -> dict[str, str]:
    """The ``metadata_props`` of the published file: only what shaped its graph and weights.

    The export settings without ``validation`` (tolerances, report path, timing and sizes
    decide whether the file is published, not its bytes), the tool versions, the weights'
    own hash (``provenance.weights_sha256``) and whether it was validated. The checkpoint
    file's sha256 and the validation results go to the report, so changing only them keeps
    the file byte-identical and a DVC stage downstream of it does not re-run.
    """
    import hashlib
    import json

    from onnxport.config import SCHEMA_VERSION
    from onnxport.provenance import tool_versions

    versions = tool_versions()
    shaping = {key: value for key, value in config.to_dict().items() if key != "validation"}
    config_json = json.dumps(shaping, sort_keys=True, separators=(",", ":"))
    props = {
        "version": versions["onnxport"],
        "schema_version": str(SCHEMA_VERSION),
        "config": config_json,
        "config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
        "torch_version": versions["torch"],
        "onnx_version": versions["onnx"],
        "onnxscript_version": versions["onnxscript"],
        "exporter": exporter,
        "fallback_reason": fallback_reason or "",
        "weights_sha256": weights_sha256 or "",
        "validation_enabled": "true" if config.validation.enabled else "false",
    }
    props = {METADATA_PREFIX + key: value for key, value in props.items()}
    props.update({f"{METADATA_PREFIX}user.{key}": str(value) for key, value in config.metadata.items()})
    return props


def finalize(
    raw: Path,
    staged: Path,
    *,
    metadata: Mapping[str, str],
    model_version: int,
    external_data: bool,
) -> None:
    """Write ``raw`` as ``staged``: scrubbed, with ``metadata``, weights inline or in ``<staged>.data``.

    Weights are streamed one tensor at a time, so a model whose raw export keeps its
    weights in external data (the dynamo path) is published without a second copy of
    them in memory.
    """
    import onnx

    model = onnx.load(str(raw), load_external_data=False)
    scrub(model)
    model.producer_name = PRODUCER_NAME
    model.producer_version = metadata.get(METADATA_PREFIX + "version", "")
    model.model_version = model_version
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        model.metadata_props.add(key=key, value=value)

    tensors = list(model.graph.initializer)
    model.graph.ClearField("initializer")  # the tensors keep their data; the header gets small
    if external_data:
        _write_external(model, tensors, raw.parent, staged)
    else:
        _write_inline(model, tensors, raw.parent, staged)


def _write_inline(model: onnx.ModelProto, tensors: list, raw_dir: Path, staged: Path) -> None:
    """One self-contained file: the header, then each initializer as its own serialized fragment.

    Protobuf merges repeated occurrences of a message field, so ``header + fragments``
    parses as the header with every initializer appended, in order. Each fragment is
    written by hand (``graph { initializer { <tensor without raw_data> raw_data } }``)
    so the weight bytes are copied from the raw export in chunks, never held whole.
    """
    import onnx

    total = payload_bytes(tensors)
    if total >= PROTOBUF_LIMIT:
        raise PublishError(
            f"the weights ({total / 2**30:.1f} GiB) do not fit in one ONNX file (2 GiB protobuf limit)",
            fix="set export.external_data to auto or always (weights go to <name>.onnx.data)",
        )
    graph_field = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
    initializer_field = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
    raw_data_field = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
    with open(staged, "wb") as out:
        out.write(model.SerializeToString())
        for tensor in tensors:
            size = _payload_size(tensor)
            if size is None:  # strings and typed fields: small, serialize as they are
                fragment = onnx.ModelProto(graph=onnx.GraphProto(initializer=[tensor]))
                out.write(fragment.SerializeToString())
                continue
            source = _detach_payload(tensor, raw_dir)
            head = tensor.SerializeToString() + _key(raw_data_field, size)
            tensor_length = len(head) + size
            initializer = _key(initializer_field, tensor_length)
            out.write(_key(graph_field, len(initializer) + tensor_length) + initializer + head)
            source(out)


def _write_external(model: onnx.ModelProto, tensors: list, raw_dir: Path, staged: Path) -> None:
    """The header at ``staged`` and every initializer's bytes in ``<staged>.data`` (relative location)."""
    import onnx

    location = f"{staged.name}.data"  # relative: the pair can be moved together
    with open(staged.parent / location, "wb") as data:
        for tensor in tensors:
            size = _payload_size(tensor)
            if _is_shape_data(tensor, size):  # read by shape inference: it cannot follow external data
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    tensor.raw_data = _read_payload(_detach_payload(tensor, raw_dir))
            elif size is not None:
                source = _detach_payload(tensor, raw_dir)
                offset = data.tell()
                source(data)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", location), ("offset", offset), ("length", size)):
                    tensor.external_data.add(key=key, value=str(value))
            model.graph.initializer.append(tensor)
    with open(staged, "wb") as out:
        out.write(model.SerializeToString())


SHAPE_DATA_BYTES = 1024
"""Integer initializers up to this size (shapes, axes, indices) stay inline in an external layout."""


def _is_shape_data(tensor: onnx.TensorProto, size: int | None) -> bool:
    import onnx

    integer = tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    return integer and size is not None and size <= SHAPE_DATA_BYTES


def _read_payload(write: Any) -> bytes:
    buffer = io.BytesIO()
    write(buffer)
    return buffer.getvalue()


def payload_bytes(tensors: Iterable[onnx.TensorProto]) -> int:
    """Bytes of the initializers' data, inline or external: what decides ``external_data: auto``."""
    return sum(_payload_size(tensor) or 0 for tensor in tensors)


def _payload_size(tensor: onnx.TensorProto) -> int | None:
    """Bytes of the tensor's raw data, inline or external; ``None`` when it has no raw layout."""
    import onnx

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {entry.key: entry.value for entry in tensor.external_data}
        return int(info["length"])
    return len(tensor.raw_data) if tensor.HasField("raw_data") else None


def _detach_payload(tensor: onnx.TensorProto, raw_dir: Path) -> Any:
    """Take the raw data off ``tensor``; returns a function that writes it to a file, in chunks."""
    import onnx

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        payload = tensor.raw_data
        tensor.ClearField("raw_data")
        return lambda out: out.write(payload)
    info = {entry.key: entry.value for entry in tensor.external_data}
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT

    def copy(out: Any) -> None:
        with open(raw_dir / info["location"], "rb") as source:
            source.seek(int(info.get("offset", 0)))
            remaining = int(info["length"])
            while remaining:
                chunk = source.read(min(remaining, 1 << 24))
                if not chunk:
                    raise PublishError(
                        f"the exported weights of {tensor.name!r} are truncated",
                        fix="re-run the export; check the disk is not full",
                    )
                out.write(chunk)
                remaining -= len(chunk)

    return copy


def _key(field_number: int, length: int) -> bytes:
    """A length-delimited protobuf field's tag and length."""
    return _varint(field_number << 3 | 2) + _varint(length)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def scrub(model: onnx.ModelProto) -> None:
    """Drop what differs between runs and machines: doc strings and exporter metadata.

    The dynamo exporter stores stack traces (absolute paths), FX node dumps and symbol
    tables in node, value and graph ``metadata_props``; TorchScript puts source
    locations in ``doc_string``. None of it is needed to run the model.
    """
    model.doc_string = ""
    _scrub_graph(model.graph)
    for function in model.functions:
        function.doc_string = ""
        del function.metadata_props[:]
        for node in function.node:
            _scrub_node(node)
        for value in function.value_info:
            value.doc_string = ""
            del value.metadata_props[:]


def _scrub_graph(graph: onnx.GraphProto) -> None:
    graph.doc_string = ""
    del graph.metadata_props[:]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.doc_string = ""
        del value.metadata_props[:]
    for tensor in graph.initializer:
        tensor.doc_string = ""
        del tensor.metadata_props[:]
    for node in graph.node:
        _scrub_node(node)


def _scrub_node(node: onnx.NodeProto) -> None:
    node.doc_string = ""
    del node.metadata_props[:]
    for attribute in node.attribute:
        if attribute.HasField("g"):
            _scrub_graph(attribute.g)
        for subgraph in attribute.graphs:
            _scrub_graph(subgraph)


def move_into_place(staged: Path, output: Path, *, external_data: bool) -> None:
    """``os.replace`` the staged file (and its ``.data``) onto ``output``.

    The data file moves first so the ``.onnx`` never points at missing weights; a
    ``.data`` left by an earlier external export of the same name is removed.
    """
    data = Path(f"{output}.data")
    try:
        if external_data:
            os.replace(f"{staged}.data", data)
        os.replace(staged, output)
        if not external_data:
            with contextlib.suppress(FileNotFoundError):
                data.unlink()
    except OSError as error:
        raise PublishError(
            f"could not move the exported file to {str(output)!r}: {error.strerror}",
            fix="check the output path and its permissions",
        ) from None


def keep_rejected(staged: Path, output: Path) -> Path:
    """Keep a file that failed validation as ``<stem>.rejected.onnx`` beside the output, for inspection.

    External weights go to ``<stem>.rejected.onnx.data`` and the header is re-pointed there:
    ``<output>.data`` belongs to the published model.
    """
    import onnx

    rejected = output.with_name(f"{output.stem}.rejected.onnx")
    rejected_data = Path(f"{rejected}.data")
    staged_data = Path(f"{staged}.data")
    with contextlib.suppress(OSError):
        if staged_data.exists():
            header = onnx.load(str(staged), load_external_data=False)
            for tensor in header.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = rejected_data.name
            staged.write_bytes(header.SerializeToString())
            os.replace(staged_data, rejected_data)
        else:
            rejected_data.unlink(missing_ok=True)  # left by an earlier rejected external export
        os.replace(staged, rejected)
    return rejected
