"""The one export config schema, declared once.

``ExportConfig`` serves the Python API (as keyword options), the Lightning
callback, the ``onnxport export`` CLI and Hydra's ConfigStore. Every field is
documented where it is declared; the README's config reference is generated
from these docstrings (``python -m onnxport.config``).

This module imports only the standard library so the CLI and Hydra plugin can
use it without importing torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from onnxport.errors import ConfigError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

EXPORTERS = ("auto", "dynamo", "torchscript")
# The opsets each exporter produces with the supported torch (torch.onnx._constants:
# ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET, ONNX_MAX_OPSET; tests/test_config.py
# pins them). Kept here so a bad opset is refused before torch is imported.
OPSET_RANGES = {"dynamo": (7, 23), "torchscript": (7, 20)}
EXTERNAL_DATA_MODES = ("auto", "always", "never")
MISMATCH_POLICIES = ("fail", "warn")
VARIANT_MISMATCH_POLICIES = ("fail", "skip", "warn")
OPTIMIZERS = ("none", "ort", "slim")
PRECISIONS = ("fp32", "fp16", "int8")
QUANTIZATIONS = ("dynamic", "static")
CALIBRATION_SPLITS = ("train", "val", "test")
DTYPES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)


@dataclass
class InputSpec:
    """One model input, used when no example inputs are given and to generate validation inputs."""

    name: str = ""
    """Input name as ``forward`` receives it (a parameter name or a dict key)."""
    shape: list[int] = field(default_factory=list)
    """Example shape, e.g. ``[2, 1, 8, 8]``. Dynamic axes are resized during validation."""
    dtype: str = "float32"
    """torch dtype name: float32, float16, bfloat16, float64, int64, int32, int16, int8, uint8, bool."""
    low: Optional[float] = None
    """Smallest value. Integers default to 0; floats without a range are standard normal."""
    high: Optional[float] = None
    """Upper bound (exclusive for integers, e.g. the vocabulary size). Integers default to 10."""


@dataclass
class ToleranceConfig:
    """Tolerances for one output; ``None`` keeps the global value."""

    atol: Optional[float] = None
    """Absolute tolerance for this output."""
    rtol: Optional[float] = None
    """Relative tolerance for this output."""
    allow_nonfinite: bool = False
    """Accept NaN/Inf in this output (where ONNX Runtime has them too); by default any NaN or Inf fails."""


@dataclass
class ValidationConfig:
    """How the exported file is proven to match the PyTorch model before it is published."""

    enabled: bool = True
    """Validate before publishing. ``false`` publishes unchecked and records that in the metadata."""
    atol: float = 1e-4
    """Absolute tolerance: an element passes when ``|ort - torch| <= atol + rtol * |torch|``."""
    rtol: float = 1e-3
    """Relative tolerance (see ``atol``)."""
    per_output: dict[str, ToleranceConfig] = field(default_factory=dict)
    """Per-output overrides, e.g. ``{logits: {atol: 1e-3}}``."""
    on_mismatch: str = "fail"
    """``fail`` (nothing is published) or ``warn`` (publish and warn) when parity fails."""
    sizes: Optional[list[int]] = None
    """Sizes each dynamic axis is checked at, besides the export size. ``None``: 1 and a larger size."""
    seed: int = 0
    """Seed for the generated validation inputs."""
    report: Optional[str] = None
    """Where the JSON report goes. ``None``: ``<output stem>.validation.json`` beside the model."""
    data: Optional[str] = None
    """An ``.npz`` of real inputs (arrays named like the graph inputs, samples on axis 0), cut into
    batches of 32 that are validated beside the generated shape matrix; int8 variants are judged on them."""
    latency_runs: int = 10
    """Timed runs for the torch / ONNX Runtime latency numbers at the export shape (0 turns timing off)."""
    localize: bool = False
    """On a parity failure of a dynamo export, name the first operator whose output diverges."""
    metrics: Optional[str] = None
    """A numbers-only JSON for ``dvc metrics`` (passed, tolerance_use, worst diffs scaled to
    read at 5 decimals). ``None``: not written."""
    plots: Optional[str] = None
    """A directory for DVC plot data: ``parity.json`` (each case and output against its
    tolerance) and ``latency.json`` (torch vs ONNX Runtime per case). ``None``: not written."""


@dataclass
class CalibrationConfig:
    """Where static int8 quantization reads its calibration batches: the user's data, never random."""

    batches: int = 8
    """How many batches to calibrate on (the first ones of the loader or of ``calibration_samples``;
    an ``.npz`` is cut into this many)."""
    split: str = "val"
    """The datamodule's loader to read: ``train``, ``val`` or ``test`` (the callback's trainer
    datamodule, or the one ``datamodule`` builds)."""
    # Any, not dict: Hydra's structured schema resolves an interpolation merged into a dict-typed
    # field while composing the config group, before the root key ``${data}`` names exists.
    datamodule: Optional[Any] = None
    """CLI/DVC stage: a Hydra config with ``_target_`` that builds a LightningDataModule
    (e.g. ``${data}``); ``setup("fit")`` runs, then its ``<split>_dataloader()`` is read."""
    npz: Optional[str] = None
    """CLI/DVC stage: an ``.npz`` of arrays named like the graph inputs, samples on axis 0."""
    generated: bool = False
    """Calibrate on generated validation inputs when no data is given (not representative:
    off by default, and static int8 without data is refused)."""


