"""Pieces every approach uses: power laws, grouping by relative tolerance, the loss envelope."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lm.scaling import DEFAULT_BUDGET_TOL
from lm.scaling.fit.data import FitError

# Rows whose N (or D) agree within 1% are the same model size (or token count): guards against
# parameter counts rounded differently in different logs, while real sizes differ by far more.
SIZE_TOL = 0.01

# The compute-optimal allocation that approaches 1 and 2 fit.
ALLOCATION_FORMULA = "N_opt = k_N C^a; D_opt = k_D C^b"

# Chinchilla approach 1 reads the envelope at 1500 log-spaced FLOP values (Hoffmann et al. 2022,
# sec. 3.1); one bin per value, the lowest-loss row in each.
ENVELOPE_BINS = 1500


def safe_exp(x: float) -> float:
    """exp(x) that never raises: inf where float64 overflows, 0 at -inf, nan for nan."""
    if not math.isfinite(x):
        return math.nan if math.isnan(x) else (math.inf if x > 0 else 0.0)
    return math.exp(x) if x < 709.0 else math.inf


def power_law_fit(x: Any, y: Any) -> tuple[float, float, float]:
    """Least squares of log y = log k + p log x. Returns (log k, p, rms log residual)."""
    lx, ly = np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64))
    if np.unique(lx).size < 2:
        raise FitError(f"a power law needs >= 2 distinct x values, got {np.unique(lx).size}")
    p, logk = np.polyfit(lx, ly, 1)
    resid = ly - (logk + p * lx)
    return float(logk), float(p), float(np.sqrt(np.mean(resid**2)))


def group_relative(values: Any, rel_tol: float) -> np.ndarray:
    """Integer labels, increasing with value: walking the sorted values, a new group starts
    whenever a value exceeds the group's first (smallest) value by more than rel_tol."""
    v = np.asarray(values, np.float64)
    labels = np.empty(v.size, dtype=np.int64)
    g, first = -1, -math.inf
    for i in np.argsort(v, kind="stable"):
        if v[i] > first * (1.0 + rel_tol):
            g, first = g + 1, v[i]
        labels[i] = g
    return labels


def compute_budgets(C: Any, rel_tol: float = DEFAULT_BUDGET_TOL) -> np.ndarray:
    """Labels of compute budgets: rows whose C agree within rel_tol (see DEFAULT_BUDGET_TOL)."""
    return group_relative(C, rel_tol)


def lower_envelope(C: Any, L: Any, n_bins: int = ENVELOPE_BINS) -> np.ndarray:
    """Row indices of the loss envelope over compute, in increasing C.

    Bins log C uniformly into n_bins and keeps the lowest-loss row per bin (Hoffmann et al.
    2022, approach 1), then keeps only rows whose loss is below every kept row at lower compute:
    with finitely many rows a bin can hold only a too-small model's late checkpoint, which is not
    compute-optimal if less compute already reached a lower loss.
    """
    C, L = np.asarray(C, np.float64), np.asarray(L, np.float64)
    logC = np.log(C)
    lo, hi = logC.min(), logC.max()
    width = (hi - lo) / n_bins if hi > lo else 1.0
    bins = np.minimum(((logC - lo) / width).astype(np.int64), n_bins - 1)
    order = np.lexsort((L, bins))  # by bin, then loss
    first = np.ones(order.size, dtype=bool)
    first[1:] = bins[order[1:]] != bins[order[:-1]]
    cand = order[first]
    cand = cand[np.argsort(C[cand], kind="stable")]
    keep, best = [], math.inf
    for i in cand:
        if L[i] < best:
            keep.append(i)
            best = L[i]
    return np.asarray(keep, dtype=np.int64)


def rel_err_stats(pred: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    """Prediction / actual - 1: mean and max of its size, its mean, and each (up to 200)."""
    rel = np.asarray(pred, np.float64) / np.asarray(actual, np.float64) - 1.0
    out: dict[str, Any] = {
        "mean_abs_rel_error": float(np.mean(np.abs(rel))),
        "max_abs_rel_error": float(np.max(np.abs(rel))),
        "mean_rel_error": float(np.mean(rel)),
    }
    if rel.size <= 200:
        out["rel_errors"] = rel.tolist()
    return out
