"""Bootstrap intervals for every approach: what is resampled depends on the approach (rows,
whole runs, or residuals within the IsoFLOP design)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lm.scaling import DEFAULT_BUDGET_TOL
from lm.scaling.fit.approach1 import SMOOTH_WIDTH, smooth_curves
from lm.scaling.fit.approach2 import isoflop_budgets
from lm.scaling.fit.approach3 import (
    A3_OPTIONS,
    A3_PARAMS,
    HUBER_DELTA,
    approach3_evaluator,
    approach3_params,
    fit_approach3,
)
from lm.scaling.fit.data import FitError, Runs, as_runs
from lm.scaling.fit.dispatch import approach_key, fit_one
from lm.scaling.fit.lbfgs import batched_lbfgs
from lm.scaling.fit.result import FitResult
from lm.scaling.fit.shared import compute_budgets


def bootstrap_starts(theta_full: Any) -> np.ndarray:
    """Approach-3 bootstrap starts: the full fit's optimum plus a 32-point subset of the paper's
    grid (alpha, beta in {.5, 1.5}, e in {-.5, .5}, a, b in {5, 15}) to catch a resample whose
    optimum moved to another basin. A reduced set, stated in the output, so that 1000 resamples
    take minutes rather than 1000 full-grid fits; on 300-point Chinchilla-like data the warm
    start alone reached the resample's best objective (to 1e-9) in 99% of resamples."""
    g = np.meshgrid([5.0, 15.0], [5.0, 15.0], [-0.5, 0.5], [0.5, 1.5], [0.5, 1.5], indexing="ij")
    grid = np.stack([x.ravel() for x in g], axis=1)
    return np.vstack([np.asarray(theta_full, float)[None], grid])


@dataclass(frozen=True)
class Bootstrap:
    """Percentile bootstrap: `samples[name]` has one value per successful resample."""

    samples: dict[str, np.ndarray]
    ci95: dict[str, tuple[float, float]]
    info: dict[str, Any]


