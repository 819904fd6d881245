"""Train-step throughput on CPU: tokens/s, MFU, compile time and the data path's share.

    python benchmarks/bench_train.py [--sizes a b c] [--calls 20] [--steps-per-call S]
                                     [--compare-autodiff] [--skip-torch] [--skip-depth]

Three GPT-2-style float32 models (layernorm, learned positions, tanh gelu, tied embeddings,
no biases, as in configs/sweeps/cpu-tiny.yaml; random weights and tokens), trained with the
real step (`train.make_train_step`: AdamW + clipping, S fused steps per call):
  a  2 layers x 64 wide,  4 heads, seq 64,  batch 64, vocab 259 (the byte-level CPU sweeps)
  b  4 layers x 256 wide, 4 heads, seq 256, batch 16, vocab 4096
  c  6 layers x 384 wide, 6 heads, seq 256, batch 8,  vocab 4096
For each: compile time (lower + compile, persistent cache off), then --calls timed calls.
Tokens/s is the median over calls (best in brackets); MFU divides the FLOPs the step really
multiplies (`flops_per_token(cfg, T)["hardware"]`) by the fp32 matmul peak measured here
(`peak.measure_peak_flops`, before and after; the higher is used, since other tenants lower
both). Tokens per CPU-second (all threads) is printed beside it: on a shared machine wall time
mostly measures the other tenants, CPU time much less so.

Data path: `data.batch_at` on a memory-mapped uint16 token file for the S steps of a call,
stacked as the training loop's host_batches does, plus the host-to-device `device_put`; its
share is that time over the call's time (the loop prefetches it on a thread, so it overlaps).

Compile time vs depth: the train step at 2 and 12 layers, 64 and 384 wide (the layer scan
should keep 12 within 1.5x of 2). --compare-autodiff also times the plain autodiff formulation
of the layers (`model.grad_impl=autodiff`), interleaved call by call with the default one. If
torch is installed, an equivalent PyTorch eager GPT (AdamW + clipping) is timed alongside.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

# Before JAX starts its threads: the malloc setting the CLI applies (lm.xla_env), without the
# CLI's persistent compilation cache, which would turn compile times into cache loads.
from lm import xla_env

MALLOC_KEPT = xla_env.keep_freed_memory()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lm import data, flops, peak, sharding, train  # noqa: E402
from lm.config import PRESETS, Config, from_dict  # noqa: E402

SIZES = {
    "a": dict(n_layers=2, d_model=64, n_heads=4, vocab_size=259, seq=64, batch=64),
    "b": dict(n_layers=4, d_model=256, n_heads=4, vocab_size=4096, seq=256, batch=16),
    "c": dict(n_layers=6, d_model=384, n_heads=6, vocab_size=4096, seq=256, batch=8),
}


def make_config(size: str, steps_per_call: int | None, n_layers: int | None = None) -> Config:
    s = dict(SIZES[size])
    seq, batch = s.pop("seq"), s.pop("batch")
    if n_layers is not None:
        s["n_layers"] = n_layers
    train_cfg = dict(seq_len=seq, batch_size=batch)
    if steps_per_call is not None:
        train_cfg["steps_per_call"] = steps_per_call
    m = {**PRESETS["gpt2"], **s, "bias": False, "max_seq_len": seq}
    return from_dict({"preset": "gpt2", "model": m, "train": train_cfg})


class Step:
    """One compiled train step, its state and a fixed device batch for one call."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        t = cfg.train
        mesh = sharding.make_mesh(cfg.mesh)
        opt = train.make_optimizer(cfg)
        self.state = train.create_state(cfg, opt, mesh)
        S = t.steps_per_call
        self.batch_shard = sharding.batch_sharding(mesh, 4, 2)
        rng = np.random.default_rng(0)
        host = rng.integers(0, cfg.model.vocab_size, (S, 1, t.batch_size, t.seq_len + 1))
        self.batches = jax.device_put(host.astype(np.int32), self.batch_shard)
        step = train.make_train_step(cfg, opt, mesh)
        t0 = time.perf_counter()
        self.fn = step.lower(self.state, self.batches).compile()
        self.compile_s = time.perf_counter() - t0
        self.tokens = S * t.batch_size * t.seq_len
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.call()  # the first run allocates; not timed

    def call(self, record: bool = False) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        self.state, metrics = self.fn(self.state, self.batches)
        jax.block_until_ready(metrics)
        if record:
            self.wall.append(time.perf_counter() - t0)
            self.cpu.append(time.process_time() - c0)


def compile_time(cfg: Config) -> float:
    mesh = sharding.make_mesh(cfg.mesh)
    opt = train.make_optimizer(cfg)
    abstract, _ = train.state_specs(cfg, opt, mesh)
    t = cfg.train
    batches = jax.ShapeDtypeStruct((t.steps_per_call, 1, t.batch_size, t.seq_len + 1), np.int32)
    step = train.make_train_step(cfg, opt, mesh)
    t0 = time.perf_counter()
    step.lower(abstract, batches).compile()
    return time.perf_counter() - t0


