"""Chinchilla approach 3 (Hoffmann et al. 2022, sec. 3.3 and appendix D.2): the parametric
L(N, D) = E + A/N^alpha + B/D^beta, fitted by Huber loss on log L with L-BFGS from a grid of
starts."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm.scaling.fit.data import FitError, Runs, as_runs
from lm.scaling.fit.lbfgs import LBFGS_STATUS, batched_lbfgs
from lm.scaling.fit.result import FitResult
from lm.scaling.fit.shared import safe_exp

# Approach 3 (Hoffmann et al. 2022, appendix D.2): Huber delta for the log-space residuals.
HUBER_DELTA = 1e-3

A3_PARAMS = ("a", "b", "e", "alpha", "beta")  # A = exp(a), B = exp(b), E = exp(e)


def _huber(r, delta):
    ar = jnp.abs(r)
    return jnp.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def approach3_log_predict(theta, logN, logD):
    """log L_hat = LSE(a - alpha log N, b - beta log D, e): the paper's parameterisation, which
    keeps A, B, E positive and the fit well-conditioned across 10+ orders of magnitude.

    Evaluated as e + log(1 + exp(a - e - alpha log N) + exp(b - e - beta log D)): the same
    number (the sum is >= 1, so no underflow to log 0), but two exps and one log per point
    instead of the generic LSE's max/exp/log1p chain, which dominated the 4500-start fit's time.
    Only absurd parameters (an exponent > 709) overflow; the line search rejects such steps.
    """
    a, b, e, alpha, beta = theta[0], theta[1], theta[2], theta[3], theta[4]
    return e + jnp.log(1.0 + jnp.exp(a - e - alpha * logN) + jnp.exp(b - e - beta * logD))


def approach3_objective(theta, logN, logD, logL, weights=None, delta: float = HUBER_DELTA):
    """sum_i w_i Huber_delta(log L_hat_i - log L_i); w = 1 is the paper's objective, integer
    w are bootstrap resampling counts (a resample's objective, without copying rows)."""
    h = _huber(approach3_log_predict(theta, logN, logD) - logL, delta)
    return jnp.sum(h if weights is None else weights * h)


def approach3_value_and_grad(theta, logN, logD, logL, weights, delta: float = HUBER_DELTA):
    """`approach3_objective` and its gradient in closed form, for one start.

    Autodiff of the objective made XLA recompute the exps once per gradient component (each
    reduction fuses its own copy of the elementwise chain); writing the gradient as two
    (n,) x (n, 2) contractions of shared intermediates costs about a third of that.
    """
    a, b, e, alpha, beta = theta[0], theta[1], theta[2], theta[3], theta[4]
    t1 = jnp.exp(a - e - alpha * logN)
    t2 = jnp.exp(b - e - beta * logD)
    s = 1.0 + t1 + t2
    r = e + jnp.log(s) - logL
    ar = jnp.abs(r)
    f = jnp.sum(weights * jnp.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)))
    hp = weights * jnp.clip(r, -delta, delta)  # Huber'(r), weighted
    # d logL_hat / d(a, alpha) = (t1/s) * (1, -log N); likewise for (b, beta); d/de = 1/s.
    g1 = (hp * t1 / s) @ jnp.stack([jnp.ones_like(logN), -logN], axis=1)
    g2 = (hp * t2 / s) @ jnp.stack([jnp.ones_like(logD), -logD], axis=1)
    ge = jnp.sum(hp) - g1[0] - g2[0]
    return f, jnp.stack([g1[0], g2[0], ge, g1[1], g2[1]])


def _a3_lanes(X, rep, logN, logD, logL, table, delta):
    # Lane i uses weight row table[rep[i]]: one row for a plain fit, one per resample for the
    # bootstrap. The gather happens inside the jitted program, so the (lanes, n) weights are
    # never copied on the host.
    one = lambda x, i: approach3_value_and_grad(x, logN, logD, logL, table[i], delta)
    return jax.vmap(one)(X, rep)


