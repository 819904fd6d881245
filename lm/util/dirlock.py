"""One process at a time in a run (or sweep) directory.

`hold(directory)` takes an exclusive `flock` on `directory/.lock` for the duration of a `with`
block and refuses, with one line, while another process holds it. The kernel drops the lock
when its process ends, however it ends (SIGKILL included), so a lock is never stale and there
is nothing to clean up; the file itself stays behind and only records the last holder's pid
and host for the refusal message. A multi-host job takes the lock on process 0 only: the other
processes work in the same directory on its behalf.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_FILE = ".lock"


class Busy(RuntimeError):
    """Another process holds the directory; the message is one line."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        return ""
    return f" (pid {text[0]} on {text[1]})" if len(text) >= 2 else ""


@contextlib.contextmanager
def hold(
    directory: str | Path,
    what: str = "run directory",
    warn: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold `directory` (created if missing) exclusively for the `with` block, or raise Busy.

    On a filesystem without flock (some network mounts) the block runs unlocked, after one
    line through `warn` (default: stderr)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                locked = False
                (warn or (lambda s: print(s, file=sys.stderr)))(
                    f"warning: {d}: cannot lock {LOCK_FILE} ({e.strerror}); nothing stops a "
                    f"second process from using this {what} at the same time"
                )
            else:
                raise Busy(
                    f"{d}: this {what} is in use by another process{_holder(fd)}; wait for it "
                    "to finish or stop it, or choose another directory"
                ) from None
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


__all__ = ["LOCK_FILE", "Busy", "hold"]