def data_path_seconds(cfg: Config, tokens: np.ndarray, batch_shard, repeats: int) -> float:
    """Median seconds to build one call's batches (as lm.loop does) and put them on device."""
    t = cfg.train
    S, B, T = t.steps_per_call, t.batch_size, t.seq_len
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        host = np.stack(
            [data.batch_at(tokens, t.seed, r * S + s, B, T).reshape(1, B, T + 1) for s in range(S)]
        )
        jax.block_until_ready(jax.device_put(host, batch_shard))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_tokens_per_s(size: str, calls: int) -> tuple[float, float] | None:
    """An equivalent PyTorch eager GPT step (AdamW + clipping): (median, best) tokens/s."""
    try:
        import torch
        import torch.nn.functional as F
        from torch import nn
    except ImportError:
        return None
    s = SIZES[size]
    D, N, L, V = s["d_model"], s["n_heads"], s["n_layers"], s["vocab_size"]
    T, B = s["seq"], s["batch"]
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
            self.qkv, self.proj = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, D, bias=False)
            self.up, self.down = nn.Linear(D, 4 * D, bias=False), nn.Linear(4 * D, D, bias=False)

        def forward(self, x):
            q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, N, D // N).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
            return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, D), nn.Embedding(T, D)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(D)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe.weight[:T]
            for blk in self.blocks:
                x = blk(x)
            logits = self.ln_f(x) @ self.wte.weight.T  # tied
            return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))

    net = GPT()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, betas=(0.9, 0.99), weight_decay=0.1)
    batch = torch.randint(0, V, (B, T + 1))

    def step():
        loss = net(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return B * T / statistics.median(times), B * T / min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--calls", type=int, default=20, help="timed calls per size (a: x4)")
    ap.add_argument("--steps-per-call", type=int, default=None, help="default: the config's")
    ap.add_argument("--compare-autodiff", action="store_true")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-depth", action="store_true")
    args = ap.parse_args()
    jax.config.update("jax_compilation_cache_dir", None)  # compile times must be real

    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"malloc keeps freed memory (lm.xla_env): {MALLOC_KEPT}"
    )
    peak_before = peak.measure_peak_flops()
    print(f"fp32 matmul peak (2048^3, best of 5): {peak_before / 1e9:.0f} GFLOP/s")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.u16"
        n_tok = 8_000_000
        np.random.default_rng(0).integers(0, 259, n_tok, dtype=np.uint16).tofile(path)
        tokens = np.memmap(path, dtype=np.uint16, mode="r", shape=(n_tok,))

        for size in args.sizes:
            cfg = make_config(size, args.steps_per_call)
            variants = {"jax": Step(cfg)}
            if args.compare_autodiff:
                m = dataclasses.replace(cfg.model, grad_impl="autodiff")
                variants["jax autodiff"] = Step(dataclasses.replace(cfg, model=m))
            calls = args.calls * (4 if size == "a" else 1)
            for _ in range(calls):
                for v in variants.values():  # interleaved: both see the same load
                    v.call(record=True)
            data_s = data_path_seconds(cfg, tokens, variants["jax"].batch_shard, 20)
            fpt = flops.flops_per_token(cfg.model, cfg.train.seq_len)["hardware"]
            for name, v in variants.items():
                med = statistics.median(v.wall)
                share = data_s / med if name == "jax" else None
                per_cpu = v.tokens / statistics.median(v.cpu)
                rows.append((size, name, v, v.tokens / med, v.tokens / min(v.wall), per_cpu, fpt,
                             share))  # fmt: skip
            if not args.skip_torch:
                torch_tps = torch_tokens_per_s(size, max(calls // 2, 5))
                if torch_tps is not None:
                    rows.append((size, "torch eager", None, *torch_tps, None, fpt, None))

    peak_after = peak.measure_peak_flops()
    pk = max(peak_before, peak_after)
    peak.record_peak(pk * jax.device_count())  # runs' MFU then uses the best peak seen here
    print(f"fp32 matmul peak after: {peak_after / 1e9:.0f} GFLOP/s; MFU below uses {pk / 1e9:.0f}")
    print(
        f"\n{'size':4s} {'step':12s} {'S':>2s} {'tokens/s median (best)':>24s} {'MFU':>5s} "
        f"{'tok/CPU-s':>9s} {'compile':>8s} {'data path':>10s}"
    )
    for size, name, v, med, best, per_cpu, fpt, share in rows:
        S = v.cfg.train.steps_per_call if v else 1
        comp = f"{v.compile_s:7.1f}s" if v else f"{'':8s}"
        cpu = f"{per_cpu:9.0f}" if per_cpu else f"{'':9s}"
        data_share = f"{100 * share:9.1f}%" if share is not None else ""
        print(
            f"{size:4s} {name:12s} {S:2d} {med:12.0f} ({best:8.0f}) {100 * med * fpt / pk:4.0f}% "
            f"{cpu} {comp} {data_share}"
        )
    print("data path: lm.data.batch_at on a uint16 memmap + device_put, share of a call's time")

    if not args.skip_depth:
        print("\ncompile time vs depth (train step, persistent cache off):")
        for size in ("a", "c"):
            t2 = compile_time(make_config(size, args.steps_per_call, n_layers=2))
            t12 = compile_time(make_config(size, args.steps_per_call, n_layers=12))
            d = SIZES[size]["d_model"]
            print(f"  {d}-wide: 2 layers {t2:.1f}s, 12 layers {t12:.1f}s: ratio {t12 / t2:.2f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
