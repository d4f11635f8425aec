"""Turn a raw exported file into the published artifact, and put it in place atomically.

The published bytes depend only on the weights, the config and the tool versions:
exporter stack traces, absolute paths and symbol tables are scrubbed, producer
fields are fixed, and provenance goes into ``metadata_props`` under ``onnxport.``.

This module owns the layout on disk:

* the output and report paths are checked (and their directories made) before anything
  is exported;
* everything is staged in a private folder beside the output (same filesystem), named
  after the owning process so a folder left by a killed export is swept by the next one;
* :func:`stage_layouts` writes the file validation reads (weights beside the graph) and
  the file that is published (weights inline, unless they go to external data);
* :func:`commit` has one commit point: external weights go to a data file named after
  their content (``<name>.onnx.<sha12>.data``, referenced from the header), so the
  ``os.replace`` of the header is the only switch from the previous model to the new one.
  The previous model's data file is removed after it; the report is written to a temporary
  file before it and renamed right after.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxport.config import ExportConfig
from onnxport.errors import InputError, PublishError
from onnxport.hashing import artifact_sha256
from onnxport.report import check_report_target, stage_report

if TYPE_CHECKING:
    import onnx

METADATA_PREFIX = "onnxport."
PRODUCER_NAME = "onnxport"
PROTOBUF_LIMIT = 2**31
"""Bytes one protobuf message (one ``.onnx`` file with inline weights) can hold."""


FAULT_ENV = "ONNXPORT_TEST_KILL_AT"
"""Test hook: ``<step>[:<signal>]``, a publish step at which the process signals itself (test_faults.py)."""
PUBLISH_STEPS = ("staged", "validated", "report_staged", "data_placed", "committed", "report_replaced")
_DATA_NAME = re.compile(r"\.([0-9a-f]{12})\.data$")
_STAGING_NAME = re.compile(r"^\..+\.pid(\d+)\.[^.]+\.tmp$")


def check_output(output: str | os.PathLike) -> Path:
    """The absolute output path; its directory is created when missing and must be writable."""
    if not isinstance(output, (str, os.PathLike)):
        raise InputError(
            f"output={output!r} is not a path ({type(output).__name__})",
            fix="give one file path such as model.onnx",
        )
    path = Path(output).expanduser().absolute()
    if path.suffix != ".onnx":
        raise InputError(f"output {str(output)!r} does not end in .onnx", fix="name the output file *.onnx")
    if path.is_dir():
        raise InputError(f"output {str(output)!r} is a directory", fix="give a file path such as model.onnx")
    directory = path.parent
    make_directory("output", directory)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(
            f"output directory {str(directory)!r} is not writable",
            fix="choose a directory you can write to, or fix its permissions",
        )
    return path


def make_directory(key: str, directory: Path) -> None:
    """Create ``directory`` as the CLI and the callback do: one behaviour in every door."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"{key} directory {str(directory)!r} cannot be created ({error.strerror})",
            fix=f"create it first (mkdir -p {directory}) or choose a writable directory",
        ) from None


def report_path(config: ExportConfig, output: Path) -> Path:
    """Where the report goes: ``validation.report``, else ``<output stem>.validation.json`` beside it."""
    if config.validation.report:
        return _absolute(config.validation.report)
    return output.with_name(f"{output.stem}.validation.json")


def check_report(config: ExportConfig, output: Path) -> Path:
    """Everything that can fail about the report, found before anything is exported; returns its path.

    The same holds for the DVC metrics file and plot files ``validation.metrics`` and
    ``validation.plots`` name. Refused: a path that is the output, its data file or one of the
    ``.rejected`` names; a directory; a file that is not what onnxport writes there (a
    checkpoint, say); a directory that cannot be made or written. (Non-finite tolerances:
    :func:`onnxport.validation.check_tolerances`.)
    """
    taken = {
        output: "the output file",
        **{p: "a name kept for a rejected export" for p in rejected_paths(output)},
    }
    for key, target, plot in json_files(config, output):
        if target in taken or target == Path(f"{output}.data") or _is_data_file_of(target, output):
            what = taken.get(target, "the output's data file")
            raise InputError(
                f"{key}={str(target)!r} is {what}; writing there would overwrite it",
                fix=f"set {key} to another file, e.g. {output.with_name(output.stem + '.validation.json')}",
            )
        check_report_target(target, key, plot=plot)
        make_directory(key, target.parent)
        if not os.access(target.parent, os.W_OK | os.X_OK):
            raise InputError(
                f"{key}={str(target)!r} is in a directory that is not writable",
                fix=f"set {key} to a writable path",
            )
    return report_path(config, output)


