"""Rotary position embeddings (RoPE), written once for the JAX model and the numpy runner.

Numpy only (never imports jax), so `lm.inference.numpy_runner` can use it. `frequencies` turns a
model config (a dict of `lm.config.ModelConfig` fields, as the model file stores it) into the
per-pair rotation frequencies, with its `rope_scaling`; `rotate` applies them with any array module
that has numpy's names (numpy itself, or jax.numpy from `lm.model.transformer`).

Shape letters as in `lm.model.transformer`; h is a head's half width (H // 2 frequencies, one per
pair).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def frequencies(head_dim: int, m: Mapping[str, Any]) -> np.ndarray:
    """The rotation frequency of each pair of a head's dimensions: [H // 2] float32."""
    H = head_dim
    freq_h = np.float32(m["rope_theta"]) ** (-np.arange(0, H, 2, dtype=np.float32) / H)
    return scale(freq_h.astype(np.float32), m)


def scale(freq_h: np.ndarray, m: Mapping[str, Any]) -> np.ndarray:
    """The frequencies under the config's rope_scaling (see `lm.config.ModelConfig`)."""
    kind = m.get("rope_scaling", "none")
    if kind == "none":
        return freq_h
    s = np.float32(m["rope_scaling_factor"])
    if kind == "linear":  # positions squeezed by s: the same as every frequency divided by s
        return freq_h / s
    if kind != "llama3":
        raise ValueError(f"rope_scaling={kind!r}")
    lo, hi = m["rope_low_freq_factor"], m["rope_high_freq_factor"]
    # Wavelengths (in positions) short next to the original context keep their frequency, long
    # ones are slowed by s, and in between the two blend linearly in context / wavelength.
    ratio_h = m["rope_original_max_seq_len"] * freq_h / np.float32(2 * math.pi)
    mix_h = np.clip((ratio_h - lo) / np.float32(hi - lo), 0, 1).astype(np.float32)
    return ((1 - mix_h) * freq_h / s + mix_h * freq_h).astype(np.float32)


def rotate(x_TnH, pos_T, freq_h: np.ndarray, xp: Any = np):
    """Rotate the two halves of each head by position-dependent angles (the Llama convention).

    x: [..., T, n, H] (n heads of any kind), pos: [..., T]; computed in float32 and returned
    as float32. `xp` is the array module (numpy or jax.numpy)."""
    ang_Th = pos_T[..., None].astype(xp.float32) * xp.asarray(freq_h, xp.float32)
    sin_T1h, cos_T1h = xp.sin(ang_Th)[..., None, :], xp.cos(ang_Th)[..., None, :]
    x1, x2 = xp.split(x_TnH.astype(xp.float32), 2, axis=-1)
    return xp.concatenate([x1 * cos_T1h - x2 * sin_T1h, x2 * cos_T1h + x1 * sin_T1h], axis=-1)
