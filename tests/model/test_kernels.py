"""The hand-written backward passes (lm.model.cpu_kernels) against autodiff, and the seam.

Each kernel is checked in both precisions. float32: `jax.test_util.check_vjp` (its VJP against
finite differences, in float64) and its VJP against autodiff of the plain formula in
lm.model.transformer (random cotangents). bfloat16 operands: its VJP against autodiff of the plain
formula in float64 at the same (bf16-valued) inputs, within bf16's rounding. Then whole train-step
gradients with model.grad_impl=custom against grad_impl=autodiff, across the architectures and
options, and in bf16 against float32.
"""

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_vjp

from lm import config
from lm.config import PRESETS, ModelConfig
from lm.inference import inspection
from lm.model import cpu_kernels, transformer
from lm.training import train

# This file's programs are compiled with XLA:CPU's LLVM optimizations off: they check the math
# of backward passes, which that level does not change (the comparisons below come out as at
# the default level), and compile 1.5-3x faster.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _rand(key, *shape, dtype=jnp.float32):
    """Standard normal test values as a numpy array. Drawn by numpy, not jax.random: XLA:CPU
    takes seconds to compile jax.random.normal for each new shape, and numpy inputs keep
    check_vjp's own arithmetic (finite differences, inner products) in numpy too."""
    return np.random.default_rng(key).standard_normal(shape).astype(np.dtype(dtype))


# check_vjp's finite-difference step for the kernels that return float32 even from float64
# inputs (dense, output_xent, attend: they accumulate in float32). At its default 1e-4 the
# difference of two float32 outputs carries ~1e-3 relative rounding error, up to the whole of
# its 2e-3 float32 tolerance at some inputs; at 1e-3 that error is 10x smaller and the step's
# own truncation error (~eps^2) is smaller still: the same check, less noise.
EPS32 = 1e-3


def _mask_BTS(B, T, S, empty_row=True):
    mask = np.tril(np.ones((T, S), bool), S - T)[None].repeat(B, 0)
    if empty_row:
        mask[0, 0] = False  # a query with no visible key: its weights are uniform
    return jnp.asarray(mask)


