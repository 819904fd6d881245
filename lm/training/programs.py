"""The compiled programs of a config's shape, compiled once per process and shared by its runs.

A run needs three: the initial state from a seed, one call of S train steps, and the eval of
one batch of windows. None of them depends on the keys lm.config marks as not compiled in
(length, rate, schedule, seed, data, ...), so every run of one shape in a process (a sweep's
trunk segments, branches, seeds and cosine runs) takes the same ones from `programs`, and the
persistent compilation cache shares them across processes.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future

import jax
import numpy as np
from flax.traverse_util import flatten_dict

from lm import config as config_lib
from lm.config import Config
from lm.training import sharding, train


def program_key(cfg: Config) -> str:
    """The cache key of cfg's compiled programs: every key but those lm.config marks as not
    compiled in (every other key, a future one included, is part of it)."""
    flat = flatten_dict(config_lib.to_dict(cfg), sep=".")
    uncompiled = config_lib.uncompiled_keys()
    return json.dumps({k: v for k, v in flat.items() if k not in uncompiled}, sort_keys=True)


class Programs:
    """A config shape's compiled programs: `init` (seed -> the state less its schedule),
    `step` (one call of S train steps, any n <= S of them) and `eval` (one batch of windows),
    with the state's `layout` they were built for."""

    def __init__(self, cfg: Config):
        t0 = time.perf_counter()
        t = cfg.train
        self.layout = lay = train.layout(cfg, sharding.make_mesh(cfg.mesh))
        self.batch_shard = sharding.batch_sharding(lay.mesh, 4, 2)
        i32 = lambda *shape: jax.ShapeDtypeStruct(shape, np.int32)  # noqa: E731
        # The schedule is put in by the run (its own numbers), so it is no constant here.
        unscheduled = lambda d: {k: v for k, v in d.items() if k != "schedule"}  # noqa: E731
        init = jax.jit(
            lambda seed: unscheduled(train.init_state(cfg, lay, seed)),
            out_shardings=unscheduled(lay.shardings),
        )
        # (Compiling these three on two threads was slower: XLA's compiler uses both cores.)
        self.init = init.lower(i32()).compile()
        S, A = t.steps_per_call, t.grad_accum
        step = train.make_train_step(cfg, lay, dynamic=True)
        batches = i32(S, A, t.batch_size // A, t.seq_len + 1)
        self.step = step.lower(lay.abstract, batches, i32()).compile()
        self.eval = train.make_eval_step(cfg, lay, batch=t.batch_size)
        self.compile_s = time.perf_counter() - t0


_PROGRAMS: OrderedDict[str, Future] = OrderedDict()
_PROGRAMS_LOCK = threading.Lock()
_PROGRAMS_KEEP = 8  # shapes kept compiled (a sweep trains one size's members in a row)


def programs(cfg: Config) -> Programs:
    """The compiled programs of cfg's shape, compiled on first use (once, also when several
    threads ask at the same time).

    Compiling the next model size on a background thread while a sweep trains the current one
    was tried and measured: on 2 shared cores it slowed the overlapped training by more than
    the compile time it hid (XLA's compiler itself uses several threads), so it is not done."""
    key = program_key(cfg)
    with _PROGRAMS_LOCK:
        fut = _PROGRAMS.get(key)
        mine = fut is None
        if mine:
            fut = _PROGRAMS[key] = Future()
            while len(_PROGRAMS) > _PROGRAMS_KEEP:
                _PROGRAMS.popitem(last=False)
        else:
            _PROGRAMS.move_to_end(key)
    if mine:
        try:
            progs = Programs(cfg)
        except BaseException as e:
            with _PROGRAMS_LOCK:
                if _PROGRAMS.get(key) is fut:
                    del _PROGRAMS[key]  # a later call tries again (and raises itself)
            fut.set_exception(e)
            raise
        fut.set_result(progs)
    return fut.result()
