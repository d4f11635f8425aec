"""Where and with what an export ran.

``tool_versions`` is part of the file's identity (it goes into ``metadata_props``);
``run_context`` changes from run to run (commit, host, time) and so only goes into
``ExportResult`` and the report beside the file, never into the file.
"""

from __future__ import annotations

import datetime
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

_TOOLS = ("torch", "onnx", "onnxruntime", "onnxscript")


def tool_versions() -> dict[str, str]:
    """Installed versions of onnxport and the tools that decide the exported bytes."""
    import onnxport

    versions = {"onnxport": onnxport.__version__}
    for name in _TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_context(cwd: str | Path | None = None) -> dict[str, Any]:
    """Git commit and dirty flag of ``cwd`` (None outside a repository), host, UTC time, versions."""
    commit = _git(cwd, "rev-parse", "HEAD")
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "host": socket.gethostname(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "argv": list(sys.argv),
        **{f"{name}_version": version for name, version in tool_versions().items()},
    }


def _git(cwd: str | Path | None, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
