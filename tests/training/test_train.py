import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.config import Config, MeshConfig, ModelConfig, TrainConfig
from lm.model import transformer
from lm.training import sharding, train

TINY = Config(
    model=ModelConfig(n_layers=2, d_model=32, n_heads=4, vocab_size=64, max_seq_len=16),
    train=TrainConfig(seq_len=16, batch_size=8, steps=100, lr=1e-2, warmup_steps=10),
)


def _layout(cfg):
    return train.layout(cfg, sharding.make_mesh(MeshConfig(), jax.devices()[:1]))


def _batches(cfg, S, seed=0):
    t = cfg.train
    rng = np.random.default_rng(seed)
    b = rng.integers(0, cfg.model.vocab_size, (S, t.grad_accum, t.batch_size // t.grad_accum))
    full = rng.integers(0, cfg.model.vocab_size, (*b.shape, t.seq_len + 1))
    return full.astype(np.int32)


def _run(cfg, batches):
    lay = _layout(cfg)
    state = train.create_state(cfg, lay)
    step = train.make_train_step(cfg, lay)
    state, m = step(state, batches)
    return state, jax.device_get(m)


# ---------------------------------------------------------------- schedules


def _lr(cfg_t, s):
    return float(train.lr_schedule(cfg_t)(s))


def test_cosine_schedule_closed_form():
    t = TrainConfig(lr=1.0, steps=110, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert _lr(t, 0) == pytest.approx(0.1)
    assert _lr(t, 9) == pytest.approx(1.0)
    for s in (10, 35, 60, 85, 110):
        frac = (s - 10) / 100
        want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
        assert _lr(t, s) == pytest.approx(want, rel=1e-5)


def test_wsd_schedule_closed_form():
    t = TrainConfig(
        lr=1.0, steps=100, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0
    )
    assert _lr(t, 5) == pytest.approx(0.6)
    for s in (10, 50, 79):
        assert _lr(t, s) == pytest.approx(1.0)
    for s in (80, 90, 99):  # 1-sqrt decay over the last 20 steps, reaching 0 at the end
        assert _lr(t, s) == pytest.approx(1 - math.sqrt((s - 80 + 1) / 20), abs=1e-6)
    # a longer run: decay starts at step 160 - int(160 * 0.25) = 120 and lasts to the end
    t2 = TrainConfig(
        lr=1.0, steps=160, warmup_steps=10, schedule="wsd", decay_fraction=0.25, min_lr_ratio=0.0
    )
    assert _lr(t2, 119) == pytest.approx(1.0)
    assert _lr(t2, 149) == pytest.approx(1 - math.sqrt(30 / 40), abs=1e-6)


def test_constant_schedule():
    t = TrainConfig(lr=0.5, steps=100, warmup_steps=4, schedule="constant")
    assert _lr(t, 1) == pytest.approx(0.25)
    assert _lr(t, 3) == _lr(t, 50) == _lr(t, 99) == pytest.approx(0.5)


# ---------------------------------------------------------------- optimizer details


def test_weight_decay_mask_excludes_norms_biases_and_embeddings():
    cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, bias=True))
    specs = transformer.param_specs(cfg.model)
    mask = train.decay_mask(cfg, specs)
    assert mask["layers"]["wq"] and mask["layers"]["w_up"]
    assert not mask["layers"]["attn_norm"]["scale"] and not mask["layers"]["bq"]
    assert not mask["final_norm"]["bias"] and not mask["embed"] and not mask["pos_embed"]
    cfg2 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, decay_embeddings=True))
    assert train.decay_mask(cfg2, specs)["embed"]


def test_decay_really_skips_masked_params():
    """With lr>0, zero gradients and strong decay, only the decayed params move."""
    cfg = dataclasses.replace(
        TINY, train=dataclasses.replace(TINY.train, weight_decay=0.5, warmup_steps=0)
    )
    lay = _layout(cfg)
    opt = lay.opt
    state = train.init_state(cfg, lay, 0)
    params = jax.tree.map(lambda a: a + 1.0, state["params"])  # nonzero norms/biases too
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
    assert moved == train.decay_mask(cfg, lay.specs)


def test_grad_accumulation_equals_one_big_batch():
    big = _batches(TINY, 1)
    cfg2 = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, grad_accum=2))
    split = big.reshape(1, 2, 4, -1)
    s1, m1 = _run(TINY, big)
    s2, m2 = _run(cfg2, split)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-4)
    chex.assert_trees_all_close(s1["params"], s2["params"], rtol=1e-4, atol=1e-6)


