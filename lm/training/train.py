"""The train step: loss, optimizer, schedules, and a pure jitted `train_step(state, batch)`.

The state that changes is one pytree, `{"params", "opt_state", "step", "rng", "schedule"}`,
passed in and returned (its buffers donated). `schedule` holds the learning-rate schedule's
numbers, so runs that differ only in length or rate share one compiled step. `rng` is the run's
base key; anything random at step s uses `fold_in(rng, s)`, so a resumed run draws exactly what
an uninterrupted one would.

`layout(cfg, mesh)` works out what the state is on a mesh (the weights' specs, the optimizer,
shapes, shardings) once; the programs, the initial state and a restore all take it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from lm.config import Config, ModelConfig, TrainConfig
from lm.model import transformer
from lm.training import sharding

State = dict[str, Any]


# ---------------------------------------------------------------- schedules


_KINDS = {"constant": 0.0, "cosine": 1.0, "wsd": 2.0}


def schedule_params(t: TrainConfig) -> dict[str, jax.Array]:
    """The schedule as numbers, carried in the state rather than baked into the compiled step:
    runs that differ only in length or learning rate (a sweep's branches) share one program."""
    vals = {
        "peak": t.lr,
        "floor": t.lr * t.min_lr_ratio,
        "warmup": t.warmup_steps,
        "total": t.steps,
        "decay_start": t.steps - int(t.steps * t.decay_fraction),
        "kind": _KINDS[t.schedule],
    }
    return {k: jnp.asarray(v, jnp.float32) for k, v in vals.items()}


def lr_at(step, p: dict[str, Any]):
    """Learning rate at an optimizer step (0-based): linear warmup, then constant, cosine, or
    WSD (warmup-stable-decay; Hägele et al. 2024, arXiv:2405.18392), which holds the peak and
    decays over the last `decay_fraction` of the steps with their 1-sqrt shape."""
    s = jnp.asarray(step, jnp.float32)
    peak, floor, warm, total = p["peak"], p["floor"], p["warmup"], p["total"]
    warmup = peak * jnp.minimum(1.0, (s + 1) / jnp.maximum(warm, 1.0))
    frac_cos = jnp.clip((s - warm) / jnp.maximum(total - warm, 1.0), 0.0, 1.0)
    cosine = floor + (peak - floor) * 0.5 * (1 + jnp.cos(math.pi * frac_cos))
    start = p["decay_start"]
    frac_wsd = jnp.clip((s - start + 1) / jnp.maximum(total - start, 1.0), 0.0, 1.0)
    wsd = floor + (peak - floor) * (1 - jnp.sqrt(frac_wsd))
    after = jnp.where(p["kind"] == 0, peak, jnp.where(p["kind"] == 1, cosine, wsd))
    return jnp.where(s < warm, warmup, after)


def lr_schedule(t: TrainConfig) -> Callable[[Any], Any]:
    params = schedule_params(t)
    return lambda step: lr_at(step, params)


# ---------------------------------------------------------------- optimizer


def decay_mask(cfg: Config, specs: Any) -> Any:
    """True where AdamW's weight decay applies: never norms and biases; embeddings by config.
    `specs`: cfg's `transformer.param_specs`."""
    return jax.tree.map(
        lambda s: s.decay and (cfg.train.decay_embeddings or not s.embedding),
        specs,
        is_leaf=transformer.is_spec,
    )


def make_optimizer(cfg: Config, specs: Any) -> optax.GradientTransformation:
    """AdamW (+ clipping) with unit learning rate: the step multiplies its update by the
    scheduled rate, lr x -(adam + wd x param), which is exactly optax.adamw(lr). `specs`:
    cfg's `transformer.param_specs`, which say where weight decay applies and each weight's
    learning-rate factor (`ParamSpec.lr_scale`, muP's 1/m on hidden weights): where any is not
    1, each leaf's whole update, weight decay included, is multiplied by its factor, as a
    per-group learning rate in torch's AdamW (the `mup` package's MuAdamW) does."""
    t = cfg.train
    adamw = optax.adamw(
        1.0,
        b1=t.beta1,
        b2=t.beta2,
        eps=t.eps,
        weight_decay=t.weight_decay,
        mask=decay_mask(cfg, specs),
    )
    parts = [optax.clip_by_global_norm(t.clip_norm)] if t.clip_norm > 0 else []
    parts.append(adamw)
    scales = jax.tree.map(lambda s: s.lr_scale, specs, is_leaf=transformer.is_spec)
    if any(s != 1.0 for s in jax.tree.leaves(scales)):  # sp: no extra stage, nor state for it
        parts.append(scale_leaves(scales))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def scale_leaves(scales: Any) -> optax.GradientTransformation:
    """Every leaf's update times its own constant (`scales`: floats in the params' tree)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# ---------------------------------------------------------------- loss


def token_losses(params, batch_BW: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Cross-entropy in nats of each next token: [B, T+1] windows -> [B, T] float32.

    `model.apply` and the loss fused into one kernel (`model.output_xent`), so the fast
    kernels can form the logits' gradient in one pass."""
    inputs_BT, targets_BT = batch_BW[:, :-1], batch_BW[:, 1:]
    x_BTD = transformer.output_features(params, transformer.hidden(params, inputs_BT, cfg), cfg)
    B, T, D = x_BTD.shape
    w = transformer.output_weight(params, cfg).astype(x_BTD.dtype)
    x_MD, targets_M = x_BTD.reshape(B * T, D), targets_BT.reshape(B * T)
    xent = transformer.kernels(cfg).output_xent
    return xent(x_MD, w, targets_M, cfg.tied_embeddings).astype(jnp.float32).reshape(B, T)


def loss_fn(params, batch_BW: jax.Array, cfg: ModelConfig) -> jax.Array:
    return token_losses(params, batch_BW, cfg).mean()


# ---------------------------------------------------------------- state and step


class Layout(NamedTuple):
    """A config's train state on one mesh, worked out once from the weights' specs and handed
    to everything built for it (the init, train and eval programs, a checkpoint's restore),
    so none derives them again."""

    mesh: Mesh
    specs: Any  # transformer.param_specs(cfg.model)
    opt: optax.GradientTransformation  # its decay mask read from the specs
    abstract: State  # the state's shapes and dtypes, nothing allocated
    shardings: State  # the state's NamedShardings, the same tree


def layout(cfg: Config, mesh: Mesh) -> Layout:
    """cfg's `Layout` on `mesh`, without allocating the state."""
    specs = transformer.param_specs(cfg.model)
    opt = make_optimizer(cfg, specs)
    abstract = jax.eval_shape(lambda: _fresh_state(cfg, specs, opt, 0))
    p_shard = sharding.param_shardings(specs, mesh)
    # Optimizer moments mirror the params they belong to; scalars are replicated.
    rep = sharding.replicated(mesh)
    params_struct = jax.tree.structure(abstract["params"])
    opt_shard = _map_subtrees(abstract["opt_state"], params_struct, p_shard, rep)
    shardings = {
        "params": p_shard,
        "opt_state": opt_shard,
        "step": rep,
        "rng": rep,
        "schedule": jax.tree.map(lambda _: rep, abstract["schedule"]),
    }
    return Layout(mesh, specs, opt, abstract, shardings)


def _map_subtrees(tree, params_struct, p_shard, rep):
    """Sharding for an optax state: params-shaped subtrees like the params, others replicated."""
    if jax.tree.structure(tree) == params_struct:
        return p_shard
    if isinstance(tree, tuple | list) and not hasattr(tree, "shape"):
        mapped = [_map_subtrees(x, params_struct, p_shard, rep) for x in tree]
        return type(tree)(*mapped) if hasattr(tree, "_fields") else type(tree)(mapped)
    if isinstance(tree, dict):
        return {k: _map_subtrees(v, params_struct, p_shard, rep) for k, v in tree.items()}
    return jax.tree.map(lambda _: rep, tree)


def init_state(cfg: Config, lay: Layout, seed: int) -> State:
    """The state a run starts from: weights drawn from `seed`, fresh optimizer moments."""
    return _fresh_state(cfg, lay.specs, lay.opt, seed)


def _fresh_state(cfg: Config, specs: Any, opt: optax.GradientTransformation, seed) -> State:
    rng = jax.random.PRNGKey(seed)
    params = transformer.init_from_specs(specs, cfg.model.param_dtype, jax.random.fold_in(rng, 0))
    return {
        "params": params,
        "opt_state": opt.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.fold_in(rng, 1),
        "schedule": schedule_params(cfg.train),
    }


def create_state(cfg: Config, lay: Layout) -> State:
    """The initial state, created already sharded (no full copy on one device first)."""
    return jax.jit(lambda: init_state(cfg, lay, cfg.train.seed), out_shardings=lay.shardings)()


def make_train_step(cfg: Config, lay: Layout, dynamic: bool = False):
    """A jitted `(state, batches_CABW) -> (state, metrics_C)` running C optimizer steps.

    batches: int32 [C, A, B/A, W] (C fused steps, A gradient-accumulation micro-batches,
    windows of W = T+1 tokens).
    Fusing steps into one call (a scan) removes per-step dispatch cost on small models.

    dynamic: `(state, batches_CABW, n) -> (state, metrics_C)` runs only the first n (<= C)
    steps, a loop whose trip count is data: a call shorter than C (before a log, eval or
    checkpoint boundary) reuses the one compiled program instead of compiling another, and the
    steps it skips cost nothing. The numbers are the scan's, bit for bit (tests/test_train.py);
    metrics past n are zeros.
    """
    mcfg, opt = cfg.model, lay.opt
    grad_fn = jax.value_and_grad(loss_fn)

    def one_step(state: State, batch_ABW):
        params = state["params"]
        A = batch_ABW.shape[0]
        if A == 1:
            loss, grads = grad_fn(params, batch_ABW[0], mcfg)
        else:

            def micro(carry, mb):
                l_acc, g_acc = carry
                loss, g = grad_fn(params, mb, mcfg)
                return (l_acc + loss, jax.tree.map(jnp.add, g_acc, g)), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (loss, grads), _ = jax.lax.scan(micro, (jnp.zeros((), jnp.float32), zeros), batch_ABW)
            loss, grads = loss / A, jax.tree.map(lambda g: g / A, grads)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = opt.update(grads, state["opt_state"], params)
        lr = lr_at(state["step"], state["schedule"])
        updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates)
        new = {
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "rng": state["rng"],
            "schedule": state["schedule"],
        }
        # Checked by the loop before each checkpoint, so a blown-up state is never saved even
        # when its loss (known only at the next step) has not been seen yet.
        param_norm = optax.tree.norm(new["params"])
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr}
        return new, metrics | {"param_norm": param_norm}

    def train_steps(state: State, batches):
        return jax.lax.scan(one_step, state, batches)

    def train_n_steps(state: State, batches, n):
        def body(i, carry):
            state, ms = carry
            state, m = one_step(state, batches[i])
            return state, jax.tree.map(lambda buf, v: buf.at[i].set(v), ms, m)

        shapes = jax.eval_shape(one_step, state, batches[0])[1]
        ms = jax.tree.map(lambda a: jnp.zeros((batches.shape[0], *a.shape), a.dtype), shapes)
        return jax.lax.fori_loop(0, n, body, (state, ms))

    state_shard = lay.shardings
    rep = sharding.replicated(lay.mesh)
    batch_shard = sharding.batch_sharding(lay.mesh, 4, 2)
    return jax.jit(
        train_n_steps if dynamic else train_steps,
        in_shardings=(state_shard, batch_shard, rep) if dynamic else (state_shard, batch_shard),
        out_shardings=(state_shard, rep),
        donate_argnums=0,
    )


