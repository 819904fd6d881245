"""The decoder-only Transformer as pure functions: `init(cfg, rng) -> params`, `apply`.

Shape letters, used in names and einsums throughout the project:
  B batch, T query sequence, S key/value sequence, D model width, F feed-forward width,
  N query heads, K key/value heads, G query heads per kv head (N = K*G), H head dim,
  L layers, V vocabulary.

Each weight is described once in `param_specs` (shape, logical axes, initializer, whether
weight decay applies); `init` and the shardings (`lm.sharding`) both derive from it. Layer
weights are stacked on a leading L axis so the layers run under `lax.scan` and compile time
stays flat in depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lm.config import ModelConfig

Params = dict[str, Any]


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]  # logical axis names, mapped to mesh axes in lm.sharding
    init: str  # "normal", "ones", "zeros"
    std: float = 0.0
    decay: bool = True  # weight decay applies (never to norms and biases)
    embedding: bool = False  # counted as an embedding (Kaplan's N excludes these)


def param_specs(cfg: ModelConfig) -> dict[str, Any]:
    D, N, K, H, F, L, V = (
        cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.ffw_dim, cfg.n_layers,
        cfg.vocab_size,
    )  # fmt: skip
    std = cfg.init_std
    out_std = std / math.sqrt(2 * L)  # residual-branch outputs scaled as in GPT-2

    def w(shape, axes, s=std):
        return ParamSpec(shape, axes, "normal", s)

    def norm(shape, axes):
        p = {"scale": ParamSpec(shape, axes, "ones", decay=False)}
        if cfg.norm == "layernorm":
            p["bias"] = ParamSpec(shape, axes, "zeros", decay=False)
        return p

    def bias(shape, axes):
        return ParamSpec(shape, axes, "zeros", decay=False)

    layer = {
        "attn_norm": norm((L, D), ("layers", "embed")),
        "wq": w((L, D, N, H), ("layers", "embed", "heads", "head_dim")),
        "wk": w((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim")),
        "wv": w((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim")),
        "wo": w((L, N, H, D), ("layers", "heads", "head_dim", "embed"), out_std),
        "mlp_norm": norm((L, D), ("layers", "embed")),
    }
    if cfg.mlp == "swiglu":
        layer["w_gate"] = w((L, D, F), ("layers", "embed", "ffw"))
        layer["w_up"] = w((L, D, F), ("layers", "embed", "ffw"))
    else:
        layer["w_up"] = w((L, D, F), ("layers", "embed", "ffw"))
    layer["w_down"] = w((L, F, D), ("layers", "ffw", "embed"), out_std)
    if cfg.bias:
        layer["bq"] = bias((L, N, H), ("layers", "heads", "head_dim"))
        layer["bk"] = bias((L, K, H), ("layers", "kv_heads", "head_dim"))
        layer["bv"] = bias((L, K, H), ("layers", "kv_heads", "head_dim"))
        layer["bo"] = bias((L, D), ("layers", "embed"))
        layer["b_up"] = bias((L, F), ("layers", "ffw"))
        layer["b_down"] = bias((L, D), ("layers", "embed"))

    specs: dict[str, Any] = {
        "embed": ParamSpec((V, D), ("vocab", "embed"), "normal", std, embedding=True),
        "layers": layer,
        "final_norm": norm((D,), ("embed",)),
    }
    if cfg.positions == "learned":
        specs["pos_embed"] = ParamSpec(
            (cfg.max_seq_len, D), ("seq", "embed"), "normal", std, embedding=True
        )
    if not cfg.tied_embeddings:
        specs["unembed"] = ParamSpec((D, V), ("embed", "vocab"), "normal", std, embedding=True)
    return specs


def is_spec(x: Any) -> bool:
    return isinstance(x, ParamSpec)


def _init_one(spec: ParamSpec, key: jax.Array, dtype: Any) -> jax.Array:
    if spec.init == "ones":
        return jnp.ones(spec.shape, dtype)
    if spec.init == "zeros":
        return jnp.zeros(spec.shape, dtype)
    return (spec.std * jax.random.normal(key, spec.shape, jnp.float32)).astype(dtype)


def init(cfg: ModelConfig, rng: jax.Array) -> Params:
    """A plain nested-dict pytree of weights; each leaf's key is folded from its path."""
    specs = param_specs(cfg)
    dtype = jnp.dtype(cfg.param_dtype)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)
    out = []
    for path, spec in leaves:
        name = jax.tree_util.keystr(path)
        key = jax.random.fold_in(rng, _stable_hash(name))
        out.append(_init_one(spec, key, dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def _stable_hash(s: str) -> int:
    # Python's hash() is salted per process; weights must not depend on the process.
    h = 0
    for c in s.encode():
        h = (h * 131 + c) % (2**31 - 1)
    return h


# ---------------------------------------------------------------- the forward pass


def _norm(p: Params, x: jax.Array, cfg: ModelConfig) -> jax.Array:
    xf = x.astype(jnp.float32)
    if cfg.norm == "layernorm":
        xf = xf - xf.mean(-1, keepdims=True)
    y = xf * jax.lax.rsqrt((xf * xf).mean(-1, keepdims=True) + cfg.norm_eps)
    y = y * p["scale"].astype(jnp.float32)
    if "bias" in p:
        y = y + p["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


def rope(x_BTnH: jax.Array, pos_BT: jax.Array, theta: float) -> jax.Array:
    """Rotary positions, rotating the two halves of each head (the Llama convention)."""
    H = x_BTnH.shape[-1]
    freq = theta ** (-jnp.arange(0, H, 2, dtype=jnp.float32) / H)
    ang_BTh = pos_BT[..., None].astype(jnp.float32) * freq
    sin, cos = jnp.sin(ang_BTh)[:, :, None, :], jnp.cos(ang_BTh)[:, :, None, :]
    x1, x2 = jnp.split(x_BTnH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTnH.dtype)


class KVCache(NamedTuple):
    """Keys and values for every layer, filled up to `length` (per sequence)."""

    k_LBSKH: jax.Array
    v_LBSKH: jax.Array


def _attention(p, x_BTD, pos_BT, cfg: ModelConfig, kv=None, kv_mask_BS=None):
    """Causal self-attention; with `kv` (this layer's cache) it attends to cached positions."""
    q_BTNH = jnp.einsum("BTD,DNH->BTNH", x_BTD, p["wq"])
    k_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, p["wk"])
    v_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, p["wv"])
    if "bq" in p:
        q_BTNH, k_BTKH, v_BTKH = q_BTNH + p["bq"], k_BTKH + p["bk"], v_BTKH + p["bv"]
    if cfg.positions == "rope":
        q_BTNH = rope(q_BTNH, pos_BT, cfg.rope_theta)
        k_BTKH = rope(k_BTKH, pos_BT, cfg.rope_theta)
    if kv is None:
        k_BSKH, v_BSKH = k_BTKH, v_BTKH
        mask_BTS = pos_BT[:, :, None] >= pos_BT[:, None, :]
    else:  # decode: write this step's keys at their positions, attend to all filled ones
        k_cache, v_cache = kv
        b = jnp.arange(x_BTD.shape[0])[:, None]
        k_BSKH = k_cache.at[b, pos_BT].set(k_BTKH.astype(k_cache.dtype))
        v_BSKH = v_cache.at[b, pos_BT].set(v_BTKH.astype(v_cache.dtype))
        S = k_BSKH.shape[1]
        mask_BTS = jnp.arange(S)[None, None, :] <= pos_BT[:, :, None]
        kv = (k_BSKH, v_BSKH)
    if kv_mask_BS is not None:
        mask_BTS = mask_BTS & kv_mask_BS[:, None, :]
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
    s_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH.astype(q_BTNH.dtype))
    s_BKGTS = s_BKGTS.astype(jnp.float32) / math.sqrt(H)
    s_BKGTS = jnp.where(mask_BTS[:, None, None], s_BKGTS, -1e30)
    w_BKGTS = jax.nn.softmax(s_BKGTS, axis=-1).astype(x_BTD.dtype)
    o_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", w_BKGTS, v_BSKH.astype(x_BTD.dtype))
    out_BTD = jnp.einsum("BTNH,NHD->BTD", o_BTKGH.reshape(B, T, N, H), p["wo"])
    if "bo" in p:
        out_BTD = out_BTD + p["bo"]
    return out_BTD, kv, w_BKGTS


