"""`lm.model.transformer`'s kernels with hand-written backward passes that XLA:CPU runs fast.

Same signatures and the same forward values as the plain formulas in `lm.model.transformer`
(`dense`, `normalize`, `gelu`, `attend`, `output_xent`); the model takes these instead when
`model.grad_impl` is "custom" (or "auto" on the CPU backend without remat, see
`lm.model.transformer.grad_impl`). Their backwards compute the same gradients as autodiff
(tests/model/test_kernels.py holds each to `jax.test_util.check_grads` and to autodiff of the plain
formula), but in the shapes XLA:CPU runs fastest: 2-D matmuls whose operands need no transposed
copy, attention matmuls in batch-major layouts, and no saved intermediates beyond what the gradient
needs (each saved array is a zero-filled, written and re-read [L, ...] buffer under the layer scan).
On the 2-core CPU the train step is 1.3-1.5x the autodiff one (`python benchmarks/bench_train.py
--compare-autodiff`).

Precision, as in `lm.model.transformer`: operands come as given (float32 or bfloat16), every matmul
accumulates in float32 (`preferred_element_type`), and so do softmax and the loss. The
backward passes follow the same rule: an incoming float32 cotangent is cast to the operand
dtype before it enters a matmul, and each gradient is returned in its input's dtype.

Shape letters as in `lm.model.transformer`.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.experimental.layout import Layout, with_layout_constraint

F32 = jnp.float32


def _mm(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum with float32 accumulation and result; b's dtype is the operand dtype."""
    return jnp.einsum(spec, a.astype(b.dtype), b, preferred_element_type=F32)


# ---------------------------------------------------------------- dense


def transposed_weight_grad(dw_OI: jax.Array) -> jax.Array:
    """dw_OI.T, kept as a separate copy. Eigen's GEMM behind a weight gradient x^T g is
    20-45% faster writing [O, I] than [I, O] when O < I (wider output rows); XLA would fold a
    plain transpose back into the dot, so a barrier keeps the weight-sized copy instead."""
    return jax.lax.optimization_barrier(dw_OI).T


def _row_major(a: jax.Array) -> jax.Array:
    """a materialized in row-major order (XLA would otherwise fold a transpose into the dot)."""
    return with_layout_constraint(a, Layout(tuple(range(a.ndim))))


@jax.custom_vjp
def _dense2(x_MI: jax.Array, w_IO: jax.Array) -> jax.Array:
    """x @ w. Autodiff's weight gradient of a [B, T, I] x [I, O] einsum contracts two batch axes
    and makes XLA:CPU copy a transposed operand first (~1.5x slower); here it is one 2-D GEMM."""
    return _mm("MI,IO->MO", x_MI, w_IO)


def _dense2_fwd(x_MI, w_IO):
    return _mm("MI,IO->MO", x_MI, w_IO), (x_MI, w_IO)


def _dense2_bwd(res, g_MO):
    x_MI, w_IO = res
    I, O = w_IO.shape
    g_MO = g_MO.astype(w_IO.dtype)
    dx_MI = _mm("MO,IO->MI", g_MO, w_IO)
    if x_MI.dtype == jnp.bfloat16:
        # XLA:CPU keeps a bf16 dot native (AMX/AVX512-BF16 through YNNPACK) only when its left
        # operand contracts its last axis in row-major memory; a plain x.T gets a transposed
        # layout and the dot is silently upcast to float32 (0.85x of f32 instead of ~2.4x).
        dw_IO = _mm("IM,MO->IO", _row_major(x_MI.T), g_MO)
    elif O >= I:
        dw_IO = _mm("MI,MO->IO", x_MI, g_MO)
    else:
        dw_IO = transposed_weight_grad(_mm("MO,MI->OI", g_MO, x_MI))
    return dx_MI.astype(x_MI.dtype), dw_IO.astype(w_IO.dtype)


_dense2.defvjp(_dense2_fwd, _dense2_bwd)


def dense(x: jax.Array, w: jax.Array, n: int = 1) -> jax.Array:
    """x's last n axes contracted with w's first n (`transformer.dense`), as one 2-D matmul."""
    lead, rest = x.shape[: x.ndim - n], w.shape[n:]
    I = math.prod(w.shape[:n])
    y_MO = _dense2(x.reshape(-1, I), w.reshape(I, -1))
    return y_MO.reshape(*lead, *rest)


