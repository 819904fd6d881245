"""`lm train --dry-run`: compile the step for the configured mesh and report memory and FLOPs.

Nothing is allocated but what compiling needs (abstract shapes only), so a config that will
not fit is found before any training is paid for.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from lm.config import Config
from lm.hardware import precision
from lm.model import flops
from lm.training import sharding, train


def _bytes_per_device(tree, shardings) -> float:
    total = 0.0
    for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        shard = s.shard_shape(a.shape)
        total += math.prod(shard) * np.dtype(a.dtype).itemsize
    return total


def report(cfg: Config, print_fn=print) -> dict:
    cfg, line = precision.resolve(cfg)  # the dtype a run started here would compile in
    print_fn(line)
    mesh = sharding.make_mesh(cfg.mesh)
    lay = train.layout(cfg, mesh)
    abstract, shard = lay.abstract, lay.shardings
    t = cfg.train
    S, A = t.steps_per_call, t.grad_accum
    batch = jax.ShapeDtypeStruct((S, A, t.batch_size // A, t.seq_len + 1), np.int32)
    step = train.make_train_step(cfg, lay)
    t0 = time.perf_counter()
    compiled = step.lower(abstract, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    counts = flops.count_params(cfg.model)
    fpt = flops.flops_per_token(cfg.model, t.seq_len)
    tokens_per_step = t.batch_size * t.seq_len
    out = {
        "mesh": dict(mesh.shape),
        "params_bytes_per_device": _bytes_per_device(abstract["params"], shard["params"]),
        "opt_bytes_per_device": _bytes_per_device(abstract["opt_state"], shard["opt_state"]),
        "temp_bytes_per_device": float(getattr(mem, "temp_size_in_bytes", 0) or 0),
        "flops_per_step": fpt["hardware"] * tokens_per_step,
        "compile_s": compile_s,
        "params": counts,
    }
    gib = 2**30
    print_fn(f"mesh {out['mesh']} over {mesh.size} devices; compiled in {compile_s:.1f} s")
    print_fn(
        f"params: {counts['total']:,} ({counts['non_embedding']:,} non-embedding); "
        f"per device: params {out['params_bytes_per_device'] / gib:.3f} GiB, "
        f"optimizer {out['opt_bytes_per_device'] / gib:.3f} GiB, "
        f"activations/temporaries {out['temp_bytes_per_device'] / gib:.3f} GiB "
        f"(for {S} fused step(s) of {A} micro-batch(es))"
    )
    print_fn(
        f"FLOPs per optimizer step: {out['flops_per_step']:.3e} "
        f"({tokens_per_step:,} tokens x {fpt['hardware']:.3e} FLOPs/token, 'hardware' count); "
        f"whole run: {out['flops_per_step'] * t.steps:.3e}"
    )
    return out
