"""Train-step speed on this machine: tokens/s, MFU, compile time, and the data path's share.

    python benchmarks/bench_train.py [--steps 30] [--peak GFLOPS]

Prints, for the three reference sizes of our CPU work (fp32, GPT-2 style):
  (a) 2 layers x 64 wide, seq 64, batch 64, vocab 259 (the CPU scaling sweeps' size)
  (b) 4 layers x 256, seq 256, batch 16, vocab 4096
  (c) 6 layers x 384, seq 256, batch 8, vocab 4096
the train step's tokens/s and MFU against the fp32 matmul peak measured here, its compile time,
and what one step's batch costs on the host (lm.data.batch_at on a memmap + transfer) as a share
of the step. Then compile time against depth (2 vs 12 layers). Medians over repeats; the machine
is shared, so compare figures from one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from lm import data, flops, sharding, train
from lm.config import Config, MeshConfig, ModelConfig, TrainConfig
from lm.peak import measure_peak_flops

SIZES = {
    "a: 2x64 seq64 b64 V259": (2, 64, 64, 64, 259),
    "b: 4x256 seq256 b16 V4096": (4, 256, 256, 16, 4096),
    "c: 6x384 seq256 b8 V4096": (6, 384, 256, 8, 4096),
}


def _cfg(L, d, T, B, V, steps_per_call) -> Config:
    return Config(
        model=ModelConfig(
            n_layers=L, d_model=d, n_heads=max(1, d // 64), vocab_size=V, max_seq_len=T,
            norm="layernorm", positions="learned", mlp="gelu", tied_embeddings=True,
        ),
        train=TrainConfig(seq_len=T, batch_size=B, steps_per_call=steps_per_call),
    )  # fmt: skip


def bench(cfg: Config, calls: int, tokens_mm: np.ndarray) -> dict:
    mesh = sharding.make_mesh(MeshConfig(), jax.devices()[:1])
    opt = train.make_optimizer(cfg)
    state = train.create_state(cfg, opt, mesh)
    t = cfg.train
    S = t.steps_per_call

    def host_batch(call):
        return np.stack(
            [data.batch_at(tokens_mm, 0, call * S + i, t.batch_size, t.seq_len) for i in range(S)]
        )[:, None] % cfg.model.vocab_size

    step = train.make_train_step(cfg, opt, mesh)
    b0 = host_batch(0)
    t0 = time.perf_counter()
    compiled = step.lower(state, b0).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, b0)
    jax.block_until_ready(m)
    times, data_times = [], []
    for c in range(1, calls + 1):
        t1 = time.perf_counter()
        b = jax.device_put(host_batch(c))
        jax.block_until_ready(b)
        data_times.append(time.perf_counter() - t1)
        t2 = time.perf_counter()
        state, m = compiled(state, b)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t2)
    step_s = statistics.median(times) / S
    tokens = t.batch_size * t.seq_len
    return {
        "tokens_per_s": tokens / step_s,
        "flops_per_s": tokens / step_s * flops.flops_per_token(cfg.model, t.seq_len)["hardware"],
        "compile_s": compile_s,
        "data_share": statistics.median(data_times) / (statistics.median(times) + 1e-12),
    }


def compile_time(L: int) -> float:
    cfg = _cfg(L, 256, 256, 16, 4096, 1)
    mesh = sharding.make_mesh(MeshConfig(), jax.devices()[:1])
    opt = train.make_optimizer(cfg)
    abstract, _ = train.state_specs(cfg, opt, mesh)
    batch = jax.ShapeDtypeStruct((1, 1, 16, 257), np.int32)
    t0 = time.perf_counter()
    train.make_train_step(cfg, opt, mesh).lower(abstract, batch).compile()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=8, help="timed calls per size (after a warmup)")
    p.add_argument("--steps-per-call", type=int, default=4)
    p.add_argument("--peak", type=float, default=None, help="GFLOP/s; default: measure it")
    args = p.parse_args()
    jax.config.update("jax_compilation_cache_dir", None)  # compile times must be real
    peak = args.peak * 1e9 if args.peak else measure_peak_flops(2048, repeats=7)
    print(f"device: {jax.devices()[0].device_kind}; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.bin"  # a memmap of real size, as training reads it
        rng = np.random.default_rng(0)
        rng.integers(0, 4096, 30_000_000, dtype=np.uint16).tofile(path)
        tokens_mm = np.memmap(path, np.uint16, "r")
        print(f"{'size':<28} {'tokens/s':>10} {'MFU':>6} {'compile_s':>9} {'data share':>10}")
        for name, (L, d, T, B, V) in SIZES.items():
            cfg = _cfg(L, d, T, B, V, args.steps_per_call)
            r = bench(cfg, args.calls, tokens_mm)
            print(
                f"{name:<28} {r['tokens_per_s']:>10,.0f} {r['flops_per_s'] / peak:>6.1%} "
                f"{r['compile_s']:>9.1f} {r['data_share']:>10.1%}"
            )
    c2, c12 = compile_time(2), compile_time(12)
    print(f"compile time (4x256 model shape): 2 layers {c2:.1f} s, 12 layers {c12:.1f} s "
          f"(ratio {c12 / c2:.2f}; scan over layers keeps it flat)")  # fmt: skip


if __name__ == "__main__":
    main()
