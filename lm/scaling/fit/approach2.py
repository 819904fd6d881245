"""Chinchilla approach 2 (Hoffmann et al. 2022, sec. 3.2): IsoFLOP profiles, each budget's
minimum found locally, then power laws in C."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from lm.scaling import DEFAULT_BUDGET_TOL
from lm.scaling.fit.data import FitError, Runs, as_runs
from lm.scaling.fit.result import FitResult
from lm.scaling.fit.shared import (
    ALLOCATION_FORMULA,
    SIZE_TOL,
    compute_budgets,
    group_relative,
    power_law_fit,
    safe_exp,
)

# The window a budget's parabola is fitted over: at least ISOFLOP_WINDOW model sizes each side
# of the centre, widened to every size within ISOFLOP_WINDOW_DECADES of it. The parabola is
# the second-order Taylor expansion of the IsoFLOP curve in log N at its optimum; over a wide
# or lopsided range the third-order term pulls the vertex towards the side with more (or
# further) points, and warmup-phase points (tiny D, loss near its initial value) make a global
# fit meaningless. A narrower window has less of that bias but more noise. On synthetic
# profiles with 0.3% loss noise and ladders spaced 1.26x to 2x, +-0.6 to +-0.9 decades gave the
# lowest error in a (rms 0.003-0.01); 0.75 sits between them, small enough that on a strongly
# asymmetric surface (alpha = 0.5, beta = 0.22) the noise-free bias stays < 0.01. The size
# floor keeps coarse ladders (2x) from three-point windows, which interpolate the noise with
# no residual left to judge the fit by. Czech et al. 2026 (arXiv:2603.22339) analyse these
# biases of wide and uncentred IsoFLOP grids.
ISOFLOP_WINDOW = 2
ISOFLOP_WINDOW_DECADES = 0.75
_LN10 = math.log(10.0)


def _dropped(C: float, rows: np.ndarray, n_sizes: int, reason: str, **extra: Any) -> dict:
    return {"C": C, "n_points": int(rows.size), "n_sizes": int(n_sizes), "reason": reason, **extra}


def isoflop_budgets(
    r: Runs,
    *,
    budget_tol: float = DEFAULT_BUDGET_TOL,
    min_sizes: int = 3,
    window: int = ISOFLOP_WINDOW,
    window_decades: float = ISOFLOP_WINDOW_DECADES,
    drop_edge_minima: bool = True,
) -> tuple[list[dict], list[dict], list[np.ndarray]]:
    """`isoflop_minima` plus each kept budget's window log residuals (for the bootstrap)."""
    if window < 1:
        raise FitError(f"approach 2 window must be >= 1 size each side, got {window}")
    if not window_decades >= 0:
        raise FitError(f"approach 2 window_decades must be >= 0, got {window_decades}")
    labels = compute_budgets(r.C, budget_tol)
    minima, dropped, resid_all = [], [], []
    for g in range(int(labels.max()) + 1 if len(r) else 0):
        rows = np.flatnonzero(labels == g)
        record, resid = _budget_minimum(
            r, rows, min_sizes, window, window_decades, drop_edge_minima
        )
        if resid is None:
            dropped.append(record)
        else:
            minima.append(record)
            resid_all.append(resid)
    return minima, dropped, resid_all


def _budget_minimum(
    r: Runs, rows: np.ndarray, min_sizes: int, window: int, window_decades: float, drop_edge: bool
) -> tuple[dict, np.ndarray | None]:
    """One budget's rows: its minimum and its window's log residuals, or the record of why it
    was dropped and None."""
    C = float(np.exp(np.mean(np.log(r.C[rows]))))
    logN, L = np.log(r.N[rows]), r.L[rows]
    # D at exactly the budget's C: within a budget C_i = fpt(N_i) D_i under whatever
    # convention counted C, so D_i C / C_i is the tokens size N_i gets at compute C.
    logD = np.log(r.D[rows] * C / r.C[rows])
    size = group_relative(r.N[rows], SIZE_TOL)
    n_sizes = int(size.max()) + 1
    if n_sizes < min_sizes:
        return _dropped(C, rows, n_sizes, f"fewer than {min_sizes} model sizes"), None
    count = np.bincount(size)
    xs = np.bincount(size, logN) / count
    ys = np.bincount(size, L) / count
    j = int(np.argmin(ys))
    where = {
        "N_empirical": float(np.exp(xs[j])),
        "N_range": [float(np.exp(xs[0])), float(np.exp(xs[-1]))],
    }
    if drop_edge and j in (0, n_sizes - 1):
        edge = "smallest" if j == 0 else "largest"
        why = f"empirical minimum at the {edge} sampled size"
        return _dropped(C, rows, n_sizes, why, **where), None
    xr = xs - xs[j]
    x_all = logN - xs[j]
    w = _centred_window(xr, x_all, L, size, j, window, window_decades)
    why = _no_minimum(w, xr, drop_edge)
    if why is not None:
        return _dropped(C, rows, n_sizes, why, **where), None
    lo, hi, xv = w.lo, w.hi, w.xv
    x, y = x_all[w.inwin], L[w.inwin]
    fitted = np.polyval(w.coef, x)
    resid = np.log(y / fitted) if np.all(fitted > 0) else y / fitted - 1.0
    # log D against log N over the window's sizes, read at the vertex: exact for 6ND (a
    # line), and for any other FLOPs-per-token convention as smooth as its fpt(N).
    ds = np.bincount(size, logD) / count
    d_coef = np.polyfit(xr[lo : hi + 1], ds[lo : hi + 1], min(2, hi - lo))
    minimum = {
        "C": C,
        "N_opt": float(np.exp(xs[j] + xv)),
        "D_opt": float(np.exp(np.polyval(d_coef, xv))),
        "L_opt": float(np.polyval(w.coef, xv)),
        "n_points": int(rows.size),
        "n_sizes": n_sizes,
        "n_used": int(w.inwin.sum()),
        "n_sizes_used": int(hi - lo + 1),
        "window_N": [float(np.exp(xs[lo])), float(np.exp(xs[hi]))],
        "N_empirical": float(np.exp(xs[j])),
        "L_empirical": float(ys[j]),
        "n_recentred": w.n_recentred,
        "interior": bool(xs[0] <= xs[j] + xv <= xs[-1]),
        "curvature": float(w.coef[0]),
        "rms_residual": float(np.sqrt(np.mean((y - fitted) ** 2))),
    }
    return minimum, resid


