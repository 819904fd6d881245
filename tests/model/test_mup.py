"""model.parametrization=mup (lm/model/parametrization.py): the init stds, the optimizer's
per-weight learning rates and the output and attention multipliers, each against its formula;
at the base width muP is sp but for the attention temperature. (The coordinate check, which
shows the whole working, is tests/training/test_coord_check.py.)"""

import dataclasses
import math

import jax
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from lm import config
from lm.config import PRESETS, Config, ModelConfig, TrainConfig
from lm.model import parametrization as mup
from lm.model import transformer
from lm.training import train

HIDDEN = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"}
RESIDUAL_OUT = {"wo", "w_down"}  # GPT-2's 1/sqrt(2L) on top
# H = 16: sqrt(H) = 4, so sp's 1/sqrt(H) and muP's 1/H are powers of two and their ratio folds
# into wq exactly
GPT2 = ModelConfig(n_layers=2, d_model=32, n_heads=2, vocab_size=50, max_seq_len=16,
                   **PRESETS["gpt2"])  # fmt: skip
LLAMA = ModelConfig(n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, vocab_size=50,
                    max_seq_len=16, **PRESETS["llama"])  # fmt: skip
CONFIGS = {"gpt2": GPT2, "llama": LLAMA}


_init = transformer.init  # eager: each shape's draw compiles once, for every call here
_apply = jax.jit(transformer.apply, static_argnums=2)
_losses = jax.jit(train.token_losses, static_argnums=2)


def _mup(m: ModelConfig, d_model: int, base: int = 32) -> ModelConfig:
    return dataclasses.replace(m, d_model=d_model, parametrization="mup", mup_base_width=base)


def _flat(tree):
    return {"/".join(k): v for k, v in flatten_dict(tree).items()}


def _kind(path: str) -> str:
    return path.split("/")[-1] if path.startswith("layers/") else path


def test_multipliers_follow_the_formulas():
    m = _mup(GPT2, 128)  # m = 4
    assert mup.width_mult(m) == 4 and mup.width_mult(GPT2) == 1
    assert mup.hidden_init_scale(m) == 0.5 and mup.hidden_lr_scale(m) == 0.25
    assert mup.output_multiplier(m) == 0.25 and mup.output_multiplier(GPT2) == 1
    assert mup.attention_scale(m, 8) == 1 / 8 and mup.attention_scale(GPT2, 8) == 1 / math.sqrt(8)
    # the numpy runner's view: a model file's config dict, sp where the key is absent (old files)
    as_dict = dataclasses.asdict(m)
    assert mup.width_mult(as_dict) == 4 and mup.attention_scale(as_dict, 8) == 1 / 8
    assert mup.width_mult({"d_model": 128}) == 1 and not mup.is_mup({})


@pytest.mark.parametrize("name", CONFIGS)
def test_at_the_base_width_mup_is_sp_but_for_the_attention_temperature(name):
    sp = dataclasses.replace(CONFIGS[name], init_std=0.3)  # attention far from uniform
    m = dataclasses.replace(sp, parametrization="mup", mup_base_width=sp.d_model)
    # every weight's shape, std, learning-rate factor and decay flag; so the init and the optimizer
    assert transformer.param_specs(m) == transformer.param_specs(sp)
    p_mup, p_sp = _init(m, jax.random.key(0)), _init(sp, jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, p_mup, p_sp)
    # the forward pass: muP's q.k/H is sp's q.k/sqrt(H) with wq (and bq) divided by sqrt(H)
    H = sp.head_dim
    folded = {**p_sp, "layers": dict(p_sp["layers"])}
    for k in ("wq", "bq"):
        if k in folded["layers"]:
            folded["layers"][k] = folded["layers"][k] / math.sqrt(H)  # a power of two: exact
    tokens = jax.random.randint(jax.random.key(1), (2, 13), 0, sp.vocab_size)
    logits_mup = _apply(p_mup, tokens[:, :-1], m)
    np.testing.assert_array_equal(logits_mup, _apply(folded, tokens[:, :-1], sp))
    assert not np.allclose(logits_mup, _apply(p_sp, tokens[:, :-1], sp), atol=1e-2)
    # and the training loss, through the fused output layer, takes the same path
    np.testing.assert_array_equal(_losses(p_mup, tokens, m), _losses(folded, tokens, sp))