def _mlp(p, x_BTD, cfg: ModelConfig):
    up_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, p["w_up"])
    if "b_up" in p:
        up_BTF = up_BTF + p["b_up"]
    if cfg.mlp == "swiglu":
        h_BTF = jax.nn.silu(jnp.einsum("BTD,DF->BTF", x_BTD, p["w_gate"])) * up_BTF
    else:
        h_BTF = jax.nn.gelu(up_BTF, approximate=True)
    out_BTD = jnp.einsum("BTF,FD->BTD", h_BTF, p["w_down"])
    if "b_down" in p:
        out_BTD = out_BTD + p["b_down"]
    return out_BTD


def block(p, x_BTD, pos_BT, cfg: ModelConfig, kv=None, kv_mask_BS=None):
    """One pre-norm Transformer layer. Returns (x, updated kv, attention weights)."""
    a_BTD, kv, w = _attention(p, _norm(p["attn_norm"], x_BTD, cfg), pos_BT, cfg, kv, kv_mask_BS)
    x_BTD = x_BTD + a_BTD
    x_BTD = x_BTD + _mlp(p, _norm(p["mlp_norm"], x_BTD, cfg), cfg)
    return x_BTD, kv, w


_REMAT: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _cast(params: Params, dtype) -> Params:
    return jax.tree.map(lambda a: a.astype(dtype) if a.dtype != dtype else a, params)