def make_eval_step(cfg: Config, lay: Layout, batch: int | None = None):
    """A jitted `(params, windows_BW, token_bytes_V) -> (loss sums [B], byte sums [B])`.

    batch: compile now, ahead of time, for windows of that many rows (the only shape the
    returned function then accepts)."""
    mcfg, mesh = cfg.model, lay.mesh
    p_shard = lay.shardings["params"]

    def eval_step(params, windows_BW, token_bytes_V):
        losses_BT = token_losses(params, windows_BW, mcfg)
        nbytes_BT = token_bytes_V[windows_BW[:, 1:]]
        return losses_BT.sum(-1), nbytes_BT.sum(-1)

    win_shard = sharding.batch_sharding(mesh, 2, 0)
    jitted = jax.jit(
        eval_step,
        in_shardings=(p_shard, win_shard, sharding.replicated(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
    if batch is not None:
        T1 = cfg.train.seq_len + 1
        jitted = jitted.lower(
            lay.abstract["params"],
            jax.ShapeDtypeStruct((batch, T1), jnp.int32),
            jax.ShapeDtypeStruct((mcfg.vocab_size,), jnp.int32),
        ).compile()

    def run(params, windows_BW, token_bytes_V):
        # Every process holds all the (fixed) windows; each device takes its rows.
        w = np.asarray(windows_BW)
        w = jax.make_array_from_callback(w.shape, win_shard, lambda idx: w[idx])
        return jitted(params, w, token_bytes_V)

    return run
