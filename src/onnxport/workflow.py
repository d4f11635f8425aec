"""The export workflow: the steps from a model to a published, validated ONNX file.

The Python API, the Lightning callback and the CLI all end up in :func:`export`. Its
body reads as the steps, each owned by one module:

=================  =============================================  ==========================
step               what                                           module
=================  =============================================  ==========================
prepare inputs     example tensors, names, dynamic axes           :mod:`onnxport.inputs`
real data          validation samples, calibration feeds          :mod:`onnxport.datasource`
export             torch.onnx writes the raw file                 :mod:`onnxport.exporters`
stage the layouts  scrub, metadata, weights inline or external    :mod:`onnxport.publish`
validate           checker, ORT session, parity over shapes       :mod:`onnxport.validation`
variants           each ``export.variants`` file from the staged  :mod:`onnxport.variants`,
                   fp32 file, staged and validated against the    :mod:`onnxport.validation`
                   eager outputs the fp32 validation computed
publish            one atomic commit per file, fp32 first, then   :mod:`onnxport.publish`
                   the variants; stale variant files removed
report             the :class:`ExportResult`                      here
=================  =============================================  ==========================

Nothing reaches ``output`` before validation passed: everything is staged in a private
folder beside it, and :func:`onnxport.publish.commit` switches to the new file with one
``os.replace``. A previous file at ``output`` (with its data file and report) is untouched
on any failure; everything that can be refused (paths, tolerances, static int8 without
calibration data) is refused before exporting.

A variant (:func:`onnxport.variants.transform`) reads the staged fp32 file and writes one
self-contained file into its own staging folder; it is then staged with the fp32 file's
metadata plus its own (``onnxport.variant*``) and published as ``<stem>.<name>.onnx``. Every
variant is validated before anything is published, so a variant with ``on_mismatch: fail``
fails the run with the previous files untouched; ``skip`` keeps it as
``<stem>.<name>.rejected.onnx`` and publishes the rest; ``warn`` publishes it and says so.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from onnxport.config import ExportConfig, VariantConfig
from onnxport.errors import ExportError, ValidationError
from onnxport.progress import phase

if TYPE_CHECKING:
    from onnxport.exporters import ExporterRun
    from onnxport.inputs import ModelInputs
    from onnxport.publish import Layouts
    from onnxport.report import VariantReport
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
    variants: list[VariantResult] = field(default_factory=list)
    """The variant files published beside ``path`` (``export.variants``), in config order."""


@dataclass
class VariantResult:
    """One variant file :func:`export` published."""

    name: str
    path: Path
    """``<stem>.<name>.onnx`` beside the fp32 file (absolute)."""
    sha256: str
    size_bytes: int
    passed: bool
    """``False`` only for a variant published with ``on_mismatch: warn`` (or unvalidated)."""


@dataclass
class _StagedVariant:
    variant: VariantConfig
    output: Path
    layouts: Layouts
    report: Optional[VariantReport]
    size_bytes: int

    @property
    def publish(self) -> bool:
        return self.report is None or self.report.passed or self.variant.on_mismatch == "warn"


def export(
    model: Any,
    example_inputs: Any = None,
    output: str | os.PathLike = "model.onnx",
    *,
    config: ExportConfig | Mapping[str, Any] | None = None,
    checkpoint_sha256: Optional[str] = None,
    calibration_samples: Optional[Sequence[Any]] = None,
    validation_samples: Optional[Sequence[Any]] = None,
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
        calibration_samples: real inputs (each as ``forward`` takes them, e.g. a loader's batches)
            that static int8 variants calibrate on, before ``calibration.npz``/``datamodule``.
        validation_samples: real inputs validated as extra cases beside the generated shape
            matrix (and ``export.validation.data``); int8 variants are judged on real cases.

    Raises:
        ConfigError, InputError: bad options, model, inputs, output or report path (nothing written).
        ExportError, UnsupportedOperatorError: torch.onnx could not export the model.
        ValidationError: the file, or a variant with ``on_mismatch: fail``, does not match the
            model; it is kept as ``<stem>[.<variant>].rejected.onnx`` and nothing is published.
        PublishError: the disk is full or the file cannot be moved (``output`` is untouched).

    >>> import torch
    >>> result = export(torch.nn.Linear(4, 2), torch.randn(2, 4), "linear.onnx")  # doctest: +SKIP
    >>> result.input_names, result.exporter  # doctest: +SKIP
    (['input'], 'dynamo')
    """
    from onnxport import publish
    from onnxport.datasource import check_calibration
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
    check_calibration(config, calibration_samples)  # static int8 without data: refused before exporting

    written = {path.parent for _, path, _ in publish.json_files(config, output)}  # swept of dead temps too
    for variant in config.variants:  # data files a kill left between placing them and the commit
        publish.sweep(variant_path(output, variant.name))
    with preserved_state(model), publish.staging_dir(output, *written) as staging:
        with phase("export"):
            weights = start_weights_sha256(model)  # hashed while torch.onnx exports
            inputs = _prepare_inputs(model, example_inputs, config)
            samples, calibration = _real_data(model, inputs, config, validation_samples, calibration_samples)
            run, raw = _export(model, inputs, staging, config, output)
            metadata = _metadata(run, config, weights.result())
            layouts = _stage_layouts(raw, output, staging, run, config, metadata)
        validation = _validate(layouts, model, inputs, config, output, samples)  # phases check, validate
        staged = _variants(model, layouts, output, staging, run, config, metadata, validation, calibration)
        with phase("publish"):
            sha256 = layouts.sha256()  # from the staged bytes: nothing can swap them after the rename
            # The checkpoint file's hash differs per clone (Lightning stores its dirpath): report only.
            context = {**run_context(output.parent), "checkpoint_sha256": checkpoint_sha256}
            _file_rows(validation, layouts, output, staged, config)
            report = {report_path: _report(validation, sha256, context)}
            results = result_files(validation, config.validation)
            publish.commit(layouts, output, files={**report, **results})  # DVC metrics and plots too
            published = _publish_variants(staged)
            rejected = {item.variant.name for item in staged if not item.publish}
            publish.remove_stale_variants(output, [v.name for v in published], rejected)
    result = _result(run, output, sha256, config, validation, report_path, context, started)
    result.variants = published
    return result


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


