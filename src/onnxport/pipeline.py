"""The export pipeline: unwrap -> inputs -> export -> validate -> publish.

The Python API, the Lightning callback and the CLI all end up in :func:`export`.
Nothing reaches ``output`` before validation passed: the file is exported and
finalised in a private directory beside it, validated there, then moved with
``os.replace``. A previous file at ``output`` is untouched on any failure.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from onnxport.config import ExportConfig
from onnxport.errors import InputError, ValidationError

if TYPE_CHECKING:
    from onnxport.validation import ValidationReport

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What :func:`export` published, and how."""

    path: Path
    """The published ``.onnx`` file (absolute)."""
    sha256: str
    """sha256 of the published file's bytes."""
    exporter: str
    """The exporter that ran: ``dynamo`` or ``torchscript``."""
    fallback_reason: Optional[str]
    """Why ``auto`` did not use dynamo, if it did not."""
    input_names: list[str]
    output_names: list[str]
    config: ExportConfig
    """The resolved config (also stored in the file as ``onnxport.config``)."""
    validation: Optional[ValidationReport] = None
    """The validation report; ``None`` when validation is disabled."""
    report_path: Optional[Path] = None
    """The JSON validation report written beside the file."""
    run_context: dict[str, Any] = field(default_factory=dict)
    """Git commit and dirty flag, host, time: kept here and in the report, never in the file."""
    seconds: float = 0.0
    size_bytes: int = 0
    """Size of the ``.onnx`` file plus its external ``.data`` file, if any."""
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    external_data: bool = False


def export(
    model: Any,
    example_inputs: Any = None,
    output: str | os.PathLike = "model.onnx",
    *,
    config: ExportConfig | Mapping[str, Any] | None = None,
    checkpoint_sha256: Optional[str] = None,
    **options: Any,
) -> ExportResult:
    """Export ``model`` to a validated, reproducible ONNX file at ``output``.

    Args:
        model: an ``nn.Module`` (Lightning modules and wrapped modules included), a
            ``torch.jit.ScriptModule`` or a ``torch.export.ExportedProgram``.
        example_inputs: a tensor, a tuple/list, a dict (keyword arguments, or the one
            dict ``forward`` takes), or ``None`` for ``example_input_array`` / ``config.inputs``.
        output: the ``.onnx`` file to write; its directory must exist.
        config: an ``ExportConfig`` or mapping; ``options`` (``ExportConfig`` fields such
            as ``opset=17`` or ``exporter="torchscript"``) override it.
        checkpoint_sha256: sha256 of the checkpoint the model came from, recorded in the report
            (the file records the hash of the weights themselves).

    Raises:
        ConfigError, InputError: bad options, model, inputs or output path (nothing written).
        ExportError, UnsupportedOperatorError: torch.onnx could not export the model.
        ValidationError: the file does not match the model; it is kept as
            ``<stem>.rejected.onnx`` and ``output`` is untouched.

    >>> import torch
    >>> result = export(torch.nn.Linear(4, 2), torch.randn(2, 4), "linear.onnx")  # doctest: +SKIP
    >>> result.input_names, result.exporter  # doctest: +SKIP
    (['input'], 'dynamo')
    """
    from onnxport import publish
    from onnxport.exporters import preserved_state, run_exporter
    from onnxport.inputs import prepare_inputs
    from onnxport.load import file_sha256
    from onnxport.provenance import run_context, weights_sha256
    from onnxport.results import case_latency, write_results
    from onnxport.unwrap import unwrap

    started = time.perf_counter()
    config = ExportConfig.coerce(config, **options)
    model = unwrap(model)
    output_path = publish.check_output(output)
    report_path = _report_path(config, output_path) if config.validation.enabled else None
    if report_path is not None and not report_path.parent.is_dir():  # found out before, not after, publishing
        raise InputError(
            f"export.validation.report={str(report_path)!r} is in a directory that does not exist",
            fix=f"create it first (mkdir -p {report_path.parent}) or choose another report path",
        )

    with preserved_state(model):
        inputs = prepare_inputs(model, example_inputs, config)
        with publish.staging_dir(output_path) as stage:
            raw = stage / "exported.onnx"
            run = run_exporter(model, inputs, raw, config)
            metadata = publish.provenance_metadata(
                config,
                exporter=run.exporter,
                fallback_reason=run.fallback_reason,
                weights_sha256=weights_sha256(model),
            )
            # Validated with the weights beside the graph: onnx.checker then reads the graph alone,
            # where a self-contained file is read and parsed whole (2x the weights in memory).
            validating = config.validation.enabled
            checked = stage / output_path.name
            publish.finalize(
                raw,
                checked,
                metadata=metadata,
                model_version=config.model_version,
                external_data=run.external_data or validating,
            )
            published = checked
            if validating and not run.external_data:  # the same graph and weights, streamed into one file
                published = stage / "inline" / output_path.name
                published.parent.mkdir()
                publish.finalize(
                    checked,
                    published,
                    metadata=metadata,
                    model_version=config.model_version,
                    external_data=False,
                )
            report = None
            if validating:
                report = _validate(checked, published, model, inputs, config, output_path)
                report.case_latency = case_latency(checked, model, inputs, report, config.validation)
            publish.move_into_place(published, output_path, external_data=run.external_data)

    context = run_context(output_path.parent)
    sha256 = file_sha256(output_path)
    if report is not None:
        report.onnx_path = str(output_path)
        # the published bytes; the checkpoint file's own hash differs per clone, so it stays out of the file
        report.run = {**report.run, **context, "onnx_sha256": sha256, "checkpoint_sha256": checkpoint_sha256}
        report.write_json(report_path)
        write_results(report, config.validation)  # DVC metrics and plots, if asked for
    size = output_path.stat().st_size
    if run.external_data:
        size += Path(f"{output_path}.data").stat().st_size
    result = ExportResult(
        path=output_path,
        sha256=sha256,
        exporter=run.exporter,
        fallback_reason=run.fallback_reason,
        input_names=run.input_names,
        output_names=run.output_names,
        config=config,
        validation=report,
        report_path=report_path,
        run_context=context,
        seconds=time.perf_counter() - started,
        size_bytes=size,
        dynamic_axes=run.dynamic_axes,
        external_data=run.external_data,
    )
    logger.info(
        "exported %s with %s in %.1fs (sha256 %s)", output_path, run.exporter, result.seconds, result.sha256
    )
    return result


def _validate(
    checked: Path, published: Path, model: Any, inputs: Any, config: ExportConfig, output: Path
) -> Any:
    """Validate ``checked``; on failure keep ``published`` (its final layout) as ``<stem>.rejected.onnx``."""
    from onnxport import publish
    from onnxport.load import file_sha256
    from onnxport.validation import validate

    try:
        return validate(checked, model, inputs, config=config)
    except ValidationError as error:
        rejected = publish.keep_rejected(published, output)
        if error.report is not None:
            error.report.run["onnx_sha256"] = file_sha256(rejected)
            # Beside the rejected file, not at the report path: that one describes the published model.
            error.report.write_json(rejected.with_name(f"{output.stem}.rejected.validation.json"))
        logger.error("validation failed; the file was kept as %s and %s is untouched", rejected, output)
        raise error


def _report_path(config: ExportConfig, output: Path) -> Path:
    if config.validation.report:
        return Path(config.validation.report)
    return output.with_name(f"{output.stem}.validation.json")
