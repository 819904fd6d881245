"""How the weights scale with width: the standard parametrization ("sp") or muP.

`model.parametrization: mup` is the Maximal Update Parametrization (Yang et al. 2022, "Tensor
Programs V", arXiv:2203.03466, Table 3 / Table 8, the Adam column), in the multiplier form of
their `mup` package, with the width multiplier m = d_model / model.mup_base_width:

  weights                                      init std      Adam LR     in the forward pass
  input (embed, pos_embed), norms, biases      as sp         as sp       -
  hidden (wq wk wv wo w_gate w_up w_down)      sp / sqrt(m)  sp / m      -
  output (unembed, or the tied embedding)      as sp         as sp       logits x 1/m
  attention scores                                                       q.k / H, not / sqrt(H)

sp's stds (model.init_std, with GPT-2's 1/sqrt(2L) on the residual outputs wo and w_down) do not
depend on width, so they are the proxy model's: at m = 1 muP is sp except for the attention
temperature. With the head width H fixed (the sweep presets add heads as they widen), 1/H is a
constant temperature, 1/sqrt(H) times sp's; it changes with width only when H grows.

Where each rule lives: the stds and the LR factors in `transformer.param_specs` (`ParamSpec.std`,
`ParamSpec.lr_scale`, applied to the whole AdamW update, weight decay included, by
`lm.training.train.make_optimizer`); the output multiplier in `transformer.output_features`, which
both the logits and the training loss take; the attention scale in `transformer.attend_heads`.
`lm.inference.numpy_runner` and `lm.interop.hf` (which folds the two multipliers into the exported
weights) read the same functions. Pure Python, no jax: each takes the model config, or the model
section of a config as a dict (a model file's), where a missing parametrization means sp.
"""

from __future__ import annotations

import math
from typing import Any


def _get(m: Any, key: str, default: Any = None) -> Any:
    return m.get(key, default) if isinstance(m, dict) else getattr(m, key)


def is_mup(m: Any) -> bool:
    return _get(m, "parametrization", "sp") == "mup"


def width_mult(m: Any) -> float:
    """muP's width multiplier d_model / mup_base_width; 1 under sp."""
    return _get(m, "d_model") / _get(m, "mup_base_width") if is_mup(m) else 1.0


def hidden_init_scale(m: Any) -> float:
    """Factor on the hidden weights' init std: 1/sqrt(m)."""
    return 1.0 if not is_mup(m) else 1 / math.sqrt(width_mult(m))


def hidden_lr_scale(m: Any) -> float:
    """Factor on the hidden weights' Adam learning rate (and so their weight decay): 1/m."""
    return 1.0 if not is_mup(m) else 1 / width_mult(m)


def output_multiplier(m: Any) -> float:
    """Factor on the logits (applied to the final norm's output): 1/m."""
    return 1.0 if not is_mup(m) else 1 / width_mult(m)


def attention_scale(m: Any, head_dim: int) -> float:
    """Factor on the attention scores q.k: 1/sqrt(H) under sp, 1/H under muP."""
    return 1 / head_dim if is_mup(m) else 1 / math.sqrt(head_dim)
