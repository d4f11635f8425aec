"""onnxport: trained PyTorch model in, validated and reproducible ONNX file out.

Names are imported lazily so ``import onnxport`` (and the CLI's ``inspect``)
does not pay for torch, onnxruntime or Lightning until they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "export": "onnxport.workflow",
    "ExportResult": "onnxport.workflow",
    "VariantResult": "onnxport.workflow",
    "validate": "onnxport.validation",
    "ValidationReport": "onnxport.validation",
    "unwrap": "onnxport.unwrap",
    "load_model": "onnxport.load",
    "OnnxExportCallback": "onnxport.callback",
    "ExportConfig": "onnxport.config",
    "ValidationConfig": "onnxport.config",
    "InputSpec": "onnxport.config",
    "OnnxportError": "onnxport.errors",
    "ConfigError": "onnxport.errors",
    "InputError": "onnxport.errors",
    "CheckpointError": "onnxport.errors",
    "ExportError": "onnxport.errors",
    "UnsupportedOperatorError": "onnxport.errors",
    "PublishError": "onnxport.errors",
    "ValidationError": "onnxport.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from onnxport.callback import OnnxExportCallback
    from onnxport.config import ExportConfig, InputSpec, ValidationConfig
    from onnxport.errors import (
        CheckpointError,
        ConfigError,
        ExportError,
        InputError,
        OnnxportError,
        PublishError,
        UnsupportedOperatorError,
        ValidationError,
    )
    from onnxport.load import load_model
    from onnxport.unwrap import unwrap
    from onnxport.validation import ValidationReport, validate
    from onnxport.workflow import ExportResult, VariantResult, export


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'onnxport' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
