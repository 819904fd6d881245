"""IsoFLOP sets for a sweep that has none: interpolation along each size's runs.

A grid sweep trains every size at a few token counts, so no two sizes share a compute budget.
Approach 2 (Hoffmann et al. 2022 sec. 3.2) needs losses at fixed C across sizes; these are
interpolated along each size's own runs, never across sizes and never beyond the D range a
size was trained on. The same serves an isoflop sweep under a convention other than the one
its budgets were planned in.
"""

from __future__ import annotations

import math

import numpy as np


def grid_isoflops(
    N: np.ndarray, D: np.ndarray, L: np.ndarray, fpt: np.ndarray, budgets: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IsoFLOP points from a grid, by interpolation inside each size's trained D range.

    Per size (rows with equal N; fpt = FLOPs per token, C = fpt D): log L is interpolated in
    log D by monotone cubic (PCHIP: no overshoot between runs) at D = C / fpt for each budget
    C the size reaches *without extrapolating*. Budgets default to factor-~sqrt(2) steps from
    the smallest to the largest compute of any run (the ends are reached by one size only and
    drop out): a grid's D range admits ~3 sizes per budget, so coarser steps leave too few
    budgets, while finer ones only re-use the same runs.
    Returns (N, D, L, C, budgets) of the points."""
    from scipy.interpolate import PchipInterpolator

    sizes = np.unique(N)
    curves = []
    for s in sizes:
        i = np.flatnonzero(N == s)
        i = i[np.argsort(D[i])]
        d, keep = np.unique(D[i], return_index=True)
        if d.size < 2:
            continue
        f = float(np.median(fpt[i]))
        curves.append((s, f, d, PchipInterpolator(np.log(d), np.log(L[i][keep]))))
    if budgets is None:
        if not curves:
            return (np.zeros(0),) * 4 + (np.zeros(0),)
        lo = min(f * d[0] for _, f, d, _ in curves)
        hi = max(f * d[-1] for _, f, d, _ in curves)
        budgets = np.geomspace(lo, hi, max(2, round(2 * math.log2(hi / lo)) + 1))
    pts = []
    for C in budgets:
        for s, f, d, interp in curves:
            x = C / f
            if d[0] * (1 - 1e-9) <= x <= d[-1] * (1 + 1e-9):
                pts.append((s, x, math.exp(float(interp(math.log(x)))), C))
    a = np.array(pts, np.float64).reshape(-1, 4)
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3], np.asarray(budgets)
