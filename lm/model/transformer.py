"""The decoder-only Transformer as pure functions: `init(cfg, rng) -> params`, `apply`.

Shape letters, the one table for the whole project (in names such as `x_BTD` and einsums):
  B batch             T positions (queries)     S key/value slots (T, or a KV cache's length)
  D model width       F feed-forward width      V vocabulary          L layers
  N query heads       K key/value heads         G query heads per kv head (N = K*G)
  H head width        h half a head (RoPE's frequency pairs)          n heads, N or K
  M rows of a flattened batch (B*T)             I, O a matmul's input and output widths
  W a window of T+1 tokens (inputs, and targets shifted by one)       1 an axis of size one
  C steps fused into one call     A micro-batches accumulated into one step
  P prompt length     R tokens generated        E top entries kept    Q words compared
lm/scaling keeps the scaling-law letters instead: N parameters, D tokens, C FLOPs.

Each weight is described once in `param_specs` (shape, logical axes, initializer, whether
weight decay applies, its learning-rate factor); `init`, the optimizer and the shardings
(`lm.training.sharding`) all derive from it. `model.parametrization` (sp or muP,
`lm.model.parametrization`) sets the stds and learning-rate factors there, and two multipliers in
the forward pass: the output layer's (`output_features`) and the attention's (`attend_heads`). Layer
weights are stacked on a leading L axis so the layers run under `lax.scan` and compile time
stays flat in depth.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lm.config import ModelConfig
from lm.hardware import precision
from lm.model import cpu_kernels
from lm.model import parametrization as mup
from lm.model import rope as rope_lib

Params = dict[str, Any]


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]  # logical axis names, mapped to mesh axes in lm.training.sharding
    init: str  # "normal", "ones", "zeros"
    std: float = 0.0
    decay: bool = True  # weight decay applies (never to norms and biases)
    embedding: bool = False  # counted as an embedding (Kaplan's N excludes these)
    lr_scale: float = 1.0  # factor on the learning rate (muP's 1/m on hidden weights)


def param_specs(cfg: ModelConfig) -> dict[str, Any]:
    D, N, K, H, F, L, V = (
        cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.ffw_dim, cfg.n_layers,
        cfg.vocab_size,
    )  # fmt: skip
    std = cfg.init_std
    out_std = std / math.sqrt(2 * L)  # residual-branch outputs scaled as in GPT-2
    # The hidden weights, built by `w` (fan-in and fan-out both grow with width): muP scales
    # their std by 1/sqrt(m) and their learning rate by 1/m; sp leaves both (factors of 1).
    hidden_std, hidden_lr = mup.hidden_init_scale(cfg), mup.hidden_lr_scale(cfg)

    def w(shape, axes, s=std):
        return ParamSpec(shape, axes, "normal", s * hidden_std, lr_scale=hidden_lr)

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
    return init_from_specs(param_specs(cfg), cfg.param_dtype, rng)


def init_from_specs(specs: dict[str, Any], param_dtype: str, rng: jax.Array) -> Params:
    """`init` from a config's `param_specs`, for a caller that holds them already (training
    derives the optimizer and the shardings from the same specs)."""
    dtype = jnp.dtype(param_dtype)
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


# ---------------------------------------------------------------- kernels
#
# The five operations the hot path is built from, as plain formulas that autodiff
# differentiates. `lm.model.cpu_kernels` has the same functions with hand-written backward passes
# that XLA:CPU runs 1.3-1.5x faster; `kernels(cfg)` is the one place that chooses.
#
# Precision: every matmul takes its operands as given (float32, or bfloat16 under
# model.compute_dtype=bfloat16 or "auto" on bf16 hardware, cast by `operands`) and
# accumulates and returns float32.
# Everything else (the residual stream, norms, softmax, the loss) is float32, and so are the
# params and the optimizer state unless model.param_dtype says otherwise.
F32 = jnp.float32


def dense(x: jax.Array, w: jax.Array, n: int = 1) -> jax.Array:
    """x's last n axes contracted with w's first n: [B, T, D] x [D, N, H] -> [B, T, N, H]."""
    return jnp.tensordot(x, w, n, preferred_element_type=F32)


def normalize(x, scale, bias, eps: float, center: bool):
    """LayerNorm (center=True) or RMSNorm of the last axis, then scale (and bias)."""
    if center:
        x = x - x.mean(-1, keepdims=True)
    y = x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + eps) * scale
    return y if bias is None else y + bias


def gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


def attend(q_BTKGH, k_BSKH, v_BSKH, mask_BTS):
    """softmax(q k^T, masked) v -> (out [B, T, K, G, H], weights [B, K, G, T, S]), float32.

    The one attention core: training, evaluation, KV-cache decoding and lm.inference.inspection all
    call it. q comes scaled (`attend_heads`); the G query heads of a group share one key/value head.
    Keys and values may come as tuples of blocks along S (a decode step's cache and its own
    new key), attended as one without copying them into one array."""
    ks, vs = (k_BSKH, v_BSKH) if isinstance(k_BSKH, tuple) else ((k_BSKH,), (v_BSKH,))
    score = partial(jnp.einsum, "BTKGH,BSKH->BKGTS", preferred_element_type=F32)
    s_BKGTS = jnp.concatenate([score(q_BTKGH, k) for k in ks], -1)
    w_BKGTS = jax.nn.softmax(jnp.where(mask_BTS[:, None, None], s_BKGTS, -1e30), axis=-1)
    ends = np.cumsum([v.shape[1] for v in vs])
    mix = partial(jnp.einsum, "BKGTS,BSKH->BTKGH", preferred_element_type=F32)
    o_BTKGH = sum(
        mix(w_BKGTS[..., e - v.shape[1] : e].astype(v.dtype), v)
        for v, e in zip(vs, ends, strict=True)
    )
    return o_BTKGH, w_BKGTS


def output_xent(x_MD: jax.Array, w: jax.Array, targets_M: jax.Array, tied: bool) -> jax.Array:
    """Cross-entropy of the output layer's logits (w: [V, D] tied, else [D, V]) -> [M]."""
    spec = "MD,VD->MV" if tied else "MD,DV->MV"
    logits_MV = jnp.einsum(spec, x_MD, w, preferred_element_type=F32)
    picked_M = jnp.take_along_axis(logits_MV, targets_M[:, None], axis=-1)[:, 0]
    return jax.nn.logsumexp(logits_MV, axis=-1) - picked_M


