"""Process-wide XLA settings, applied before JAX initialises its backends."""

from __future__ import annotations

import os


def configure() -> None:
    """Set defaults the user has not set; never override their environment."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
