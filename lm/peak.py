"""The machine's measured matmul peak, the denominator of MFU.

Measured once per machine (device kind, device count, CPU model) and cached as JSON, since a
spec-sheet number means little on a shared 2-core VM and the measured one is what a step could
reach.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    dev = jax.devices()[0]
    return f"{dev.platform}-{dev.device_kind}-x{jax.device_count()}-{cpu_model()}".replace(" ", "_")


def measure_peak_flops(n: int | None = None, repeats: int = 5, dtype=None) -> float:
    """Best-of-`repeats` FLOP/s of a square matmul on the default devices (fp32 on CPU)."""
    cpu = jax.devices()[0].platform == "cpu"
    n = n or (2048 if cpu else 8192)
    dtype = dtype or (jnp.float32 if cpu else jnp.bfloat16)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
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
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(path)


def peak_flops(cache_dir: str | Path = "~/.cache/lm") -> float:
    """Cached per machine; delete the file (printed in the run log) to measure again."""
    path = Path(cache_dir).expanduser() / "peak_flops.json"
    key, table = machine_key(), _table(path)
    if key not in table:
        table[key] = measure_peak_flops() * jax.device_count()
        _write(path, table)
    return float(table[key])


def record_peak(flops_per_s: float, cache_dir: str | Path = "~/.cache/lm") -> float:
    """Keep the highest peak measured on this machine (all devices): a measurement taken while
    other jobs shared the cores is too low, and every MFU computed against it too high."""
    path = Path(cache_dir).expanduser() / "peak_flops.json"
    key, table = machine_key(), _table(path)
    if flops_per_s > table.get(key, 0.0):
        table[key] = flops_per_s
        _write(path, table)
    return float(table[key])
