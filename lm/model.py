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

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

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
#
# The training path (no KV cache, no remat, float32) runs its layers through a few functions
# with hand-written backward passes (`jax.custom_vjp`). Their forwards are the plain formulas;
# their backwards compute the same gradients as autodiff, but in the shapes XLA:CPU runs fastest:
# 2-D matmuls whose operands need no transposed copy, attention matmuls in batch-major layouts,
# and no saved intermediates beyond what the gradient needs (each saved array is a zero-filled,
# written and re-read [L, ...] buffer under the layer scan). On the 2-core CPU the step is
# 1.3-1.5x the autodiff one (benchmarks/bench_train.py --compare-autodiff); gradients agree
# with autodiff's to ~1e-6 relative.


def _fast_grads(cfg: ModelConfig) -> bool:
    """Whether the hand-written backward passes apply. Remat policies decide what to save by
    primitive (e.g. "save matmul outputs"), which a custom_vjp would hide, so with remat the
    layers keep the autodiff formulation; so does bfloat16 compute, whose casts they skip."""
    return cfg.remat == "none" and cfg.compute_dtype == "float32"


def _transposed_weight_grad(dw_NK: jax.Array) -> jax.Array:
    """dw_NK.T, kept as a separate copy. Eigen's GEMM behind a weight gradient x^T g is
    20-45% faster writing [N, K] than [K, N] when N < K (wider output rows); XLA would fold a
    plain transpose back into the dot, so a barrier keeps the weight-sized copy instead."""
    return jax.lax.optimization_barrier(dw_NK).T


@jax.custom_vjp
def _dense(x_MK: jax.Array, w_KN: jax.Array) -> jax.Array:
    """x @ w. Autodiff's weight gradient of a [B, T, K] x [K, N] einsum contracts two batch axes
    and makes XLA:CPU copy a transposed operand first (~1.5x slower); here it is one 2-D GEMM."""
    return x_MK @ w_KN


def _dense_fwd(x_MK, w_KN):
    return x_MK @ w_KN, (x_MK, w_KN)


def _dense_bwd(res, g_MN):
    x_MK, w_KN = res
    K, N = w_KN.shape
    dx_MK = jnp.einsum("MN,KN->MK", g_MN, w_KN)
    if N >= K:
        dw_KN = jnp.einsum("MK,MN->KN", x_MK, g_MN)
    else:
        dw_KN = _transposed_weight_grad(jnp.einsum("MN,MK->NK", g_MN, x_MK))
    return dx_MK, dw_KN


_dense.defvjp(_dense_fwd, _dense_bwd)


def _linear(x_BTK: jax.Array, w_KN: jax.Array, cfg: ModelConfig) -> jax.Array:
    """[..., K] @ [K, N] -> [..., N]: through `_dense` on the training path, else an einsum."""
    if not _fast_grads(cfg):
        return jnp.einsum("...K,KN->...N", x_BTK, w_KN)
    K, N = w_KN.shape
    y_MN = _dense(x_BTK.reshape(-1, K), w_KN)
    return y_MN.reshape(*x_BTK.shape[:-1], N)


def _row_mean(x: jax.Array) -> jax.Array:
    """x.mean(-1, keepdims=True) as a matrix-vector product: XLA:CPU's reductions over a
    short last axis (64-384 here) run several times slower than the same sum as a GEMV."""
    D = x.shape[-1]
    sums = x.reshape(-1, D) @ jnp.ones((D,), x.dtype)
    return (sums / D).reshape(*x.shape[:-1], 1)


def _col_sum(x: jax.Array) -> jax.Array:
    """The sum over all leading axes, [..., D] -> [D], as a vector-matrix product."""
    x_MD = x.reshape(-1, x.shape[-1])
    return jnp.ones((x_MD.shape[0],), x.dtype) @ x_MD


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _norm_f32(x, scale, bias, eps: float, center: bool):
    return _norm_f32_fwd(x, scale, bias, eps, center)[0]


def _norm_f32_fwd(x, scale, bias, eps, center):
    mu = _row_mean(x) if center else None
    xc = x - mu if center else x
    rstd = jax.lax.rsqrt(_row_mean(xc * xc) + eps)
    y = xc * rstd * scale
    if bias is not None:
        y = y + bias
    # Only x and two per-row numbers are saved; the backward recomputes the normalised x.
    return y, (x, mu, rstd, scale, bias is not None)


