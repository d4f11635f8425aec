"""Class paths from configs and options (``"package.module.Class"``) to classes.

Standard library only: the CLI resolves ``model`` before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from onnxport.errors import ConfigError


def resolve_class(path: type | str, key: str = "model_class", *, error: type[Exception] = ConfigError) -> Any:
    """Import ``"package.module.Class"`` (or ``package.module:Class``, or a nested ``Outer.Inner``).

    The one resolver for class paths in configs and options. A class passes through. Raises
    ``error`` (a ConfigError unless the caller names another OnnxportError) naming ``key``.
    """
    if isinstance(path, type):
        return path
    text = str(path).replace(":", ".")
    parts = text.split(".")
    if not text or not all(part.isidentifier() for part in parts):
        raise error(f"{key}={path!r} is not an import path", fix=f"set {key} to 'package.module.Class'")
    failure: BaseException | None = None
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        module_name = ".".join(parts[:split])
        try:
            found: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as missing:
            if missing.name and not module_name.startswith(missing.name):
                failure = missing  # the module exists but imports something that does not
                break
            failure = failure or missing
            continue
        except Exception as broken:  # the module itself raised on import
            failure = broken
            break
        try:
            for attribute in parts[split:]:
                found = getattr(found, attribute)
        except AttributeError as missing_attribute:
            failure = missing_attribute
            break
        if not isinstance(found, type):
            raise error(
                f"{key}={path!r} is a {type(found).__name__}, not a class",
                fix=f"set {key} to the import path of the class itself, e.g. 'package.module.Class'",
            )
        return found
    cause = f"{type(failure).__name__}: {failure}" if failure else "no module to import"
    raise error(
        f"{key}={path!r} cannot be imported ({cause})",
        fix=f"set {key} to an importable 'package.module.Class' path (is the package installed?)",
    )