def test_fused_steps_equal_separate_calls():
    batches = _batches(TINY, 3)
    fused_state, fused = _run(TINY, batches)
    lay = _layout(TINY)
    state = train.create_state(TINY, lay)
    step = train.make_train_step(TINY, lay)
    losses = []
    for i in range(3):
        state, m = step(state, batches[i : i + 1])
        losses.append(float(m["loss"][0]))
    np.testing.assert_allclose(fused["loss"], losses, rtol=1e-5)
    assert int(fused_state["step"]) == int(state["step"]) == 3


def test_dynamic_call_of_n_steps_is_the_n_step_scan():
    """The loop's one program: S batches of which the first n are run, bit for bit the scan
    over those n (the rest are skipped, whatever they hold); metrics past n are zeros."""
    batches = _batches(TINY, 4)
    lay = _layout(TINY)
    scan = train.make_train_step(TINY, lay)
    dyn = train.make_train_step(TINY, lay, dynamic=True)
    for n in (4, 3, 1):
        want_state, want = scan(train.create_state(TINY, lay), batches[:n])
        padded = batches.copy()
        padded[n:] = 7  # not run: any content
        got_state, got = dyn(train.create_state(TINY, lay), padded, np.int32(n))
        chex.assert_trees_all_equal(want_state, got_state)
        for k, v in jax.device_get(got).items():
            np.testing.assert_array_equal(v[:n], np.asarray(want[k]))
            assert not v[n:].any()


def test_metrics_are_the_real_loss_and_lr():
    batches = _batches(TINY, 1)
    state0 = train.init_state(TINY, _layout(TINY), TINY.train.seed)
    want = float(train.loss_fn(state0["params"], batches[0, 0], TINY.model))
    _, m = _run(TINY, batches)
    assert m["loss"][0] == pytest.approx(want, rel=1e-5)
    assert m["lr"][0] == pytest.approx(_lr(TINY.train, 0))
    # the first loss of an untrained model is near log(V)
    assert abs(m["loss"][0] - math.log(64)) < 0.3


def test_tiny_model_overfits_one_batch():
    cfg = dataclasses.replace(
        TINY,
        model=dataclasses.replace(TINY.model, d_model=64),
        train=dataclasses.replace(TINY.train, lr=3e-3, warmup_steps=5, weight_decay=0.0),
    )
    one = _batches(cfg, 1)
    batches = np.repeat(one, 150, axis=0)
    _, m = _run(cfg, batches)
    assert m["loss"][0] > 3.5
    assert m["loss"][-1] < 0.05, m["loss"][-10:]


def test_token_losses_match_a_numpy_cross_entropy():
    cfg = TINY
    params = train.init_state(cfg, _layout(cfg), 0)["params"]
    batch = _batches(cfg, 1)[0, 0]
    logits = np.asarray(
        transformer.apply(params, jnp.asarray(batch[:, :-1]), cfg.model), np.float64
    )
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -np.take_along_axis(logp, batch[:, 1:, None], -1)[..., 0]
    got = np.asarray(train.token_losses(params, jnp.asarray(batch), cfg.model))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_schedule_numbers_are_not_compiled_in():
    """Runs differing only in length, rate or schedule share one program (a sweep's branches
    load it from the compilation cache instead of compiling again)."""
    texts = []
    for t in (
        TINY.train,
        dataclasses.replace(TINY.train, steps=37, lr=1e-3, schedule="wsd", warmup_steps=3),
    ):
        cfg = dataclasses.replace(TINY, train=t)
        lay = _layout(cfg)
        batch = jax.ShapeDtypeStruct((1, 1, 8, 17), jnp.int32)
        texts.append(train.make_train_step(cfg, lay).lower(lay.abstract, batch).as_text())
    assert texts[0] == texts[1]


def test_the_weights_specs_are_built_once_per_layout(monkeypatch):
    """The optimizer's decay mask, the state's shapes and shardings, the initial state and the
    train and eval programs all take the weights' specs from one `train.layout`."""
    built = []
    real = transformer.param_specs
    monkeypatch.setattr(transformer, "param_specs", lambda m: built.append(m) or real(m))
    lay = _layout(TINY)
    train.create_state(TINY, lay)
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # noqa: E731
    train.make_train_step(TINY, lay, dynamic=True).lower(lay.abstract, i32(2, 1, 8, 17), i32())
    train.make_eval_step(TINY, lay, batch=8)
    assert built == [TINY.model]