# ---------------------------------------------------------------- normalize


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
def normalize(x, scale, bias, eps: float, center: bool):
    """LayerNorm (center) or RMSNorm of the last axis (`lm.model.transformer.normalize`)."""
    return _normalize_fwd(x, scale, bias, eps, center)[0]


def _normalize_fwd(x, scale, bias, eps, center):
    mu = _row_mean(x) if center else None
    xc = x - mu if center else x
    rstd = jax.lax.rsqrt(_row_mean(xc * xc) + eps)
    y = xc * rstd * scale
    if bias is not None:
        y = y + bias
    # Only x and two per-row numbers are saved; the backward recomputes the normalised x.
    return y, (x, mu, rstd, scale, bias is not None)


def _normalize_bwd(eps, center, res, g):
    x, mu, rstd, scale, has_bias = res
    xhat = (x - mu if center else x) * rstd
    gx = g * scale
    dx = gx - xhat * _row_mean(gx * xhat)
    if center:
        dx = dx - _row_mean(gx)
    return dx * rstd, _col_sum(g * xhat), (_col_sum(g) if has_bias else None)


normalize.defvjp(_normalize_fwd, _normalize_bwd)

# ---------------------------------------------------------------- gelu

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
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


gelu.defvjp(_gelu_fwd, _gelu_bwd)

# ---------------------------------------------------------------- attend


@jax.custom_vjp
def _attend(q_BTKGH, k_BSKH, v_BSKH, mask_BTS):
    """Every matmul of forward and backward is a batched GEMM over (B, K) with the contracted
    axis innermost in at least one operand: XLA:CPU runs a transposed-left operand (autodiff's
    dK and dV) at half speed, so the backward forms dK^T = Q^T dS and dV^T = dO^T P instead,
    from the small [B,T,D]-sized q and dO transposed, never the [T, S]-sized weights."""
    return _attend_fwd(q_BTKGH, k_BSKH, v_BSKH, mask_BTS)[0]


def _attend_fwd(q_BTKGH, k_BSKH, v_BSKH, mask_BTS):
    q_BKGTH = q_BTKGH.transpose(0, 2, 3, 1, 4)
    k_BKSH = k_BSKH.transpose(0, 2, 1, 3)
    v_BKSH = v_BSKH.transpose(0, 2, 1, 3)
    s_BKGTS = _mm("BKGTH,BKSH->BKGTS", q_BKGTH, k_BKSH)
    s_BKGTS = jnp.where(mask_BTS[:, None, None], s_BKGTS, -1e30)
    w_BKGTS = jax.nn.softmax(s_BKGTS, axis=-1)
    o_BTKGH = _mm("BKGTS,BKSH->BKGTH", w_BKGTS, v_BKSH).transpose(0, 3, 1, 2, 4)
    qT_BKHGT = q_BTKGH.transpose(0, 2, 4, 3, 1)
    return (o_BTKGH, w_BKGTS), (qT_BKHGT, k_BKSH, v_BKSH, w_BKGTS, o_BTKGH, mask_BTS)


def _attend_bwd(res, cts):
    qT_BKHGT, k_BKSH, v_BKSH, w_BKGTS, o_BTKGH, mask_BTS = res
    do_BTKGH, dw_BKGTS = cts
    # softmax backward: dS = W * (dW_total - rowsum(dW_total * W)), dW_total = dO V^T + dW;
    # rowsum(dO V^T * W) = rowsum(dO * O) is a reduction over H rather than S, done as a
    # matrix-vector product (XLA:CPU's reduction over a short last axis is several times slower).
    dwo_BKGTS = _mm("BKGTH,BKSH->BKGTS", do_BTKGH.transpose(0, 2, 3, 1, 4), v_BKSH)
    H = o_BTKGH.shape[-1]
    delta_M = (do_BTKGH * o_BTKGH).reshape(-1, H) @ jnp.ones((H,), F32)
    delta_BKGT = delta_M.reshape(o_BTKGH.shape[:-1]).transpose(0, 2, 3, 1)
    if not isinstance(
        dw_BKGTS, SymbolicZero
    ):  # the weights are used, e.g. by lm.inference.inspection
        dwo_BKGTS = dwo_BKGTS + dw_BKGTS
        delta_BKGT = delta_BKGT + (dw_BKGTS * w_BKGTS).sum(-1)
    # Masked scores get no gradient (they are constants); the where matters only in rows with
    # no visible key, whose weights are uniform rather than zero.
    ds_BKGTS = w_BKGTS * (dwo_BKGTS - delta_BKGT[..., None])
    ds_BKGTS = jnp.where(mask_BTS[:, None, None], ds_BKGTS, 0.0)
    ds_BKGTS = ds_BKGTS.astype(k_BKSH.dtype)
    dq_BKGTH = _mm("BKGTS,BKSH->BKGTH", ds_BKGTS, k_BKSH)
    dkT_BKHS = _mm("BKHGT,BKGTS->BKHS", qT_BKHGT, ds_BKGTS)
    doT_BKHGT = do_BTKGH.transpose(0, 2, 4, 3, 1)
    dvT_BKHS = _mm("BKHGT,BKGTS->BKHS", doT_BKHGT, w_BKGTS.astype(v_BKSH.dtype))
    return (
        dq_BKGTH.transpose(0, 3, 1, 2, 4).astype(qT_BKHGT.dtype),
        dkT_BKHS.transpose(0, 3, 1, 2).astype(k_BKSH.dtype),
        dvT_BKHS.transpose(0, 3, 1, 2).astype(v_BKSH.dtype),
        None,
    )