@pytest.mark.parametrize("name", CONFIGS)
def test_init_stds_scale_as_one_over_sqrt_m(name):
    base_cfg = CONFIGS[name]
    L, std = base_cfg.n_layers, base_cfg.init_std
    for d in (64, 256):
        cfg = _mup(base_cfg, d)
        params = _flat(_init(cfg, jax.random.key(0)))
        sp = _flat(_init(dataclasses.replace(base_cfg, d_model=d), jax.random.key(0)))
        m = d / 32
        for path, a in params.items():
            a, kind = np.asarray(a), _kind(path)
            if kind in HIDDEN:
                want = std / math.sqrt(m) / (math.sqrt(2 * L) if kind in RESIDUAL_OUT else 1)
                # same draws as sp, scaled: the std is exactly the formula's times sp's sample
                np.testing.assert_allclose(a, np.asarray(sp[path]) / math.sqrt(m), rtol=1e-6)
                assert abs(a.std() / want - 1) < 0.05, (path, a.std(), want)
            elif kind in ("embed", "pos_embed", "unembed"):  # input and output: as sp
                assert abs(a.std() / std - 1) < 0.05, (path, a.std())
                np.testing.assert_array_equal(a, sp[path])
            else:  # norms and biases
                np.testing.assert_array_equal(a, sp[path])


def _cfg(m: ModelConfig, clip: float = 0.0) -> Config:
    return Config(model=m, train=TrainConfig(weight_decay=0.1, clip_norm=clip))


@pytest.mark.parametrize("name", CONFIGS)
def test_optimizer_scales_hidden_updates_by_one_over_m(name):
    """One AdamW step from the same params and grads: muP's update is sp's times 1/m on the
    hidden weights, weight decay included, and sp's elsewhere; both against the closed form
    of a first Adam step, -(g / (|g| + eps) + wd * p) (bias correction cancels at step 1)."""
    sp, m = dataclasses.replace(CONFIGS[name], d_model=128), _mup(CONFIGS[name], 128)
    params = _init(sp, jax.random.key(0))
    rng = np.random.RandomState(2)
    grads = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), params)
    updates = {}
    for label, mc in (("sp", sp), ("mup", m)):
        opt = train.make_optimizer(_cfg(mc), transformer.param_specs(mc))
        step = jax.jit(lambda g, p, opt=opt: opt.update(g, opt.init(p), p)[0])
        updates[label] = _flat(jax.device_get(step(grads, params)))
    decay = _flat(train.decay_mask(_cfg(sp), transformer.param_specs(sp)))
    g, p = _flat(grads), _flat(jax.device_get(params))
    for path, u_sp in updates["sp"].items():
        wd = 0.1 if decay[path] else 0.0
        closed = -(g[path] / (np.abs(g[path]) + 1e-8) + wd * p[path])
        np.testing.assert_allclose(u_sp, closed, rtol=1e-5, atol=1e-7)
        scale = 0.25 if _kind(path) in HIDDEN else 1.0  # m = 128 / 32 = 4
        np.testing.assert_array_equal(updates["mup"][path], u_sp * scale)
    assert any(decay[k] for k in decay if _kind(k) in HIDDEN)  # so weight decay was scaled too


def test_sp_optimizer_state_has_no_extra_stage():
    """sp builds exactly the optimizer it always did (checkpoints keep their state tree)."""
    specs = transformer.param_specs(GPT2)
    params = jax.eval_shape(lambda k: transformer.init(GPT2, k), jax.random.key(0))
    for clip in (0.0, 1.0):
        cfg = _cfg(GPT2, clip)
        t = cfg.train
        adamw = optax.adamw(1.0, b1=t.beta1, b2=t.beta2, eps=t.eps, weight_decay=t.weight_decay,
                            mask=train.decay_mask(cfg, specs))  # fmt: skip
        plain = optax.chain(optax.clip_by_global_norm(clip), adamw) if clip else adamw
        ours = jax.eval_shape(train.make_optimizer(cfg, specs).init, params)
        assert jax.tree.structure(ours) == jax.tree.structure(jax.eval_shape(plain.init, params))


@pytest.mark.parametrize(
    "override, culprit",
    [
        (["model.parametrization=ntk"], "model.parametrization='ntk'"),
        (["model.mup_base_width=0"], "model.mup_base_width=0"),
        (["model.mup_base_width=-32"], "model.mup_base_width=-32"),
    ],
)
def test_bad_parametrization_values_name_the_key(override, culprit):
    with pytest.raises(config.ConfigError) as e:
        config.load(None, override)
    assert culprit in str(e.value) and "\n" not in str(e.value)


def test_validate_catches_a_parametrization_set_in_code():
    cfg = Config(model=dataclasses.replace(GPT2, parametrization="MuP"))
    with pytest.raises(config.ConfigError, match=r"^model.parametrization='MuP': must be one of"):
        config.validate(cfg)
    assert config.load(None, ["model.parametrization=mup"]).model.parametrization == "mup"
