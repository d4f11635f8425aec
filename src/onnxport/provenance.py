"""Where and with what an export ran, and which weights it holds.

``tool_versions`` and ``weights_sha256`` are part of the file's identity (they go into
``metadata_props``); ``run_context`` changes from run to run (commit, host, time) and so
only goes into ``ExportResult`` and the report beside the file, never into the file.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
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


def weights_sha256(source: Any) -> str:
    """sha256 over the weights themselves: each tensor's name, dtype, shape and bytes, by name.

    ``source`` is a module (its ``state_dict()``: parameters and buffers), an
    ``ExportedProgram``, a ``state_dict`` or a Lightning checkpoint dict (its ``state_dict``):
    the same weights give the same hash whichever of these holds them, and whatever else a
    checkpoint file stores (Lightning keeps absolute ``dirpath`` and ``best_model_path`` in it,
    so the file's own sha256 differs per clone). Non-tensor entries (``extra_state``) are left out.
    """
    return _hash_state(_tensor_state(source))


def start_weights_sha256(source: Any) -> concurrent.futures.Future[str]:
    """:func:`weights_sha256` on a thread, so hashing a large model overlaps the export.

    The tensors are taken from ``source`` now, on the calling thread (an exporter may swap a
    module's parameters while it traces); only their bytes are read on the thread, and hashlib
    releases the GIL while it hashes them.
    """
    state = _tensor_state(source)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxport-hash")
    future = executor.submit(_hash_state, state)
    executor.shutdown(wait=False)
    return future


def _tensor_state(source: Any) -> dict[str, Any]:
    import torch

    if isinstance(source, torch.export.ExportedProgram):
        state: Mapping[str, Any] = {**source.state_dict, **source.constants}
    elif isinstance(source, torch.nn.Module):
        state = source.state_dict()
    elif isinstance(source, Mapping) and isinstance(source.get("state_dict"), Mapping):
        state = source["state_dict"]  # a Lightning checkpoint
    elif isinstance(source, Mapping):
        state = source
    else:
        raise TypeError(f"weights_sha256 takes a module or a state_dict, not {type(source).__name__}")
    return {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}


def _hash_state(state: Mapping[str, Any]) -> str:
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        header = (
            f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0{tensor.nbytes}\0"
        )
        digest.update(header.encode())
        # Bytes as stored (every dtype, bfloat16 included, viewed as uint8), without a copy.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


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
