import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.config import PRESETS, ModelConfig
from lm.model import flops, transformer

GPT2 = ModelConfig(
    n_layers=2, d_model=32, n_heads=4, vocab_size=50, max_seq_len=16, **PRESETS["gpt2"]
)
LLAMA = ModelConfig(
    n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, vocab_size=50, max_seq_len=16,
    **PRESETS["llama"],
)  # fmt: skip
CONFIGS = {"gpt2": GPT2, "llama": LLAMA, "mqa": dataclasses.replace(LLAMA, n_kv_heads=1)}


def _params(cfg, seed=0, std=None):
    cfg = dataclasses.replace(cfg, init_std=std) if std else cfg
    return transformer.init(cfg, jax.random.key(seed))


def _tokens(cfg, B=2, T=12, seed=1):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, cfg.vocab_size)


# ---------------------------------------------------------------- a naive reference


def _naive_forward(params, tokens, cfg: ModelConfig) -> np.ndarray:
    """Loop-per-position numpy forward pass written from the math, sharing no code with
    lm.model.transformer: the independent reference for the einsum implementation."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    N, K, H = cfg.n_heads, cfg.kv_heads, cfg.head_dim

    def norm(q, x):
        if cfg.norm == "layernorm":
            x = x - x.mean()
        y = x / math.sqrt((x * x).mean() + cfg.norm_eps) * q["scale"]
        return y + q["bias"] if "bias" in q else y

    def rot(v, pos):
        half = H // 2
        out = np.empty_like(v)
        for i in range(half):
            ang = pos * cfg.rope_theta ** (-2 * i / H)
            c, s = math.cos(ang), math.sin(ang)
            out[i] = v[i] * c - v[i + half] * s
            out[i + half] = v[i + half] * c + v[i] * s
        return out

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    logits = np.zeros((B, T, cfg.vocab_size))
    for b in range(B):
        xs = [p["embed"][tokens[b, t]].copy() for t in range(T)]
        if cfg.positions == "learned":
            xs = [x + p["pos_embed"][t] for t, x in enumerate(xs)]
        for li in range(cfg.n_layers):
            lp = jax.tree.map(lambda a, li=li: a[li], p["layers"])
            hs = [norm(lp["attn_norm"], x) for x in xs]
            qs, ks, vs = [], [], []
            for t, h in enumerate(hs):
                q = np.einsum("d,dnh->nh", h, lp["wq"]) + (lp["bq"] if "bq" in lp else 0)
                k = np.einsum("d,dkh->kh", h, lp["wk"]) + (lp["bk"] if "bk" in lp else 0)
                v = np.einsum("d,dkh->kh", h, lp["wv"]) + (lp["bv"] if "bv" in lp else 0)
                if cfg.positions == "rope":
                    q = np.stack([rot(q[n], t) for n in range(N)])
                    k = np.stack([rot(k[j], t) for j in range(K)])
                qs.append(q), ks.append(k), vs.append(v)
            new = []
            for t in range(T):
                heads = np.zeros((N, H))
                for n in range(N):
                    kv = n // (N // K)
                    s = np.array([qs[t][n] @ ks[u][kv] / math.sqrt(H) for u in range(t + 1)])
                    w = np.exp(s - s.max())
                    w /= w.sum()
                    heads[n] = sum(w[u] * vs[u][kv] for u in range(t + 1))
                a = np.einsum("nh,nhd->d", heads, lp["wo"]) + (lp["bo"] if "bo" in lp else 0)
                x = xs[t] + a
                h = norm(lp["mlp_norm"], x)
                up = h @ lp["w_up"] + (lp["b_up"] if "b_up" in lp else 0)
                if cfg.mlp == "swiglu":
                    g = h @ lp["w_gate"]
                    act = g / (1 + np.exp(-g)) * up
                else:
                    act = gelu(up)
                x = x + act @ lp["w_down"] + (lp["b_down"] if "b_down" in lp else 0)
                new.append(x)
            xs = new
        for t in range(T):
            h = norm(p["final_norm"], xs[t])
            out = p["embed"] @ h if cfg.tied_embeddings else h @ p["unembed"]
            logits[b, t] = out
    return logits


@pytest.mark.parametrize("name", ["gpt2", "llama", "mqa"])
def test_forward_matches_naive_reference(name):
    cfg = dataclasses.replace(CONFIGS[name], bias=True)  # exercise every bias too
    params = _params(cfg, std=0.3)
    params = jax.tree.map(  # nonzero biases and norm params so they are really tested
        lambda a: a + 0.1 * jax.random.normal(jax.random.key(7), a.shape), params
    )
    tokens = _tokens(cfg, B=2, T=6)
    got = np.asarray(transformer.apply(params, tokens, cfg))
    want = _naive_forward(params, tokens, cfg)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_causality_via_gradients(name):
    """d logits[t] / d embedding-input[u] is zero for every u > t."""
    cfg = CONFIGS[name]
    params = _params(cfg, std=0.3)
    tokens = _tokens(cfg, B=1, T=8)
    T = tokens.shape[1]
    x0 = transformer.embed(params, tokens, jnp.arange(T)[None], cfg)

    def logits_from_x(x_BTD, t):
        layers = params["layers"]
        pos = jnp.arange(T)[None]

        def body(x, p):
            return transformer.block(p, x, pos, cfg)[0], None

        x, _ = jax.lax.scan(body, x_BTD, layers)
        return transformer.unembed(params, x, cfg)[0, t].sum()

    for t in range(T):
        g = jax.grad(logits_from_x)(x0, t)[0]  # [T, D]
        norms = np.linalg.norm(np.asarray(g), axis=-1)
        assert np.all(norms[t + 1 :] == 0), (t, norms)
        assert norms[t] > 0


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_changing_a_future_token_never_changes_past_logits(name):
    cfg = CONFIGS[name]
    params = _params(cfg, std=0.3)
    tokens = _tokens(cfg, B=1, T=10)
    base = transformer.apply(params, tokens, cfg)
    for t in range(tokens.shape[1] - 1):
        changed = tokens.at[0, t + 1].set((tokens[0, t + 1] + 1) % cfg.vocab_size)
        out = transformer.apply(params, changed, cfg)
        np.testing.assert_array_equal(np.asarray(out[0, : t + 1]), np.asarray(base[0, : t + 1]))
        assert not np.allclose(out[0, t + 1], base[0, t + 1])


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_jit_scan_and_unrolled_agree(name):
    cfg = CONFIGS[name]
    params = _params(cfg)
    tokens = _tokens(cfg)
    eager = transformer.apply(params, tokens, cfg)
    jitted = jax.jit(transformer.apply, static_argnums=2)(params, tokens, cfg)
    unrolled = transformer.apply(params, tokens, dataclasses.replace(cfg, scan_layers=False))
    remat = jax.jit(transformer.apply, static_argnums=2)(
        params, tokens, dataclasses.replace(cfg, remat="full")
    )
    for other in (jitted, unrolled, remat):
        np.testing.assert_allclose(np.asarray(other), np.asarray(eager), rtol=1e-5, atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    cfg = CONFIGS["llama"]  # 4 query heads, 2 kv heads
    params = _params(cfg, std=0.3)
    mha_cfg = dataclasses.replace(cfg, n_kv_heads=None)
    mha = jax.tree.map(lambda a: a, params)
    rep = cfg.n_heads // cfg.kv_heads
    for k in ("wk", "wv"):
        mha["layers"][k] = jnp.repeat(params["layers"][k], rep, axis=2)
    tokens = _tokens(cfg)
    np.testing.assert_allclose(
        np.asarray(transformer.apply(params, tokens, cfg)),
        np.asarray(transformer.apply(mha, tokens, mha_cfg)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_bf16_compute_is_close_to_fp32():
    cfg = CONFIGS["llama"]
    params = _params(cfg)
    tokens = _tokens(cfg)
    f32 = transformer.apply(params, tokens, cfg)
    bf16 = transformer.apply(params, tokens, dataclasses.replace(cfg, compute_dtype="bfloat16"))
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(bf16), np.asarray(f32), atol=0.1)


# ---------------------------------------------------------------- counts


def _leaf_sizes(params):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(k): int(np.prod(v.shape)) for k, v in flat}


@pytest.mark.parametrize("name", ["gpt2", "llama", "mqa"])
def test_param_counts_equal_the_real_pytree(name):
    cfg = CONFIGS[name]
    sizes = _leaf_sizes(_params(cfg))
    counts = flops.count_params(cfg)
    assert counts["total"] == sum(sizes.values())
    emb_keys = ("['embed']", "['pos_embed']", "['unembed']")
    assert counts["embedding"] == sum(v for k, v in sizes.items() if k in emb_keys)
    assert counts["non_embedding"] == counts["total"] - counts["embedding"]


def test_param_count_closed_form():
    """Kaplan's N ~= 12 L d^2 for a GPT without biases; exact with the norms added."""
    L, d = 3, 64
    cfg = ModelConfig(n_layers=L, d_model=d, n_heads=4, vocab_size=100, max_seq_len=32)
    norms = L * 2 * 2 * d + 2 * d  # two layernorms per layer (scale, bias) + final
    assert flops.count_params(cfg)["non_embedding"] == 12 * L * d * d + norms
    assert flops.count_params(cfg)["embedding"] == 100 * d + 32 * d


