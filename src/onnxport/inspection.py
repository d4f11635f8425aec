"""What is inside an ONNX file: signature, opset, sizes, operators and onnxport provenance.

Backs ``onnxport inspect``. Only ``onnx`` is imported (never torch), and external weights
are not loaded: their sizes come from the tensor headers and the files on disk.

The file is not trusted: its metadata may name any path, hold any bytes. Only a report
beside the file or under its directory is read, and only a regular file under a size cap
(a FIFO, a device or a symlink is "no report"); external data is only looked for beside the
file; every string from the file is printed with control characters escaped and long values
truncated; malformed metadata is shown as it is, never a crash.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from onnxport.errors import InputError
from onnxport.hashing import artifact_sha256  # standard library only: no torch
from onnxport.publish import METADATA_PREFIX
from onnxport.report import read_report

TEXT_LIMIT = 200
"""Characters of one value shown by the text report before it is truncated."""


def inspect_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe the ONNX file at ``path`` as plain, JSON-ready data.

    Raises :class:`~onnxport.errors.InputError` when the file is missing or is not an ONNX model.
    """
    path = Path(path)
    model = load_header(path)
    graph = model.graph
    initializers = {_text(init.name) for init in graph.initializer}
    external_files = sorted(
        {
            _text(entry.value)
            for init in graph.initializer
            for entry in init.external_data
            if _text(entry.key) == "location"
        }
    )
    beside = [path.parent / name for name in external_files if _plain_name(name)]
    external_bytes = sum(_file_size(data) for data in beside)
    metadata = {_text(prop.key): _text(prop.value) for prop in model.metadata_props}
    provenance = {
        key[len(METADATA_PREFIX) :]: _maybe_json(value)
        for key, value in sorted(metadata.items())
        if key.startswith(METADATA_PREFIX)
    }
    operators = Counter(_operators(graph))
    variant = _variant(provenance)
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "external_data": external_files,
        "external_data_bytes": external_bytes,
        "weights": {"count": len(graph.initializer), "bytes": sum(map(_tensor_bytes, graph.initializer))},
        "ir_version": model.ir_version,
        "opset": {_text(opset.domain) or "ai.onnx": opset.version for opset in model.opset_import},
        "producer": f"{_text(model.producer_name)} {_text(model.producer_version)}".strip(),
        "model_version": model.model_version,
        "inputs": [_value_info(v) for v in graph.input if _text(v.name) not in initializers],
        "outputs": [_value_info(v) for v in graph.output],
        "operators": dict(sorted(operators.items(), key=lambda item: (-item[1], item[0]))),
        "nodes": sum(operators.values()),
        "provenance": provenance,
        "metadata": {k: v for k, v in sorted(metadata.items()) if not k.startswith(METADATA_PREFIX)},
        "variant": variant,
        **_validation_report(path, provenance, beside, variant),
    }


def load_header(path: Path) -> Any:
    """The ONNX model at ``path`` without its external weights; ``InputError`` when it is none."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise InputError(f"{path} {problem}", fix="pass the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as error:
        raise _not_onnx(path, error) from error
    # Protobuf happily parses many non-ONNX files into an empty message: require a real graph.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise _not_onnx(path, "no ONNX graph in it")
    return model


def format_report(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`inspect_model`'s answer; every string from the file is escaped."""
    size = _human(info["file_bytes"] + info["external_data_bytes"])
    weights = info["weights"]
    external = ", ".join(map(_shown, info["external_data"]))
    lines = [
        f"{_shown(info['path'])}: {size}, "
        f"weights {_human(weights['bytes'])} in {weights['count']} initializers"
        + (f" (external: {external})" if info["external_data"] else ""),
        "opset "
        + ", ".join(f"{_shown(domain)} {version}" for domain, version in info["opset"].items())
        + f"; ir_version {info['ir_version']}; producer {_shown(info['producer']) or '?'}",
    ]
    for title in ("inputs", "outputs"):
        lines.append(f"{title}:")
        names = [_shown(v["name"]) for v in info[title]]
        width = max(map(len, names), default=0)
        for name, value in zip(names, info[title], strict=True):
            shape = ", ".join(_shown(dim) for dim in value["shape"]) if value["shape"] is not None else "?"
            lines.append(f"  {name:<{width}}  {_shown(value['dtype']):<8} [{shape}]")
    lines.append(f"operators ({info['nodes']} nodes):")
    lines += [f"  {count:>5}  {_shown(op)}" for op, count in info["operators"].items()]
    for title in ("provenance", "metadata"):
        if info[title]:
            lines.append(f"{title}:")
            keys = {key: _shown(key) for key in info[title]}
            width = max(map(len, keys.values()))
            for key, value in info[title].items():
                text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                lines.append(f"  {keys[key]:<{width}}  {_shown(text)}")
    if not info["provenance"]:
        lines.append("provenance: none (not written by onnxport)")
    variant = info.get("variant")
    if variant is not None:
        source = _shown(variant.get("source_sha256") or "?")
        lines.append(
            f"variant: {_shown(variant['name'])}, transform {_shown(variant.get('transform') or '?')} "
            f"({_shown(_plain_text(variant.get('transform_versions')) or '?')}), "
            f"made from the fp32 file with sha256 {source}"
        )
    validation = info["validation"]
    if validation is None:
        lines.append("validation: no report")
    else:
        run = validation["run"]
        git = _shown(run.get("git_commit") or "")
        dirty = " (dirty)" if run.get("git_dirty") is True else ""
        where = f" ({_shown(validation['path'])})" + (f"; git {git}{dirty}" if git else "")
        lines.append(f"validation: {validation['verdict']}{where}")
    if info.get("files"):
        lines += _files_table(info["files"])
    return "\n".join(lines)