class Kernels(NamedTuple):
    dense: Callable
    normalize: Callable
    gelu: Callable
    attend: Callable
    output_xent: Callable


PLAIN = Kernels(dense, normalize, gelu, attend, output_xent)
CUSTOM = Kernels(
    cpu_kernels.dense,
    cpu_kernels.normalize,
    cpu_kernels.gelu,
    cpu_kernels.attend,
    cpu_kernels.output_xent,
)


def grad_impl(cfg: ModelConfig) -> str:
    """The kernels, "custom" or "autodiff": `model.grad_impl`, with "auto" resolved to custom
    on CPU without remat. Remat policies decide what to save by primitive ("save matmul
    outputs"), which a custom_vjp would hide; the custom layouts are XLA:CPU's."""
    if cfg.grad_impl != "auto":
        return cfg.grad_impl
    return "custom" if cfg.remat == "none" and jax.default_backend() == "cpu" else "autodiff"


@functools.cache
def kernels(cfg: ModelConfig) -> Kernels:
    """The kernels cfg's passes are built from, as `grad_impl` says. Decided once per config:
    the choice is a pure function of the frozen config and the backend (fixed once jax starts),
    so the ops that ask at every trace only look it up."""
    return PLAIN if grad_impl(cfg) == "autodiff" else CUSTOM


# ---------------------------------------------------------------- the forward pass


def _keep(rec: dict | None, **arrays) -> None:
    """Record intermediates for lm.inference.inspection (rec is None everywhere else)."""
    if rec is not None:
        rec.update(arrays)


def operands(cfg: ModelConfig, *xs):
    """Arrays (or tuples of them) cast to the matmul operand dtype, model.compute_dtype ("auto"
    resolved by lm.hardware.precision): the one place that says."""
    dtype = precision.compute_dtype(cfg)
    return [jax.tree.map(lambda a: a.astype(dtype), x) for x in xs]


def matmul(x: jax.Array, w: jax.Array, cfg: ModelConfig, n: int = 1) -> jax.Array:
    """x [..., I] times the weight w [I, ...] (n contracted axes), float32 out."""
    return kernels(cfg).dense(*operands(cfg, x, w), n)


def norm(p: Params, x: jax.Array, cfg: ModelConfig) -> jax.Array:
    """LayerNorm or RMSNorm with weights p, float32 in and out."""
    bias = p["bias"].astype(F32) if "bias" in p else None
    center = cfg.norm == "layernorm"
    return kernels(cfg).normalize(x, p["scale"].astype(F32), bias, cfg.norm_eps, center)