def _real_data(
    model: Any,
    inputs: ModelInputs,
    config: ExportConfig,
    validation_samples: Optional[Sequence[Any]],
    calibration_samples: Optional[Sequence[Any]],
) -> tuple[list[Any], dict[str, list[dict[str, Any]]]]:
    """The real validation cases (the door's samples, then ``validation.data``) and each static int8
    variant's calibration feeds, read before exporting so bad data fails fast."""
    from onnxport import datasource

    samples = list(validation_samples or ())
    if config.validation.data:
        batches = datasource.npz_batches(config.validation.data, inputs.names, None, "export.validation.data")
        samples += [datasource.as_inputs(feed, inputs) for feed in batches]
    calibration = {
        variant.name: datasource.calibration_feeds(variant, model, inputs, config, calibration_samples)
        for variant in config.variants
        if datasource.needs_calibration(variant)
    }
    return samples, calibration


def _metadata(run: ExporterRun, config: ExportConfig, weights_sha256: str) -> dict[str, str]:
    from onnxport import publish

    return publish.provenance_metadata(
        config,
        exporter=run.exporter,
        fallback_reason=run.fallback_reason,
        weights_sha256=weights_sha256,
    )


def _stage_layouts(
    raw: Path,
    output: Path,
    staging: Path,
    run: ExporterRun,
    config: ExportConfig,
    metadata: dict[str, str],
) -> Layouts:
    from onnxport import publish

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
    layouts: Layouts, model: Any, inputs: ModelInputs, config: ExportConfig, output: Path, samples: list[Any]
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
            layouts.checked,
            model,
            inputs,
            config,
            samples=samples,
            onnx_sha256=layouts.sha256(),
            published_as=output,
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