@dataclass
class VariantTolerance:
    """A variant's acceptance criteria for one output; ``None`` keeps the variant's value."""

    atol: Optional[float] = None
    """Absolute tolerance against the fp32 PyTorch model."""
    rtol: Optional[float] = None
    """Relative tolerance against the fp32 PyTorch model."""
    min_cosine: Optional[float] = None
    """Smallest cosine similarity of the variant's output with PyTorch's, per case (int8)."""
    min_top1: Optional[float] = None
    """Smallest share of rows whose arg-max agrees with PyTorch's, for class-score outputs (int8)."""


@dataclass
class VariantConfig:
    """One more file from the same run: the fp32 export optimised and/or reduced in precision,
    published as ``<stem>.<name>.onnx`` only after it is validated against the PyTorch model."""

    name: str = ""
    """File name part: ``model.onnx`` gets ``model.<name>.onnx`` (letters, digits, ``-``, ``_``)."""
    optimize: str = "none"
    """``none``, ``ort`` (ONNX Runtime's offline graph optimiser at its portable basic level:
    standard ONNX operators only) or ``slim`` (onnxslim)."""
    precision: str = "fp32"
    """``fp32``, ``fp16`` (weights and compute in float16) or ``int8`` (quantized)."""
    quantization: str = "dynamic"
    """For int8: ``dynamic`` (weights int8, activations quantized at run time) or ``static``
    (activations calibrated on ``calibration``)."""
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    """Calibration data for static int8 (see ``CalibrationConfig``)."""
    fp16_io: bool = False
    """For fp16: make the graph's inputs and outputs float16 too. ``false`` keeps them float32,
    so a caller's feed does not change. Operators ONNX Runtime's CPU provider has no float16
    kernel for stay float32 with their weights stored as float16 (the file still halves)."""
    atol: Optional[float] = None
    """Absolute tolerance; ``None``: the precision's default (fp32: ``export.validation.atol``,
    fp16: 1e-2, int8: not checked). fp16 weights round at ~5e-4 relative; measured worst
    differences: 1.2e-3 on a 4-layer d=256 TransformerEncoder, 1.1e-2 on the digits CNN's logits
    (magnitude ~10, inside the fp16 rtol)."""
    rtol: Optional[float] = None
    """Relative tolerance; ``None``: the precision's default (fp32: ``export.validation.rtol``,
    fp16: 1e-2, int8: not checked)."""
    min_cosine: Optional[float] = None
    """Smallest cosine similarity of each output with PyTorch's, per case; ``None``: the precision's
    default (int8: 0.99, others: not checked). Measured for int8: 0.9999+ on the digits CNN and a
    TransformerEncoder (dynamic and static on data like the calibration), 0.80 for static int8 fed
    random inputs far outside its calibrated range. int8 is judged on real cases when there are any
    (``validation_samples``, ``export.validation.data``; for static int8 without them, its first two
    calibration batches); generated cases are then only reported."""
    min_top1: Optional[float] = None
    """Smallest top-1 agreement with PyTorch for outputs that look like class scores (2-D float,
    several columns), pooled over the judged cases' rows; ``None``: the precision's default
    (int8: 0.95, others: not checked). Judged over enough rows that one disagreement is allowed
    (20 at 0.95; always at 1.0). Measured: 1.0 for the trained digits CNN in int8."""
    per_output: dict[str, VariantTolerance] = field(default_factory=dict)
    """Per-output overrides of ``atol``, ``rtol``, ``min_cosine``, ``min_top1``."""
    on_mismatch: str = "fail"
    """When this variant fails validation: ``fail`` (the run fails, nothing is published), ``skip``
    (kept as ``<stem>.<name>.rejected.onnx``, the rest publishes) or ``warn`` (published anyway)."""