CASES = {
    # name: (plain function, cpu function, argument shapes, static extra args)
    "dense_1": (transformer.dense, cpu_kernels.dense, [(2, 5, 6), (6, 7)], (1,)),
    "dense_wide_out": (transformer.dense, cpu_kernels.dense, [(2, 5, 6), (6, 3, 4)], (1,)),
    "dense_narrow_out": (transformer.dense, cpu_kernels.dense, [(2, 5, 12), (12, 3)], (1,)),
    "dense_2": (transformer.dense, cpu_kernels.dense, [(2, 5, 3, 4), (3, 4, 6)], (2,)),
    "gelu": (transformer.gelu, cpu_kernels.gelu, [(3, 5, 8)], ()),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_elementwise_and_dense_kernels(name):
    plain, fast, shapes, extra = CASES[name]
    with jax.enable_x64(True):
        args = [_rand(i, *s, dtype=jnp.float64) for i, s in enumerate(shapes)]
        _check_grads(lambda *a: fast(*a, *extra), args, eps=EPS32)
    args = [_rand(i, *s) for i, s in enumerate(shapes)]
    _same_vjp(lambda *a: plain(*a, *extra), lambda *a: fast(*a, *extra), args)
    if name.startswith("dense"):  # gelu and normalize only ever see float32
        _bf16_vjp_close(lambda *a: plain(*a, *extra), lambda *a: fast(*a, *extra), args)


def _value_and_vjp(fn):
    """`(args, ct) -> (fn(*args), fn's VJP of ct)`, to jit as one program: jax.vjp of a
    function and then its VJP compile two (and op by op, one per operation)."""

    def run(args, ct):
        y, vjp = jax.vjp(fn, *args)
        return y, vjp(ct)

    return run


def _check_grads(fn, args, **kw):
    """`check_grads(fn, args, order=1, modes=["rev"], **kw)` (its VJP against finite
    differences), with fn and its VJP compiled once each by _jit."""
    fwd, both = _jit(fn), _jit(_value_and_vjp(fn))
    check_vjp(fwd, lambda *a: (fwd(*a), lambda ct: both(a, ct)[1]), tuple(args), **kw)


def _bf16_vjp_close(plain, fast, args, tol=2e-2):
    """fast on bf16 operands against plain in float64 at the same values: outputs and input
    gradients within `tol` of each array's largest entry (bf16 keeps 8 bits: ~0.4% a value)."""
    args16 = [np.asarray(a).astype(jnp.bfloat16) for a in args]
    ct = jax.tree.map(lambda y: _rand(99, *y.shape), jax.eval_shape(fast, *args16))
    y16, g16 = _jit(_value_and_vjp(fast))(args16, ct)
    with jax.enable_x64(True):
        a64 = [np.asarray(a, np.float64) for a in args16]
        # (the plain formulas accumulate in float32 even from float64 inputs: precise
        # enough to hold bf16 to a 2% tolerance)
        ct64 = jax.tree.map(lambda c, y: c.astype(y.dtype), ct, jax.eval_shape(plain, *a64))
        y64, g64 = _jit(_value_and_vjp(plain))(a64, ct64)
        for got, want in zip(jax.tree.leaves((y16, g16)), jax.tree.leaves((y64, g64)), strict=True):
            assert got.dtype in (jnp.float32, jnp.bfloat16)
            want = np.asarray(want)
            err = np.abs(np.asarray(got, np.float64) - want).max()
            assert err <= tol * np.abs(want).max(), (err, np.abs(want).max())
    for g, a in zip(g16, args16, strict=True):
        assert g.dtype == a.dtype  # a gradient comes back in its input's dtype


def _same_vjp(plain, fast, args, rtol=2e-5):
    ct = jax.tree.map(lambda y: _rand(99, *y.shape, dtype=y.dtype), jax.eval_shape(plain, *args))
    both = _jit(lambda a, c: (_value_and_vjp(plain)(a, c), _value_and_vjp(fast)(a, c)))
    (y_plain, g_plains), (y_fast, g_fasts) = both(args, ct)
    chex.assert_trees_all_close(y_fast, y_plain, rtol=rtol, atol=1e-6)
    for g_fast, g_plain in zip(g_fasts, g_plains, strict=True):
        scale = float(np.abs(g_plain).max())
        np.testing.assert_allclose(g_fast, g_plain, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_normalize(center, with_bias):
    def f(fn):
        return lambda x, s, b: fn(x, s, b if with_bias else None, 1e-5, center)

    with jax.enable_x64(True):
        args = [_rand(i, *s, dtype=jnp.float64) for i, s in enumerate([(3, 4, 8), (8,), (8,)])]
        _check_grads(f(cpu_kernels.normalize), args, atol=1e-5, rtol=1e-5)
    args = [_rand(i, *s) for i, s in enumerate([(3, 4, 8), (8,), (8,)])]
    _same_vjp(f(transformer.normalize), f(cpu_kernels.normalize), args, rtol=5e-5)


@pytest.mark.parametrize("K,G", [(1, 4), (2, 2), (4, 1), (3, 1)])
@pytest.mark.parametrize("use_weights", [False, True])
def test_attend(K, G, use_weights):
    """Both the training case (only the output used: the weights' cotangent is a symbolic
    zero) and lm.inference.inspection's (the weights used too); MQA, GQA, MHA and an odd K."""
    B, T, S, H = 2, 5, 7, 4
    shapes = [(B, T, K, G, H), (B, S, K, H), (B, S, K, H)]
    mask = _mask_BTS(B, T, S)

    def f(fn):  # jitted below: op by op, these tests compiled ~25 s of small programs
        if use_weights:
            return lambda q, k, v: fn(q, k, v, mask)
        return lambda q, k, v: fn(q, k, v, mask)[0]

    with jax.enable_x64(True):
        args = [_rand(i, *s, dtype=jnp.float64) for i, s in enumerate(shapes)]
        _check_grads(f(cpu_kernels.attend), args, eps=EPS32)
    args = [_rand(i, *s) for i, s in enumerate(shapes)]
    _same_vjp(f(transformer.attend), f(cpu_kernels.attend), args)
    _bf16_vjp_close(f(transformer.attend), f(cpu_kernels.attend), args)


@pytest.mark.parametrize("tied", [True, False])
def test_output_xent(tied):
    M, D, V = 6, 8, 11
    targets = jnp.asarray(np.random.default_rng(0).integers(0, V, M))
    w_shape = (V, D) if tied else (D, V)

    def f(fn):
        return lambda x, w: fn(x, w, targets, tied)

    with jax.enable_x64(True):
        args = [_rand(0, M, D, dtype=jnp.float64), _rand(1, *w_shape, dtype=jnp.float64)]
        _check_grads(f(cpu_kernels.output_xent), args, eps=EPS32)
    _same_vjp(
        f(transformer.output_xent), f(cpu_kernels.output_xent), [_rand(0, M, D), _rand(1, *w_shape)]
    )
    _bf16_vjp_close(
        f(transformer.output_xent), f(cpu_kernels.output_xent), [_rand(0, M, D), _rand(1, *w_shape)]
    )


def test_check_grads_catches_a_wrong_backward():
    """The harness above can fail: a kernel whose backward is off by 1% is caught."""

    @jax.custom_vjp
    def bad_gelu(x):
        return cpu_kernels.gelu(x)

    bad_gelu.defvjp(
        lambda x: jax.vjp(cpu_kernels.gelu, x), lambda vjp, g: tuple(1.01 * d for d in vjp(g))
    )
    with jax.enable_x64(True), pytest.raises(AssertionError):
        _check_grads(bad_gelu, [_rand(0, 3, 8, dtype=jnp.float64)])
    with pytest.raises(AssertionError):
        _same_vjp(transformer.gelu, bad_gelu, [_rand(0, 3, 8)])

    @jax.custom_vjp
    def bad_dense(x, w):
        return cpu_kernels.dense(x, w)

    bad_dense.defvjp(
        lambda x, w: jax.vjp(cpu_kernels.dense, x, w),
        lambda vjp, g: tuple((1.05 * d).astype(d.dtype) for d in vjp(g)),
    )
    with pytest.raises(AssertionError):
        _bf16_vjp_close(transformer.dense, bad_dense, [_rand(0, 4, 16), _rand(1, 16, 8)])


# ---------------------------------------------------------------- the seam


BASE = dict(n_layers=2, d_model=32, n_heads=4, vocab_size=61, max_seq_len=16)
GPT2 = ModelConfig(**BASE, **PRESETS["gpt2"])
LLAMA = ModelConfig(**BASE, n_kv_heads=2, **PRESETS["llama"])
ARCHS = {
    "gpt2": GPT2,  # learned positions, layernorm, gelu, biases, tied
    "gpt2_untied_nobias": dataclasses.replace(GPT2, tied_embeddings=False, bias=False),
    "llama": LLAMA,  # rope, rmsnorm, swiglu, untied, GQA
    "llama_mqa_tied": dataclasses.replace(LLAMA, n_kv_heads=1, tied_embeddings=True),
    "llama_linear_rope": dataclasses.replace(LLAMA, rope_scaling="linear", rope_scaling_factor=4.0),
    "llama3_rope": dataclasses.replace(
        LLAMA, rope_scaling="llama3", rope_scaling_factor=8.0, rope_original_max_seq_len=8
    ),
    "gpt2_remat_full": dataclasses.replace(GPT2, remat="full"),
    "llama_remat_dots": dataclasses.replace(LLAMA, remat="dots"),
    "llama_unscanned": dataclasses.replace(LLAMA, scan_layers=False),
    "gpt2_deep_scanned": dataclasses.replace(GPT2, n_layers=8),  # the loop, not unrolled
}


@functools.cache
def _params(cfg: ModelConfig):
    """transformer.init's weights for cfg, with an "rbg" key: the threefry default compiles a
    program per weight shape that takes XLA:CPU seconds each (a minute for these configs)."""
    return transformer.init(cfg, jax.random.key(0, impl="rbg"))


@functools.cache  # gpt2, llama and llama_mqa_tied in float32 are asked for twice
def _grads(cfg: ModelConfig, impl: str):
    params = _params(dataclasses.replace(cfg, compute_dtype="float32", grad_impl="autodiff"))
    cfg = dataclasses.replace(cfg, grad_impl=impl)
    batch = np.random.default_rng(1).integers(0, cfg.vocab_size, (3, 13), np.int32)
    return _jit(jax.value_and_grad(train.loss_fn), static_argnums=2)(params, batch, cfg)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_train_step_gradients_custom_vs_autodiff(arch):
    loss_c, g_c = _grads(ARCHS[arch], "custom")
    loss_a, g_a = _grads(ARCHS[arch], "autodiff")
    np.testing.assert_allclose(loss_c, loss_a, rtol=1e-6)
    for path, a in jax.tree_util.tree_leaves_with_path(g_a):
        c = g_c
        for k in path:
            c = c[k.key]
        # bk's true gradient is 0 (a key bias shifts every score of a query equally): its
        # rounding noise (~1e-11) is held to an absolute floor rather than to its own size.
        atol = max(1e-4 * float(np.abs(a).max()), 1e-8)
        np.testing.assert_allclose(c, a, rtol=1e-4, atol=atol, err_msg=str(path))


def _flat(grads) -> np.ndarray:
    return np.concatenate([np.asarray(g, np.float64).ravel() for g in jax.tree.leaves(grads)])


@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama_mqa_tied"])
def test_bf16_train_step_gradients(arch):
    """bf16 operands with float32 accumulation: the loss within 1% of float32's, the whole
    gradient within 3% (relative L2) of float32's, custom and autodiff within 2% of each
    other; params and their gradients stay float32."""
    bf16 = dataclasses.replace(ARCHS[arch], compute_dtype="bfloat16")
    loss32, g32 = _grads(ARCHS[arch], "custom")
    loss_c, g_c = _grads(bf16, "custom")
    loss_a, g_a = _grads(bf16, "autodiff")
    assert {g.dtype for g in jax.tree.leaves((g_c, g_a))} == {jnp.dtype(jnp.float32)}
    for loss in (loss_c, loss_a):
        assert abs(float(loss) / float(loss32) - 1) < 0.01
    ref = np.linalg.norm(_flat(g32))
    assert np.linalg.norm(_flat(g_c) - _flat(g32)) < 0.03 * ref
    assert np.linalg.norm(_flat(g_a) - _flat(g32)) < 0.03 * ref
    assert np.linalg.norm(_flat(g_c) - _flat(g_a)) < 0.02 * ref


def _uses_custom(cfg: ModelConfig) -> bool:
    params = jax.eval_shape(lambda: transformer.init(cfg, jax.random.key(0)))
    batch = jax.ShapeDtypeStruct((2, 9), jnp.int32)
    jaxpr = jax.make_jaxpr(train.loss_fn, static_argnums=2)(params, batch, cfg)
    return "custom_vjp_call" in str(jaxpr)


def test_grad_impl_chooses_the_kernels():
    assert transformer.grad_impl(GPT2) == "custom" and _uses_custom(GPT2)
    bf16 = dataclasses.replace(GPT2, compute_dtype="bfloat16")
    assert transformer.grad_impl(bf16) == "custom" and _uses_custom(bf16)
    for cfg in (
        dataclasses.replace(GPT2, grad_impl="autodiff"),
        dataclasses.replace(GPT2, remat="dots"),
    ):
        assert transformer.grad_impl(cfg) == "autodiff" and not _uses_custom(cfg), cfg
    forced = dataclasses.replace(GPT2, remat="full", grad_impl="custom")
    assert transformer.grad_impl(forced) == "custom" and _uses_custom(forced)


def test_grad_impl_is_a_checked_config_key():
    cfg = config.load(None, ["model.grad_impl=autodiff"])
    assert cfg.model.grad_impl == "autodiff"
    with pytest.raises(config.ConfigError, match="grad_impl"):
        config.load(None, ["model.grad_impl=fast"])


# ---------------------------------------------------------------- inspection


def _llama3_freqs(H, theta, factor, low, high, original):
    """Llama 3.1's frequency rule as its release describes it (wavelength thresholds), written
    independently of lm.model.rope's ratio form."""
    out = []
    for i in range(0, H, 2):
        f = theta ** (-i / H)
        wavelen = 2 * math.pi / f
        if wavelen < original / high:
            out.append(f)
        elif wavelen > original / low:
            out.append(f / factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return np.array(out)


def test_inspect_stages_follow_llama3_rope_scaling():
    """`lm inspect --stages` once rotated q/k unscaled; now the stages are the model's own:
    the logits are model.apply's and q is the llama3-scaled rotation computed by hand."""
    cfg = dataclasses.replace(ARCHS["llama3_rope"], rope_high_freq_factor=2.0)
    params = transformer.init(cfg, jax.random.key(3, impl="rbg"))  # (see _params)
    tokens = [5, 9, 2, 7, 7, 1, 30, 4, 11, 3]
    rec = inspection.recorded_stages(params, cfg, tokens)
    want = transformer.apply(params, jnp.asarray([tokens]), cfg)[0]
    np.testing.assert_allclose(rec["logits"], want, rtol=1e-5, atol=1e-5)

    H, T = cfg.head_dim, len(tokens)
    freq_h = _llama3_freqs(H, cfg.rope_theta, 8.0, 1.0, 2.0, 8)
    plain_h = cfg.rope_theta ** (-np.arange(0, H, 2) / H)
    assert np.abs(freq_h - plain_h).max() > 0.01  # the scaling changes some frequencies
    raw_TNH = np.einsum("TD,DNH->TNH", rec["attn_norm"][0], np.asarray(params["layers"]["wq"][0]))
    ang_Th = np.arange(T)[:, None] * freq_h
    c, s = np.cos(ang_Th)[:, None], np.sin(ang_Th)[:, None]
    x1, x2 = raw_TNH[..., : H // 2], raw_TNH[..., H // 2 :]
    want_q = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)
    np.testing.assert_allclose(rec["q"][0], want_q, rtol=1e-4, atol=1e-5)