def _attend_fwd_sz(q_BTKGH, k_BSKH, v_BSKH, mask_BTS):
    # symbolic_zeros=True hands the forward its inputs wrapped; it lets the backward skip the
    # weights' cotangent when (as in training) nothing uses them.
    return _attend_fwd(q_BTKGH.value, k_BSKH.value, v_BSKH.value, mask_BTS.value)


_attend.defvjp(_attend_fwd_sz, _attend_bwd, symbolic_zeros=True)


def attend(q_BTKGH, k_BSKH, v_BSKH, mask_BTS):
    """softmax(q k^T masked) v -> (out [B,T,K,G,H], weights [B,K,G,T,S]) (`transformer.attend`).

    XLA:CPU runs a batched matmul on one thread (it splits only within a matrix, and these
    are T x S), but runs independent ops concurrently: two halves of the kv heads attended
    separately keep both cores busy (~1.2x on the attention's wall time)."""
    K = k_BSKH.shape[2]
    if K == 1:
        return _attend(q_BTKGH, k_BSKH, v_BSKH, mask_BTS)
    halves = [slice(0, K // 2), slice(K // 2, K)]
    o_w = [_attend(q_BTKGH[:, :, h], k_BSKH[:, :, h], v_BSKH[:, :, h], mask_BTS) for h in halves]
    return jnp.concatenate([o for o, _ in o_w], axis=2), jnp.concatenate([w for _, w in o_w], 1)


# ---------------------------------------------------------------- output_xent


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def output_xent(x_MD: jax.Array, w: jax.Array, targets_M: jax.Array, tied: bool) -> jax.Array:
    """Cross-entropy of the output layer's logits (w: [V, D] tied, else [D, V]) -> [M]
    (`lm.model.transformer.output_xent`).

    The hand-written backward forms d(logits) = softmax - onehot in one pass (no scatter-add
    of the picked logit) and computes the tied embedding's gradient as [D, V], then transposes
    it (XLA:CPU would otherwise first transpose the whole [M, V] matrix, and writes a narrow
    output slower)."""
    return _output_xent_fwd(x_MD, w, targets_M, tied)[0]


def _output_xent_fwd(x_MD, w, targets_M, tied):
    logits_MV = _mm("MD,VD->MV" if tied else "MD,DV->MV", x_MD, w)
    logz_M = jax.nn.logsumexp(logits_MV, axis=-1)
    picked_M = jnp.take_along_axis(logits_MV, targets_M[:, None], axis=-1)[:, 0]
    return logz_M - picked_M, (x_MD, w, targets_M, logits_MV, logz_M)


def _output_xent_bwd(tied, res, g_M):
    x_MD, w, targets_M, logits_MV, logz_M = res
    onehot_MV = jnp.arange(logits_MV.shape[-1]) == targets_M[:, None]
    dlogits_MV = (jnp.exp(logits_MV - logz_M[:, None]) - onehot_MV) * g_M[:, None]
    dlogits_MV = dlogits_MV.astype(w.dtype)
    dx_MD = _mm("MV,VD->MD" if tied else "MV,DV->MD", dlogits_MV, w)
    dw_DV = _mm("MD,MV->DV", x_MD, dlogits_MV)
    dw = transposed_weight_grad(dw_DV) if tied else dw_DV
    return dx_MD.astype(x_MD.dtype), dw.astype(w.dtype), None


output_xent.defvjp(_output_xent_fwd, _output_xent_bwd)
