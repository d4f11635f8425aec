"""Typed errors. Every error names the bad value and carries the fix.

The CLI maps :attr:`OnnxportError.exit_code` to the process exit status:
``2`` for bad config or bad input, ``1`` when validation failed (nothing was
published), ``3`` for an unexpected internal error (anything not raised on purpose),
``130`` when interrupted with Ctrl-C.
"""

from __future__ import annotations

import re
from typing import Any

EXIT_VALIDATION_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130


class OnnxportError(Exception):
    """Base of every error onnxport raises on purpose.

    ``str(error)`` is one line: what was wrong, then ``Fix: ...`` when a fix is known.
    """

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(message)

    def __str__(self) -> str:
        message = " ".join(self.message.split())  # one line, whatever the caller built
        if not self.fix:
            return message
        return f"{message.rstrip('.')}. Fix: {' '.join(self.fix.split())}"


class ConfigError(OnnxportError, ValueError):
    """An option is unknown, of the wrong type, or out of its allowed values."""


class InputError(OnnxportError, ValueError):
    """The model, its example inputs or a path given by the caller cannot be used."""


class AxisNotDynamicError(ConfigError):
    """Eager PyTorch itself refuses a size that a dynamic axis of the graph allows.

    Validation found it, but the file is not what is wrong: the axis should not be dynamic (or not
    over those sizes), so it is a configuration error (exit 2), not a parity failure (exit 1).
    ``axes`` maps each axis name validation changed to the size the model refused.
    """

    def __init__(self, message: str, *, fix: str | None = None, axes: dict[str, int] | None = None) -> None:
        self.axes = dict(axes or {})
        super().__init__(message, fix=fix)


class CheckpointError(InputError):
    """A checkpoint or weights file is missing, corrupt, untrusted or does not fit the model."""


class ExportError(OnnxportError):
    """torch.onnx could not turn the model into an ONNX graph."""


class UnsupportedOperatorError(ExportError):
    """The model uses an operator that no available exporter can translate."""

    def __init__(self, operator: str, message: str, *, fix: str | None = None) -> None:
        self.operator = operator
        super().__init__(message, fix=fix)


class OpsetNotProduced(ConfigError):
    """The exporter ran but could not convert the graph to the requested opset."""


class PublishError(OnnxportError):
    """The validated file could not be moved to the output path."""


class ValidationError(OnnxportError):
    """The exported file does not compute what the PyTorch model computes.

    ``report`` holds the :class:`~onnxport.validation.ValidationReport` when one was made.
    """

    exit_code = EXIT_VALIDATION_FAILED

    def __init__(self, message: str, *, fix: str | None = None, report: Any = None) -> None:
        self.report = report
        super().__init__(message, fix=fix)


class CheckerError(ValidationError):
    """``onnx.checker`` or strict shape inference rejected the file."""


class SessionError(ValidationError):
    """ONNX Runtime could not create a CPU session for the file."""


class SignatureMismatchError(ValidationError):
    """The graph's inputs or outputs differ from the exported names or count."""


class ParityError(ValidationError):
    """ONNX Runtime's outputs differ from eager PyTorch beyond the tolerances."""


class NonFiniteError(ParityError):
    """NaN or Inf appeared in the outputs of PyTorch or ONNX Runtime."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """A foreign exception as one short line, for the message of an onnxport error.

    torch.onnx wraps the root cause in pages of advice and colour codes; its
    ``<class '...'>`` line is the cause. Anything else is joined onto one line.
    """
    if isinstance(error, OnnxportError):
        return " ".join(error.message.split())
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    root = [line.strip() for line in text.splitlines() if line.strip().startswith("<class '")]
    line = re.sub(r"^<class '(?:\w+\.)*(\w+)'>", r"\1", root[0]) if root else " ".join(text.split())
    line = line or type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