def bootstrap(
    runs: Runs | Mapping[str, Any],
    approach: str,
    n_boot: int,
    *,
    seed: int = 0,
    base: FitResult | None = None,
    lanes_per_call: int = 1 << 16,
    resample: str | None = None,
    **fit_kwargs: Any,
) -> Bootstrap:
    """Refit n_boot resamples (numpy default_rng(seed)) and report [2.5%, 97.5%] percentiles
    of every entry of `params`. What is resampled depends on the approach:

    - kaplan, 3: rows with replacement. Approach 3 refits every resample at once as weighted
      objectives (row counts as weights; the same sum) from `bootstrap_starts` around the full
      fit's optimum (`base`, fitted here if not given) instead of all 4500 starts.
    - 1: whole runs (`Runs.run` labels) with replacement, since the points of one loss curve
      share its run's luck and are not independent; each curve is smoothed once up front (the
      smoother works per run, so this equals smoothing every resample). Without labels rows are
      resampled and `info["method"]` says the intervals are too narrow for curve data.
      `resample="rows"` forces row resampling (for comparison).
    - 2: a residual bootstrap within the IsoFLOP design (`_bootstrap_approach2`): every
      resample keeps every budget's sizes.

    Resamples where the fit is impossible (e.g. approach 2 left with < 2 valid budgets) are
    counted in info["n_failed"] and left out.
    """
    a = approach_key(approach)
    r = as_runs(runs)
    if n_boot < 1:
        raise FitError(f"bootstrap needs >= 1 resample, got {n_boot}")
    if resample not in (None, "runs", "rows"):
        raise FitError(f"resample must be 'runs' or 'rows', got {resample!r}")
    if resample is not None and a != "1":
        raise FitError(f"resample= chooses approach 1's bootstrap unit, not approach {a}'s")
    rng = np.random.default_rng(seed)
    rows: list[dict[str, float]] = []
    if a == "3":
        idx = rng.integers(0, len(r), size=(n_boot, len(r)))
        base = base if base is not None else fit_approach3(r, **fit_kwargs)
        theta0 = [base.details["theta"][k] for k in A3_PARAMS]
        starts = bootstrap_starts(theta0)
        method = (
            f"approach 3 refit from the full fit's optimum + {len(starts) - 1} coarse "
            f"grid starts (not the full 4500-start grid)"
        )
        kw = {k: v for k, v in fit_kwargs.items() if k != "starts"}
        rows = _bootstrap_approach3(r, idx, starts, lanes_per_call, **kw)
    elif a == "2":
        rows, method = _bootstrap_approach2(r, n_boot, rng, **fit_kwargs)
    elif a == "1":
        rows, method = _bootstrap_approach1(r, n_boot, rng, resample, **fit_kwargs)
    else:
        method = "rows resampled with replacement, refit on each resample"
        idx = rng.integers(0, len(r), size=(n_boot, len(r)))
        rows = [_try_params(r.take(idx[k]), a, fit_kwargs) for k in range(n_boot)]
    ok = [row for row in rows if row]
    names = list(ok[0]) if ok else []
    samples = {n: np.array([row[n] for row in ok], dtype=np.float64) for n in names}
    ci95 = {}
    for n, v in samples.items():
        v = v[np.isfinite(v)]
        ci95[n] = (
            (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
            if v.size
            else (math.nan, math.nan)
        )
    info = {
        "n_boot": n_boot,
        "n_ok": len(ok),
        "n_failed": n_boot - len(ok),
        "seed": seed,
        "method": method,
        "interval": "percentile [2.5%, 97.5%]",
    }
    return Bootstrap(samples, ci95, info)


def _bootstrap_approach1(
    r: Runs, n_boot: int, rng: np.random.Generator, resample: str | None, **fit_kwargs: Any
) -> tuple[list[dict[str, float]], str]:
    width = fit_kwargs.get("smooth_width", SMOOTH_WIDTH)
    smoothed = r.with_loss(smooth_curves(r, width))
    kw = {**fit_kwargs, "smooth_width": 0.0}
    by = resample or ("runs" if r.run is not None else "rows")
    if by == "runs" and r.run is None:
        raise FitError("approach 1 bootstrap by run needs run labels (Runs.run), got none")
    if by == "rows":
        idx = rng.integers(0, len(r), size=(n_boot, len(r)))
        rows = [_try_params(smoothed.take(idx[k]), "1", kw) for k in range(n_boot)]
        method = (
            "rows resampled as if independent: no run labels, so each row is its own run "
            "(points of one training curve are correlated; these intervals are too narrow)"
            if r.run is None
            else "rows resampled (resample='rows'), curves smoothed per run first"
        )
        return rows, method
    ids = r.run_ids()
    n_runs = int(ids.max()) + 1
    order = np.argsort(ids, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(ids, minlength=n_runs))[:-1])
    rows = []
    for _ in range(n_boot):
        pick = rng.integers(0, n_runs, size=n_runs)
        idx = np.concatenate([members[k] for k in pick])
        rows.append(_try_params(smoothed.take(idx), "1", kw))
    method = f"whole runs resampled with replacement ({n_runs} runs), curves smoothed first"
    return rows, method


