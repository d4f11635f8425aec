"""What validation found: per output and shape numbers, a table for people, JSON for DVC.

The JSON keeps numbers only in its metric sections so ``dvc metrics show`` and
``dvc metrics diff`` can display and compare every value; the run context (git
commit, host, time) sits in its own ``run`` section and never goes into the
model file.

Only the standard library is imported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from onnxport.errors import InputError

if TYPE_CHECKING:
    from onnxport.config import ValidationConfig

REPORT_SIZE_LIMIT = 1 << 20
"""Bytes a validation report may have: anything larger is not one (``inspect`` reads no more)."""


@dataclass
class OutputCheck:
    """One output compared at one case of the shape matrix."""

    name: str
    shape: tuple[int, ...]
    atol: float
    rtol: float
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    mismatch_pct: float = 0.0
    nan_torch: int = 0
    nan_ort: int = 0
    inf_torch: int = 0
    inf_ort: int = 0
    error: Optional[str] = None
    """Why the output could not be compared (e.g. shapes differ), ``None`` when it was."""
    allow_nonfinite: bool = False
    """NaN and Inf in the torch output are expected (``per_output.<name>.allow_nonfinite``)."""
    tolerance_use: float = 0.0
    """``max(|ort - torch| / (atol + rtol*|torch|))``: 1.0 is at the limit, above it fails."""
    judged_by_tolerance: bool = True
    """``False`` for an int8 variant: its differences are reported, agreement decides."""
    cosine: Optional[float] = None
    """Cosine similarity of the whole output with torch's (variants only)."""
    min_cosine: Optional[float] = None
    """The smallest cosine that passes; ``None``: not checked here."""
    padding_skipped: int = 0
    """Elements at padded positions (``attention_mask`` 0) left out of the comparison."""

    @property
    def non_finite(self) -> bool:
        """NaN or Inf that fails: any at all, or with ``allow_nonfinite`` any the two sides do not share."""
        if self.allow_nonfinite:
            return bool(self.nan_torch != self.nan_ort or self.inf_torch != self.inf_ort)
        return bool(self.nan_torch or self.nan_ort or self.inf_torch or self.inf_ort)

    @property
    def passed(self) -> bool:
        # NaN and unmatched Inf count as mismatched elements; a non-finite reference fails unless allowed
        if self.error is not None or self.non_finite:
            return False
        if self.min_cosine is not None and (self.cosine is None or self.cosine < self.min_cosine):
            return False
        return self.mismatch_pct == 0.0 or not self.judged_by_tolerance

    def problem(self) -> str:
        """One phrase saying why this output failed."""
        if self.error:
            return self.error
        if not self.allow_nonfinite and (self.nan_torch or self.inf_torch) and self.mismatch_pct == 0.0:
            count = self.nan_torch + self.inf_torch
            return (
                f"has {count} NaN/Inf elements in torch's own output (set "
                f"export.validation.per_output.{self.name}.allow_nonfinite=true if they are expected)"
            )
        nan = [side for side, count in (("torch", self.nan_torch), ("onnxruntime", self.nan_ort)) if count]
        if nan:
            return f"NaN found in the {' and '.join(nan)} output"
        if self.inf_torch != self.inf_ort:
            return f"Inf found in {self.inf_torch} torch elements but {self.inf_ort} onnxruntime elements"
        if self.min_cosine is not None and (self.cosine or 0.0) < self.min_cosine:
            return f"cosine={self.cosine:.6f} < min_cosine={self.min_cosine:g}"
        return (
            f"max_abs_diff={self.max_abs_diff:.1e} > atol={self.atol:.0e}+rtol={self.rtol:.0e}*|torch| "
            f"({self.mismatch_pct:.3g}% of elements)"
        )

    def metrics(self) -> dict[str, float]:
        extra = {} if self.cosine is None else {"cosine": self.cosine}
        return {
            **extra,
            "passed": int(self.passed),
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "mismatch_pct": self.mismatch_pct,
            "tolerance_use": self.tolerance_use,
            "nan": self.nan_torch + self.nan_ort,
            "inf": self.inf_torch + self.inf_ort,
        }


