"""Decode throughput on CPU: KV-cache generation vs re-running the full forward per token.

    python benchmarks/bench_decode.py [--new 256] [--prompt 16] [--preset none|gpt2|llama]

A 6-layer, 384-wide model (6 heads, vocab 4096, max_seq_len 512) with random weights.
Greedy decoding with no EOS, so every run generates exactly --new tokens per sequence.
Cached: `sampling.generate` (prefill + one on-device while_loop) at each --batches size.
No-cache: `sampling.generate_nocache` at batch 1 (a full `model.apply` per token over the
tokens so far, rounded up to a multiple of 64). Each path is run once to compile (reported
as compile time: first call minus the best steady call), then timed over --repeats calls
(best kept, to damp noise from other load). Tokens/s counts generated tokens over the whole
call, the short prefill included. Wall time is what a user sees; tokens per CPU-second is
printed beside it because on a shared machine wall time mostly measures the other tenants.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from lm.config import PRESETS, ModelConfig
from lm.inference import sampling
from lm.inference.request import GREEDY
from lm.model import transformer


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """(first call wall seconds, best steady wall seconds, best steady process CPU seconds).

    Process CPU time (summed over threads) barely depends on other tenants of a shared
    machine, unlike wall time; XLA may use both cores when they are free, so wall < CPU then.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    best = best_cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return first, best, best_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=256, help="new tokens per sequence")
    ap.add_argument("--prompt", type=int, default=16, help="prompt length")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--preset", default="none", choices=["none", *PRESETS])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nocache-repeats", type=int, default=1)
    ap.add_argument("--skip-nocache", action="store_true")
    args = ap.parse_args()

    cfg = ModelConfig(
        n_layers=6, d_model=384, n_heads=6, vocab_size=4096, max_seq_len=512,
        **PRESETS.get(args.preset, {}),
    )  # fmt: skip
    params = jax.jit(transformer.init, static_argnums=0)(cfg, jax.random.key(0))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    rng = np.random.default_rng(0)
    key = jax.random.key(1)
    print(
        f"model: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, vocab "
        f"{cfg.vocab_size}, {n_params / 1e6:.1f}M params, preset {args.preset}; "
        f"prompt {args.prompt}, {args.new} new tokens, greedy; {jax.devices()[0].device_kind}"
    )

    def report(name: str, B: int, fn, repeats: int) -> tuple[float, float]:
        first, wall, cpu = timed(fn, repeats)
        tps, tps_cpu = B * args.new / wall, B * args.new / cpu
        print(
            f"{name:<9} batch {B:>3}: {tps:8.1f} tok/s wall ({wall * 1e3 / args.new:6.2f} ms/step)"
            f"  {tps_cpu:8.1f} tok/s per CPU-s  compile {first - wall:5.1f} s",
            flush=True,
        )
        return tps, tps_cpu

    cached = {}
    for B in args.batches:
        prompts = rng.integers(0, cfg.vocab_size, (B, args.prompt)).tolist()
        run = lambda prompts=prompts: sampling.generate(params, cfg, prompts, key, args.new, GREEDY)
        cached[B] = report("cached", B, run, args.repeats)

    if not args.skip_nocache:
        prompts = rng.integers(0, cfg.vocab_size, (1, args.prompt)).tolist()
        run = lambda: sampling.generate_nocache(params, cfg, prompts, key, args.new, GREEDY)
        base = report("no-cache", 1, run, args.nocache_repeats)
        if 1 in cached:
            print(
                f"speedup cached/no-cache at batch 1, {args.new} new tokens: "
                f"{cached[1][0] / base[0]:.1f}x wall, {cached[1][1] / base[1]:.1f}x CPU "
                "(target >= 10x)"
            )


if __name__ == "__main__":
    main()
