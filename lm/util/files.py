"""Writing a file so that no reader ever sees half of it.

Every file the project rewrites in place (a run's config.yaml, a checkpoint's digest, a sweep
member's done.json, the measured peak, a model file, a tokenizer) goes through `atomic_write`:
the bytes go to a temporary file beside the target, named for this host, process and call, and
are then renamed over it. A rename within one directory is atomic, so a reader (or a process
killed mid-write) finds the old file or the whole new one. The unique name keeps two processes
writing the same file at once (hosts sharing a sweep directory, two workers caching the peak)
from writing into one temporary file.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """A hidden name beside `path` that no other host, process or call uses."""
    return path.with_name(
        f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    )


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Replace `path` with `data` (text is written as UTF-8) in one rename; on any error the
    temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