def _variants(
    model: Any,
    layouts: Layouts,
    output: Path,
    staging: Path,
    run: ExporterRun,
    config: ExportConfig,
    metadata: dict[str, str],
    validation: ValidationReport | None,
    calibration: dict[str, list[dict[str, Any]]],
) -> list[_StagedVariant]:
    """Each variant made from the staged fp32 file, staged like it and validated against the eager
    outputs the fp32 validation computed. ``on_mismatch: fail`` raises here, before anything is published."""
    from onnxport import variants
    from onnxport.validation import calibration_cases, validate_variant

    staged = []
    for variant in config.variants:
        with phase(f"variant {variant.name}"):
            folder = staging / f"variant-{variant.name}"
            feeds = calibration.get(variant.name, ())
            try:
                raw = variants.transform(layouts.checked, folder, variant, feeds)
            except ExportError as error:
                if variant.on_mismatch == "fail":
                    raise
                # skip or warn: there is no file to keep or publish; the rest goes on
                logger.warning(
                    "variant %r not made (on_mismatch=%s): %s", variant.name, variant.on_mismatch, error
                )
                continue
            target = variant_path(output, variant.name)
            (folder / "stage").mkdir()
            own = {**metadata, **variants.provenance(variant, layouts.sha256(), feeds)}
            staged_layouts = _stage_layouts(raw, target, folder / "stage", run, config, own)
            report = None
            if validation is not None and validation.reference is not None:
                reference = validation.reference
                held_out = any(case.real for case in reference.cases)
                extra = calibration_cases(model, reference, feeds) if feeds and not held_out else []
                report = validate_variant(
                    staged_layouts.checked,
                    reference,
                    variant,
                    config.validation,
                    published_as=target,
                    extra_cases=extra,
                )
                report.sha256 = staged_layouts.sha256()
            size = _size(staged_layouts.published)
            if report is not None:
                report.size_bytes = size
            staged.append(_StagedVariant(variant, target, staged_layouts, report, size))
        if report is not None and not report.passed:
            _reject_variant(staged[-1])
    return staged


def variant_path(output: Path, name: str) -> Path:
    """Where variant ``name`` of ``output`` is published: ``<stem>.<name>.onnx`` beside it."""
    return output.with_name(f"{output.stem}.{name}.onnx")


def _reject_variant(staged: _StagedVariant) -> None:
    """Apply the variant's ``on_mismatch``: keep it as ``.rejected`` (fail, skip), or warn."""
    from onnxport import publish
    from onnxport.errors import ParityError
    from onnxport.report import write_report

    report, variant = staged.report, staged.variant
    assert report is not None
    if variant.on_mismatch == "warn":
        logger.warning("%s (on_mismatch=warn: published anyway)", report.failure_message())
        return
    rejected = publish.keep_rejected(staged.layouts.published, staged.output)
    report.onnx_path = str(rejected)
    report_path = publish.rejected_paths(staged.output)[2]
    write_report(report.to_dict(), report_path)
    if variant.on_mismatch == "skip":
        logger.warning(
            "%s; kept as %s, not published (on_mismatch=skip)", report.failure_message(), rejected.name
        )
        return
    raise ParityError(
        f"{report.failure_message()}; kept as {rejected.name}, nothing was published",
        fix=f"see {report_path.name}; validate on real inputs (export.validation.data), loosen the variant's "
        f"thresholds (min_cosine, min_top1, atol, per_output) or set export.variants[name={variant.name}]"
        ".on_mismatch to skip",
        report=report,
    )


def _publish_variants(staged: list[_StagedVariant]) -> list[VariantResult]:
    from onnxport import publish

    published = []
    for item in staged:
        if not item.publish:
            continue
        sha256 = item.layouts.sha256()
        publish.commit(item.layouts, item.output)
        passed = item.report is not None and item.report.passed
        published.append(VariantResult(item.variant.name, item.output, sha256, item.size_bytes, passed))
    return published


def _size(path: Path) -> int:
    from onnxport.publish import data_files

    return sum(file.stat().st_size for file in [path, *data_files(path)])


def _file_rows(
    validation: ValidationReport | None,
    layouts: Layouts,
    output: Path,
    staged: list[_StagedVariant],
    config: ExportConfig,
) -> None:
    """With variants, one row per file in the report: the fp32 file, then each variant, with latency
    at batch 1 and 32 (a variant's was timed by its validation, in the session it had open)."""
    from onnxport.report import FileRow
    from onnxport.validation import file_latency

    if validation is None or validation.reference is None or not staged:
        return  # without variants the report is as before: no second session on a large model
    runs = config.validation.latency_runs
    reference = validation.reference
    validation.files = [
        FileRow(
            "fp32",
            str(output),
            _size(layouts.published),
            file_latency(layouts.checked, reference, runs),
            max_abs_diff=validation.worst("max_abs_diff"),
            passed=validation.passed,
        )
    ]
    for item in staged:
        if item.report is None:
            continue
        validation.files.append(item.report.row(item.publish))
        validation.variants.append(item.report)


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
        size_bytes=sum(path.stat().st_size for path in [output, *data]),  # data listed once, above
        data_path=data[0] if data else None,
        **dataclasses.asdict(run),  # what the exporter did: exporter, fallback reason, names, axes
    )
    logger.info("exported %s with %s in %.1fs (sha256 %s)", output, run.exporter, result.seconds, sha256)
    return result
