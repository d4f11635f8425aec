"""Progress lines: each phase of an export says when it finished and how long it took.

Phases (``load``, ``export``, ``check``, ``validate``, ``variant <name>``, ``publish``) log
``"<phase> done in X s"`` at INFO on a logger under ``onnxport``. The doors decide where the
lines go: the CLI prints them on stderr as they come, the callback through ``rank_zero_info``.
Standard library only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator

PROGRESS_LINE = re.compile(r"\w+(?: [\w-]+)? done in [\d.]+ s")
"""What a phase logs when it finishes; the doors pick these records out of the INFO stream."""

logger = logging.getLogger("onnxport.progress")


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Log ``<name> done in X s`` when the block finishes (nothing when it raises)."""
    started = time.perf_counter()
    yield
    done(name, started)


def done(name: str, started: float) -> None:
    """Log ``<name> done in X s`` for a phase that began at ``time.perf_counter()`` = ``started``."""
    logger.info("%s done in %.1f s", name, time.perf_counter() - started)


def is_progress(record: logging.LogRecord) -> bool:
    """Whether ``record`` is a phase's progress line."""
    return bool(PROGRESS_LINE.fullmatch(record.getMessage()))