def _norm_f32_bwd(eps, center, res, g):
    x, mu, rstd, scale, has_bias = res
    xhat = (x - mu if center else x) * rstd
    gx = g * scale
    dx = gx - xhat * _row_mean(gx * xhat)
    if center:
        dx = dx - _row_mean(gx)
    return dx * rstd, _col_sum(g * xhat), (_col_sum(g) if has_bias else None)


_norm_f32.defvjp(_norm_f32_fwd, _norm_f32_bwd)


def _norm(p: Params, x: jax.Array, cfg: ModelConfig) -> jax.Array:
    """LayerNorm or RMSNorm, computed in float32."""
    bias = p["bias"].astype(jnp.float32) if "bias" in p else None
    y = _norm_f32(
        x.astype(jnp.float32),
        p["scale"].astype(jnp.float32),
        bias,
        cfg.norm_eps,
        cfg.norm == "layernorm",
    )
    return y.astype(x.dtype)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@jax.custom_vjp
def _gelu(x: jax.Array) -> jax.Array:
    """jax.nn.gelu(approximate=True), saving only its input for the backward (autodiff keeps
    four [B, T, F] intermediates of the tanh formula)."""
    return jax.nn.gelu(x, approximate=True)


def _gelu_fwd(x):
    return jax.nn.gelu(x, approximate=True), x


def _gelu_bwd(x, g):
    x2 = x * x
    t = jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x2 * x))
    dt = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x2)
    return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * dt),)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)


def rope(x_BTnH: jax.Array, pos_BT: jax.Array, cfg: ModelConfig | float) -> jax.Array:
    """Rotary positions, rotating the two halves of each head (the Llama convention), with the
    config's rope_theta and rope_scaling (a bare float is taken as theta, unscaled)."""
    H = x_BTnH.shape[-1]
    m = None if isinstance(cfg, int | float) else cfg
    theta = cfg if m is None else m.rope_theta
    if m is None or m.rope_scaling == "none":
        freq = theta ** (-jnp.arange(0, H, 2, dtype=jnp.float32) / H)
    else:  # constants, computed once at trace time by the numpy runner's own rule
        from lm.run import rope_scale

        freq_np = theta ** (-np.arange(0, H, 2, dtype=np.float32) / H)
        freq = jnp.asarray(rope_scale(freq_np, dataclasses.asdict(m)), jnp.float32)
    ang_BTh = pos_BT[..., None].astype(jnp.float32) * freq
    sin, cos = jnp.sin(ang_BTh)[:, :, None, :], jnp.cos(ang_BTh)[:, :, None, :]
    x1, x2 = jnp.split(x_BTnH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTnH.dtype)


class KVCache(NamedTuple):
    """Keys and values for every layer, filled up to `length` (per sequence)."""

    k_LBSKH: jax.Array
    v_LBSKH: jax.Array


@jax.custom_vjp
def _attend(q_BTKGH, k_BSKH, v_BSKH, mask_BTS):
    """softmax(q k^T masked) v -> (out [B,T,K,G,H], weights [B,K,G,T,S]); q already scaled.

    Every matmul of forward and backward is a batched GEMM over (B, K) with the contracted axis
    innermost in at least one operand: XLA:CPU runs a transposed-left operand (autodiff's dK and
    dV) at half speed, so the backward forms dK^T = Q^T dS and dV^T = dO^T P instead, from the
    small [B,T,D]-sized q and dO transposed, never the [T, S]-sized weights."""
    return _attend_fwd(q_BTKGH, k_BSKH, v_BSKH, mask_BTS)[0]


def _attend_fwd(q_BTKGH, k_BSKH, v_BSKH, mask_BTS):
    q_BKGTH = q_BTKGH.transpose(0, 2, 3, 1, 4)
    k_BKSH = k_BSKH.transpose(0, 2, 1, 3)
    v_BKSH = v_BSKH.transpose(0, 2, 1, 3)
    s_BKGTS = jnp.einsum("BKGTH,BKSH->BKGTS", q_BKGTH, k_BKSH)
    s_BKGTS = jnp.where(mask_BTS[:, None, None], s_BKGTS, -1e30)
    w_BKGTS = jax.nn.softmax(s_BKGTS, axis=-1)
    o_BTKGH = jnp.einsum("BKGTS,BKSH->BKGTH", w_BKGTS, v_BKSH).transpose(0, 3, 1, 2, 4)
    qT_BKHGT = q_BTKGH.transpose(0, 2, 4, 3, 1)
    return (o_BTKGH, w_BKGTS), (qT_BKHGT, k_BKSH, v_BKSH, w_BKGTS, o_BTKGH, mask_BTS)


