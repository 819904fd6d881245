"""Chinchilla approach 1 (Hoffmann et al. 2022, sec. 3.1): the lower envelope of the training
curves over compute."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lm.scaling.fit.data import FitError, Runs, as_runs
from lm.scaling.fit.result import FitResult
from lm.scaling.fit.shared import (
    ALLOCATION_FORMULA,
    ENVELOPE_BINS,
    SIZE_TOL,
    group_relative,
    lower_envelope,
    power_law_fit,
    safe_exp,
)

# Half-width, in natural log of D, of the running-line smoother applied to each loss curve:
# neighbours within about +-20% of a point's tokens. Logged training losses are single-batch
# values with percent-level noise, and the envelope keeps the lowest row per bin, so unsmoothed
# it selects the luckiest batches (on synthetic Chinchilla curves, 150 points per run with 1%
# noise, the error in a was 0.037 rms unsmoothed and 0.009 smoothed; at 2% noise 0.059 and
# 0.029). A straight line in (log D, log L) has no boundary bias at a curve's ends, where a
# running mean would bend towards the earlier, higher losses, and little curvature bias: for
# L = E' + B/D^beta the second derivative of log L in log D is at most beta^2/4 < 0.03, a
# bias below 2e-4 in log L at this width. A learning-rate schedule's final decay bends the
# curve more, which argues against a wider window. Curves logged sparser than the width are
# left as they are.
SMOOTH_WIDTH = 0.2


def smooth_curves(runs: Runs | Mapping[str, Any], width: float = SMOOTH_WIDTH) -> np.ndarray:
    """Each run's loss curve smoothed: for every row, a least-squares line of log L against
    log D over the same run's rows with |log D - log D_row| <= width, read at the row's own D.

    A box-kernel local-linear smoother (a "running line"): with prefix sums the window sums for
    all rows cost O(n log n), so the bootstrap can afford it. Rows without run labels, or with
    width <= 0, are returned unchanged (a lone row has no curve to smooth along).
    """
    r = as_runs(runs)
    if r.run is None or width <= 0 or len(r) == 0:
        return np.array(r.L)
    ids = r.run_ids()
    z, y = np.log(r.D), np.log(r.L)
    order = np.lexsort((z, ids))
    ids_s, z_s, y_s = ids[order], z[order], y[order]
    # Centre each run's log D so the prefix sums of z^2 do not swamp a window's spread.
    means = np.bincount(ids_s, z_s) / np.bincount(ids_s)
    zc = z_s - means[ids_s]
    # One sorted key for all runs: run k's points sit at k * span + (centred log D), and span
    # exceeds the spread of centred log D plus twice the width, so no window reaches into
    # another run.
    span = float(np.ptp(zc)) + 2.0 * width + 1.0
    key = ids_s * span + zc
    lo = np.searchsorted(key, key - width, side="left")
    hi = np.searchsorted(key, key + width, side="right")

    def window_sum(v):
        c = np.concatenate([[0.0], np.cumsum(v)])
        return c[hi] - c[lo]

    s0 = (hi - lo).astype(np.float64)
    s1, s2 = window_sum(zc), window_sum(zc * zc)
    t0, t1 = window_sum(y_s), window_sum(zc * y_s)
    zbar, ybar = s1 / s0, t0 / s0
    var = s2 - s1 * zbar
    cov = t1 - s1 * ybar
    # A window of one distinct D has no slope: its rows are averaged.
    flat = var <= 1e-12 * s0
    slope = np.where(flat, 0.0, cov / np.where(flat, 1.0, var))
    out = np.empty_like(y)
    out[order] = np.exp(ybar + slope * (zc - zbar))
    return out


def _run_table(r: Runs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(run id per row, final D per run, N at that final row per run)."""
    ids = r.run_ids()
    order = np.lexsort((r.D, ids))
    last = np.ones(order.size, dtype=bool)
    last[:-1] = ids[order[1:]] != ids[order[:-1]]
    fin = order[last]  # one row per run, in run-id order
    return ids, r.D[fin], r.N[fin]