def _files_table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per file of the run: size, ORT latency at batch 1 and 32, worst difference or agreement."""
    cells = [
        (
            _shown(row["name"], 24)
            + (f" ({_shown(Path(row['path']).name, 60)})" if isinstance(row.get("path"), str) else ""),
            _human(row["size_bytes"]) if isinstance(row.get("size_bytes"), (int, float)) else "?",
            _ms(row.get("ort_ms_batch1")),
            _ms(row.get("ort_ms_batch32")),
            _worst(row),
            _verdict(row),
        )
        for row in rows
    ]
    header = ("file", "size", "b1 ms", "b32 ms", "worst difference / agreement", "")
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    return ["files of this run:"] + [
        "  "
        + "  ".join(
            cell.ljust(width) if i in (0, 4) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in [header, *cells]
    ]


def _worst(row: dict[str, Any]) -> str:
    """The largest difference and, for variants, the lowest agreement (int8 is judged by these)."""
    shown = (("max_abs_diff", "max |diff| {:.2e}"), ("min_cosine", "cosine {:.6f}"), ("top1", "top-1 {:.4f}"))
    parts = [
        text.format(row[key])
        for key, text in shown
        if isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)
    ]
    return ", ".join(parts) or "-"


def _verdict(row: dict[str, Any]) -> str:
    if row.get("passed") in (1, True):
        return "passed"
    return "FAILED (published anyway)" if row.get("published") in (1, True) else "FAILED (rejected)"


def _ms(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _plain_text(value: Any) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, dict):
        return ", ".join(f"{key} {_plain_text(item)}" for key, item in value.items())
    if isinstance(value, float):
        return f"{value:.3g}"
    return json.dumps(value, sort_keys=True) if isinstance(value, list) else str(value)


def _shown(value: Any, limit: int = TEXT_LIMIT) -> str:
    """``value`` as printable text: control characters escaped, at most ``limit`` characters."""
    text = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(value)
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


VARIANT_KEY = "variant"
"""A variant file's provenance under ``onnxport.variant`` (its name) and ``onnxport.variant.*``."""


def _variant(provenance: dict[str, Any]) -> dict[str, Any] | None:
    """``{name, transform, transform_versions, source_sha256, config}`` of a variant file, else ``None``."""
    name = provenance.get(VARIANT_KEY)
    if not isinstance(name, str):
        return None
    prefix = f"{VARIANT_KEY}."
    return {"name": name} | {
        key[len(prefix) :]: value for key, value in provenance.items() if key.startswith(prefix)
    }