def _attend_bwd(res, cts):
    qT_BKHGT, k_BKSH, v_BKSH, w_BKGTS, o_BTKGH, mask_BTS = res
    do_BTKGH, dw_BKGTS = cts
    # softmax backward: dS = W * (dW_total - rowsum(dW_total * W)), dW_total = dO V^T + dW;
    # rowsum(dO V^T * W) = rowsum(dO * O) is a reduction over H rather than S, done as a
    # matrix-vector product (XLA:CPU's reduction over a short last axis is several times slower).
    dwo_BKGTS = jnp.einsum("BKGTH,BKSH->BKGTS", do_BTKGH.transpose(0, 2, 3, 1, 4), v_BKSH)
    H = o_BTKGH.shape[-1]
    delta_M = (do_BTKGH * o_BTKGH).reshape(-1, H) @ jnp.ones((H,), o_BTKGH.dtype)
    delta_BKGT1 = delta_M.reshape(o_BTKGH.shape[:-1]).transpose(0, 2, 3, 1)[..., None]
    if not isinstance(dw_BKGTS, SymbolicZero):  # the weights are used, e.g. by lm.inspect
        dwo_BKGTS = dwo_BKGTS + dw_BKGTS
        delta_BKGT1 = delta_BKGT1 + (dw_BKGTS * w_BKGTS).sum(-1, keepdims=True)
    # Masked scores get no gradient (they are constants); the where matters only in rows with
    # no visible key, whose weights are uniform rather than zero.
    ds_BKGTS = jnp.where(mask_BTS[:, None, None], w_BKGTS * (dwo_BKGTS - delta_BKGT1), 0.0)
    dq_BKGTH = jnp.einsum("BKGTS,BKSH->BKGTH", ds_BKGTS, k_BKSH)
    dkT_BKHS = jnp.einsum("BKHGT,BKGTS->BKHS", qT_BKHGT, ds_BKGTS)
    doT_BKHGT = do_BTKGH.transpose(0, 2, 4, 3, 1)
    dvT_BKHS = jnp.einsum("BKHGT,BKGTS->BKHS", doT_BKHGT, w_BKGTS)
    return (
        dq_BKGTH.transpose(0, 3, 1, 2, 4),
        dkT_BKHS.transpose(0, 3, 1, 2),
        dvT_BKHS.transpose(0, 3, 1, 2),
        None,
    )


def _attend_fwd_sz(q_BTKGH, k_BSKH, v_BSKH, mask_BTS):
    # symbolic_zeros=True hands the forward its inputs wrapped; it lets the backward skip the
    # weights' cotangent when (as in training) nothing uses them.
    return _attend_fwd(q_BTKGH.value, k_BSKH.value, v_BSKH.value, mask_BTS.value)


_attend.defvjp(_attend_fwd_sz, _attend_bwd, symbolic_zeros=True)