def json_files(config: ExportConfig, output: Path) -> list[tuple[str, Path, bool]]:
    """``(config key, absolute path, is a plot)`` of every JSON file an export writes beside the model."""
    from onnxport.report import PLOT_NAMES

    settings = config.validation
    files = [("export.validation.report", report_path(config, output), False)]
    if settings.metrics:
        files.append(("export.validation.metrics", _absolute(settings.metrics), False))
    if settings.plots:
        files += [
            ("export.validation.plots", _absolute(settings.plots) / f"{n}.json", True) for n in PLOT_NAMES
        ]
    return files


def _absolute(path: str) -> Path:
    return Path(path).expanduser().absolute()


def rejected_paths(output: Path) -> tuple[Path, Path, Path]:
    """Where a file that failed validation, its data and its report are kept."""
    rejected = output.with_name(f"{output.stem}.rejected.onnx")
    return rejected, Path(f"{rejected}.data"), output.with_name(f"{output.stem}.rejected.validation.json")


def _is_data_file_of(path: Path, output: Path) -> bool:
    return (
        path.parent == output.parent
        and path.name.startswith(f"{output.name}.")
        and bool(_DATA_NAME.search(path.name))
    )


# -- the staging folder ---------------------------------------------------------------------


@contextlib.contextmanager
def staging_dir(output: Path, *also_sweep: Path) -> Iterator[Path]:
    """A private folder beside ``output``, removed with everything in it on exit or SIGTERM.

    Its name carries this process's pid: a folder whose owner is gone (SIGKILL, OOM) is
    swept by the next export into the same directory (and into ``also_sweep``).
    """
    sweep(output, *also_sweep)
    try:
        staging = Path(
            tempfile.mkdtemp(prefix=f".{output.name}.pid{os.getpid()}.", suffix=".tmp", dir=output.parent)
        )
    except OSError as error:
        raise InputError(
            f"cannot write in output directory {str(output.parent)!r}: {error.strerror}",
            fix="choose a directory you can write to",
        ) from None
    try:
        with terminate_as_exit():
            yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def sweep(output: Path, *directories: Path) -> list[Path]:
    """Remove staging folders and temporary reports whose owning process is gone.

    Looks in ``output``'s directory and in ``directories`` (the report's). When no live
    export of ``output`` is under way, data files of ``output`` that its header does not
    reference (left by a kill between placing them and the commit) go too.
    """
    removed: list[Path] = []
    live_here = False
    for directory in dict.fromkeys([output.parent, *directories]):
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                match = _STAGING_NAME.match(entry.name)
                if match is None or entry.is_symlink():
                    continue
                if _alive(int(match.group(1))):
                    live_here = live_here or entry.name.startswith(f".{output.name}.")
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                removed.append(Path(entry.path))
    if not live_here:
        referenced = set(data_files(output))
        for candidate in output.parent.glob(f"{glob_escape(output.name)}.*.data"):
            if _DATA_NAME.search(candidate.name) and candidate not in referenced:
                with contextlib.suppress(OSError):
                    candidate.unlink()
                    removed.append(candidate)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises ``SystemExit(143)`` here, so the same cleanup runs as for an exception.

    Only the main thread can set handlers; elsewhere (and when SIGTERM is ignored) nothing
    changes. A Python handler installed before (Lightning's) still runs first.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def fault_point(step: str) -> None:
    """Test hook: at ``step``, signal this process when ``ONNXPORT_TEST_KILL_AT`` names it.

    ``staged`` sends SIGKILL; ``staged:TERM``, ``staged:INT`` or ``staged:STOP`` send that signal.
    """
    wanted, _, name = os.environ.get(FAULT_ENV, "").partition(":")
    if wanted == step:
        # To this thread, not the process: a process-directed signal may land on a helper thread
        # (torch, ONNX Runtime, the hashing thread), and then Python raises KeyboardInterrupt later.
        signal.raise_signal(getattr(signal, f"SIG{name or 'KILL'}"))


def provenance_metadata(
    config: ExportConfig,
    *,
    exporter: str,
    fallback_reason: str | None,
    weights_sha256: str | None,
) -> dict[str, str]:
    """The ``metadata_props`` of the published file: only what shaped its graph and weights.

    The export settings without ``validation`` (tolerances, report path, timing and sizes
    decide whether the file is published, not its bytes) and without ``variants`` (each variant
    file records its own; adding one leaves this file as it was), the tool versions, the weights'
    own hash (``provenance.weights_sha256``) and whether it was validated. The checkpoint
    file's sha256 and the validation results go to the report, so changing only them keeps
    the file byte-identical and a DVC stage downstream of it does not re-run.
    """
    import hashlib
    import json

    from onnxport.config import SCHEMA_VERSION
    from onnxport.provenance import tool_versions

    versions = tool_versions()
    shaping = {key: value for key, value in config.to_dict().items() if key not in ("validation", "variants")}
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


@dataclass
class Layouts:
    """The staged files of one export: what validation reads and what is published."""

    checked: Path
    """Weights beside the graph: ``onnx.checker`` reads the graph alone (no 2x the weights in memory)."""
    published: Path
    """The file that goes to the output: ``checked`` itself with external data, else an inline copy."""
    external_data: bool
    published_sha256: str | None = None
    """The published artifact's hash, computed while it was written (``None``: read it back)."""

    def data_files(self) -> list[Path]:
        return data_files(self.published)

    def sha256(self) -> str:
        """The published artifact's hash (data, then header), from the staged files."""
        if self.published_sha256 is None:
            self.published_sha256 = artifact_sha256(self.published, self.data_files())
        return self.published_sha256


def stage_layouts(
    raw: Path,
    output: Path,
    staging: Path,
    *,
    metadata: Mapping[str, str],
    model_version: int,
    external_data: bool,
    validating: bool,
) -> Layouts:
    """Finalize ``raw`` into the layouts validation and publishing need ("finalize twice").

    Validation reads a file with its weights beside the graph; when the published file keeps
    its weights inline, the same graph and weights are then streamed into one file. Without
    validation, or with external data, one finalize serves both.
    """
    checked = staging / output.name
    options = {"metadata": metadata, "model_version": model_version}
    sha256 = finalize(raw, checked, **options, external_data=external_data or validating)
    published = checked
    if validating and not external_data:
        published = staging / "inline" / output.name
        try:
            published.parent.mkdir()
        except OSError as error:
            raise disk_error(error, staging) from None
        sha256 = finalize(checked, published, **options, external_data=False)
    fault_point("staged")
    return Layouts(checked, published, external_data, sha256)


def finalize(
    raw: Path,
    staged: Path,
    *,
    metadata: Mapping[str, str],
    model_version: int,
    external_data: bool,
) -> str:
    """Write ``raw`` as ``staged``: scrubbed, with ``metadata``, weights inline or in a data file.

    The data file is ``<staged name>.<sha12>.data``, named after its content. Weights are
    streamed one tensor at a time, so a model whose raw export keeps its weights in external
    data (the dynamo path) is published without a second copy of them in memory. Returns the
    artifact's sha256 (:func:`onnxport.hashing.artifact_sha256`), hashed as it was written.
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
    try:
        if external_data:
            return _write_external(model, tensors, raw.parent, staged)
        return _write_inline(model, tensors, raw.parent, staged)
    except OSError as error:
        raise disk_error(error, staged.parent) from None


def disk_error(error: OSError, directory: Path) -> PublishError:
    """A write that failed beside the output (full disk, quota, I/O) as a one-line error."""
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    return PublishError(
        f"could not write the exported file in {str(directory.parent)!r}: {error.strerror or error}",
        fix="free disk space in the output directory" if full else "check the output directory and its disk",
    )


def data_files(header: Path, *, size_limit: int = 64 << 20) -> list[Path]:
    """The data files ``header`` references (beside it), in order of first use.

    A header over ``size_limit`` bytes keeps its weights inline (an external-data header is
    small), so it is not parsed. Locations that leave the header's directory are ignored.
    """
    import onnx

    try:
        if not header.is_file() or header.stat().st_size > size_limit:
            return []
        model = onnx.load(str(header), load_external_data=False)
    except Exception:  # not an ONNX file: it references nothing onnxport would touch
        return []
    names: dict[str, None] = {}
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and _plain_name(entry.value):
                names[entry.value] = None
    return [header.parent / name for name in names]


def _plain_name(name: str) -> bool:
    return (
        bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name
    )


def _write_inline(model: onnx.ModelProto, tensors: list, raw_dir: Path, staged: Path) -> str:
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
            fix="set export.external_data to auto or always (weights go to <name>.onnx.<sha12>.data)",
        )
    graph_field = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
    initializer_field = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
    raw_data_field = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
    digest = hashlib.sha256()
    with open(staged, "wb") as handle:
        out = _HashingWriter(handle, digest)
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
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


def _write_external(model: onnx.ModelProto, tensors: list, raw_dir: Path, staged: Path) -> str:
    """The header at ``staged``, the initializers' bytes in ``<staged>.<sha12>.data`` (relative location).

    When the raw export already keeps its weights in one data file (the dynamo exporter's), that
    file becomes the published data file: it is hashed once and renamed, never copied. Otherwise
    the payloads are copied into a new data file, hashed as they are written.
    """
    import onnx

    partial = staged.parent / f"{staged.name}.partial.data"
    reused = _raw_data_file(tensors, raw_dir)
    placed: list[tuple[int, int, int]] = []  # (tensor index, offset, length)
    with open(partial, "wb") if reused is None else open(reused, "ab") as handle:
        data = _HashingWriter(handle, hashlib.sha256(), start=handle.tell())
        for index, tensor in enumerate(tensors):
            size = _payload_size(tensor)
            if _is_shape_data(tensor, size):  # read by shape inference: it cannot follow external data
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    tensor.raw_data = _read_payload(_detach_payload(tensor, raw_dir))
            elif reused is not None and tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = {entry.key: entry.value for entry in tensor.external_data}
                del tensor.external_data[:]
                placed.append((index, int(info.get("offset", 0)), size))
            elif size is not None:
                source = _detach_payload(tensor, raw_dir)
                offset = data.tell()
                source(data)
                placed.append((index, offset, size))
        handle.flush()
        os.fsync(handle.fileno())
    if reused is not None:
        os.replace(reused, partial)
        digest = _hash_file(partial)  # the one pass over the weights; the header's hash follows on
    else:
        digest = data.digest
    location = f"{staged.name}.{digest.hexdigest()[:12]}.data"  # relative: the pair moves together
    if placed:
        os.replace(partial, staged.parent / location)
    else:
        partial.unlink()
        digest = hashlib.sha256()
    for index, offset, size in placed:
        tensor = tensors[index]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", offset), ("length", size)):
            tensor.external_data.add(key=key, value=str(value))
    model.graph.initializer.extend(tensors)
    header = model.SerializeToString()
    with open(staged, "wb") as out:
        out.write(header)
        out.flush()
        os.fsync(out.fileno())
    digest.update(header)  # artifact_sha256: the data, then the header
    return digest.hexdigest()


def _raw_data_file(tensors: list, raw_dir: Path) -> Path | None:
    """The one data file beside the raw export that holds every external payload, if there is one."""
    import onnx

    locations = {
        entry.value
        for tensor in tensors
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    if len(locations) != 1:
        return None
    (location,) = locations
    path = raw_dir / location
    return path if _plain_name(location) and path.is_file() and not path.is_symlink() else None


def _hash_file(path: Path, chunk_size: int = 1 << 24) -> Any:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest


class _HashingWriter:
    """A binary file that hashes what is written to it."""

    def __init__(self, handle: Any, digest: Any, start: int = 0) -> None:
        self._handle, self.digest, self._position = handle, digest, start

    def write(self, chunk: bytes) -> int:
        self.digest.update(chunk)
        self._position += len(chunk)
        return self._handle.write(chunk)

    def tell(self) -> int:
        return self._position


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


def commit(layouts: Layouts, output: Path, *, files: Mapping[Path, Any] | None = None) -> None:
    """Publish the staged files at ``output``; the header's ``os.replace`` is the one commit point.

    ``files`` are the JSON files that go with the model (``{path: data}``: the report, DVC
    metrics and plots). In order: each is written to a temporary file beside its path (a full
    disk fails here, before anything changed); the new data file goes beside the output under
    its content-derived name (never the name the previous header uses, unless the bytes are the
    same); the header is renamed onto ``output``; the JSON files are renamed onto their paths;
    the previous data file is removed. A failure before the commit point leaves the previous
    model, its data file and its report as they were.
    """
    previous = [*data_files(output), Path(f"{output}.data")]
    staged_files: dict[Path, Path] = {}
    placed: list[Path] = []
    try:
        for path, data in (files or {}).items():
            staged_files[path] = stage_report(data, path)
        fault_point("report_staged")
        for data_file in layouts.data_files():
            target = output.parent / data_file.name
            os.replace(data_file, target)
            placed.append(target)
        fault_point("data_placed")
        os.replace(layouts.published, output)  # the commit point
    except BaseException as error:
        for target in placed:
            if target not in previous:
                with contextlib.suppress(OSError):
                    target.unlink()
        for temporary in staged_files.values():
            with contextlib.suppress(OSError):
                temporary.unlink()
        if isinstance(error, OSError):
            raise PublishError(
                f"could not move the exported file to {str(output)!r}: {error.strerror}",
                fix="check the output path and its permissions",
            ) from None
        raise
    try:
        fault_point("committed")
        while staged_files:
            path, temporary = next(iter(staged_files.items()))
            os.replace(temporary, path)
            del staged_files[path]
        fault_point("report_replaced")
        for old in previous:
            if old not in placed:
                with contextlib.suppress(OSError):
                    old.unlink()
    finally:  # SIGTERM after the switch: the new model stands; only the temporary files go
        for temporary in staged_files.values():
            with contextlib.suppress(OSError):
                temporary.unlink()


def keep_rejected(staged: Path, output: Path) -> Path:
    """Keep a file that failed validation as ``<stem>.rejected.onnx`` beside the output, for inspection.

    External weights go to ``<stem>.rejected.onnx.data`` and the header is re-pointed there:
    the output's data file belongs to the published model.
    """
    import onnx

    rejected, rejected_data, _ = rejected_paths(output)
    staged_data = data_files(staged)
    with contextlib.suppress(OSError):
        if staged_data:
            header = onnx.load(str(staged), load_external_data=False)
            for tensor in header.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = rejected_data.name
            staged.write_bytes(header.SerializeToString())
            os.replace(staged_data[0], rejected_data)
        else:
            rejected_data.unlink(missing_ok=True)  # left by an earlier rejected external export
        os.replace(staged, rejected)
    return rejected


def remove_stale_variants(output: Path, published: Iterable[str], rejected: Iterable[str] = ()) -> list[Path]:
    """Remove the variant files of ``output`` this run did not write, after it published.

    ``<stem>.<name>.onnx`` stays when this run published ``name``; ``<stem>.<name>.rejected.onnx``
    (with its report) when this run rejected ``name``. Everything else named like a variant of
    ``output`` whose metadata says onnxport wrote it as that variant goes, with its data files: a
    variant dropped from ``export.variants``, or one made from a previous fp32 file. Nothing else
    is touched.
    """
    import onnx

    published, rejected = set(published), set(rejected)
    removed: list[Path] = []
    prefix = f"{output.stem}."
    for candidate in sorted(output.parent.glob(f"{glob_escape(output.stem)}.*.onnx")):
        name = candidate.name[len(prefix) : -len(".onnx")]
        is_rejected = name.endswith(".rejected")
        name = name.removesuffix(".rejected")
        if candidate == output or not name or name in (rejected if is_rejected else published):
            continue
        try:
            header = onnx.load(str(candidate), load_external_data=False)
        except Exception:  # not an ONNX file: not ours
            continue
        if {entry.key: entry.value for entry in header.metadata_props}.get("onnxport.variant") != name:
            continue
        files = [*data_files(candidate), candidate]
        if is_rejected:
            files += [Path(f"{candidate}.data"), candidate.with_name(f"{candidate.stem}.validation.json")]
        for path in files:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed
