"""The machine's measured matmul peak, the denominator of MFU.

Measured once per machine (device kind, device count, CPU model) and precision, and cached as
JSON, since a spec-sheet number means little on a shared 2-core VM and the measured one is what
a step could reach. Two precisions (PRECISIONS):
  float32      float32 operands and result (`a @ b`)
  bf16_f32acc  bfloat16 operands, float32 accumulation and result (`lax.dot(...,
               preferred_element_type=float32)`), what a bfloat16-compute model multiplies
The backend's default precision (`default_precision`: float32 on CPU, bf16_f32acc on
accelerators) keeps the cache key it always had; the other one's key carries its name. A run
asks for the precision its `model.compute_dtype` resolves to (lm.hardware.precision).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from lm.util.files import atomic_write

PRECISIONS = ("float32", "bf16_f32acc")
# /proc/cpuinfo flags that decide matmul speed: x86 vector widths and bfloat16 instructions
# (AVX512-BF16 dot products, AMX tiles), and aarch64's BF16 extension.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16")
BF16_FEATURES = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what platform knows."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_features() -> set[str]:
    """Which of CPU_FEATURES the first CPU lists (x86 "flags", aarch64 "Features"); empty where
    /proc/cpuinfo is missing."""
    for line in _cpuinfo():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split()) & set(CPU_FEATURES)
    return set()


def has_native_bf16() -> bool:
    """Whether bfloat16 matmuls run on hardware made for them: always on TPU/GPU; on CPU, with
    AVX512-BF16 or AMX-BF16 (x86) or BF16 (aarch64). Elsewhere bfloat16 is converted and slow."""
    if jax.devices()[0].platform != "cpu":
        return True
    return bool(cpu_features() & BF16_FEATURES)


def default_precision() -> str:
    """The precision `peak_flops` measures when none is named (and whose cache key carries no
    precision): float32 on CPU, bf16_f32acc on accelerators."""
    return "float32" if jax.devices()[0].platform == "cpu" else "bf16_f32acc"


def precision_of(compute_dtype: str) -> str:
    """The peak precision a model with this (resolved) `model.compute_dtype` multiplies in."""
    return {"float32": "float32", "bfloat16": "bf16_f32acc"}[compute_dtype]


def machine_key(precision: str | None = None) -> str:
    """The cache key: device, count and CPU model, plus the precision unless it is the default
    (so tables written before precisions existed keep their meaning)."""
    dev = jax.devices()[0]
    key = f"{dev.platform}-{dev.device_kind}-x{jax.device_count()}-{cpu_model()}".replace(" ", "_")
    if precision is None or precision == default_precision():
        return key
    _check(precision)
    return f"{key}-{precision}"


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: must be one of {', '.join(PRECISIONS)}")


def measure_peak_flops(
    n: int | None = None, repeats: int = 5, precision: str | None = None
) -> float:
    """Best-of-`repeats` FLOP/s of an n x n x n matmul on the default device, in `precision`
    (one of PRECISIONS; default `default_precision()`)."""
    precision = precision or default_precision()
    _check(precision)
    n = n or (2048 if jax.devices()[0].platform == "cpu" else 8192)
    if precision == "float32":
        dtype, f = jnp.float32, jax.jit(lambda a, b: a @ b)
    else:
        dtype = jnp.bfloat16
        f = jax.jit(lambda a, b: jax.lax.dot(a, b, preferred_element_type=jnp.float32))
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _table(path: Path) -> dict[str, float]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, table: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(table, indent=1))


def peak_flops(cache_dir: str | Path = "~/.cache/lm", precision: str | None = None) -> float:
    """Cached per machine and precision; delete the file (printed in the run log) to measure
    again."""
    path = Path(cache_dir).expanduser() / "peak_flops.json"
    key, table = machine_key(precision), _table(path)
    if key not in table:
        table[key] = measure_peak_flops(precision=precision) * jax.device_count()
        _write(path, table)
    return float(table[key])


def record_peak(
    flops_per_s: float, cache_dir: str | Path = "~/.cache/lm", precision: str | None = None
) -> float:
    """Keep the highest peak measured on this machine (all devices) in this precision: a
    measurement taken while other jobs shared the cores is too low, and every MFU computed
    against it too high."""
    path = Path(cache_dir).expanduser() / "peak_flops.json"
    key, table = machine_key(precision), _table(path)
    if flops_per_s > table.get(key, 0.0):
        table[key] = flops_per_s
        _write(path, table)
    return float(table[key])