def embed(params: Params, tokens_BT: jax.Array, pos_BT: jax.Array, cfg: ModelConfig):
    dtype = jnp.dtype(cfg.compute_dtype)
    x_BTD = params["embed"].astype(dtype)[tokens_BT]
    if cfg.positions == "learned":
        x_BTD = x_BTD + params["pos_embed"].astype(dtype)[pos_BT]
    return x_BTD


def unembed(params: Params, x_BTD: jax.Array, cfg: ModelConfig) -> jax.Array:
    x_BTD = _norm(params["final_norm"], x_BTD, cfg)
    if cfg.tied_embeddings:
        return jnp.einsum("BTD,VD->BTV", x_BTD, params["embed"].astype(x_BTD.dtype))
    return jnp.einsum("BTD,DV->BTV", x_BTD, params["unembed"].astype(x_BTD.dtype))


def apply(
    params: Params, tokens_BT: jax.Array, cfg: ModelConfig, pos_BT: jax.Array | None = None
) -> jax.Array:
    """Next-token logits for every position: [B, T] int tokens -> [B, T, V] float32."""
    B, T = tokens_BT.shape
    if pos_BT is None:
        pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
    x_BTD = embed(params, tokens_BT, pos_BT, cfg)
    layers = _cast(params["layers"], x_BTD.dtype)

    def body(x, p):
        x, _, _ = block(p, x, pos_BT, cfg)
        return x, None

    if _REMAT[cfg.remat] is not None:
        body = jax.checkpoint(body, policy=_REMAT[cfg.remat])
    if cfg.scan_layers:
        x_BTD, _ = jax.lax.scan(body, x_BTD, layers)
    else:
        for i in range(cfg.n_layers):
            x_BTD, _ = body(x_BTD, jax.tree.map(lambda a, i=i: a[i], layers))
    return unembed(params, x_BTD, cfg).astype(jnp.float32)


def layer_params(params: Params, i: int) -> Params:
    return jax.tree.map(lambda a: a[i], params["layers"])