class _Window(NamedTuple):
    coef: np.ndarray  # the parabola in log N (relative to the empirical minimum), c2 first
    lo: int  # the window's smallest and largest size (indices into the budget's sizes)
    hi: int
    inwin: np.ndarray  # which of the budget's rows lie in the window
    xv: float  # the vertex, in log N relative to the empirical minimum; nan if none
    n_recentred: int


def _centred_window(
    xr: np.ndarray,
    x_all: np.ndarray,
    L: np.ndarray,
    size: np.ndarray,
    j: int,
    window: int,
    window_decades: float,
) -> _Window:
    """The parabola over the window around the empirical minimum j (sizes at `xr`, rows at
    `x_all` with losses L, in log N relative to size j). If the vertex's nearest size is
    another one (noise put the lowest loss off the optimum), the window moves there and is
    refitted, so it ends up centred on the optimum it estimates."""
    n_sizes = xr.size
    reach = window_decades * _LN10 + math.log1p(SIZE_TOL)
    center, visited, xv = j, [], math.nan
    while True:
        visited.append(center)
        near = np.flatnonzero(np.abs(xr - xr[center]) <= reach)
        lo = max(0, min(center - window, int(near[0])))
        hi = min(n_sizes - 1, max(center + window, int(near[-1])))
        inwin = (size >= lo) & (size <= hi)
        coef = np.polyfit(x_all[inwin], L[inwin], 2)
        c2, c1 = coef[0], coef[1]
        if not c2 > 0:
            break
        xv = -c1 / (2.0 * c2)
        nearest = int(np.clip(np.argmin(np.abs(xr - xv)), 1, n_sizes - 2))
        if nearest == center or nearest in visited:
            break
        center = nearest
    return _Window(coef, lo, hi, inwin, xv, len(visited) - 1)


def _no_minimum(w: _Window, xr: np.ndarray, drop_edge: bool = True) -> str | None:
    """Why the window vouches for no minimum, or None. Such a budget is dropped rather than
    clipped: a clipped vertex is a guess at the window's edge that would bias the power law.
    With drop_edge False only a parabola opening downward is refused: its vertex is kept
    wherever it lies, an extrapolation when outside the sampled sizes."""
    if not w.coef[0] > 0:
        return "no minimum near the empirical one: the window's parabola opens downward"
    if not drop_edge:
        return None
    if not xr[w.lo] <= w.xv <= xr[w.hi]:
        return (
            "no minimum near the empirical one: the window's parabola has its vertex "
            "outside the window"
        )
    k = int(np.argmin(np.abs(xr - w.xv)))
    if k in (0, xr.size - 1):
        return f"fitted minimum at the {'smallest' if k == 0 else 'largest'} sampled size"
    return None


