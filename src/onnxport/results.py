"""What an export leaves for DVC beside the model: a small metrics file and plot data.

- ``validation.metrics``: :meth:`ValidationReport.metrics`, a few numbers that ``dvc metrics
  show`` prints readably and ``dvc metrics diff`` compares (no strings, no latency noise).
- ``validation.plots``: ``parity.json`` (each validation case and output, worst difference
  against its tolerance) and ``latency.json`` (torch vs ONNX Runtime at each case's sizes).

The full report (run context, every case in detail) stays where ``validation.report`` puts it.
Each file is written to a temporary name and moved with ``os.replace``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import timeit
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxport.config import ValidationConfig
    from onnxport.inputs import ModelInputs
    from onnxport.report import ValidationReport


def case_latency(
    onnx_path: str | os.PathLike[str],
    model: Any,
    example: ModelInputs,
    report: ValidationReport,
    settings: ValidationConfig,
) -> list[dict[str, Any]]:
    """Median milliseconds of torch and ONNX Runtime at each passed case's axis sizes.

    Only measured for plots (``settings.plots``) and with ``latency_runs`` > 0. The inputs are
    the example's, tiled along each dynamic axis to the case's size: values do not matter here.
    """
    if not settings.plots or settings.latency_runs <= 0:
        return []
    import onnxruntime as ort

    from onnxport.exporters import preserved_state

    session = ort.InferenceSession(os.fspath(onnx_path), providers=["CPUExecutionProvider"])
    positions = _symbol_positions(session.get_inputs())
    rows = []
    with preserved_state(model):
        for case in report.cases:
            if case.error is not None or not set(case.sizes) <= set(positions):
                continue
            inputs = _resized(example, positions, case.sizes)
            feed = inputs.feed()
            rows.append(
                {
                    "case": case.label,
                    **case.sizes,
                    "torch_ms": _median_ms(lambda inputs=inputs: inputs.call(model), settings.latency_runs),
                    "onnxruntime_ms": _median_ms(
                        lambda feed=feed: session.run(None, feed), settings.latency_runs
                    ),
                }
            )
    return rows


def write_results(report: ValidationReport, settings: ValidationConfig) -> list[Path]:
    """Write the metrics file and plot data ``settings`` asks for; returns the paths written."""
    files: dict[Path, Any] = {}
    if settings.metrics:
        files[Path(settings.metrics)] = report.metrics()
    if settings.plots:
        for name, rows in report.plots().items():
            files[Path(settings.plots) / f"{name}.json"] = rows
    for path, data in files.items():
        write_json_atomic(path, data)
    return list(files)


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path`` (parents made), through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True, allow_nan=False)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _symbol_positions(graph_inputs: list[Any]) -> dict[str, list[tuple[int, int]]]:
    """Dynamic dims of the graph inputs by symbol, named as validation names its cases' axes."""
    positions: dict[str, list[tuple[int, int]]] = {}
    for index, meta in enumerate(graph_inputs):
        for axis, dim in enumerate(meta.shape):
            if not isinstance(dim, int):
                symbol = dim if isinstance(dim, str) and dim else f"{meta.name}_axis{axis}"
                positions.setdefault(symbol, []).append((index, axis))
    return positions


def _resized(
    example: ModelInputs, positions: dict[str, list[tuple[int, int]]], sizes: dict[str, int]
) -> ModelInputs:
    import torch

    tensors = list(example.tensors())
    for symbol, size in sizes.items():
        for index, axis in positions[symbol]:
            tensor = tensors[index]
            if tensor.shape[axis] == 0:
                continue
            copies = -(-size // tensor.shape[axis])
            tensors[index] = torch.cat([tensor] * copies, dim=axis).narrow(axis, 0, size)
    return example.with_tensors(tensors)


def _median_ms(function: Any, runs: int) -> float:
    function()  # warm-up: first-call allocations and ORT's lazy initialisation
    return 1000.0 * statistics.median(timeit.repeat(function, number=1, repeat=runs))
