"""sha256 of files, streamed. Standard library only: ``onnxport inspect`` uses it without torch.

An artifact is a header and the data files it references; :func:`artifact_sha256` covers
both, so two weight sets behind one header never share a hash.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import BinaryIO

PathLike = str | os.PathLike


def file_sha256(path: PathLike, *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so a large checkpoint is never held in memory."""
    return _digest([path], chunk_size).hexdigest()


def artifact_sha256(
    header: PathLike, data_files: Iterable[PathLike] = (), *, chunk_size: int = 1 << 20
) -> str:
    """Hex sha256 of the ``data_files`` (in the order given) followed by ``header``.

    Data first: publishing hashes the weights once, while naming their file, and then adds
    the header it writes. With no data file this is :func:`file_sha256` of the header, so a
    self-contained ``.onnx`` file hashes as ``sha256sum`` says.
    """
    return _digest([*data_files, header], chunk_size).hexdigest()


def stream_sha256(handle: BinaryIO, *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of what is left in an open binary file (local, or fsspec's remote files)."""
    return _update(hashlib.sha256(), handle, chunk_size).hexdigest()


def _digest(paths: Iterable[PathLike], chunk_size: int) -> hashlib._Hash:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            _update(digest, handle, chunk_size)
    return digest


def _update(digest: hashlib._Hash, handle: BinaryIO, chunk_size: int) -> hashlib._Hash:
    while chunk := handle.read(chunk_size):
        digest.update(chunk)
    return digest