@dataclass
class ExportConfig:
    """Everything that decides the bytes of the exported file."""

    schema_version: int = SCHEMA_VERSION
    """Version of this schema. Files written for a newer onnxport are refused with a clear error."""
    exporter: str = "auto"
    """``dynamo``, ``torchscript`` or ``auto`` (dynamo, else TorchScript with the reason recorded)."""
    opset: int = 18
    """ONNX opset to produce. Checked against what the chosen exporter supports."""
    dynamic_batch: bool = True
    """Make axis 0 a dynamic axis named ``batch`` where it is one: the inputs of the batch size that the
    model also runs with at another batch size (tried once before exporting; the others stay static,
    said in one info line), and the outputs that follow them. Transformers models also get ``sequence``."""
    dynamic_axes: dict[str, Any] = field(default_factory=dict)
    """torch.onnx form ``{input_or_output: {axis: name}}``; overrides ``dynamic_batch`` per name."""
    input_names: Optional[list[str]] = None
    """Graph input names. ``None``: ``forward``'s parameter names or the dict keys."""
    output_names: Optional[list[str]] = None
    """Graph output names. ``None``: derived from the output structure (``output``, ``logits``, ...)."""
    inputs: list[InputSpec] = field(default_factory=list)
    """Input spec: beats ``example_input_array``, yields to example inputs passed in (``InputSpec``)."""
    external_data: str = "auto"
    """``auto`` (weights in ``<name>.onnx.<sha12>.data`` only over 2 GB), ``always`` or ``never``."""
    model_version: int = 0
    """Written to the ONNX ``model_version`` field."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Extra ``metadata_props`` written into the file (keys are prefixed ``onnxport.user.``)."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    """Validation settings (see ``ValidationConfig``)."""
    variants: list[VariantConfig] = field(default_factory=list)
    """More files from the same run, each validated against the PyTorch model (see ``VariantConfig``),
    e.g. ``[{name: int8, precision: int8}]``."""

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ExportConfig:
        """Build a config from plain data, refusing unknown keys, wrong types and newer versions."""
        data = dict(data or {})
        version = data.get("schema_version", SCHEMA_VERSION)
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise ConfigError(
                f"export.schema_version={version!r} is not supported; "
                f"this onnxport reads schema versions {list(SUPPORTED_SCHEMA_VERSIONS)}",
                fix="upgrade onnxport or write the config for a supported schema_version",
            )
        config = build(cls, data, "export")
        config.check()
        return config

    @classmethod
    def coerce(cls, config: ExportConfig | Mapping[str, Any] | None = None, **options: Any) -> ExportConfig:
        """Merge ``config`` (an ``ExportConfig``, a mapping or ``None``) with keyword options.

        Options override the config; a nested ``validation`` mapping is merged key by key.
        """
        base = config.to_dict() if isinstance(config, ExportConfig) else _plain(config or {})
        return cls.from_dict(_deep_merge(base, _plain(options)))

    # -- checks -----------------------------------------------------------------------

    def check(self) -> None:
        """Reject values outside their allowed sets, naming the value and what is allowed."""
        _one_of("export.exporter", self.exporter, EXPORTERS)
        _one_of("export.external_data", self.external_data, EXTERNAL_DATA_MODES)
        _one_of("export.validation.on_mismatch", self.validation.on_mismatch, MISMATCH_POLICIES)
        low, high = opset_range(self.exporter)
        if not low <= self.opset <= high:
            raise ConfigError(
                f"export.opset={self.opset} cannot be produced by the {self.exporter} exporter "
                f"(it supports opsets {low}-{high})",
                fix=f"set export.opset between {low} and {high} (e.g. 17 or 18)",
            )
        for tolerance_name in ("atol", "rtol"):
            if getattr(self.validation, tolerance_name) < 0:
                raise ConfigError(
                    f"export.validation.{tolerance_name}="
                    f"{getattr(self.validation, tolerance_name)} is negative",
                    fix="use a tolerance >= 0",
                )
        for spec in self.inputs:
            if not spec.name:
                raise ConfigError("export.inputs has an entry without a name", fix="give every input a name")
            _one_of(f"export.inputs[{spec.name}].dtype", spec.dtype, DTYPES)
        for size in self.validation.sizes or ():
            if size < 1:
                raise ConfigError(f"export.validation.sizes has {size}", fix="use axis sizes >= 1")
        _check_variants(self.variants)

    # -- serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data (dict keys as strings, as in YAML and JSON)."""
        return _plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace. Its hash identifies the config."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """sha256 of :meth:`to_json`."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def _check_variants(variants: list[VariantConfig]) -> None:
    seen: set[str] = set()
    for index, variant in enumerate(variants):
        where = f"export.variants[{index}]"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", variant.name):
            raise ConfigError(
                f"{where}.name={variant.name!r} cannot name a file part",
                fix="name each variant with letters, digits, '-' or '_' (e.g. int8)",
            )
        if variant.name in seen or variant.name in ("rejected", "validation", "revalidation"):
            raise ConfigError(
                f"{where}.name={variant.name!r} is "
                + ("used twice" if variant.name in seen else "reserved for onnxport's own files"),
                fix="give every variant its own name",
            )
        seen.add(variant.name)
        _one_of(f"{where}.optimize", variant.optimize, OPTIMIZERS)
        _one_of(f"{where}.precision", variant.precision, PRECISIONS)
        _one_of(f"{where}.quantization", variant.quantization, QUANTIZATIONS)
        _one_of(f"{where}.on_mismatch", variant.on_mismatch, VARIANT_MISMATCH_POLICIES)
        _one_of(f"{where}.calibration.split", variant.calibration.split, CALIBRATION_SPLITS)
        datamodule = variant.calibration.datamodule
        if datamodule is not None and not (isinstance(datamodule, Mapping) and "_target_" in datamodule):
            raise ConfigError(
                f"{where}.calibration.datamodule={datamodule!r} is not a config with _target_",
                fix="point it at a datamodule config, e.g. ${data}, or use calibration.npz",
            )
        if variant.calibration.batches < 1:
            raise ConfigError(
                f"{where}.calibration.batches={variant.calibration.batches} is below 1",
                fix="calibrate on at least one batch (e.g. 8)",
            )
        criteria = [
            (f"{where}", variant),
            *((f"{where}.per_output.{k}", v) for k, v in variant.per_output.items()),
        ]
        for key, holder in criteria:
            for name in ("atol", "rtol"):
                value = getattr(holder, name)
                if value is not None and value < 0:
                    raise ConfigError(f"{key}.{name}={value} is negative", fix="use a tolerance >= 0")
            for name in ("min_cosine", "min_top1"):
                value = getattr(holder, name)
                if value is not None and not 0 <= value <= 1:
                    raise ConfigError(
                        f"{key}.{name}={value} is outside [0, 1]", fix="use a share between 0 and 1"
                    )


