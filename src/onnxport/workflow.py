"""The export workflow: the steps from a model to a published, validated ONNX file.

The Python API, the Lightning callback and the CLI all end up in :func:`export`. Its
body reads as the steps, each owned by one module:

=================  =============================================  ==========================
step               what                                           module
=================  =============================================  ==========================
prepare inputs     example tensors, names, dynamic axes           :mod:`onnxport.inputs`
export             torch.onnx writes the raw file                 :mod:`onnxport.exporters`
[transform]        a raw file in, a raw file out (none yet)       one module per transform
stage the layouts  scrub, metadata, weights inline or external    :mod:`onnxport.publish`
validate           checker, ORT session, parity over shapes       :mod:`onnxport.validation`
publish            one atomic commit of file, data and report     :mod:`onnxport.publish`
report             the :class:`ExportResult`                      here
=================  =============================================  ==========================

Nothing reaches ``output`` before validation passed: everything is staged in a private
folder beside it, and :func:`onnxport.publish.commit` switches to the new file with one
``os.replace``. A previous file at ``output`` (with its data file and report) is untouched
on any failure; everything that can be refused (paths, tolerances) is refused before exporting.

Adding a transform step (issue 13: reduced-precision variants, graph optimisation) takes
one new module and one line. The module exposes ``transform(raw: Path, staging: Path,
config: ExportConfig) -> Path``: it reads the raw export (weights inline, or in the external
data file its header references) and writes its result into ``staging``, returning the new
raw path. The line goes between the export and the layout steps of :func:`export`::

    run, raw = _export(model, inputs, staging, config, output)
    raw = quantize.transform(raw, staging, config)  # <- the new step
    layouts = _stage_layouts(raw, output, staging, run, config, weights_sha256(model))

Validation then checks the transformed file against the eager model with the same
tolerances, and publishing is unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from onnxport.config import ExportConfig
from onnxport.errors import ValidationError
from onnxport.progress import phase

if TYPE_CHECKING:
    from onnxport.exporters import ExporterRun
    from onnxport.inputs import ModelInputs
    from onnxport.publish import Layouts
    from onnxport.validation import ValidationReport

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What :func:`export` published, and how."""

    path: Path
    """The published ``.onnx`` file (absolute)."""
    sha256: str
    """sha256 of the published bytes: the ``.onnx`` file followed by its data file, if any."""
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
    """The JSON report written beside the file (it says so when validation was disabled)."""
    run_context: dict[str, Any] = field(default_factory=dict)
    """Git commit and dirty flag, host, time: kept here and in the report, never in the file."""
    seconds: float = 0.0
    size_bytes: int = 0
    """Size of the ``.onnx`` file plus its external data file, if any."""
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    external_data: bool = False
    data_path: Optional[Path] = None
    """The external data file (``<name>.onnx.<sha12>.data``), when the weights are external."""


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
        output: the ``.onnx`` file to write; a missing directory is created.
        config: an ``ExportConfig`` or mapping; ``options`` (``ExportConfig`` fields such
            as ``opset=17`` or ``exporter="torchscript"``) override it.
        checkpoint_sha256: sha256 of the checkpoint the model came from, recorded in the report
            (the file records the hash of the weights themselves, the same from any checkout).

    Raises:
        ConfigError, InputError: bad options, model, inputs, output or report path (nothing written).
        ExportError, UnsupportedOperatorError: torch.onnx could not export the model.
        ValidationError: the file does not match the model; it is kept as
            ``<stem>.rejected.onnx`` and ``output`` is untouched.
        PublishError: the disk is full or the file cannot be moved (``output`` is untouched).

    >>> import torch
    >>> result = export(torch.nn.Linear(4, 2), torch.randn(2, 4), "linear.onnx")  # doctest: +SKIP
    >>> result.input_names, result.exporter  # doctest: +SKIP
    (['input'], 'dynamo')
    """
    from onnxport import publish
    from onnxport.model_state import preserved_state
    from onnxport.provenance import run_context, start_weights_sha256
    from onnxport.report import result_files
    from onnxport.unwrap import unwrap
    from onnxport.validation import check_tolerances

    started = time.perf_counter()
    config = ExportConfig.coerce(config, **options)
    model = unwrap(model)
    output = publish.check_output(output)
    report_path = publish.check_report(config, output)  # refused now, not after publishing
    check_tolerances(config.validation)

    written = {path.parent for _, path, _ in publish.json_files(config, output)}  # swept of dead temps too
    with preserved_state(model), publish.staging_dir(output, *written) as staging:
        with phase("export"):
            weights = start_weights_sha256(model)  # hashed while torch.onnx exports
            inputs = _prepare_inputs(model, example_inputs, config)
            run, raw = _export(model, inputs, staging, config, output)
            layouts = _stage_layouts(raw, output, staging, run, config, weights.result())
        validation = _validate(layouts, model, inputs, config, output)  # phases check, validate
        with phase("publish"):
            sha256 = layouts.sha256()  # from the staged bytes: nothing can swap them after the rename
            # The checkpoint file's hash differs per clone (Lightning stores its dirpath): report only.
            context = {**run_context(output.parent), "checkpoint_sha256": checkpoint_sha256}
            report = {report_path: _report(validation, sha256, context)}
            results = result_files(validation, config.validation)
            publish.commit(layouts, output, files={**report, **results})  # DVC metrics and plots too
    return _result(run, output, sha256, config, validation, report_path, context, started)


# -- the steps ------------------------------------------------------------------------------


def _prepare_inputs(model: Any, example_inputs: Any, config: ExportConfig) -> ModelInputs:
    from onnxport.inputs import prepare_inputs

    return prepare_inputs(model, example_inputs, config)


def _export(
    model: Any, inputs: ModelInputs, staging: Path, config: ExportConfig, output: Path
) -> tuple[ExporterRun, Path]:
    from onnxport.exporters import run_exporter

    raw = staging / "exported.onnx"
    # a failed attempt's log goes beside the output (<stem>.rejected.<exporter>.log), not into staging
    return run_exporter(model, inputs, raw, config, logs_beside=output), raw


def _stage_layouts(
    raw: Path,
    output: Path,
    staging: Path,
    run: ExporterRun,
    config: ExportConfig,
    weights_sha256: str,
) -> Layouts:
    from onnxport import publish

    metadata = publish.provenance_metadata(
        config,
        exporter=run.exporter,
        fallback_reason=run.fallback_reason,
        weights_sha256=weights_sha256,
    )
    return publish.stage_layouts(
        raw,
        output,
        staging,
        metadata=metadata,
        model_version=config.model_version,
        external_data=run.external_data,
        validating=config.validation.enabled,
    )


def _validate(
    layouts: Layouts, model: Any, inputs: ModelInputs, config: ExportConfig, output: Path
) -> ValidationReport | None:
    """Validate the checked layout; on failure keep the published layout as ``<stem>.rejected.onnx``."""
    from onnxport import publish
    from onnxport.hashing import artifact_sha256
    from onnxport.report import write_report
    from onnxport.validation import run_validation

    if not config.validation.enabled:
        return None
    try:
        report = run_validation(
            layouts.checked, model, inputs, config, onnx_sha256=layouts.sha256(), published_as=output
        )
    except ValidationError as error:
        rejected = publish.keep_rejected(layouts.published, output)
        if error.report is not None:
            error.report.onnx_path = str(rejected)
            error.report.run["onnx_sha256"] = artifact_sha256(rejected, publish.data_files(rejected))
            # Beside the rejected file, not at the report path: that one describes the published model.
            write_report(error.report.to_dict(), publish.rejected_paths(output)[2])
        logger.error("validation failed; the file was kept as %s and %s is untouched", rejected, output)
        raise
    publish.fault_point("validated")
    return report


def _report(validation: ValidationReport | None, sha256: str, context: dict[str, Any]) -> dict[str, Any]:
    """The report's content; with validation disabled, a report that says so (no stale "passed")."""
    run = {**context, "onnx_sha256": sha256}
    if validation is None:
        return {"passed": 0, "validated": 0, "reason": "export.validation.enabled=false", "run": run}
    validation.run = {**validation.run, **run}
    return validation.to_dict()


def _result(
    run: ExporterRun,
    output: Path,
    sha256: str,
    config: ExportConfig,
    validation: ValidationReport | None,
    report_path: Path,
    context: dict[str, Any],
    started: float,
) -> ExportResult:
    from onnxport.publish import data_files

    data = data_files(output)
    result = ExportResult(
        path=output,
        sha256=sha256,
        config=config,
        validation=validation,
        report_path=report_path,
        run_context=context,
        seconds=time.perf_counter() - started,
        size_bytes=sum(path.stat().st_size for path in [output, *data]),
        data_path=data[0] if data else None,
        **dataclasses.asdict(run),  # what the exporter did: exporter, fallback reason, names, axes
    )
    logger.info("exported %s with %s in %.1fs (sha256 %s)", output, run.exporter, result.seconds, sha256)
    return result
