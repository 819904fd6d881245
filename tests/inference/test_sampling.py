"""lm.inference.sampling: logit processors against numpy, sampling statistics, KV-cache generation.

Models are tiny (2 layers, d_model 32) with init_std 0.5 so that random-init argmax varies
from token to token and a cache bug cannot hide behind a constant prediction.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from lm.config import PRESETS, ModelConfig
from lm.inference import sampling
from lm.inference.request import GREEDY, SamplingParams
from lm.model import transformer

TINY = dict(n_layers=2, d_model=32, n_heads=4, vocab_size=64, max_seq_len=64, init_std=0.5)
CONFIGS = {
    "gpt2": ModelConfig(**TINY, **PRESETS["gpt2"]),  # layernorm, learned pos, gelu, tied, bias
    "llama": ModelConfig(**TINY, **PRESETS["llama"], n_kv_heads=2),  # rmsnorm, rope, GQA
}
PROMPTS = [[5, 17, 3], [9, 1, 2, 33, 4, 60, 7], [42]]  # different lengths in one batch
N_NEW = 20


def _random_params(cfg: ModelConfig, seed: int = 0, scale: float = 1.0):
    """Random weights from the model's own specs (numpy: far quicker than tracing init).

    Norm scales and biases get noise too, so the bias and norm paths are really exercised.
    """
    rng = np.random.default_rng(seed)

    def one(spec):
        noise = scale * rng.standard_normal(spec.shape).astype(np.float32)
        base = {"normal": spec.std * noise, "ones": 1 + 0.1 * noise, "zeros": 0.1 * noise}
        return jnp.asarray(base[spec.init])

    return jax.tree.map(one, transformer.param_specs(cfg), is_leaf=transformer.is_spec)


@functools.cache
def _params(name: str):
    return _random_params(CONFIGS[name])


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def setup(request):
    return CONFIGS[request.param], _params(request.param)


# ---------------------------------------------------------------- generation


def test_greedy_cache_matches_full_forward(setup):
    cfg, params = setup
    key = jax.random.key(1)
    cached = sampling.generate(params, cfg, PROMPTS, key, N_NEW, GREEDY)
    full = sampling.generate_nocache(params, cfg, PROMPTS, key, N_NEW, GREEDY)
    assert cached == full
    assert all(len(row) == N_NEW for row in cached)
    assert len({tuple(r) for r in cached}) == len(PROMPTS)
    assert min(len(set(r)) for r in cached) > 2, "degenerate argmax: raise init_std"
    for prompt, row in zip(PROMPTS, cached, strict=True):  # padding changes nothing
        assert sampling.generate(params, cfg, [prompt], key, N_NEW, GREEDY) == [row]


def test_prefill_and_decode_step_logits_match_apply(setup):
    """The prefill (model.block) and the decode step (its own attention) against apply."""
    cfg, params = setup
    tokens_BP, lens_B, S = sampling.prepare_prompts(cfg, PROMPTS, 4, None, 0)
    B, P = tokens_BP.shape
    cache = transformer.KVCache(*(jnp.zeros((cfg.n_layers, B, S, cfg.kv_heads, cfg.head_dim)),) * 2)
    pos_BP = jnp.broadcast_to(jnp.arange(P), (B, P))
    mask_BS = jnp.arange(S)[None] < jnp.asarray(lens_B)[:, None]
    logits_BPV, cache = jax.jit(sampling.forward_cached, static_argnums=1)(
        params, cfg, tokens_BP, pos_BP, cache, mask_BS
    )
    chex.assert_shape(logits_BPV, (B, P, cfg.vocab_size))
    assert not np.asarray(cache.k_LBSKH[:, :, P:]).any()  # nothing written past the prompt
    new_B = np.asarray([7, 8, 9], np.int32)  # one more token per sequence, at position n_b
    step_BV, cache = jax.jit(sampling.decode_forward, static_argnums=1)(
        params, cfg, jnp.asarray(new_B), jnp.asarray(lens_B), cache
    )
    chex.assert_shape(step_BV, (B, cfg.vocab_size))
    tokens_BP = np.concatenate([tokens_BP, np.zeros((B, 1), np.int32)], axis=1)
    tokens_BP[np.arange(B), lens_B] = new_B
    ref_BPV = jax.jit(transformer.apply, static_argnums=2)(params, jnp.asarray(tokens_BP), cfg)
    for b, n in enumerate(lens_B):  # right padding comes after, so causally invisible
        np.testing.assert_allclose(logits_BPV[b, :n], ref_BPV[b, :n], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(step_BV[b], ref_BPV[b, n], rtol=1e-4, atol=1e-4)
    assert np.asarray(cache.k_LBSKH[:, np.arange(B), lens_B]).any()  # the step stored its keys


def test_sampled_cache_matches_full_forward_and_stream():
    cfg = CONFIGS["llama"]
    params = _params("llama")
    kw = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.01)
    key = jax.random.key(7)
    cached = sampling.generate(params, cfg, PROMPTS, key, N_NEW, kw)
    assert cached == sampling.generate(params, cfg, PROMPTS, key, N_NEW, kw)  # determinism
    assert cached == sampling.generate_nocache(params, cfg, PROMPTS, key, N_NEW, kw)
    assert cached != sampling.generate(params, cfg, PROMPTS, jax.random.key(8), N_NEW, kw)
    chunks = list(sampling.stream_generate(params, cfg, PROMPTS, key, N_NEW, kw, chunk_size=6))
    assert [len(c[0]) for c in chunks] == [1, 6, 6, 6, 1]  # first token right after prefill
    assert [sum((c[b] for c in chunks), []) for b in range(len(PROMPTS))] == cached


def test_eos_stops_each_sequence():
    cfg, params = CONFIGS["gpt2"], _params("gpt2")
    key = jax.random.key(1)
    full = sampling.generate(params, cfg, PROMPTS, key, N_NEW, GREEDY)
    eos = next(t for t in full[0] if full[0].index(t) >= 2)  # sequence 0 stops mid-way
    out = sampling.generate(params, cfg, PROMPTS, key, N_NEW, GREEDY, eos_id=eos)
    expect = [r[: r.index(eos) + 1] if eos in r else r for r in full]
    assert out == expect
    assert 3 <= len(out[0]) < N_NEW and out[0][-1] == eos
    assert max(len(r) for r in out) > len(out[0])  # the others go on past sequence 0's stop
    ref = sampling.generate_nocache(params, cfg, PROMPTS, key, N_NEW, GREEDY, eos_id=eos)
    assert ref == expect
    # Once every sequence is done the loop stops: no further chunks are produced.
    only = [PROMPTS[0]]
    chunks = list(
        sampling.stream_generate(params, cfg, only, key, N_NEW, GREEDY, eos_id=eos, chunk_size=2)
    )
    assert sum((c[0] for c in chunks), []) == expect[0]
    assert len(chunks) == 1 + -(-(len(expect[0]) - 1) // 2)


def test_cache_overflow_is_a_clear_error():
    cfg, params = CONFIGS["gpt2"], _params("gpt2")
    fits = r"the longest prompt \(60 tokens\) \+ new tokens must fit in the model's context "
    with pytest.raises(ValueError, match=fits + r"\(max_seq_len\) of 64 tokens, so at most 4") as e:
        sampling.generate(params, cfg, [[1] * 60, [2]], jax.random.key(0), 5)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^the longest prompt: 64 tokens leave no room") as e:
        sampling.generate(params, cfg, [[1] * 64], jax.random.key(0), 1)
    assert "\n" not in str(e.value)
    # The limit is inclusive: a full-length request works (learned positions up to 62).
    prompt = list(range(1, 55))
    out = sampling.generate(params, cfg, [prompt], jax.random.key(0), 10, GREEDY)
    assert len(out[0]) == 10


BAD = [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=1.0), "min_p"),
    (dict(min_p=-0.1), "min_p"),
]


@pytest.mark.parametrize("kwargs,name", BAD)
def test_bad_sampling_args(kwargs, name):
    logits_BV = jnp.zeros((2, 8))
    with pytest.raises(ValueError, match=rf"^{name}=") as e:
        sampling.sample_token(jax.random.key(0), logits_BV, **{"temperature": 1.0, **kwargs})
    assert "\n" not in str(e.value)
    cfg = CONFIGS["gpt2"]
    with pytest.raises(ValueError, match=rf"^{name}=") as e:  # checked when made: before compute
        sampling.generate({}, cfg, [[1]], jax.random.key(0), 4, SamplingParams(**kwargs))
    assert "\n" not in str(e.value)
    assert e.value.for_flag().startswith(f"--{name.replace('_', '-')} ")  # as `lm sample` says


@pytest.mark.parametrize(
    "prompts,kwargs,match",
    [
        ([[1]], dict(max_new_tokens=0), "max_new_tokens"),
        ([], dict(), "prompts"),
        ([[1], []], dict(), r"prompts\[1\] is empty"),
        ([[1, 64]], dict(), r"prompts\[0\]: token ids"),
        ([[1]], dict(eos_id=-1), "eos_id"),
        ([[1]], dict(pad_id=99), "pad_id"),
    ],
)
def test_bad_generate_args(prompts, kwargs, match):
    kwargs = {"max_new_tokens": 4, **kwargs}
    for fn in (sampling.generate, sampling.generate_nocache):
        with pytest.raises(ValueError, match=match) as e:
            fn({}, CONFIGS["gpt2"], prompts, jax.random.key(0), **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="chunk_size"):
        next(
            sampling.stream_generate({}, CONFIGS["gpt2"], [[1]], jax.random.key(0), 4, chunk_size=0)
        )


# ---------------------------------------------------------------- logit processors vs numpy


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z[np.isfinite(z)].max())
    return e / e.sum()


def _reference(z, temperature, top_k, top_p, min_p):
    """One row, float64, written from the definitions. Returns (logits, margin to a cut-off)."""
    z = np.asarray(z, np.float64) / temperature
    keep = np.ones(z.shape, bool)
    margin = np.inf  # how far the nearest threshold comparison is from flipping
    if top_k is not None:
        keep &= z >= np.sort(z)[::-1][min(top_k, z.size) - 1]
    if top_p is not None:
        probs = _softmax(np.where(keep, z, -np.inf))
        kept, mass = np.zeros_like(keep), 0.0
        for i in np.argsort(-probs, kind="stable"):  # the smallest prefix with mass >= p
            kept[i] = True
            mass += probs[i]
            margin = min(margin, abs(mass - top_p))
            if mass >= top_p:
                break
        keep &= kept
    if min_p is not None:
        probs = _softmax(np.where(keep, z, -np.inf))
        ratio = probs / probs.max()
        margin = min(margin, np.abs(ratio[keep] - min_p).min())
        keep &= ratio >= min_p
    return np.where(keep, z, -np.inf), margin


_process = jax.jit(sampling.process_logits, static_argnames="top_k")


@settings(max_examples=60, deadline=None)
@given(
    logits=hnp.arrays(
        np.float32,
        (3, 17),
        # A 0.01 grid: no values so tiny that /temperature flushes them to zero (a tie).
        elements=st.integers(-800, 800).map(lambda i: i / 100),
        unique=True,  # top-k ties would make "the k largest" ambiguous
    ),
    temperature=st.floats(0.25, 3.0),
    top_k=st.sampled_from([None, 1, 5]),  # static: each value compiles
    top_p=st.one_of(st.none(), st.floats(0.05, 1.0)),
    min_p=st.one_of(st.none(), st.floats(0.0, 0.9)),
)
def test_processors_match_numpy(logits, temperature, top_k, top_p, min_p):
    want = [_reference(row, temperature, top_k, top_p, min_p) for row in logits]
    assume(min(m for _, m in want) > 1e-4)  # float32 vs float64 may differ right at a cut-off
    got = np.asarray(_process(jnp.asarray(logits), temperature, top_k, top_p, min_p))
    want = np.stack([w for w, _ in want])
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-5, atol=1e-6)


def test_single_filters_and_edges():
    z = jnp.asarray([[3.0, 1.0, 2.0, 0.0], [0.0, 0.0, 5.0, -1.0]])
    keep = lambda a: np.isfinite(np.asarray(a))
    assert keep(sampling.filter_top_k(z, 2)).tolist() == [[1, 0, 1, 0], [1, 1, 1, 0]]  # ties
    assert keep(sampling.filter_top_k(z, 99)).all()
    assert keep(sampling.filter_top_p(z, 1e-6)).sum(-1).tolist() == [1, 1]  # top always kept
    assert keep(sampling.filter_top_p(z, 1.0)).all()
    assert keep(sampling.filter_min_p(z, 0.0)).all()
    per_row = sampling.filter_min_p(z, jnp.asarray([0.0, 0.5]))  # per-row parameters
    assert keep(per_row).tolist() == [[1, 1, 1, 1], [0, 0, 1, 0]]


def test_greedy_and_top_k_1_are_argmax():
    logits_BV = jax.random.normal(jax.random.key(3), (64, 50)) * 3
    argmax_B = np.asarray(jnp.argmax(logits_BV, -1))
    for i in range(3):
        key = jax.random.key(i)
        assert (np.asarray(sampling.sample_token(key, logits_BV, 0.0)) == argmax_B).all()
        top1 = sampling.sample_token(key, logits_BV, 1.7, top_k=1)
        assert (np.asarray(top1) == argmax_B).all()
        assert (
            np.asarray(sampling.sample_token(key, logits_BV, 1.0, top_p=1e-9)) == argmax_B
        ).all()
    t_B = jnp.where(jnp.arange(64) % 2 == 0, 0.0, 1.0)  # per-row temperature: 0 rows greedy
    mixed_B = np.asarray(jax.jit(sampling.sample_token)(jax.random.key(0), logits_BV, t_B))
    assert (mixed_B[::2] == argmax_B[::2]).all() and (mixed_B[1::2] != argmax_B[1::2]).any()


def test_sampling_is_deterministic_given_key():
    logits_BV = jnp.zeros((256, 10))
    draw = jax.jit(lambda k: sampling.sample_token(k, logits_BV, 1.0, top_k=5, top_p=0.9))
    a, b = draw(jax.random.key(0)), draw(jax.random.key(0))
    assert (np.asarray(a) == np.asarray(b)).all()
    assert (np.asarray(a) != np.asarray(draw(jax.random.key(1)))).any()
    assert len(set(np.asarray(a).tolist())) > 1  # rows of one batch draw independently


# ---------------------------------------------------------------- sampling statistics

FIXED_LOGITS_V = np.log(np.asarray([0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.04, 0.01]))


def _expected(temperature, top_k=None, top_p=None, min_p=None):
    z, _ = _reference(FIXED_LOGITS_V, temperature, top_k, top_p, min_p)
    return _softmax(z)


def _chi_square_ok(counts, probs):
    """Counts consistent with probs (p > 1e-6 under a chi-square test); zero-prob never drawn."""
    counts, probs = np.asarray(counts, np.float64), np.asarray(probs, np.float64)
    assert counts[probs == 0].sum() == 0, counts
    support = probs > 0
    n = counts.sum()
    chi2 = (((counts - n * probs) ** 2)[support] / (n * probs[support])).sum()
    assert chi2 < stats.chi2.ppf(1 - 1e-6, support.sum() - 1), (chi2, counts, n * probs)


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=1.0),
        dict(temperature=0.5),
        dict(temperature=2.0, top_k=3),
        dict(temperature=1.0, top_p=0.7),
        dict(temperature=1.5, min_p=0.2),
    ],
)
def test_frequencies_match_softmax_with_fake_model(kw):
    """In the spirit of flax's lm1b temperature_sampler test: a fake model with fixed logits."""
    fake_model = lambda tokens_B: jnp.broadcast_to(FIXED_LOGITS_V, (tokens_B.shape[0], 8))

    @jax.jit
    def run(key):  # a small decode loop: each step feeds the last token to the fake model
        def step(tok_B, t):
            tok_B = sampling.sample_token(jax.random.fold_in(key, t), fake_model(tok_B), **kw)
            return tok_B, tok_B

        return jax.lax.scan(step, jnp.zeros(100, jnp.int32), jnp.arange(40))[1]

    tokens = np.asarray(run(jax.random.key(0))).ravel()  # 4000 draws
    _chi_square_ok(np.bincount(tokens, minlength=8), _expected(**kw))


def test_generate_frequencies_with_constant_logit_model():
    """End to end through the decode loop: a real model whose weights pin the logits.

    With zero embeddings and zero residual branches the stream stays 0, the final layernorm
    returns its bias (a one-hot), and the untied unembedding row 0 holds the fixed logits.
    """
    cfg = ModelConfig(
        n_layers=1, d_model=8, n_heads=2, vocab_size=8, max_seq_len=64, norm="layernorm",
        tied_embeddings=False,
    )  # fmt: skip
    params = _random_params(cfg, scale=0.0)  # zero weights, unit norm scales
    params["final_norm"]["bias"] = jnp.eye(8)[0]
    params["unembed"] = params["unembed"].at[0].set(FIXED_LOGITS_V)
    kw = dict(temperature=1.3, top_k=6, top_p=0.9, min_p=0.1)
    prompts = [[i % 8] * (1 + i % 5) for i in range(64)]  # assorted lengths
    out = sampling.generate(params, cfg, prompts, jax.random.key(0), 48, SamplingParams(**kw))
    assert all(len(r) == 48 for r in out)
    _chi_square_ok(np.bincount(np.ravel(out), minlength=8), _expected(**kw))