def _bootstrap_approach3(
    r: Runs,
    idx: np.ndarray,
    starts: np.ndarray,
    lanes_per_call: int,
    *,
    delta: float = HUBER_DELTA,
    **lbfgs_options: Any,
) -> list[dict[str, float]]:
    n_boot, n = idx.shape
    W = np.zeros((n_boot, n))
    for k in range(n_boot):
        W[k] = np.bincount(idx[k], minlength=n)
    opts = {**A3_OPTIONS, **lbfgs_options}
    s = starts.shape[0]
    per = max(1, lanes_per_call // s)
    rows = []
    for k0 in range(0, n_boot, per):
        k1 = min(n_boot, k0 + per)
        # The weight table always has `per` rows (zeros past k1) so every chunk shares shapes.
        table = np.zeros((per, n))
        table[: k1 - k0] = W[k0:k1]
        vg = approach3_evaluator(np.log(r.N), np.log(r.D), np.log(r.L), table, delta)
        lane_rep = np.repeat(np.arange(k1 - k0), s).astype(np.int32)
        res = batched_lbfgs(vg, np.tile(starts, (k1 - k0, 1)), (lane_rep,), **opts)
        fun = np.where(np.isfinite(res.fun), res.fun, np.inf).reshape(k1 - k0, s)
        best = np.argmin(fun, axis=1)
        thetas = res.x.reshape(k1 - k0, s, -1)[np.arange(k1 - k0), best]
        rows.extend(approach3_params(t) for t in thetas)
    return rows


def _bootstrap_approach2(
    r: Runs, n_boot: int, rng: np.random.Generator, **fit_kwargs: Any
) -> tuple[list[dict[str, float]], str]:
    """Residual bootstrap that keeps every budget's design (each resample has the same N, D,
    C rows): every row's loss is multiplied by exp(e), e drawn with replacement from the pooled
    log residuals of the budgets' window parabolas (centred, and scaled by sqrt(n / (n - 3k))
    for the 3 coefficients each of k windows estimate). Resampling rows instead would delete
    and duplicate sizes of a profile and move its minimum for no physical reason.

    The residuals are added to the observed losses (rows outside the windows have no fitted
    value); the minima are locally linear in the losses, so the spread of the refits around the
    fit is the sampling spread (tests/scaling/test_fit_isoflop.py checks it against fits to fresh
    noise). Pooling assumes the same relative noise in every budget: a window's own few
    residual degrees of freedom are too few to estimate it alone. Model error (the parabola's
    bias over the window) is not in these intervals.
    """
    kw = {
        k: v
        for k, v in fit_kwargs.items()
        if k in ("budget_tol", "min_sizes", "window", "window_decades", "drop_edge_minima")
    }
    _, _, resid = isoflop_budgets(r, **kw)
    pool = np.concatenate(resid) if resid else np.zeros(0)
    dof = pool.size - 3 * len(resid)
    rows: list[dict[str, float]] = []
    if dof >= 1:
        pool = (pool - pool.mean()) * math.sqrt(pool.size / dof)
        method = (
            f"residual bootstrap: every row's loss x exp(e), e drawn from the {pool.size} "
            f"pooled log residuals of {len(resid)} budgets' window parabolas; every resample "
            f"keeps every budget's sizes"
        )
        for _ in range(n_boot):
            Lb = r.L * np.exp(rng.choice(pool, size=len(r)))
            rows.append(_try_params(r.with_loss(Lb), "2", fit_kwargs))
        return rows, method
    # No residual degrees of freedom (every window exactly three points): resample rows
    # within each budget, so every budget stays present.
    labels = compute_budgets(r.C, kw.get("budget_tol", DEFAULT_BUDGET_TOL))
    groups = [np.flatnonzero(labels == g) for g in range(int(labels.max()) + 1)] if len(r) else []
    method = (
        "rows resampled within each budget (the window parabolas left no residuals to "
        "estimate the noise from)"
    )
    for _ in range(n_boot):
        idx = [rng.choice(g, size=g.size) for g in groups]
        rows.append(_try_params(r.take(np.concatenate(idx)), "2", fit_kwargs) if idx else {})
    return rows, method


def _try_params(r: Runs, approach: str, fit_kwargs: Mapping[str, Any]) -> dict[str, float]:
    # A resample where the fit is impossible counts as failed ({}), not as an error.
    try:
        with np.errstate(all="ignore"):
            return fit_one(r, approach, **fit_kwargs).params
    except FitError:
        return {}
