"""The compute-optimal loss against compute, L*(C) = E + K C^-g, for approaches that fit no
L(N, D) (Hoffmann et al. 2022's approaches 1 and 2, arXiv:2203.15556): their loss at a budget
beyond the sweep is read off this curve through their compute-optimal points.

The form is Henighan et al. 2020's (arXiv:2010.14701) L(C) = L_inf + (C_0/C)^alpha_C, an
irreducible loss plus a power law; with E = 0 it is Kaplan et al. 2020's (arXiv:2001.08361)
L(C_min) = (C_c/C_min)^alpha_C, eq. 1.3. Three parameters need several points and some
curvature in log L against log C to pin E down; without them the pure power law is fitted and
the result says why (`why`), since an E chosen by the noise would move the extrapolation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lm.scaling.fit.approach3 import HUBER_DELTA
from lm.scaling.fit.data import FitError

LOSS_FRONTIER_FORMULA = "L*(C) = E + K C^-g"
POWER_FRONTIER_FORMULA = "L*(C) = K C^-g (E = 0)"
# Three parameters and at least two residual degrees of freedom: through four points E + K C^-g
# bends to fit their noise, and the extrapolation follows.
MIN_POINTS_FOR_E = 5
# Starts for E, as fractions of the smallest loss; log K and g start from the least-squares
# line of log(L - E) on log C.
E_STARTS = (0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.98, 0.995)


def _huber(r: np.ndarray, d: float = HUBER_DELTA) -> float:
    a = np.abs(r)
    return float(np.sum(np.where(a <= d, 0.5 * r**2, d * (a - 0.5 * d))))


def _fit(x: np.ndarray, L: np.ndarray, e0: float, free_e: bool) -> tuple[float, float, float]:
    """(E, log K, g) minimising the Huber loss of log L's residuals, from E = e0 (held at 0
    when not `free_e`); E bounded to [0, smallest loss)."""
    from scipy.optimize import least_squares

    y = np.log(L)
    slope, logk = np.polyfit(x, np.log(L - e0), 1)
    if not free_e:
        r = least_squares(lambda q: q[0] - q[1] * x - y, [logk, -slope], loss="huber",
                          f_scale=HUBER_DELTA)  # fmt: skip
        return 0.0, float(r.x[0]), float(r.x[1])
    hi = float(L.min()) * (1 - 1e-9)
    r = least_squares(lambda q: np.log(q[0] + np.exp(q[1] - q[2] * x)) - y,
                      [min(e0, hi * (1 - 1e-6)), logk, -slope], loss="huber", f_scale=HUBER_DELTA,
                      bounds=([0.0, -np.inf, -np.inf], [hi, np.inf, np.inf]))  # fmt: skip
    return float(r.x[0]), float(r.x[1]), float(r.x[2])


def _residuals(q: tuple[float, float, float], x: np.ndarray, L: np.ndarray) -> np.ndarray:
    return np.log(q[0] + np.exp(q[1] - q[2] * x)) - np.log(L)


def fit_loss_frontier(C: Any, L: Any) -> dict[str, Any]:
    """L*(C) = E + K C^-g through (C, L) points (compute-optimal losses): Huber loss (delta
    HUBER_DELTA) on log L, Hoffmann et al. 2022's objective for approach 3 (App. D.2), so that
    one stray point (approach 1's envelope starts wherever the leftmost curve does) cannot bend
    it; from several starts, the best kept. K C^-g instead when E is not identified: fewer than
    MIN_POINTS_FOR_E points, or the fitted E at 0 (no curvature in log L against log C) or at
    the smallest loss (more curvature than the form has), or g <= 0. Returns {formula, E, K, g,
    E_identified, why, n_points, rms_log_residual, C_range}; FitError with < 2 distinct C or a
    point that is not finite and > 0."""
    C, L = np.asarray(C, np.float64).ravel(), np.asarray(L, np.float64).ravel()
    if C.size != L.size:
        raise FitError(f"L*(C): {C.size} compute values for {L.size} losses")
    bad = ~(np.isfinite(C) & np.isfinite(L) & (C > 0) & (L > 0))
    if bad.any():
        raise FitError(f"L*(C): point {int(np.flatnonzero(bad)[0])} is not finite and > 0")
    if np.unique(C).size < 2:
        raise FitError(f"L*(C) needs >= 2 distinct compute values, got {np.unique(C).size}")
    x, n, lmin = np.log(C), int(C.size), float(L.min())
    q = _fit(x, L, 0.0, free_e=False)
    why = f"{n} points: too few for three parameters" if n < MIN_POINTS_FOR_E else ""
    if not why:
        fits = [_fit(x, L, f * lmin, free_e=True) for f in E_STARTS]
        best = min(fits, key=lambda p: _huber(_residuals(p, x, L)))
        if best[0] <= 1e-6 * lmin:
            why = "the fitted E is 0: no curvature in log L against log C"
        elif best[0] >= lmin * (1 - 1e-4):
            why = "the fitted E is the smallest loss: more curvature than the form has"
        elif not best[2] > 0:
            why = f"the fitted g = {best[2]:.3g} is not > 0"
        else:
            q = best
    resid = _residuals(q, x, L)
    return {
        "formula": LOSS_FRONTIER_FORMULA if not why else POWER_FRONTIER_FORMULA,
        "E": q[0],
        "K": math.exp(q[1]),
        "g": q[2],
        "E_identified": not why,
        "why": why,
        "n_points": n,
        "rms_log_residual": float(np.sqrt(np.mean(resid**2))),
        "objective": "Huber (delta 1e-3) on log L",
        "C_range": [float(C.min()), float(C.max())],
    }


def loss_frontier(params: dict[str, Any], C: Any) -> np.ndarray:
    """L*(C) of a `fit_loss_frontier` result."""
    C = np.asarray(C, np.float64)
    return params["E"] + params["K"] * C ** -params["g"]