_a3_lanes_jit = jax.jit(_a3_lanes)


def approach3_evaluator(logN, logD, logL, table=None, delta: float = HUBER_DELTA) -> Callable:
    """Approach 3's objective as `batched_lbfgs` evaluates it: value_and_grad(X, (rep,)), where
    lane i weighs the rows by table[rep[i]] (table None: a single row of ones, and `batched`
    may be empty)."""
    n = np.size(logN)
    table = np.ones((1, n)) if table is None else np.atleast_2d(np.asarray(table, np.float64))
    # Pad the points to a multiple of 64 with copies of point 0 at weight 0 (adds exactly 0 to
    # the objective and gradient) so data sets of similar size share compiled programs.
    pad = np.r_[np.arange(n), np.zeros(-n % 64, dtype=np.int64)]
    cols = [np.asarray(v, np.float64)[pad] for v in (logN, logD, logL)]
    table = np.where(np.arange(pad.size) < n, table[:, pad], 0.0)
    with jax.enable_x64(True):
        data = [jnp.asarray(v, jnp.float64) for v in (*cols, table)]

    def vg(X, batched_rows):
        rep = batched_rows[0] if batched_rows else np.zeros(X.shape[0], np.int32)
        with jax.enable_x64(True):  # float64 trace and arithmetic, whatever the global setting
            return _a3_lanes_jit(jnp.asarray(X), jnp.asarray(rep, jnp.int32), *data, delta)

    return vg


def chinchilla_grid() -> np.ndarray:
    """The paper's 4500 L-BFGS starts as rows of (a, b, e, alpha, beta): alpha, beta in
    {0, .5, 1, 1.5, 2}, e in {-1, -.5, 0, .5, 1}, a, b in {0, 5, ..., 25}."""
    ab = np.arange(0.0, 26.0, 5.0)
    e = np.arange(-1.0, 1.01, 0.5)
    ex = np.arange(0.0, 2.01, 0.5)
    g = np.meshgrid(ab, ab, e, ex, ex, indexing="ij")
    return np.stack([x.ravel() for x in g], axis=1)


def approach3_params(theta: Any) -> dict[str, float]:
    """The paper's constants from theta = (a, b, e, alpha, beta): E, A, B, alpha, beta, and the
    compute-optimal allocation N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b with a = beta/(alpha+beta),
    b = alpha/(alpha+beta), G = (alpha A / (beta B))^(1/(alpha+beta)) (Hoffmann et al. 2022,
    eq. 4 and appendix D.2). log_A, log_B, log_E are the fitted a, b, e themselves."""
    la, lb, le, alpha, beta = (float(v) for v in theta)
    s = alpha + beta
    # G and the exponents need alpha, beta > 0 (a degenerate fit can leave them at 0 or below).
    ok = alpha > 0 and beta > 0
    logG = (math.log(alpha) + la - math.log(beta) - lb) / s if ok else math.nan
    return {
        "E": safe_exp(le),
        "A": safe_exp(la),
        "B": safe_exp(lb),
        "alpha": alpha,
        "beta": beta,
        "a": beta / s if s != 0 else math.nan,
        "b": alpha / s if s != 0 else math.nan,
        "G": safe_exp(logG),
        "log_A": la,
        "log_B": lb,
        "log_E": le,
    }


def approach3_predict(params: Mapping[str, float], N: Any, D: Any) -> np.ndarray:
    """L(N, D) = E + A/N^alpha + B/D^beta."""
    N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
    return params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]


