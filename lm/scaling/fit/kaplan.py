"""Kaplan et al. 2020 (arXiv:2001.08361): L(N), L(D), L(C) and the joint L(N, D)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import optimize

from lm.scaling.fit.data import FitError, Runs, as_runs
from lm.scaling.fit.result import FitResult
from lm.scaling.fit.shared import (
    ENVELOPE_BINS,
    SIZE_TOL,
    group_relative,
    lower_envelope,
    power_law_fit,
    safe_exp,
)

KAPLAN_FORMULA = (
    "L(N) = (N_c/N)^alpha_N [lowest loss per N]; L(D) = (D_c/D)^alpha_D [largest N per D]; "
    "L(C) = (C_c/C)^alpha_C [lower envelope]; "
    "L(N,D) = [(joint_N_c/N)^(joint_alpha_N/joint_alpha_D) + joint_D_c/D]^joint_alpha_D"
)


def kaplan_joint_loss(N: Any, D: Any, N_c: float, alpha_N: float, D_c: float, alpha_D: float):
    """Kaplan et al. 2020 eq. 1.5: L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D."""
    logN, logD = np.log(np.asarray(N, np.float64)), np.log(np.asarray(D, np.float64))
    return np.exp(_kaplan_joint_log(logN, logD, math.log(N_c), math.log(D_c), alpha_N, alpha_D))


def _kaplan_joint_log(logN, logD, lNc, lDc, aN, aD):
    # In log space: log L = alpha_D * log(exp((aN/aD)(log N_c - log N)) + exp(log D_c - log D)).
    return aD * np.logaddexp((aN / aD) * (lNc - logN), lDc - logD)


def _scale_from(logk: float, alpha: float) -> float:
    # y = (x_c / x)^alpha = k x^-alpha  =>  x_c = k^(1/alpha); undefined unless alpha > 0.
    return safe_exp(logk / alpha) if alpha > 0 else math.nan


def _per_group_pick(labels: np.ndarray, key: np.ndarray) -> np.ndarray:
    """For each label, the row with the smallest key (lexsort keys: last is primary)."""
    order = np.lexsort((*key, labels)) if isinstance(key, tuple) else np.lexsort((key, labels))
    first = np.ones(order.size, dtype=bool)
    first[1:] = labels[order[1:]] != labels[order[:-1]]
    return order[first]


def fit_kaplan(
    runs: Runs | Mapping[str, Any], *, n_bins: int = ENVELOPE_BINS, size_tol: float = SIZE_TOL
) -> FitResult:
    """Kaplan et al. 2020 (arXiv:2001.08361) power laws, each fitted by least squares in log space.

    - L(N) = (N_c/N)^alpha_N (their eq. 1.1) on the lowest-loss row of each model size: the
      closest the runs come to "trained to convergence".
    - L(D) = (D_c/D)^alpha_D (eq. 1.2) on the largest model at each token count: the closest to
      "large enough not to be the bottleneck".
    - L(C) = (C_c/C)^alpha_C (eq. 1.3, their C_min) on the lower envelope of loss over compute
      (`lower_envelope`). C is in the units of the input (FLOPs), not PF-days.
    - Joint L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (eq. 1.5) on every row, by
      nonlinear least squares of log L started from the single-variable fits (and from the
      paper's constants; the better wins). Reported as joint_N_c, joint_alpha_N, joint_D_c,
      joint_alpha_D; these are the ones that describe data in neither limit.

    The single-variable laws are only meaningful where data sit in their limit (D >> for L(N),
    N >> for L(D)); on data far from both, read the joint fit.
    """
    r = as_runs(runs)
    n_sizes = np.unique(group_relative(r.N, size_tol)).size
    n_tokens = np.unique(group_relative(r.D, size_tol)).size
    if n_sizes < 2:
        raise FitError(f"kaplan needs >= 2 distinct model sizes N, got {n_sizes}")
    if n_tokens < 2:
        raise FitError(f"kaplan needs >= 2 distinct token counts D, got {n_tokens}")
    if len(r) < 4:
        raise FitError(f"kaplan's joint L(N,D) has 4 parameters and needs >= 4 rows, got {len(r)}")

    iN = _per_group_pick(group_relative(r.N, size_tol), r.L)
    logk, p, rmse_N = power_law_fit(r.N[iN], r.L[iN])
    alpha_N, N_c = -p, _scale_from(logk, -p)

    iD = _per_group_pick(group_relative(r.D, size_tol), (r.L, -r.N))  # largest N, then lowest L
    logk, p, rmse_D = power_law_fit(r.D[iD], r.L[iD])
    alpha_D, D_c = -p, _scale_from(logk, -p)

    env = lower_envelope(r.C, r.L, n_bins)
    if env.size < 2:
        raise FitError("kaplan L(C) needs a loss-vs-compute envelope of >= 2 rows, got 1")
    logk, p, rmse_C = power_law_fit(r.C[env], r.L[env])
    alpha_C, C_c = -p, _scale_from(logk, -p)

    joint, rmse_joint = _fit_kaplan_joint(r, (N_c, alpha_N, D_c, alpha_D))
    params = {
        "N_c": N_c,
        "alpha_N": alpha_N,
        "D_c": D_c,
        "alpha_D": alpha_D,
        "C_c": C_c,
        "alpha_C": alpha_C,
        **joint,
    }
    stats = {
        "rms_log_residual": {"L(N)": rmse_N, "L(D)": rmse_D, "L(C)": rmse_C, "L(N,D)": rmse_joint},
        "points_used": {
            "L(N)": int(iN.size),
            "L(D)": int(iD.size),
            "L(C)": int(env.size),
            "L(N,D)": len(r),
        },
    }
    return FitResult("kaplan", KAPLAN_FORMULA, len(r), params, stats)


def _fit_kaplan_joint(r: Runs, separate: tuple[float, float, float, float]):
    logN, logD, logL = np.log(r.N), np.log(r.D), np.log(r.L)

    def resid(p):
        return _kaplan_joint_log(logN, logD, p[0], p[1], p[2], p[3]) - logL

    inits = [(math.log(8.8e13), math.log(5.4e13), 0.076, 0.095)]  # Kaplan et al.'s table 2
    N_c, aN, D_c, aD = separate
    if all(math.isfinite(v) and v > 0 for v in separate):
        inits.insert(0, (math.log(N_c), math.log(D_c), aN, aD))
    best = None
    for x0 in inits:
        with np.errstate(all="ignore"):
            sol = optimize.least_squares(
                resid,
                x0,
                bounds=([-np.inf, -np.inf, 1e-6, 1e-6], [np.inf, np.inf, 10.0, 10.0]),
                method="trf",
                xtol=1e-12,
                ftol=1e-12,
                gtol=1e-12,
            )
        if np.isfinite(sol.cost) and (best is None or sol.cost < best.cost):
            best = sol
    if best is None:
        nan = math.nan
        return {"joint_N_c": nan, "joint_alpha_N": nan, "joint_D_c": nan, "joint_alpha_D": nan}, nan
    lNc, lDc, aN, aD = best.x
    joint = {
        "joint_N_c": safe_exp(lNc),
        "joint_alpha_N": float(aN),
        "joint_D_c": safe_exp(lDc),
        "joint_alpha_D": float(aD),
    }
    return joint, float(np.sqrt(np.mean(best.fun**2)))
