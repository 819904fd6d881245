"""Process-wide JAX/XLA settings, applied before JAX initialises its backends."""

from __future__ import annotations

import os
from pathlib import Path


def configure() -> None:
    """Set defaults the user has not set; never override their environment.

    The persistent compilation cache makes a rerun, a resumed run, or the next sweep member of
    the same shape load its compiled step from disk instead of compiling it again (seconds per
    program on a CPU)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cache = Path(os.environ.get("LM_CACHE_DIR", "~/.cache/lm")).expanduser() / "jax-compile"
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