def _validation_report(
    path: Path, provenance: dict[str, Any], data: list[Path], variant: dict[str, Any] | None
) -> dict[str, Any]:
    """``validation`` (verdict and run context) and ``files`` (one row per file of the run) from the
    report written at export.

    The git commit is kept out of the ONNX file on purpose (same model, same bytes), so the
    report is where it is found: the configured ``validation.report`` when it lies beside the
    file or under its directory, else ``<stem>.validation.json`` beside it; for a variant
    ``<stem>.<name>.onnx``, the report of its fp32 file ``<stem>.onnx``. Only a regular file
    under the size cap is read. A report that names another artifact's sha256 is stale (the
    model was replaced since) and is not shown: for a variant, the report must name the fp32
    file the variant was made from and, in its row, the variant's own sha256.
    """
    config = provenance.get("config")
    validation = config.get("validation") if isinstance(config, dict) else None
    configured = validation.get("report") if isinstance(validation, dict) else None
    stem = path.stem
    if variant is not None and stem.endswith(f".{variant['name']}"):
        stem = stem[: -len(variant["name"]) - 1]
    candidates = [path.with_name(f"{stem}.validation.json")]
    if isinstance(configured, str) and configured:
        candidates.insert(0, Path(configured))
        candidates.insert(1, path.parent / configured)
    sha256: str | None = None
    for report in dict.fromkeys(candidates):
        if not _under(report, path.parent):
            continue
        content = read_report(report)
        if content is None:
            continue
        run = content.get("run")
        run = run if isinstance(run, dict) else {}
        if sha256 is None:
            sha256 = artifact_sha256(path, [file for file in data if file.is_file()])
        rows = _file_rows(content)
        if variant is None:
            if run.get("onnx_sha256") != sha256:
                continue
            passed = content.get("passed") == 1 or content.get("passed") is True
        else:
            own = content.get("variants")
            own = own.get(variant["name"]) if isinstance(own, dict) else None
            if run.get("onnx_sha256") != variant.get("source_sha256") or not isinstance(own, dict):
                continue
            if own.get("sha256") != sha256:  # the variant was made again since
                continue
            passed = own.get("passed") in (1, True)
        verdict = "passed" if passed else "FAILED"
        if content.get("validated") == 0:
            verdict = "not validated (validation was disabled)"
        found = {"path": str(report), "passed": verdict == "passed", "verdict": verdict, "run": run}
        return {"validation": found, "files": rows}
    return {"validation": None, "files": []}


FILE_ROW_KEYS = (
    "name",
    "path",
    "size_bytes",
    "ort_ms_batch1",
    "ort_ms_batch32",
    "max_abs_diff",
    "min_cosine",
    "top1",
    "passed",
    "published",
)
"""What a row of the report's ``files`` table holds (``name`` is ``fp32`` for the main file)."""


def _file_rows(content: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's ``files`` rows (fp32 file and each variant), well-formed ones only."""
    rows = content.get("files")
    if not isinstance(rows, list):
        return []
    return [
        {key: row[key] for key in FILE_ROW_KEYS if key in row}
        for row in rows
        if isinstance(row, dict) and isinstance(row.get("name"), str)
    ]


def _text(value: str | bytes) -> str:
    """A string field as text: protobuf hands back bytes when a crafted file's field is not UTF-8."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _under(candidate: Path, directory: Path) -> bool:
    """``candidate`` is beside or under ``directory`` once symlinks and ``..`` are resolved."""
    try:
        resolved = Path(os.path.realpath(candidate))
        return resolved.is_relative_to(os.path.realpath(directory))
    except (OSError, ValueError):
        return False


def _plain_name(name: str) -> bool:
    return (
        bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name
    )


def _not_onnx(path: Path, reason: object) -> InputError:
    return InputError(
        f"{path} is not an ONNX model ({reason})",
        fix="pass a .onnx file written by torch.onnx or onnxport export",
    )


def _value_info(value: Any) -> dict[str, Any]:
    tensor = value.type.tensor_type
    shape = None
    if tensor.HasField("shape"):
        # A symbolic dim keeps its name (e.g. "batch"); an unknown one shows as "?".
        shape = [
            dim.dim_value if dim.HasField("dim_value") else (_text(dim.dim_param) or "?")
            for dim in tensor.shape.dim
        ]
    return {"name": _text(value.name), "dtype": _dtype_name(tensor.elem_type), "shape": shape}


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):  # bfloat16, float8: no plain numpy dtype
        try:
            return onnx.TensorProto.DataType.Name(elem_type).lower()
        except ValueError:  # not a type ONNX knows: a crafted or newer file
            return f"type {elem_type}"


def _tensor_bytes(tensor: Any) -> int:
    import onnx

    for entry in tensor.external_data:
        if _text(entry.key) == "length":
            length = _text(entry.value)
            return int(length) if length.isdigit() else 0
    if tensor.raw_data:
        return len(tensor.raw_data)
    count = 1
    for dim in tensor.dims:
        count *= max(dim, 0)
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 2  # the 16-bit types numpy lacks
    return count * itemsize


def _operators(graph: Any) -> Any:
    """Yield the operator of every node, including nodes in If/Loop/Scan subgraphs."""
    for node in graph.node:
        domain, op_type = _text(node.domain), _text(node.op_type)
        yield op_type if domain in ("", "ai.onnx") else f"{domain}.{op_type}"
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _operators(attribute.g)
            for subgraph in attribute.graphs:
                yield from _operators(subgraph)


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _maybe_json(value: str) -> Any:
    if value[:1] in "{[":
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # crafted metadata is shown as the text it is
            pass
    return value


def _human(size: float) -> str:
    units = ("B", "KB", "MB", "GB")
    index = 0
    while size >= 1024 and index < len(units) - 1:
        size /= 1024
        index += 1
    return f"{size:.0f} B" if index == 0 else f"{size:.1f} {units[index]}"