def isoflop_minima(
    runs: Runs | Mapping[str, Any],
    *,
    budget_tol: float = DEFAULT_BUDGET_TOL,
    min_sizes: int = 3,
    window: int = ISOFLOP_WINDOW,
    window_decades: float = ISOFLOP_WINDOW_DECADES,
    drop_edge_minima: bool = True,
) -> tuple[list[dict], list[dict]]:
    """The compute-optimal point of each IsoFLOP budget (Hoffmann et al. 2022, sec. 3.2), found
    locally around the empirical minimum (as Porian et al. 2024, arXiv:2406.19146, do with
    interpolation) rather than by one parabola through every size of the budget.

    Per compute budget (`compute_budgets`; C is the group's geometric mean):
    1. The empirical minimum: the model size (rows within 1% of N) with the lowest mean loss.
       If it is the smallest or largest sampled size, the optimum lies outside the data and
       the budget is dropped ("empirical minimum at the smallest/largest sampled size").
    2. loss = c2 x^2 + c1 x + c0, x = log N, by least squares over a window around it: at
       least `window` sizes each side, widened to all sizes within `window_decades` (fewer at
       an edge of the budget; never fewer than three sizes). N_opt is the vertex, L_opt the
       loss there. If the vertex is nearest another size, the window is re-centred there and
       refitted (`n_recentred` counts the moves), so it ends up centred on its own estimate.
    3. The budget is dropped instead if that parabola opens downward or its vertex leaves the
       window (noise on a flat profile: no minimum the window can vouch for), or if the vertex
       is nearest the smallest or largest sampled size ("fitted minimum at the ... size").
       Clipping the vertex to the window would bias the power law towards the window's edge.
       `drop_edge_minima=False` turns steps 1 and 3 off but for a parabola opening downward:
       every such budget keeps its vertex, extrapolated where it lies beyond the sizes
       (Hoffmann et al.'s own recipe; lm.scaling.fit.sensitivity measures what it changes).
    4. D_opt: log D against log N over the window's sizes (a quadratic; each row's D scaled to
       the budget's exact C), read at log N_opt. C is never assumed to be 6ND, so D_opt follows
       whatever FLOPs per token counted C.

    Returns (minima, dropped): minima in increasing C, each with C, N_opt, D_opt, L_opt,
    n_points, n_sizes, n_used (rows in the window), n_sizes_used, window_N ([smallest,
    largest] N of the window), N_empirical, L_empirical, n_recentred, interior (always true
    for a kept budget), curvature (c2, loss per (ln N)^2) and rms_residual; dropped budgets
    with C, n_points, n_sizes and reason (plus N_empirical and N_range where relevant).
    """
    minima, dropped, _ = isoflop_budgets(
        as_runs(runs),
        budget_tol=budget_tol,
        min_sizes=min_sizes,
        window=window,
        window_decades=window_decades,
        drop_edge_minima=drop_edge_minima,
    )
    return minima, dropped


def fit_approach2(
    runs: Runs | Mapping[str, Any],
    *,
    budget_tol: float = DEFAULT_BUDGET_TOL,
    min_sizes: int = 3,
    window: int = ISOFLOP_WINDOW,
    window_decades: float = ISOFLOP_WINDOW_DECADES,
    drop_edge_minima: bool = True,
) -> FitResult:
    """Hoffmann et al. 2022 approach 2: the IsoFLOP minima (`isoflop_minima`), then
    N_opt = k_N C^a and D_opt = k_D C^b, each fitted on its own by least squares in log space
    (so b = 1 - a only when the data say so, as under C = 6ND). Keys a, b, k_N, k_D; details
    `budgets` (the minima used) and `dropped_budgets` (each with C and reason); stats
    n_budgets (budgets used), n_budgets_dropped, noise_rel (pooled rms of the windows' log
    residuals, an estimate of the relative loss noise), rms_log_residual of both power laws."""
    r = as_runs(runs)
    minima, dropped, resid = isoflop_budgets(
        r,
        budget_tol=budget_tol,
        min_sizes=min_sizes,
        window=window,
        window_decades=window_decades,
        drop_edge_minima=drop_edge_minima,
    )
    if len(minima) < 2:
        reasons: dict[str, int] = {}
        for d in dropped:
            reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
        why = "; ".join(f"{n} x {k}" for k, n in reasons.items())
        raise FitError(
            f"approach 2 needs >= 2 IsoFLOP budgets with >= {min_sizes} model sizes and an "
            f"interior minimum, got {len(minima)} (of {len(minima) + len(dropped)} compute "
            f"groups at {budget_tol:.0%} tolerance" + (f"; dropped: {why})" if why else ")")
        )
    C = np.array([m["C"] for m in minima])
    logkN, a, rmse_N = power_law_fit(C, [m["N_opt"] for m in minima])
    logkD, b, rmse_D = power_law_fit(C, [m["D_opt"] for m in minima])
    params = {"a": a, "b": b, "k_N": safe_exp(logkN), "k_D": safe_exp(logkD)}
    pool = np.concatenate(resid)
    dof = pool.size - 3 * len(resid)
    stats = {
        "rms_log_residual": {"N_opt": rmse_N, "D_opt": rmse_D},
        "n_budgets": len(minima),
        "n_budgets_dropped": len(dropped),
        "n_exterior_minima": sum(not m["interior"] for m in minima),
        "noise_rel": float(np.sqrt(np.sum(pool**2) / dof)) if dof > 0 else math.nan,
        "budget_tol": budget_tol,
        "window": window,
        "window_decades": window_decades,
        "drop_edge_minima": drop_edge_minima,
    }
    return FitResult(
        "2",
        ALLOCATION_FORMULA,
        len(r),
        params,
        stats,
        {"budgets": minima, "dropped_budgets": dropped},
    )