def rope(x_BTnH: jax.Array, pos_BT: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Rotary positions (`lm.model.rope`) with the config's rope_theta and rope_scaling."""
    freq_h = rope_lib.frequencies(x_BTnH.shape[-1], dataclasses.asdict(cfg))
    return rope_lib.rotate(x_BTnH, pos_BT, freq_h, jnp).astype(x_BTnH.dtype)


class KVCache(NamedTuple):
    """Keys and values for every layer, filled up to `length` (per sequence)."""

    k_LBSKH: jax.Array
    v_LBSKH: jax.Array


def qkv(p: Params, x_BTD: jax.Array, pos_BT: jax.Array, cfg: ModelConfig):
    """Queries [B, T, N, H], keys and values [B, T, K, H], rotated when positions are rope."""
    q_BTNH, k_BTKH, v_BTKH = (matmul(x_BTD, p[w], cfg) for w in ("wq", "wk", "wv"))
    if "bq" in p:
        q_BTNH, k_BTKH, v_BTKH = q_BTNH + p["bq"], k_BTKH + p["bk"], v_BTKH + p["bv"]
    if cfg.positions == "rope":
        q_BTNH, k_BTKH = rope(q_BTNH, pos_BT, cfg), rope(k_BTKH, pos_BT, cfg)
    return q_BTNH, k_BTKH, v_BTKH


def attend_heads(q_BTNH, k_BSKH, v_BSKH, mask_BTS, cfg: ModelConfig, cached: bool = False):
    """`attend` over heads: (out [B, T, N, H], weights [B, N, T, S], query head n reading kv
    head n // G). Attending to a KV cache (inference: nothing to differentiate) takes the
    plain `attend`; the fast kernels would first copy the cache into their own layout."""
    B, T, N, H = q_BTNH.shape
    K = jax.tree.leaves(k_BSKH)[0].shape[2]  # k may be a tuple of blocks (see attend)
    # The one place q is scaled: by 1/sqrt(H), or 1/H under muP (with H fixed as the model
    # widens, a constant temperature). Scaling q ([B,T,N,H]) rather than the [B,N,T,S] scores:
    # exact when the scale is a power of two, within an ulp otherwise.
    q_BTNH = q_BTNH * mup.attention_scale(cfg, H)
    core = attend if cached else kernels(cfg).attend
    q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
    o_BTKGH, w_BKGTS = core(*operands(cfg, q_BTKGH, k_BSKH, v_BSKH), mask_BTS)
    return o_BTKGH.reshape(B, T, N, H), w_BKGTS.reshape(B, N, T, -1)


def attention_out(p: Params, o_BTNH: jax.Array, cfg: ModelConfig) -> jax.Array:
    out_BTD = matmul(o_BTNH, p["wo"], cfg, n=2)
    return out_BTD + p["bo"] if "bo" in p else out_BTD


def attention(p, x_BTD, pos_BT, cfg: ModelConfig, kv=None, kv_mask_BS=None, rec=None):
    """Causal self-attention -> (out [B, T, D], kv). With `kv` (this layer's cache [B, S, K, H]
    twice) the new keys are written at pos_BT and every filled slot up to them is attended."""
    q_BTNH, k_BTKH, v_BTKH = qkv(p, x_BTD, pos_BT, cfg)
    if kv is None:
        k_BSKH, v_BSKH = k_BTKH, v_BTKH
        mask_BTS = pos_BT[:, :, None] >= pos_BT[:, None, :]
    else:
        b_B1 = jnp.arange(x_BTD.shape[0])[:, None]
        k_BSKH = kv[0].at[b_B1, pos_BT].set(k_BTKH.astype(kv[0].dtype))
        v_BSKH = kv[1].at[b_B1, pos_BT].set(v_BTKH.astype(kv[1].dtype))
        mask_BTS = jnp.arange(k_BSKH.shape[1])[None, None, :] <= pos_BT[:, :, None]
        kv = (k_BSKH, v_BSKH)
    if kv_mask_BS is not None:
        mask_BTS = mask_BTS & kv_mask_BS[:, None, :]
    o_BTNH, w_BNTS = attend_heads(q_BTNH, k_BSKH, v_BSKH, mask_BTS, cfg, cached=kv is not None)
    _keep(rec, q=q_BTNH, k=k_BTKH, v=v_BTKH, attention=w_BNTS)
    _keep(rec, heads=o_BTNH)
    return attention_out(p, o_BTNH, cfg), kv


def mlp(p: Params, x_BTD: jax.Array, cfg: ModelConfig, rec=None) -> jax.Array:
    up_BTF = matmul(x_BTD, p["w_up"], cfg)
    if "b_up" in p:
        up_BTF = up_BTF + p["b_up"]
    if cfg.mlp == "swiglu":
        h_BTF = jax.nn.silu(matmul(x_BTD, p["w_gate"], cfg)) * up_BTF
    else:
        h_BTF = kernels(cfg).gelu(up_BTF)
    _keep(rec, mlp_hidden=h_BTF)
    out_BTD = matmul(h_BTF, p["w_down"], cfg)
    return out_BTD + p["b_down"] if "b_down" in p else out_BTD


def block(p, x_BTD, pos_BT, cfg: ModelConfig, kv=None, kv_mask_BS=None, rec=None):
    """One pre-norm Transformer layer -> (x, updated kv). `rec` (a dict, or None) receives
    every intermediate named in lm.inference.inspection.STAGES."""
    h_BTD = norm(p["attn_norm"], x_BTD, cfg)
    a_BTD, kv = attention(p, h_BTD, pos_BT, cfg, kv, kv_mask_BS, rec)
    mid_BTD = x_BTD + a_BTD
    g_BTD = norm(p["mlp_norm"], mid_BTD, cfg)
    m_BTD = mlp(p, g_BTD, cfg, rec)
    _keep(rec, x_in=x_BTD, attn_norm=h_BTD, attn_out=a_BTD, x_mid=mid_BTD, mlp_norm=g_BTD)
    _keep(rec, mlp_out=m_BTD, x_out=mid_BTD + m_BTD)
    return mid_BTD + m_BTD, kv


def embed(params: Params, tokens_BT: jax.Array, pos_BT: jax.Array | None, cfg: ModelConfig):
    """Token (and learned position) embeddings [B, T, D] float32; pos_BT None means 0..T-1."""
    x_BTD = params["embed"][tokens_BT].astype(F32)
    if cfg.positions == "learned":
        # Positions 0..T-1 are a slice of the table: its gradient is then a sum over the
        # batch instead of the scatter-add that indexing needs.
        T = tokens_BT.shape[1]
        pos_BTD = params["pos_embed"][:T] if pos_BT is None else params["pos_embed"][pos_BT]
        x_BTD = x_BTD + pos_BTD.astype(F32)
    return x_BTD


def output_weight(params: Params, cfg: ModelConfig) -> jax.Array:
    """The output layer: the embedding [V, D] when tied, else its own [D, V]."""
    return params["embed"] if cfg.tied_embeddings else params["unembed"]


def output_features(params: Params, x_BTD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """What the output layer multiplies: the final norm of the residual stream [B, T, D], times
    muP's output multiplier 1/m (logits x 1/m, applied on D rather than V). Both the logits
    (`unembed`) and the training loss (lm.training.train.token_losses) start here."""
    x_BTD = norm(params["final_norm"], x_BTD, cfg)
    scale = mup.output_multiplier(cfg)
    return x_BTD if scale == 1.0 else x_BTD * scale


def unembed(params: Params, x_BTD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Final norm and output layer: the residual stream [B, T, D] -> logits [B, T, V]."""
    x_BTD, w = operands(cfg, output_features(params, x_BTD, cfg), output_weight(params, cfg))
    spec = "BTD,VD->BTV" if cfg.tied_embeddings else "BTD,DV->BTV"
    return jnp.einsum(spec, x_BTD, w, preferred_element_type=F32)


_REMAT: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
# Shallow stacks run loop-free: a loop stacks each activation saved for the backward into an
# [L, ...] buffer (zero-filled, written, sliced back out), 8-11% of the step of the CPU models
# here (2x64 to 6x384). Unrolled, compile time grows with depth (+1 s of ~3 s at 6x384, once
# per run); deeper, the loop keeps it flat (12 layers compile in ~1.2x the time of 2).
_UNROLL_MAX_LAYERS = 6


def hidden(params: Params, tokens_BT: jax.Array, cfg: ModelConfig, pos_BT=None) -> jax.Array:
    """The residual stream after the last layer (before the final norm): [B, T, D]."""
    x_BTD = embed(params, tokens_BT, pos_BT, cfg)
    if pos_BT is None:
        pos_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
    layers = params["layers"]

    def body(x_BTD, p):
        return block(p, x_BTD, pos_BT, cfg)[0], None

    if _REMAT[cfg.remat] is not None:
        body = jax.checkpoint(body, policy=_REMAT[cfg.remat])
    if not cfg.scan_layers:
        for i in range(cfg.n_layers):
            x_BTD, _ = body(x_BTD, jax.tree.map(lambda a, i=i: a[i], layers))
        return x_BTD
    unroll = cfg.n_layers <= _UNROLL_MAX_LAYERS
    return jax.lax.scan(body, x_BTD, layers, unroll=unroll)[0]


def apply(params: Params, tokens_BT: jax.Array, cfg: ModelConfig, pos_BT=None) -> jax.Array:
    """Next-token logits for every position: [B, T] int tokens -> [B, T, V] float32."""
    return unembed(params, hidden(params, tokens_BT, cfg, pos_BT), cfg)


def layer_params(params: Params, i: int) -> Params:
    return jax.tree.map(lambda a: a[i], params["layers"])
