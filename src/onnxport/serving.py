"""Hand a published file to serving: a Triton model repository and a Markdown model card.

``onnxport triton FILE --repo DIR [--name NAME] [--version N] [--card] [--metrics JSON]`` lays out::

    DIR/NAME/config.pbtxt        inputs, outputs, dtypes and dynamic axes read from FILE
    DIR/NAME/N/model.onnx        FILE (and its external weights file, if any, under its own name)
    DIR/NAME/README.md           with --card: signature, opset, size, provenance, validation

Everything is read from the file (``onnx`` only, weights not loaded) and the report beside it,
so the layout always matches what is served. Only the standard library is imported up front.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from onnxport.errors import InputError
from onnxport.report import temporary_beside

DEFAULT_MAX_BATCH_SIZE = 64

# ONNX TensorProto element types -> Triton's DataType names (model_config.proto).
_TRITON_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


@dataclass
class TensorSignature:
    """One graph input or output: its name, ONNX element type and dims (int, symbol or ``None``)."""

    name: str
    elem_type: int
    dims: list[Any]


@dataclass
class TritonLayout:
    """What :func:`triton_repository` wrote."""

    model_dir: Path
    """``<repo>/<name>``."""
    config: Path
    """``<repo>/<name>/config.pbtxt``."""
    model: Path
    """``<repo>/<name>/<version>/model.onnx``."""
    max_batch_size: int
    card: Optional[Path] = None
    files: list[Path] = field(default_factory=list)


def signature(path: str | os.PathLike[str]) -> tuple[list[TensorSignature], list[TensorSignature]]:
    """The graph's inputs (initializers left out) and outputs, from the header alone."""
    from onnxport.inspection import load_header

    model = load_header(Path(path))
    initializers = {init.name for init in model.graph.initializer}

    def describe(value: Any) -> TensorSignature:
        tensor = value.type.tensor_type
        dims = [
            dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)
            for dim in tensor.shape.dim
        ]
        return TensorSignature(value.name, tensor.elem_type, dims)

    if any(not value.type.HasField("tensor_type") for value in model.graph.output):
        raise InputError(
            f"{path} has non-tensor outputs (sequences or maps)",
            fix="serve a model whose outputs are tensors",
        )
    inputs = [describe(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [describe(v) for v in model.graph.output]


def triton_config(
    path: str | os.PathLike[str], name: str, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> tuple[str, int]:
    """``config.pbtxt`` text for Triton's ONNX Runtime backend, and the ``max_batch_size`` used.

    Batching (``max_batch_size`` > 0, axis 0 left out of ``dims``) is declared only when axis 0
    of every input is one shared dynamic axis and axis 0 of every output is dynamic; otherwise
    ``max_batch_size: 0`` and full dims. Other dynamic dims are ``-1``.
    """
    inputs, outputs = signature(path)
    batch_symbols = {tensor.dims[0] if tensor.dims else 0 for tensor in inputs}
    batched = (
        max_batch_size > 0
        and len(batch_symbols) == 1
        and isinstance(next(iter(batch_symbols)), str)
        and all(tensor.dims and not isinstance(tensor.dims[0], int) for tensor in outputs)
    )
    lines = [
        f"name: {_quote(name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size if batched else 0}",
    ]
    for title, tensors in (("input", inputs), ("output", outputs)):
        entries = [_tensor_entry(tensor, batched) for tensor in tensors]
        lines.append(f"{title} [\n" + ",\n".join(entries) + "\n]")
    return "\n".join(lines) + "\n", max_batch_size if batched else 0


def triton_repository(
    path: str | os.PathLike[str],
    repo: str | os.PathLike[str],
    *,
    name: Optional[str] = None,
    version: int = 1,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    card: bool = False,
    metrics: Optional[str | os.PathLike[str]] = None,
) -> TritonLayout:
    """Lay out ``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/<version>/model.onnx`` for ``path``.

    ``name`` defaults to the file's stem. The file is copied with its external data file(s)
    under their own names (the header refers to them by name). With ``card``, a Markdown
    model card goes to ``<repo>/<name>/README.md`` (see :func:`model_card`).
    """
    source = Path(path)
    name = name or source.stem
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        raise InputError(
            f"Triton model name {name!r} is not a plain directory name",
            fix="use letters, digits, '_', '-' or '.' (--name)",
        )
    if version < 1:
        raise InputError(f"Triton model version {version} is not >= 1", fix="pass --version 1 or higher")
    config_text, batch = triton_config(source, name, max_batch_size=max_batch_size)
    model_dir = Path(repo) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for data_name in _external_files(source):
        written.append(_copy(source.parent / data_name, version_dir / data_name))
    model = _copy(source, version_dir / "model.onnx")
    config = _write_text(model_dir / "config.pbtxt", config_text)
    written += [model, config]
    card_path = None
    if card:
        card_path = _write_text(model_dir / "README.md", model_card(source, name=name, metrics=metrics))
        written.append(card_path)
    return TritonLayout(model_dir, config, model, batch, card_path, written)


def model_card(
    path: str | os.PathLike[str],
    *,
    name: Optional[str] = None,
    metrics: Optional[str | os.PathLike[str]] = None,
) -> str:
    """A short Markdown card: signature, opset, size, provenance, validation and accuracy metrics.

    The validation summary comes from the report beside the file (as ``onnxport inspect`` finds
    it, only when it vouches for these bytes); ``metrics`` is a JSON file of numbers (e.g. the
    pipeline's ``metrics/accuracy.json``).
    """
    from onnxport.hashing import artifact_sha256
    from onnxport.inspection import inspect_model

    source = Path(path)
    info = inspect_model(source)
    provenance = info["provenance"]
    size = info["file_bytes"] + info["external_data_bytes"]
    opsets = ", ".join(f"{domain} {version}" for domain, version in info["opset"].items())
    lines = [
        f"# {name or source.stem}",
        "",
        f"ONNX model `{source.name}`, {size / 1024:.1f} KiB, opset {opsets}, "
        f"{info['weights']['count']} initializers, {info['nodes']} nodes.",
        "",
        "## Signature",
        "",
        "| | name | dtype | shape |",
        "|---|---|---|---|",
    ]
    for title in ("inputs", "outputs"):
        for value in info[title]:
            shape = "?" if value["shape"] is None else ", ".join(map(str, value["shape"]))
            lines.append(f"| {title[:-1]} | `{value['name']}` | {value['dtype']} | [{shape}] |")
    lines += ["", "## Provenance", ""]
    if provenance:
        config = provenance.get("config") if isinstance(provenance.get("config"), dict) else {}
        rows = [
            ("exported by", f"onnxport {provenance.get('version', '?')} ({provenance.get('exporter', '?')})"),
            ("file sha256", artifact_sha256(source, [source.parent / n for n in _external_files(source)])),
            ("weights sha256", provenance.get("weights_sha256")),
            ("export config sha256", provenance.get("config_sha256")),
            (
                "tools",
                ", ".join(
                    f"{tool} {provenance[f'{tool}_version']}"
                    for tool in ("torch", "onnx", "onnxscript")
                    if provenance.get(f"{tool}_version")
                ),
            ),
            ("export settings", ", ".join(f"{k}={json.dumps(config[k])}" for k in sorted(config)) or None),
        ]
        lines += [f"- {label}: {value}" for label, value in rows if value]
    else:
        lines.append("- not written by onnxport")
    lines += ["", "## Validation", "", _validation_summary(info.get("validation"))]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in _numbers(Path(metrics))]
    return "\n".join(lines) + "\n"


def triton_command(args: list[str]) -> int:
    """``onnxport triton FILE --repo DIR [--name] [--version] [--max-batch-size] [--card] [--metrics]``."""
    parser = argparse.ArgumentParser(
        prog="onnxport triton", description="Lay out a Triton model repository for an ONNX file."
    )
    parser.add_argument("file", help="the .onnx file (its external weights file beside it)")
    parser.add_argument("--repo", required=True, help="the model repository directory")
    parser.add_argument("--name", help="model name (default: the file's stem)")
    parser.add_argument("--version", type=int, default=1, help="model version directory (default: 1)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help=f"when axis 0 is a batch axis (default: {DEFAULT_MAX_BATCH_SIZE}; 0 turns batching off)",
    )
    parser.add_argument("--card", action="store_true", help="also write a Markdown model card (README.md)")
    parser.add_argument("--metrics", help="a JSON file of numbers for the card (e.g. metrics/accuracy.json)")
    options = parser.parse_args(args)
    layout = triton_repository(
        options.file,
        options.repo,
        name=options.name,
        version=options.version,
        max_batch_size=options.max_batch_size,
        card=options.card,
        metrics=options.metrics,
    )
    batching = f"max_batch_size {layout.max_batch_size}" if layout.max_batch_size else "no batching"
    print(f"{layout.model_dir}: config.pbtxt ({batching}), {layout.model.relative_to(layout.model_dir)}")
    return 0


# -- helpers ---------------------------------------------------------------------------------


def _tensor_entry(tensor: TensorSignature, batched: bool) -> str:
    dtype = _TRITON_TYPES.get(tensor.elem_type)
    if dtype is None:
        raise InputError(
            f"{tensor.name!r} has ONNX element type {tensor.elem_type}, which Triton has no type for",
            fix="export the model with float, integer, bool or string inputs and outputs",
        )
    dims = tensor.dims[1:] if batched else tensor.dims
    shown = [d if isinstance(d, int) else -1 for d in dims]
    fields = [f"    name: {_quote(tensor.name)}", f"    data_type: {dtype}"]
    if shown:
        fields.append(f"    dims: [ {', '.join(map(str, shown))} ]")
    else:  # a scalar (per request): Triton wants dims, reshaped back to none
        fields += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "  {\n" + "\n".join(fields) + "\n  }"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _external_files(path: Path) -> list[str]:
    """Names of the data files the header references; each must be a plain file beside it."""
    from onnxport.inspection import load_header

    model = load_header(path)
    names = {
        entry.value
        for init in model.graph.initializer
        for entry in init.external_data
        if entry.key == "location"
    }
    for name in names:
        if Path(name).is_absolute() or ".." in Path(name).parts or not (path.parent / name).is_file():
            raise InputError(
                f"{path} refers to external data {name!r}, which is not a file beside it",
                fix="keep the .onnx file and its data file together",
            )
    return sorted(names)


def _copy(source: Path, target: Path) -> Path:
    """Copy through a temporary file in the target directory, then ``os.replace``."""
    handle, temporary = temporary_beside(target)
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def _write_text(target: Path, text: str) -> Path:
    handle, temporary = temporary_beside(target)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def _validation_summary(found: Optional[dict[str, Any]]) -> str:
    if found is None:
        return "No validation report vouching for this file was found beside it."
    try:
        report = json.loads(Path(found["path"]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "The validation report beside the file could not be read."
    verdict = "passed" if found["passed"] else "FAILED"
    cases, failed = report.get("cases"), report.get("failed_cases")
    tolerances = report.get("tolerances", {})
    parts = [f"**{verdict}**"]
    if isinstance(cases, int) and isinstance(failed, int):
        parts.append(f"{cases - failed} of {cases} cases within tolerance")
    if "atol" in tolerances and "rtol" in tolerances:
        parts.append(f"atol={tolerances['atol']:g}, rtol={tolerances['rtol']:g}")
    for key, label in (("tolerance_use", "worst tolerance use"), ("max_abs_diff", "worst |ort - torch|")):
        if isinstance(report.get(key), (int, float)):
            parts.append(f"{label} {report[key]:.3g}")
    run = found.get("run") or {}
    commit = run.get("git_commit") if isinstance(run, dict) else None
    where = f" (report `{Path(found['path']).name}`" + (f", git {commit}" if commit else "") + ")"
    return "; ".join(parts) + where + "."


def _numbers(path: Path) -> list[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(
            f"metrics file {str(path)!r} cannot be read as JSON: {error}", fix="pass a JSON file"
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            f"metrics file {str(path)!r} is not a JSON object", fix="pass a JSON object of numbers"
        )
    return [
        (key, f"{value:.4g}" if isinstance(value, float) else value)
        for key, value in sorted(data.items())
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