def approach3_compute_optimal(params: Mapping[str, float], C: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) = (G (C/6)^a, G^-1 (C/6)^b): the minimiser of L(N, D) subject to 6ND = C."""
    C = np.asarray(C, np.float64)
    return params["G"] * (C / 6) ** params["a"], (C / 6) ** params["b"] / params["G"]


APPROACH3_FORMULA = (
    "L(N,D) = E + A/N^alpha + B/D^beta; N_opt(C) = G (C/6)^a, D_opt(C) = G^-1 (C/6)^b, "
    "a = beta/(alpha+beta), b = alpha/(alpha+beta), G = (alpha A/(beta B))^(1/(alpha+beta))"
)


def approach3_rows(runs: Runs | Mapping[str, Any]) -> Runs:
    """The runs, if they can identify approach 3's five parameters (FitError otherwise): every
    approach-3 fitter checks its input here."""
    r = as_runs(runs)
    if len(r) < 5:
        raise FitError(f"approach 3 fits 5 parameters and needs >= 5 rows, got {len(r)}")
    for col, v in (("N", r.N), ("D", r.D)):
        if np.unique(v).size < 2:
            raise FitError(f"approach 3 needs >= 2 distinct values of {col}, got 1")
    return r


def residual_stats(resid: np.ndarray) -> dict[str, float]:
    """How well a fit matches, from its log residuals log L_hat - log L."""
    return {
        "rms_log_residual": float(np.sqrt(np.mean(resid**2))),
        "max_abs_log_residual": float(np.max(np.abs(resid))),
        "mean_abs_rel_error": float(np.mean(np.abs(np.expm1(resid)))),
    }


# Tolerances for approach 3's L-BFGS; see `batched_lbfgs` for why ftol is relative to |f|.
A3_OPTIONS = {"max_iter": 1000, "gtol": 1e-10, "ftol": 1e-12}


def fit_approach3(
    runs: Runs | Mapping[str, Any],
    *,
    starts: Any = None,
    delta: float = HUBER_DELTA,
    **lbfgs_options: Any,
) -> FitResult:
    """Hoffmann et al. 2022 approach 3 exactly as their appendix D.2: minimise
    sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i), delta = 1e-3,
    with L-BFGS from every point of `chinchilla_grid()` (4500 starts, or `starts`), keeping
    the best objective. Besiroglu et al. 2024 (arXiv:2404.10102) showed the paper's own
    estimates were not this optimum; the stats report how many starts reached the best value
    (within 1e-9 relative), a check that the optimum is not a lucky lane.

    Keys E, A, B, alpha, beta, a, b, G (see `approach3_params`) plus log_A, log_B, log_E.
    """
    r = approach3_rows(runs)
    starts = chinchilla_grid() if starts is None else np.atleast_2d(np.asarray(starts, float))
    opts = {**A3_OPTIONS, **lbfgs_options}
    logN, logD, logL = np.log(r.N), np.log(r.D), np.log(r.L)
    res = batched_lbfgs(approach3_evaluator(logN, logD, logL, None, delta), starts, **opts)
    i = res.best
    theta = res.x[i]
    params = approach3_params(theta)
    with jax.enable_x64(True):
        log_pred = np.asarray(approach3_log_predict(jnp.asarray(theta), logN, logD))
    resid = log_pred - logL
    f = res.fun
    stats = {
        "objective": float(f[i]),
        "huber_delta": delta,
        "n_starts": int(starts.shape[0]),
        "n_starts_at_best": int(np.sum(f <= f[i] + 1e-9 * abs(f[i]))),
        "best_start": dict(zip(A3_PARAMS, starts[i].tolist(), strict=True)),
        "best_status": LBFGS_STATUS[int(res.status[i])],
        "best_n_iter": int(res.n_iter[i]),
        "best_grad_max": float(res.grad_max[i]),
        "status_counts": {
            LBFGS_STATUS[int(s)]: int(c)
            for s, c in zip(*np.unique(res.status, return_counts=True), strict=True)
        },
        "total_evaluations": int(res.n_fev.sum()),
        **residual_stats(resid),
    }
    return FitResult(
        "3",
        APPROACH3_FORMULA,
        len(r),
        params,
        stats,
        {"theta": dict(zip(A3_PARAMS, theta.tolist(), strict=True))},
    )