def _approach1_identifiable(r: Runs, size_tol: float) -> None:
    """Refuse designs whose envelope cannot move a: every run ending at the same D makes D_opt
    constant (b = 0, a = 1 under 6ND), and every run at the same D/N makes N_opt ~ C^(1/2)."""
    _, D_fin, N_fin = _run_table(r)
    what = f"all {D_fin.size} runs" if D_fin.size > 1 else "the only run"
    if D_fin.size == 1 or np.unique(group_relative(D_fin, size_tol)).size == 1:
        D = float(np.exp(np.mean(np.log(D_fin))))
        raise FitError(
            f"approach 1 cannot identify a: {what} end at the same D = {D:.4g} tokens; "
            f"train sizes to different token counts"
        )
    ratio = D_fin / N_fin
    if np.unique(group_relative(ratio, size_tol)).size == 1:
        raise FitError(
            f"approach 1 cannot identify a: every run has the same tokens per parameter "
            f"D/N = {float(np.exp(np.mean(np.log(ratio)))):.4g}; vary D/N across runs"
        )


def fit_approach1(
    runs: Runs | Mapping[str, Any],
    *,
    n_bins: int = ENVELOPE_BINS,
    size_tol: float = SIZE_TOL,
    smooth_width: float = SMOOTH_WIDTH,
    drop_edge_sizes: bool = True,
) -> FitResult:
    """Hoffmann et al. 2022 (arXiv:2203.15556, sec. 3.1) approach 1: the lower envelope of loss
    over all rows (training-curve checkpoints of every model) against compute, binned
    log-uniformly with the lowest-loss row per bin (`lower_envelope`); the envelope rows' N and
    D are the compute-optimal allocations, and N_opt = k_N C^a, D_opt = k_D C^b are fitted by
    least squares in log space. Keys a, b, k_N, k_D; `envelope` lists the rows used.

    With run labels (`Runs.run`) each run's curve is first smoothed (`smooth_curves`, half-width
    `smooth_width` in log D; 0 turns it off), so the envelope compares curves, not the luck of
    single batches. Envelope rows of the smallest and largest model size are left out of the
    power laws (`drop_edge_sizes`; stats envelope_points_at_edge_sizes counts them). Designs
    that cannot identify a are refused with a one-line FitError: every run ending at the same
    D, every run at the same tokens per parameter D/N (final rows; without labels every row is
    a run), or an envelope spanning < 2 model sizes.
    """
    r = as_runs(runs)
    if len(r) == 0:
        raise FitError("approach 1 needs rows, got none")
    _approach1_identifiable(r, size_tol)
    Ls = smooth_curves(r, smooth_width)
    env = lower_envelope(r.C, Ls, n_bins)
    n_env = env.size
    if drop_edge_sizes:
        # Where the smallest or largest model is on the envelope, the compute-optimal size may
        # lie beyond the sampled ones and the envelope just follows that model's curve: N stays
        # flat while C grows, dragging a down (by 0.08 on noise-free Chinchilla-like curves
        # over 2 decades of N). Approach 2 drops budgets whose minimum is at an edge likewise.
        size = group_relative(r.N, size_tol)
        env = env[(size[env] != 0) & (size[env] != size.max())]
    sizes = np.unique(group_relative(r.N[env], size_tol)).size if env.size else 0
    if sizes < 2:
        edge = " after dropping the smallest and largest sizes" if drop_edge_sizes else ""
        raise FitError(
            f"approach 1 needs the loss envelope to span >= 2 model sizes{edge}, got {sizes} "
            f"({env.size} envelope rows from {len(r)})"
        )
    logkN, a, rmse_N = power_law_fit(r.C[env], r.N[env])
    logkD, b, rmse_D = power_law_fit(r.C[env], r.D[env])
    params = {"a": a, "b": b, "k_N": safe_exp(logkN), "k_D": safe_exp(logkD)}
    smoothed = r.run is not None and smooth_width > 0
    stats = {
        "rms_log_residual": {"N_opt": rmse_N, "D_opt": rmse_D},
        "envelope_points": int(env.size),
        "envelope_sizes": int(sizes),
        "envelope_points_at_edge_sizes": int(n_env - env.size),
        "n_runs": int(r.run_ids().max()) + 1,
        "smoothing": (
            f"running line in (log D, log L) per run, half-width {smooth_width:g} in log D"
            if smoothed
            else "none (no run labels)"
            if r.run is None
            else "none (smooth_width 0)"
        ),
    }
    envelope = [
        {
            "C": float(r.C[i]),
            "N": float(r.N[i]),
            "D": float(r.D[i]),
            "loss": float(r.L[i]),
            "loss_smoothed": float(Ls[i]),
        }
        for i in env
    ]
    return FitResult("1", ALLOCATION_FORMULA, len(r), params, stats, {"envelope": envelope})