@dataclass
class CaseResult:
    """One row of the shape matrix: the axis sizes used and every output's comparison."""

    label: str
    """``batch=1``, ``batch=5,seq=9``, ``export`` (no dynamic axis) or ``sample_0``."""
    sizes: dict[str, int]
    outputs: list[OutputCheck] = field(default_factory=list)
    error: Optional[str] = None
    """Why the case could not run at all (torch or onnxruntime raised)."""
    torch_ms: Optional[float] = None
    """Median milliseconds of eager PyTorch at this case's sizes (``None``: timing off)."""
    ort_ms: Optional[float] = None
    """Median milliseconds of ONNX Runtime at this case's sizes (``None``: timing off)."""

    @property
    def passed(self) -> bool:
        return self.error is None and all(output.passed for output in self.outputs)

    def failures(self) -> list[str]:
        if self.error:
            return [f"{self.label}: {self.error}"]
        return [f"{o.name} at {self.label} {o.problem()}" for o in self.outputs if not o.passed]


WORST_FIELDS = ("max_abs_diff", "max_rel_diff", "mismatch_pct", "tolerance_use")
"""The per-output numbers the full report sums up as their worst case."""


@dataclass
class ValidationReport:
    """The result of :func:`onnxport.validate`: every case of the shape matrix, latency and tolerances."""

    onnx_path: str
    cases: list[CaseResult]
    atol: float
    rtol: float
    per_output: dict[str, dict[str, float]] = field(default_factory=dict)
    """Tolerances actually used for outputs that override the global ones."""
    torch_latency_ms: Optional[float] = None
    ort_latency_ms: Optional[float] = None
    first_divergence: Optional[str] = None
    """With ``validation.localize``: the first operator whose output diverges, as a phrase."""
    run: dict[str, Any] = field(default_factory=dict)
    """Run context (git commit and dirty flag, host, time); kept out of the model file."""
    files: list[FileRow] = field(default_factory=list)
    """One row per file of the run: the fp32 file first, then each variant (``export.variants``)."""
    variants: list[VariantReport] = field(default_factory=list)
    """Each variant's full comparison with the PyTorch model."""
    reference: Any = field(default=None, repr=False, compare=False)
    """The cases and eager outputs validation computed, reused to validate the variants."""

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(case.passed for case in self.cases)

    @property
    def case_latency(self) -> list[dict[str, Any]]:
        """Median milliseconds per timed case: ``{"case", <axis sizes>, "torch_ms", "onnxruntime_ms"}``."""
        return [
            {"case": case.label, **case.sizes, "torch_ms": case.torch_ms, "onnxruntime_ms": case.ort_ms}
            for case in self.cases
            if case.torch_ms is not None and case.ort_ms is not None
        ]

    @property
    def failed_cases(self) -> list[CaseResult]:
        return [case for case in self.cases if not case.passed]

    @property
    def non_finite(self) -> bool:
        return any(output.non_finite for case in self.cases for output in case.outputs)

    def failure_message(self, limit: int = 3) -> str:
        """One line: how many cases failed and the first few reasons."""
        failed = self.failed_cases
        reasons = [reason for case in failed for reason in case.failures()]
        shown = "; ".join(reasons[:limit])
        more = f"; and {len(reasons) - limit} more" if len(reasons) > limit else ""
        where = f"; first diverging operator: {self.first_divergence}" if self.first_divergence else ""
        return f"{len(failed)} of {len(self.cases)} validation cases failed: {shown}{more}{where}"

    def worst(self, field: str, output: Optional[str] = None) -> float:
        """The largest ``field`` (``max_abs_diff``, ``tolerance_use``, ...) over every case, of
        every output or of the one named; 0.0 when nothing was compared."""
        checks = (o for case in self.cases for o in case.outputs if output in (None, o.name))
        return max((getattr(o, field) for o in checks), default=0.0)

    # -- for machines -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Flat numeric metrics (``passed`` is 0/1) plus the ``run`` context in its own section."""
        metrics: dict[str, Any] = {
            "passed": int(self.passed),
            "cases": len(self.cases),
            "failed_cases": len(self.failed_cases),
            **{field: self.worst(field) for field in WORST_FIELDS},
        }
        if self.torch_latency_ms is not None:
            metrics["torch_latency_ms"] = self.torch_latency_ms
        if self.ort_latency_ms is not None:
            metrics["ort_latency_ms"] = self.ort_latency_ms
        outputs: dict[str, dict[str, Any]] = {}
        for case in self.cases:
            for output in case.outputs:
                outputs.setdefault(output.name, {})[case.label] = output.metrics()
        metrics["outputs"] = outputs
        metrics["tolerances"] = {"atol": self.atol, "rtol": self.rtol, **self.per_output}
        if self.case_latency:
            metrics["latency"] = self.case_latency
        if self.files:
            metrics["files"] = [row.to_dict() for row in self.files]
        if self.variants:
            metrics["variants"] = {variant.name: variant.to_dict() for variant in self.variants}
        metrics["run"] = dict(self.run)
        return metrics

    def metrics(self) -> dict[str, Any]:
        """The few numbers a DVC metrics file holds, stable from run to run.

        Diffs are scaled so DVC's default 5 decimals show them (1.19e-07 would print as 0.0):
        ``max_abs_diff_e6`` is the worst absolute difference times 1e6, ``max_rel_diff_ppm`` the
        worst relative one in parts per million. ``tolerance_use`` (1.0 = at the limit) is the
        one to watch; with several outputs each has its own under ``tolerance_use_by_output``.
        Latency (noise between runs) and run context stay out: see :meth:`plots` and :meth:`to_dict`.
        """
        metrics: dict[str, Any] = {
            "passed": int(self.passed),
            "tolerance_use": _readable(self.worst("tolerance_use")),
            "max_abs_diff_e6": _readable(1e6 * self.worst("max_abs_diff")),
            "max_rel_diff_ppm": _readable(1e6 * self.worst("max_rel_diff")),
        }
        names = list(dict.fromkeys(o.name for case in self.cases for o in case.outputs))
        if len(names) > 1:
            metrics["tolerance_use_by_output"] = {
                name: _readable(self.worst("tolerance_use", name)) for name in names
            }
        if self.variants:
            metrics["variants"] = {variant.name: variant.metrics() for variant in self.variants}
        return metrics

    def plots(self) -> dict[str, list[dict[str, Any]]]:
        """DVC plot data: ``parity`` (one row per case and output) and ``latency`` (one row per case).

        Parity rows hold the worst differences and ``tolerance_use`` (1.0 = at the tolerance);
        ``label`` names the case, prefixed by the output when there are several. Latency rows
        (from :attr:`case_latency`) hold each dynamic axis' size, ``torch_ms`` and ``onnxruntime_ms``.
        """
        several = len({o.name for case in self.cases for o in case.outputs}) > 1
        parity = [
            {
                "label": f"{o.name} {case.label}" if several else case.label,
                "case": case.label,
                "output": o.name,
                **case.sizes,
                "tolerance_use": o.tolerance_use,
                "max_abs_diff": o.max_abs_diff,
                "max_rel_diff": o.max_rel_diff,
                "atol": o.atol,
                "rtol": o.rtol,
            }
            for case in self.cases
            for o in case.outputs
        ]
        return {"parity": parity, "latency": self.case_latency}

    def write_json(self, path: str | os.PathLike[str]) -> str:
        """Write :meth:`to_dict` as JSON (a DVC metrics file), atomically; returns the path written.

        Refuses (``InputError``) a path that is a directory or holds something other than an
        onnxport report: a wrong path must not destroy a model or a checkpoint.
        """
        return write_report(self.to_dict(), path)

    # -- for people ----------------------------------------------------------------------

    def summary(self) -> str:
        """A table with one row per output and shape, ✓/✗ marks and the tolerances used."""
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"ONNX validation {verdict}: {len(self.cases) - len(self.failed_cases)} of {len(self.cases)} "
            f"cases passed (atol={self.atol:g}, rtol={self.rtol:g}; "
            f"|ort - torch| <= atol + rtol*|torch|) for {self.onnx_path}"
        ]
        header = ("", "output", "case", "shape", "max_abs_diff", "max_rel_diff", "mismatch%", "atol", "rtol")
        rows = [header]
        for case in self.cases:
            if case.error:
                rows.append(("✗", "-", case.label, "-", "-", "-", "-", "-", "-"))
            for o in case.outputs:
                rows.append(
                    (
                        "✓" if o.passed else "✗",
                        o.name,
                        case.label,
                        "x".join(map(str, o.shape)) or "scalar",
                        f"{o.max_abs_diff:.2e}",
                        f"{o.max_rel_diff:.2e}",
                        f"{o.mismatch_pct:.3g}",
                        f"{o.atol:g}",
                        f"{o.rtol:g}",
                    )
                )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines += [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        for case in self.failed_cases:
            lines += [f"✗ {reason}" for reason in case.failures()]
        if self.first_divergence:
            lines.append(f"first diverging operator: {self.first_divergence}")
        if self.torch_latency_ms is not None and self.ort_latency_ms is not None:
            lines.append(
                f"latency at the export shape (median): torch {self.torch_latency_ms:.3f} ms, "
                f"onnxruntime {self.ort_latency_ms:.3f} ms"
            )
        if self.files:
            lines += ["", files_table(self.files)]
        for variant in self.variants:
            lines += [f"✗ {variant.name}: {variant.failure_message()}"] if not variant.passed else []
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# -- variants --------------------------------------------------------------------------------


@dataclass
class FileRow:
    """One file of the run, side by side with the others: size, speed, distance from PyTorch."""

    name: str
    """``fp32`` for the main file, else the variant's name."""
    path: str
    size_bytes: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    """Median ONNX Runtime milliseconds by case: ``batch=1`` and ``batch=32`` when the batch axis is
    dynamic, else ``export``; empty with ``latency_runs: 0``."""
    max_abs_diff: Optional[float] = None
    min_cosine: Optional[float] = None
    top1: Optional[float] = None
    """Smallest top-1 agreement with PyTorch over the class-score outputs (``None``: none judged)."""
    passed: bool = True
    published: bool = True

    def to_dict(self) -> dict[str, Any]:
        row = {
            "name": self.name,
            "path": self.path,
            "size_bytes": self.size_bytes,
            **{f"ort_ms_{case.replace('=', '')}": ms for case, ms in self.latency_ms.items()},
            "passed": int(self.passed),
            "published": int(self.published),
        }
        for key in ("max_abs_diff", "min_cosine", "top1"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        return row


def files_table(rows: list[FileRow]) -> str:
    """The files of one run as a table for people."""
    cases = list(dict.fromkeys(case for row in rows for case in row.latency_ms))
    header = ("", "file", "size", *(f"ort ms {case}" for case in cases), "max_abs_diff", "cosine", "top1")
    table = [header]
    for row in rows:
        mark = "✓" if row.passed else "✗" if not row.published else "!"
        table.append(
            (
                mark,
                f"{row.name} ({Path(row.path).name})",
                _size(row.size_bytes),
                *(f"{row.latency_ms[c]:.3f}" if c in row.latency_ms else "-" for c in cases),
                "-" if row.max_abs_diff is None else f"{row.max_abs_diff:.2e}",
                "-" if row.min_cosine is None else f"{row.min_cosine:.6f}",
                "-" if row.top1 is None else f"{row.top1:.4f}",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@dataclass
class VariantReport:
    """One variant compared with the PyTorch model over the fp32 validation's cases."""

    name: str
    onnx_path: str
    criteria: dict[str, Any]
    """The thresholds used: ``atol``, ``rtol``, ``min_cosine``, ``min_top1`` and ``per_output``."""
    cases: list[CaseResult] = field(default_factory=list)
    top1: dict[str, float] = field(default_factory=dict)
    """Top-1 agreement with PyTorch per class-score output, pooled over the judged cases' rows."""
    top1_rows: dict[str, int] = field(default_factory=dict)
    """How many rows each top-1 agreement is over."""
    unjudged: list[str] = field(default_factory=list)
    """Cases reported but not judged: generated inputs, for int8 when real data was compared too."""
    min_top1: dict[str, float] = field(default_factory=dict)
    """The top-1 thresholds judged, per output: only over enough rows (see ``export.variants[].min_top1``)."""
    size_bytes: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    sha256: str = ""
    on_mismatch: str = "fail"

    @property
    def judged(self) -> list[CaseResult]:
        return [case for case in self.cases if case.label not in self.unjudged]

    @property
    def passed(self) -> bool:
        cases = self.judged
        top1 = all(self.top1.get(name, 1.0) >= low for name, low in self.min_top1.items())
        return bool(cases) and all(case.passed for case in cases) and top1

    def worst(self, field: str) -> Optional[float]:
        values = [
            getattr(o, field) for case in self.judged for o in case.outputs if getattr(o, field) is not None
        ]
        if not values:
            return None
        return min(values) if field == "cosine" else max(values)

    def failure_message(self, limit: int = 3) -> str:
        reasons = [reason for case in self.judged if not case.passed for reason in case.failures()]
        reasons += [
            f"{name} top-1 agreement {self.top1.get(name, 0.0):.4f} < min_top1={low:g}"
            for name, low in self.min_top1.items()
            if self.top1.get(name, 1.0) < low
        ]
        more = f"; and {len(reasons) - limit} more" if len(reasons) > limit else ""
        return f"variant {self.name!r} does not match the PyTorch model: {'; '.join(reasons[:limit])}{more}"

    def row(self, published: bool) -> FileRow:
        return FileRow(
            self.name,
            self.onnx_path,
            self.size_bytes,
            dict(self.latency_ms),
            max_abs_diff=self.worst("max_abs_diff"),
            min_cosine=self.worst("cosine"),
            top1=min(self.top1.values()) if self.top1 else None,
            passed=self.passed,
            published=published,
        )

    def to_dict(self) -> dict[str, Any]:
        outputs: dict[str, dict[str, Any]] = {}
        for case in self.cases:
            for output in case.outputs:
                outputs.setdefault(output.name, {})[case.label] = output.metrics()
        return {
            "passed": int(self.passed),
            "path": self.onnx_path,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "criteria": self.criteria,
            "top1": dict(self.top1),
            "top1_rows": dict(self.top1_rows),
            "unjudged_cases": list(self.unjudged),
            "failed_cases": [case.label for case in self.judged if not case.passed],
            "errors": [reason for case in self.cases if case.error for reason in case.failures()],
            "outputs": outputs,
        }

    def metrics(self) -> dict[str, float]:
        """Numbers only, for ``dvc metrics``: passed, size, worst difference, agreement."""
        metrics: dict[str, float] = {"passed": int(self.passed), "size_bytes": self.size_bytes}
        worst = self.worst("max_abs_diff")
        if worst is not None:
            metrics["max_abs_diff_e6"] = _readable(1e6 * worst)
        cosine = self.worst("cosine")
        if cosine is not None:
            metrics["min_cosine"] = _readable(cosine)
        if self.top1:
            metrics["top1"] = _readable(min(self.top1.values()))
        return metrics


# -- writing reports -------------------------------------------------------------------------


def revalidation_report_path(onnx_path: str | os.PathLike[str]) -> Path:
    """``onnxport validate``'s default report: ``<stem>.revalidation.json``, never the export's own report."""
    path = Path(onnx_path)
    return path.with_name(f"{path.stem}.revalidation.json")


_NOT_JSON = object()


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON at ``path``, or :data:`_NOT_JSON` when it is not a regular file under
    :data:`REPORT_SIZE_LIMIT` holding JSON (a FIFO, a device, a symlink and any other file;
    nothing blocks, nothing large is read)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then says it is no file
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return _NOT_JSON
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not _is_regular(info.st_mode) or info.st_size > REPORT_SIZE_LIMIT:
            return _NOT_JSON
        raw = handle.read(REPORT_SIZE_LIMIT + 1)
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return _NOT_JSON


def read_report(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The report (or metrics file) at ``path`` as a dict, or ``None`` when it is not one:
    see :func:`read_json`; a report is a JSON object with ``passed``."""
    data = read_json(path)
    return data if isinstance(data, dict) and "passed" in data else None


def check_report_target(path: str | os.PathLike[str], key: str = "report", *, plot: bool = False) -> Path:
    """Refuse a path whose current content is not a report (any JSON for a ``plot``); returns it absolute.

    A symlink at ``path`` is fine: the write replaces the link, never its target.
    """
    target = Path(path).expanduser().absolute()
    if target.is_dir() and not target.is_symlink():
        raise InputError(
            f"{key}={str(path)!r} is a directory", fix=f"set {key} to a file path such as validation.json"
        )
    if os.path.lexists(target) and not target.is_symlink():
        ours = read_json(target) is not _NOT_JSON if plot else read_report(target) is not None
        if not ours:
            what = "a JSON file" if plot else "an onnxport validation report"
            raise InputError(
                f"{key}={str(path)!r} exists and is not {what}; refusing to overwrite it",
                fix=f"set {key} to another path, or remove the file if it may go",
            )
    return target


def write_report(data: dict[str, Any], path: str | os.PathLike[str]) -> str:
    """Write ``data`` as JSON at ``path`` through a temporary file and ``os.replace``."""
    check_report_target(path)
    return write_json_atomic(data, path)


def result_files(report: ValidationReport | None, settings: ValidationConfig) -> dict[Path, Any]:
    """What ``settings`` asks for beside the full report, for DVC: ``{path: JSON data}``.

    ``settings.metrics``: :meth:`ValidationReport.metrics`, a few numbers that ``dvc metrics
    show`` prints readably and ``dvc metrics diff`` compares (no strings, no latency noise).
    ``settings.plots``: ``parity.json`` (each case and output, worst difference against its
    tolerance) and ``latency.json`` (torch vs ONNX Runtime at each case's sizes).
    ``report`` is ``None`` when validation was off: the metrics then say so (``passed: 0,
    validated: 0``) and the plots are empty, so nothing vouches for an unvalidated model.
    """
    files: dict[Path, Any] = {}
    if settings.metrics:
        files[Path(settings.metrics)] = report.metrics() if report else {"passed": 0, "validated": 0}
    if settings.plots:
        plots = report.plots() if report else {name: [] for name in PLOT_NAMES}
        for name, rows in plots.items():
            files[Path(settings.plots) / f"{name}.json"] = rows
    return files


PLOT_NAMES = ("parity", "latency")
"""The files :meth:`ValidationReport.plots` writes under ``validation.plots`` (``<name>.json``)."""


def write_json_atomic(data: Any, path: str | os.PathLike[str]) -> str:
    """``data`` as JSON at ``path``: a temporary file beside it, flushed, then ``os.replace``."""
    os.replace(stage_report(data, path), path)
    return os.fspath(path)


def temporary_beside(target: Path) -> tuple[int, str]:
    """A new file beside ``target`` for writing (descriptor, path), named after this process.

    Created with the umask's permissions, as the file it replaces would be (``mkstemp``'s 0600
    would leave a report other users cannot read); the pid in the name lets a later export sweep
    it when a kill left it behind.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        name = target.parent / f".{target.name}.pid{os.getpid()}.{secrets.token_hex(4)}.tmp"
        with contextlib.suppress(FileExistsError):
            return os.open(name, flags, 0o666), str(name)


def stage_report(data: Any, path: str | os.PathLike[str]) -> Path:
    r"""``data`` written and flushed to a temporary file beside ``path``; the caller ``os.replace``\ s it.

    A full disk or a missing permission fails here, before anything is replaced. The temporary
    name carries this pid, so the next export sweeps it when a kill left it behind.
    """
    target = Path(path)
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    try:
        descriptor, temporary = temporary_beside(target)
    except OSError as error:
        raise InputError(
            f"report {str(path)!r} cannot be written: {error.strerror}", fix="choose a writable report path"
        ) from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise InputError(
            f"report {str(path)!r} cannot be written: {error.strerror}",
            fix="free disk space or choose another path",
        ) from None
    return Path(temporary)


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _readable(value: float) -> float:
    """Five significant digits: what ``dvc metrics show`` can print, without float noise."""
    return float(f"{value:.5g}")
