"""What is inside an ONNX file: signature, opset, sizes, operators and onnxport provenance.

Backs ``onnxport inspect``. Only ``onnx`` is imported (never torch), and external weights
are not loaded: their sizes come from the tensor headers and the files on disk.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from onnxport.errors import InputError
from onnxport.load import file_sha256  # standard library only: no torch

PROVENANCE_PREFIX = "onnxport."


def inspect_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe the ONNX file at ``path`` as plain, JSON-ready data.

    Raises :class:`~onnxport.errors.InputError` when the file is missing or is not an ONNX model.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise InputError(f"{path} {problem}", fix="pass the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as error:
        raise _not_onnx(path, error) from error
    # Protobuf happily parses many non-ONNX files into an empty message: require a real graph.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise _not_onnx(path, "no ONNX graph in it")

    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    external_files = sorted(
        {entry.value for init in graph.initializer for entry in init.external_data if entry.key == "location"}
    )
    external_bytes = sum(_file_size(path.parent / name) for name in external_files)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    provenance = {
        key[len(PROVENANCE_PREFIX) :]: _maybe_json(value)
        for key, value in sorted(metadata.items())
        if key.startswith(PROVENANCE_PREFIX)
    }
    operators = Counter(_operators(graph))
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "external_data": external_files,
        "external_data_bytes": external_bytes,
        "weights": {"count": len(graph.initializer), "bytes": sum(map(_tensor_bytes, graph.initializer))},
        "ir_version": model.ir_version,
        "opset": {opset.domain or "ai.onnx": opset.version for opset in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "model_version": model.model_version,
        "inputs": [_value_info(v) for v in graph.input if v.name not in initializers],
        "outputs": [_value_info(v) for v in graph.output],
        "operators": dict(sorted(operators.items(), key=lambda item: (-item[1], item[0]))),
        "nodes": sum(operators.values()),
        "provenance": provenance,
        "metadata": {k: v for k, v in sorted(metadata.items()) if not k.startswith(PROVENANCE_PREFIX)},
        "validation": _validation_report(path, provenance),
    }


def format_report(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`inspect_model`'s answer."""
    size = _human(info["file_bytes"] + info["external_data_bytes"])
    weights = info["weights"]
    lines = [
        f"{info['path']}: {size}, weights {_human(weights['bytes'])} in {weights['count']} initializers"
        + (f" (external: {', '.join(info['external_data'])})" if info["external_data"] else ""),
        "opset "
        + ", ".join(f"{domain} {version}" for domain, version in info["opset"].items())
        + f"; ir_version {info['ir_version']}; producer {info['producer'] or '?'}",
    ]
    for title in ("inputs", "outputs"):
        lines.append(f"{title}:")
        width = max((len(v["name"]) for v in info[title]), default=0)
        for value in info[title]:
            shape = ", ".join(str(dim) for dim in value["shape"]) if value["shape"] is not None else "?"
            lines.append(f"  {value['name']:<{width}}  {value['dtype']:<8} [{shape}]")
    lines.append(f"operators ({info['nodes']} nodes):")
    lines += [f"  {count:>5}  {op}" for op, count in info["operators"].items()]
    for title in ("provenance", "metadata"):
        if info[title]:
            lines.append(f"{title}:")
            width = max(len(key) for key in info[title])
            for key, value in info[title].items():
                shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                lines.append(f"  {key:<{width}}  {shown}")
    if not info["provenance"]:
        lines.append("provenance: none (not written by onnxport)")
    validation = info["validation"]
    if validation is not None:
        verdict = "passed" if validation["passed"] else "FAILED"
        run = validation["run"]
        git = run.get("git_commit")
        dirty = " (dirty)" if run.get("git_dirty") else ""
        lines.append(f"validation: {verdict} ({validation['path']})" + (f"; git {git}{dirty}" if git else ""))
    return "\n".join(lines)


def _validation_report(path: Path, provenance: dict[str, Any]) -> dict[str, Any] | None:
    """Verdict and run context (git commit, host) from the report written at export.

    The git commit is kept out of the ONNX file on purpose (same model, same bytes), so the
    report is where it is found: at the configured ``validation.report`` (relative to the
    directory export ran in, usually the cwd) or beside the file. A report that names another
    file's sha256 is stale (the model was replaced since) and is not shown.
    """
    config = provenance.get("config")
    configured = config.get("validation", {}).get("report") if isinstance(config, dict) else None
    for report in filter(None, (configured, path.with_name(f"{path.stem}.validation.json"))):
        try:
            data = json.loads(Path(report).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        run = data.get("run", {})
        vouched = run.get("onnx_sha256") if isinstance(run, dict) else None
        if vouched and vouched != file_sha256(path):
            continue
        return {"path": str(report), "passed": bool(data.get("passed")), "run": run}
    return None


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
            dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor.shape.dim
        ]
    return {"name": value.name, "dtype": _dtype_name(tensor.elem_type), "shape": shape}


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):  # bfloat16, float8: no plain numpy dtype
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _tensor_bytes(tensor: Any) -> int:
    import onnx

    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    if tensor.raw_data:
        return len(tensor.raw_data)
    count = 1
    for dim in tensor.dims:
        count *= dim
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 2  # the 16-bit types numpy lacks
    return count * itemsize


def _operators(graph: Any) -> Any:
    """Yield the operator of every node, including nodes in If/Loop/Scan subgraphs."""
    for node in graph.node:
        yield node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
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
        except ValueError:
            pass
    return value


def _human(size: float) -> str:
    units = ("B", "KB", "MB", "GB")
    index = 0
    while size >= 1024 and index < len(units) - 1:
        size /= 1024
        index += 1
    return f"{size:.0f} B" if index == 0 else f"{size:.1f} {units[index]}"
