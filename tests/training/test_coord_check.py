"""The coordinate check (lm/training/coord_check.py): under model.parametrization=mup the change
a few Adam steps make to the hidden states and the logits is flat in width; under sp, with the
same learning rate, it grows with width, so the same check fails on sp.

Measured (CPU, float32; 4 steps of lr 1e-2 on one batch of 4 x 16 random tokens; GPT-2 preset:
tied embeddings, biases, LayerNorm, learned positions; 2 layers, head width 8, base width 32),
the slope of log RMS(x_4 - x_0) against log d_model over d_model 64, 128, 256, 512:

  stage       muP      sp      (at init: muP   sp)
  embed      -0.010   -0.045            +0.011  +0.011
  block0     -0.088   +1.944            +0.011  +0.687
  block1     -0.068   +1.966            +0.011  +0.829
  final_norm +0.007   +0.010            +0.000  +0.002
  logits     -0.052   +0.900            -0.204  +0.488

The muP bound |slope| < 0.2 holds with a margin of 2x; sp's hidden states grow about as d^2 (the
first steps' updates compound) and its logits about as d, 4x the bound. Over 32..256 instead,
muP's slopes are -0.14 (hidden) and -0.09 (logits): the vanishing part of the logits' change
(the random init times the hidden change, about 1/sqrt(d)) still shows at 32. The embedding and
the normalised final hidden state are flat under both (Adam moves each embedding coordinate by
about the learning rate at any width), so they are not asserted on.
"""

import numpy as np
import pytest

from lm.config import PRESETS, Config, ModelConfig, TrainConfig
from lm.training import coord_check

WIDTHS = (64, 128, 256, 512)
LR = 1e-2
STEPS = 4
CHECKED = ("block0", "block1", "logits")  # the hidden states (residual stream) and the logits
FLAT = 0.2  # muP: |slope| below this
GROWS = 0.5  # sp: slope above this


def _cfg_for(parametrization: str):
    def cfg(d: int) -> Config:
        m = ModelConfig(
            n_layers=2, d_model=d, n_heads=d // 8, vocab_size=64, max_seq_len=16,
            parametrization=parametrization, mup_base_width=32, **PRESETS["gpt2"],
        )  # fmt: skip
        t = TrainConfig(seq_len=16, lr=LR, schedule="constant", warmup_steps=0)
        return Config(model=m, train=t)

    return cfg


@pytest.fixture(scope="module")
def results():
    run = lambda p: coord_check.coord_check(_cfg_for(p), WIDTHS, steps=STEPS, batch=4)
    return {p: run(p) for p in ("mup", "sp")}


def _flat_in_width(result) -> bool:
    return all(abs(coord_check.slope(result, k)) < FLAT for k in CHECKED)


def test_mup_updates_are_flat_in_width(results):
    r = results["mup"]
    slopes = {k: coord_check.slope(r, k) for k in CHECKED}
    assert _flat_in_width(r), slopes
    # and the steps did something: every checked stage moved by a sizeable fraction
    for k in CHECKED:
        assert (r["change"][k] > 0.05).all(), (k, r["change"][k])


def test_sp_updates_grow_with_width_so_the_check_fails_on_sp(results):
    r = results["sp"]
    slopes = {k: coord_check.slope(r, k) for k in CHECKED}
    assert all(s > GROWS for s in slopes.values()), slopes
    assert not _flat_in_width(r)  # muP's assertion, run on sp's numbers, fails
    # sp's logit change over muP's doubles with every doubling of d (1.8, 3.3, 6.6, 12.7)
    gap = results["sp"]["change"]["logits"] / results["mup"]["change"]["logits"]
    assert np.all(np.diff(gap) > 0), gap


def test_init_hidden_states_are_flat_under_mup_and_grow_under_sp(results):
    """At init: muP's residual stream has the same coordinate size at every width (hidden
    std ~ 1/sqrt(fan_in)), sp's grows (a fixed std, so a pre-activation sums d terms; measured
    slopes +0.011 and +0.69..0.83)."""
    for k in ("block0", "block1"):
        assert abs(coord_check.slope(results["mup"], k, "init")) < 0.05
        assert coord_check.slope(results["sp"], k, "init") > 0.3