def test_hardware_flops_match_xla_cost_analysis():
    """Forward+backward FLOPs per token of our count vs XLA's own count of the compiled step.

    Tolerance 10%: XLA also counts the elementwise work (norms, softmax, gelu; the optimizer
    is excluded here), which the matmul-only convention leaves out. Layers are unrolled because
    cost_analysis counts a while-loop (scan) body once, not once per iteration."""
    from lm.training.train import loss_fn

    cfg = ModelConfig(
        n_layers=2, d_model=128, n_heads=4, vocab_size=256, max_seq_len=64, scan_layers=False
    )
    params = _params(cfg)
    B, T = 4, 64
    batch = jnp.zeros((B, T + 1), jnp.int32)
    compiled = (
        jax.jit(jax.value_and_grad(loss_fn), static_argnums=2).lower(params, batch, cfg).compile()
    )
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    xla = ca["flops"] / (B * T)
    ours = flops.flops_per_token(cfg, T)["hardware"]
    assert abs(xla - ours) / ours < 0.10, (xla, ours)


def test_flop_conventions_are_ordered():
    cfg = ModelConfig(n_layers=4, d_model=128, n_heads=4, vocab_size=512, max_seq_len=128)
    f = flops.flops_per_token(cfg, 128)
    n = flops.count_params(cfg)["non_embedding"]
    assert f["6N"] == 6 * n
    assert f["6N"] < f["6N_attn"] < f["hardware"]
    assert f["6N_out"] == 6 * (n + 128 * 512)
    assert f["chinchilla"] > f["6N_out"]


@pytest.mark.parametrize("tied", [True, False])
def test_6n_out_attn_counts_the_output_layer_and_causal_attention(tied):
    """Porian et al. 2024's effective count: 6(N + d V) plus the causal attention of 6N_attn,
    whether or not the output layer shares the token table."""
    L, d, H, V, T = 3, 64, 4, 100, 32
    cfg = ModelConfig(n_layers=L, d_model=d, n_heads=H, vocab_size=V, max_seq_len=T,
                      tied_embeddings=tied)  # fmt: skip
    f = flops.flops_per_token(cfg, T)
    counts = flops.count_params(cfg)
    assert "6N_out_attn" in flops.CONVENTIONS
    assert counts["non_embedding_out"] == counts["non_embedding"] + d * V
    assert f["6N_out"] == 6 * counts["non_embedding_out"]
    causal = 3 * L * 2 * d * (T + 1)  # QK^T and AV over positions 1..T, forward x 3
    assert f["6N_attn"] - f["6N"] == causal
    assert f["6N_out_attn"] == 6 * counts["non_embedding_out"] + causal
    assert f["6N_out"] < f["6N_out_attn"] < f["hardware"]