def opset_range(exporter: str) -> tuple[int, int]:
    """The inclusive opset range ``exporter`` can produce (``auto``: either exporter's)."""
    ranges = [OPSET_RANGES[exporter]] if exporter in OPSET_RANGES else list(OPSET_RANGES.values())
    return min(low for low, _ in ranges), max(high for _, high in ranges)


# -- strict dataclass building ------------------------------------------------------------


def build(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, refusing unknown keys and wrong types.

    ``where`` is the key path of ``data`` in the user's config, used in messages. Booleans must
    be real booleans: the strings ``"false"`` or ``"0"`` are errors, never truthy.
    """
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(key) for key in data if key not in fields)
    if unknown:
        key = _join(where, unknown[0])
        close = difflib.get_close_matches(unknown[0], fields, n=1)
        hint = f"did you mean {_join(where, close[0])}? " if close else ""
        raise ConfigError(
            f"unknown key {key}; {hint}valid keys{f' of {where}' if where else ''}: "
            f"{', '.join(sorted(fields))}",
            fix=f"use {_join(where, close[0])}"
            if close
            else "check the spelling against the config reference",
        )
    values = {name: _convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    return cls(**values)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if hint is Any:
        return _plain(value)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _wrong_type(where, value, "a mapping")
        return build(hint, value, where)
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise _wrong_type(where, value, "a list")
        return [_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _wrong_type(where, value, "a mapping")
        return {
            _convert(args[0], key, where): _convert(args[1], item, f"{where}.{key}")
            for key, item in value.items()
        }
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _wrong_type(where, value, "true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _wrong_type(where, value, "an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _wrong_type(where, value, "a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _wrong_type(where, value, "a string")
    raise TypeError(f"unsupported schema type {hint!r} at {where}")  # a bug in this module


def _wrong_type(where: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(
        f"{where}={value!r} has the wrong type ({type(value).__name__}); expected {expected}",
        fix=f"set {where} to {expected}",
    )


def _one_of(where: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{where}={value!r} is not allowed; choose one of {', '.join(allowed)}",
            fix=f"set {where} to one of {', '.join(allowed)}",
        )


def _plain(value: Any) -> Any:
    """Dataclasses, OmegaConf containers and tuples to plain dicts and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return _plain(OmegaConf.to_container(value, resolve=True))
    if isinstance(value, Mapping):
        return {str(key) if isinstance(key, int) else key: _plain(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        nested = isinstance(value, Mapping) and isinstance(merged.get(key), Mapping)
        if nested and key != "dynamic_axes":  # dynamic_axes is replaced whole, as in torch.onnx
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), on one line."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    for node, following in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr):
            docs[node.target.id] = " ".join(str(following.value.value).split())  # type: ignore[attr-defined]
    return docs


REFERENCE_SECTIONS = (
    (ExportConfig, "export."),
    (ValidationConfig, "export.validation."),
    (ToleranceConfig, "export.validation.per_output.<name>."),
    (InputSpec, "export.inputs[]."),
    (VariantConfig, "export.variants[]."),
    (VariantTolerance, "export.variants[].per_output.<name>."),
    (CalibrationConfig, "export.variants[].calibration."),
)


def option_rows(cls: type, prefix: str) -> list[tuple[str, str, str]]:
    """``(key, default as JSON, meaning)`` for every field of ``cls``, keys prefixed with ``prefix``."""
    docs = field_docs(cls)
    defaults = cls().__dict__
    rows = []
    for f in dataclasses.fields(cls):
        default = defaults[f.name]
        shown = "" if dataclasses.is_dataclass(default) else json.dumps(_plain(default))
        rows.append((f"{prefix}{f.name}", shown, docs.get(f.name, "")))
    return rows


def config_reference() -> str:
    """Markdown tables of every option with its default and docstring, for the README."""
    lines: list[str] = []
    for cls, prefix in REFERENCE_SECTIONS:
        lines += [f"### `{cls.__name__}`", "", "| key | default | meaning |", "|---|---|---|"]
        lines += [f"| `{key}` | `{shown}` | {doc} |" for key, shown, doc in option_rows(cls, prefix)]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference())