def _attention_train(p, x_BTD, pos_BT, cfg: ModelConfig, kv_mask_BS=None):
    """`_attention` without a cache, through `_linear` and `_attend` (see above)."""
    B, T, D = x_BTD.shape
    N, H = p["wq"].shape[-2:]
    K = p["wk"].shape[-2]
    q_BTNH = _linear(x_BTD, p["wq"].reshape(D, N * H), cfg).reshape(B, T, N, H)
    k_BTKH = _linear(x_BTD, p["wk"].reshape(D, K * H), cfg).reshape(B, T, K, H)
    v_BTKH = _linear(x_BTD, p["wv"].reshape(D, K * H), cfg).reshape(B, T, K, H)
    if "bq" in p:
        q_BTNH, k_BTKH, v_BTKH = q_BTNH + p["bq"], k_BTKH + p["bk"], v_BTKH + p["bv"]
    if cfg.positions == "rope":
        q_BTNH = rope(q_BTNH, pos_BT, cfg)
        k_BTKH = rope(k_BTKH, pos_BT, cfg)
    mask_BTS = pos_BT[:, :, None] >= pos_BT[:, None, :]
    if kv_mask_BS is not None:
        mask_BTS = mask_BTS & kv_mask_BS[:, None, :]
    # The 1/sqrt(H) scale on q ([B,T,N,H]) rather than on the [B,N,T,S] scores: exact when
    # sqrt(H) is a power of two, within an ulp otherwise.
    q_BTKGH = (q_BTNH * (1 / math.sqrt(H))).reshape(B, T, K, N // K, H)
    # XLA:CPU runs a batched matmul on one thread (it splits only within a matrix, and these
    # are T x T), but runs independent ops concurrently: two halves of the heads attended
    # separately keep both cores busy (~1.2x on the attention's wall time).
    parts = [slice(0, K // 2), slice(K // 2, K)] if K > 1 else [slice(0, K)]
    o_w = [_attend(q_BTKGH[:, :, h], k_BTKH[:, :, h], v_BTKH[:, :, h], mask_BTS) for h in parts]
    o_BTKGH = jnp.concatenate([o for o, _ in o_w], axis=2)
    w_BKGTS = jnp.concatenate([w for _, w in o_w], axis=1)
    out_BTD = _linear(o_BTKGH.reshape(B, T, N * H), p["wo"].reshape(N * H, D), cfg)
    if "bo" in p:
        out_BTD = out_BTD + p["bo"]
    return out_BTD, None, w_BKGTS


def _attention(p, x_BTD, pos_BT, cfg: ModelConfig, kv=None, kv_mask_BS=None):
    """Causal self-attention; with `kv` (this layer's cache) it attends to cached positions."""
    if kv is None and _fast_grads(cfg):
        return _attention_train(p, x_BTD, pos_BT, cfg, kv_mask_BS)
    q_BTNH = jnp.einsum("BTD,DNH->BTNH", x_BTD, p["wq"])
    k_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, p["wk"])
    v_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, p["wv"])
    if "bq" in p:
        q_BTNH, k_BTKH, v_BTKH = q_BTNH + p["bq"], k_BTKH + p["bk"], v_BTKH + p["bv"]
    if cfg.positions == "rope":
        q_BTNH = rope(q_BTNH, pos_BT, cfg)
        k_BTKH = rope(k_BTKH, pos_BT, cfg)
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
    up_BTF = _linear(x_BTD, p["w_up"], cfg)
    if "b_up" in p:
        up_BTF = up_BTF + p["b_up"]
    if cfg.mlp == "swiglu":
        h_BTF = jax.nn.silu(_linear(x_BTD, p["w_gate"], cfg)) * up_BTF
    else:
        h_BTF = _gelu(up_BTF)
    out_BTD = _linear(h_BTF, p["w_down"], cfg)
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


_UNROLL_MAX_LAYERS = 6


def hidden(
    params: Params, tokens_BT: jax.Array, cfg: ModelConfig, pos_BT: jax.Array | None = None
) -> jax.Array:
    """The residual stream after the last layer (before the final norm): [B, T, D]."""
    B, T = tokens_BT.shape
    if pos_BT is None:
        pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
        # `embed` with positions 0..T-1 taken as a slice of the table: its gradient is then a
        # sum over the batch instead of the scatter-add that indexing with pos_BT needs.
        dtype = jnp.dtype(cfg.compute_dtype)
        x_BTD = params["embed"].astype(dtype)[tokens_BT]
        if cfg.positions == "learned":
            x_BTD = x_BTD + params["pos_embed"].astype(dtype)[:T]
    else:
        x_BTD = embed(params, tokens_BT, pos_BT, cfg)
    layers = _cast(params["layers"], x_BTD.dtype)

    def body(x, p):
        x, _, _ = block(p, x, pos_BT, cfg)
        return x, None

    if _REMAT[cfg.remat] is not None:
        body = jax.checkpoint(body, policy=_REMAT[cfg.remat])
    if cfg.scan_layers:
        # Shallow stacks run loop-free: a loop stacks each activation saved for the backward
        # into an [L, ...] buffer (zero-filled, written, sliced back out), 8-11% of the step
        # of the CPU models here (2x64 to 6x384). Unrolled, compile time grows with depth
        # (+1 s of ~3 s at 6x384, once per run); beyond _UNROLL_MAX_LAYERS the loop keeps it
        # flat in depth (12 layers compile in ~1.2x the time of 2).
        unroll = cfg.n_layers <= _UNROLL_MAX_LAYERS
        x_BTD, _ = jax.lax.scan(body, x_BTD, layers, unroll=unroll)
    else:
        for i in range(cfg.n_layers):
            x_BTD, _ = body(x_BTD, jax.tree.map(lambda a, i=i: a[i], layers))
    return x_BTD


def apply(
    params: Params, tokens_BT: jax.Array, cfg: ModelConfig, pos_BT: jax.Array | None = None
) -> jax.Array:
    """Next-token logits for every position: [B, T] int tokens -> [B, T, V] float32."""
    return unembed(params, hidden(params, tokens_BT, cfg, pos_BT), cfg).astype(jnp.float32)


def layer_params(params: Params, i: int) -> Params:
    return jax.tree.map(lambda a: a[i], params["layers"])
