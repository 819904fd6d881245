"""Compute-optimal allocation from a fitted L(N, D) when C is not 6ND.

Approach 3's closed form N_opt = G (C/6)^a (Hoffmann et al. 2022 eq. 4) assumes C = 6ND in the
fit's own N. Under a convention that counts the output layer or attention, FLOPs per token are
not 6N, so the optimum at fixed C is found numerically with the convention's real FLOPs per
token, here a power law k N^p through the sweep's sizes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lm.scaling import fit as F


def flops_law(N: np.ndarray, fpt: np.ndarray) -> tuple[float, float, float]:
    """FLOPs per token as k N^p over the sweep's sizes: (k, p, rms log residual). Exact for 6N;
    for the other conventions a power law through the sizes, used to extrapolate allocations."""
    if np.unique(N).size < 2:
        return float(fpt[0] / N[0]), 1.0, 0.0
    logk, p, rms = F.power_law_fit(N, fpt)
    return math.exp(logk), p, rms


def optimal_allocation(
    params: dict, C: Any, k: float = 6.0, p: float = 1.0, span: float = 5.0, n: int = 801
) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) minimising E + A/N^alpha + B/D^beta subject to C = k N^p D, numerically.

    With k = 6, p = 1 this is approach 3's closed form; otherwise the optimum is found on a
    log-N grid of +-span e-folds around the closed form, refined by a parabola through the best
    three points. NaN where the minimum is at the grid's edge (no interior optimum)."""
    C = np.atleast_1d(np.asarray(C, np.float64))
    with np.errstate(all="ignore"):
        guess = np.log(F.approach3_compute_optimal(params, C)[0])
        guess = np.where(np.isfinite(guess), guess, 0.5 * np.log(C / 6))
        step = 2 * span / (n - 1)
        x = guess[:, None] + np.linspace(-span, span, n)[None, :]
        N = np.exp(x)
        L = F.approach3_predict(params, N, C[:, None] / (k * N**p))
        L = np.where(np.isfinite(L), L, np.inf)
        i = np.argmin(L, axis=1)
        rows = np.arange(C.size)
        inner = (i > 0) & (i < n - 1)
        ic = np.clip(i, 1, n - 2)
        y0, y1, y2 = L[rows, ic - 1], L[rows, ic], L[rows, ic + 1]
        denom = y0 - 2 * y1 + y2
        shift = np.where(denom > 0, 0.5 * (y0 - y2) / denom, 0.0)
        xo = x[rows, ic] + np.clip(shift, -1, 1) * step
        No = np.where(inner, np.exp(xo), np.nan)
    return No, C / (k * No**p)


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y on log x over the finite positive y; NaN with < 2."""
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def ci_from_samples(samples: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Percentile [2.5%, 97.5%] of each sample's finite values (NaN, NaN when none)."""
    out = {}
    for k, v in samples.items():
        v = np.asarray(v, np.float64)
        v = v[np.isfinite(v)]
        out[k] = (
            (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
            if v.size
            else (math.nan, math.nan)
        )
    return out


def effective_allocation(
    params: dict, samples: dict | None, C: np.ndarray, k: float, p: float
) -> dict:
    """Approach 3's allocation with the convention's own FLOPs per token (k N^p), over the
    sweep's compute range: exponents a, b as slopes, and D/N at the largest budget, with
    intervals from the bootstrap's parameter samples when given."""
    Cg = np.geomspace(C.min(), C.max(), 25)

    def one(q):
        No, Do = optimal_allocation(q, Cg, k, p)
        return slope(Cg, No), slope(Cg, Do), float(Do[-1] / No[-1])

    a, b, r = one(params)
    out = {"a": a, "b": b, "tokens_per_param_at_C_max": r, "C_max": float(C.max())}
    if samples:
        n = len(next(iter(samples.values())))
        vals = np.array([one({q: samples[q][i] for q in samples}) for i in range(n)])
        out["ci95"] = ci_from_samples(
            dict(zip(("a", "b", "tokens_per_param_at_C_max"), vals.T, strict=True))
        )
    return out
