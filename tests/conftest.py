"""Shared test setup: a persistent compilation cache so repeated shapes compile once."""

import os
from pathlib import Path

import jax

_CACHE = Path(os.environ.get("LM_TEST_JAX_CACHE", Path.home() / ".cache" / "lm" / "jax-tests"))
# Also seen by the `lm` subprocesses the CLI tests start.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
# model.compute_dtype's default "auto" follows the CPU (lm/hardware/precision.py); the suite's
# figures and tolerances are float32's on every machine. Tests of the rule itself clear this.
os.environ.setdefault("LM_AUTO_COMPUTE_DTYPE", "float32")
