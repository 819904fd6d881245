"""Scaling-law fitting: Kaplan et al. 2020 and the three Chinchilla approaches.

A pure library: every fitter takes plain arrays of model size N (parameters), training tokens D,
final loss L and, optionally, training compute C (FLOPs; C = 6ND when absent) and run labels,
and returns a frozen `FitResult`. Nothing here knows about this repository's training code, so
it works on anyone's runs.

References
----------
- Kaplan et al. 2020, "Scaling Laws for Neural Language Models", arXiv:2001.08361.
- Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla),
  arXiv:2203.15556: approach 1 (sec. 3.1, the envelope of training curves), approach 2
  (sec. 3.2, IsoFLOP profiles), approach 3 (sec. 3.3 and appendix D.2, the parametric fit).
- Porian et al. 2024, "Resolving Discrepancies in Compute-Optimal Scaling of Language Models",
  arXiv:2406.19146. They locate each IsoFLOP minimum by interpolating around the empirical
  minimum instead of one parabola through the whole profile, and count compute with the
  output layer's FLOPs, under which D_opt = C / (6 N_opt) is wrong.
- Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", arXiv:2404.10102. They
  refit approach 3 on the paper's own data and found the published estimates were not the
  optimum of the stated objective (the optimizer stopped early) and the intervals implausibly
  narrow. That is why approach 3 here uses tight tolerances, keeps the best of the full start
  grid, and reports bootstrap intervals.
- Czech et al. 2026, "Problems with Chinchilla Approach 2", arXiv:2603.22339: the biases of
  wide, uncentred IsoFLOP parabola fits, which the local window of approach 2 here limits.

How approaches 1 and 2 are made robust
--------------------------------------
Approach 2 (`isoflop_minima`): per budget, the empirical minimum; budgets whose minimum is at
the smallest or largest sampled size are dropped (and listed with the reason); a parabola in
log N over a window of sizes around the minimum only (re-centred on its own vertex), so the
far, lopsided ends of a profile and warmup-phase points at tiny D do not bend it; D_opt read
off the data at N_opt (never C / 6N_opt), and b fitted on its own. The bootstrap is a
residual bootstrap that keeps every budget's design.
Approach 1 (`fit_approach1`): each run's loss curve smoothed (`smooth_curves`) before the
envelope, envelope rows at the smallest and largest size left out, designs that cannot
identify a refused, and the bootstrap resamples whole runs.

Public API
----------
Data:        `Runs` (validated, read-only arrays, optional run labels), `FitError` (one-line
             message for bad input).
Fitters:     `fit_kaplan`, `fit_approach1`, `fit_approach2`, `fit_approach3`; `fit_one` dispatches
             on "kaplan" / "1" / "2" / "3"; `fit` also attaches bootstrap intervals and the
             extrapolation check. Each returns a frozen `FitResult` (`.to_json()` for output).
Uncertainty: `bootstrap` -> `Bootstrap` (percentile 95% intervals; rows, runs or residuals by
             approach), `extrapolation_check` (hold out the largest compute budget, predict
             it), `bootstrap_starts`.
Pieces:      `power_law_fit`, `group_relative`, `compute_budgets`, `lower_envelope`,
             `smooth_curves`, `isoflop_minima`, `kaplan_joint_loss`, `approach3_log_predict`,
             `approach3_objective`, `approach3_value_and_grad`, `approach3_params`,
             `approach3_predict`, `approach3_compute_optimal`, `chinchilla_grid`, and the
             optimizer `batched_lbfgs` -> `BatchedMinimum`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from lm.scaling import APPROACHES, DEFAULT_BUDGET_TOL  # noqa: F401  (re-exported)

# Approach 3 (Hoffmann et al. 2022, appendix D.2): Huber delta for the log-space residuals.
HUBER_DELTA = 1e-3


class FitError(ValueError):
    """Bad input for a fit; the message is one line naming the culprit."""


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


def _frozen_labels(a: Any) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class Runs:
    """One row per (run, checkpoint): model size N, tokens D, loss L, compute C (all > 0), and
    optionally `run`, a label per row naming the training run it comes from (rows of one run
    are points of one loss curve; approach 1 smooths each curve and its bootstrap resamples
    whole runs). `run` is None when unknown: every row is then treated as its own run."""

    N: np.ndarray
    D: np.ndarray
    L: np.ndarray
    C: np.ndarray
    run: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls, N: Any, D: Any, L: Any, C: Any | None = None, run: Any | None = None
    ) -> Runs:
        """Validate and freeze; C defaults to 6ND (Kaplan et al. 2020, sec. 2.1). `run` may hold
        any hashable labels (strings, integers)."""
        cols = {"N": N, "D": D, "loss": L}
        if C is not None:
            cols["C"] = C
        arrs = {}
        for name, v in cols.items():
            a = np.asarray(v, dtype=np.float64)
            if a.ndim != 1:
                raise FitError(f"column {name!r} must be one-dimensional, got shape {a.shape}")
            bad = np.flatnonzero(~np.isfinite(a) | (a <= 0))
            if bad.size:
                i = int(bad[0])
                raise FitError(f"column {name!r} row {i}: value {a[i]!r} must be finite and > 0")
            arrs[name] = a
        lengths = {name: a.size for name, a in arrs.items()}
        labels = None
        if run is not None:
            labels = np.asarray(run)
            if labels.ndim != 1:
                raise FitError(f"column 'run' must be one-dimensional, got shape {labels.shape}")
            lengths["run"] = labels.size
            try:
                np.unique(labels)
            except TypeError:
                raise FitError("run labels must be all strings or all numbers") from None
        if len(set(lengths.values())) != 1:
            raise FitError(f"columns have different lengths: {lengths}")
        n, d = arrs["N"], arrs["D"]
        c = arrs["C"] if "C" in arrs else 6.0 * n * d
        return cls(
            _frozen(n),
            _frozen(d),
            _frozen(arrs["loss"]),
            _frozen(c),
            None if labels is None else _frozen_labels(labels),
        )

    def __len__(self) -> int:
        return int(self.N.size)

    def take(self, idx: Any) -> Runs:
        idx = np.asarray(idx)
        return Runs(
            _frozen(self.N[idx]),
            _frozen(self.D[idx]),
            _frozen(self.L[idx]),
            _frozen(self.C[idx]),
            None if self.run is None else _frozen_labels(self.run[idx]),
        )

    def with_loss(self, L: Any) -> Runs:
        """The same rows with losses replaced (smoothed, or perturbed by a bootstrap)."""
        return dataclasses.replace(self, L=_frozen(L))

    def run_ids(self) -> np.ndarray:
        """Integer run index per row (0..n_runs-1, in order of first label); each row its own
        run when there are no labels."""
        if self.run is None:
            return np.arange(len(self))
        _, first, inv = np.unique(self.run, return_index=True, return_inverse=True)
        # np.unique sorts labels; renumber by first appearance so ids follow the input's order.
        rank = np.empty(first.size, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        return rank[inv.ravel()]


def _as_runs(runs: Runs | Mapping[str, Any]) -> Runs:
    if isinstance(runs, Runs):
        return runs
    return Runs.from_arrays(runs["N"], runs["D"], runs["L"], runs.get("C"), runs.get("run"))


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitResult:
    """A fit. `params` holds every fitted constant and exponent (the keys bootstrap reports
    intervals for); `stats` the objective and residuals; `details` approach-specific data such
    as the IsoFLOP minima; `ci95` and `extrapolation` are filled by `bootstrap` and
    `extrapolation_check` (attach with `dataclasses.replace`)."""

    approach: str
    formula: str
    n_points: int
    params: dict[str, float]
    stats: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    ci95: dict[str, tuple[float, float]] | None = None
    bootstrap: dict[str, Any] | None = None
    extrapolation: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the paper's keys at the top level, non-finite numbers as null."""
        out: dict[str, Any] = {
            "approach": self.approach,
            "formula": self.formula,
            "n_points": self.n_points,
        }
        out.update(self.params)
        out["stats"] = self.stats
        out.update(self.details)
        if self.ci95 is not None:
            out["ci95"] = {k: list(v) for k, v in self.ci95.items()}
            out["bootstrap"] = self.bootstrap
        if self.extrapolation is not None:
            out["extrapolation"] = self.extrapolation
        return jsonable(out)


def jsonable(x: Any) -> Any:
    """JSON-ready: numpy to Python, tuples to lists, non-finite numbers to null."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [jsonable(v) for v in x.tolist()]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


# --------------------------------------------------------------------------------------------
# Batched L-BFGS: thousands of independent small problems in lock-step
# --------------------------------------------------------------------------------------------
#
# Approach 3 runs L-BFGS from 4500 starts. A scipy loop spends nearly all its time in per-start
# Python overhead (>20 min for the grid). Here every start is one lane: the optimizer's
# bookkeeping (5 parameters, 10 curvature pairs per lane) is vectorised numpy over the live
# lanes, and the expensive part, the objective and its gradient over all data points, is one
# jitted JAX call for all live lanes at once. Each iteration makes exactly one evaluation per
# live lane, either a trial step or a backtrack, so lanes never wait on each other's line
# searches, and finished lanes simply drop out of the next call. (A fully jitted state machine
# was tried first; XLA took 3-5 s to compile it for every batch size, which dominated.)
#
# Per lane (Nocedal & Wright 2006, alg. 7.4/7.5): two-loop recursion over the last m pairs with
# initial Hessian s'y/y'y; backtracking line search with Armijo sufficient decrease and
# safeguarded quadratic interpolation; pairs with s'y <= 0 are skipped (no Wolfe curvature
# condition is enforced, so the update guards itself); when backtracking can no longer move x in
# float64 the lane restarts once from steepest descent before it gives up.

LBFGS_STATUS = {
    0: "running",
    1: "gradient below gtol",
    2: "relative decrease below ftol",
    3: "no further decrease possible",
    4: "max_iter reached",
    5: "non-finite objective at start",
}


@dataclass(frozen=True)
class BatchedMinimum:
    """Result of `batched_lbfgs`: one row per start."""

    x: np.ndarray  # (S, P) final points
    fun: np.ndarray  # (S,) final objective values (inf where the start was not finite)
    grad_max: np.ndarray  # (S,) max-abs of the final gradient
    n_iter: np.ndarray  # (S,) accepted steps
    n_fev: np.ndarray  # (S,) objective+gradient evaluations
    status: np.ndarray  # (S,) keys of LBFGS_STATUS

    @property
    def best(self) -> int:
        return int(np.argmin(np.where(np.isfinite(self.fun), self.fun, np.inf)))


def _two_loop(g, S, Y, rho, k):
    """H g for every lane by the two-loop recursion; S, Y (B, m, P) hold pairs oldest first and
    only the newest k[i] rows of lane i are valid."""
    m = S.shape[1]
    valid = np.arange(m)[None, :] >= (m - k)[:, None]
    q = g.copy()
    alphas = np.zeros(k.shape + (m,))
    for j in reversed(range(m)):  # newest to oldest
        a_j = np.where(valid[:, j], rho[:, j] * np.einsum("bp,bp->b", S[:, j], q), 0.0)
        q -= a_j[:, None] * Y[:, j]
        alphas[:, j] = a_j
    sy = np.einsum("bp,bp->b", S[:, -1], Y[:, -1])
    yy = np.einsum("bp,bp->b", Y[:, -1], Y[:, -1])
    gamma = np.where(k > 0, sy / np.where(k > 0, yy, 1.0), 1.0)
    r = gamma[:, None] * q
    for j in range(m):  # oldest to newest
        b_j = rho[:, j] * np.einsum("bp,bp->b", Y[:, j], r)
        r += np.where(valid[:, j], alphas[:, j] - b_j, 0.0)[:, None] * S[:, j]
    return r


def _first_step(g):
    # No curvature yet: steepest descent with a step that moves x by at most 1 per coordinate.
    return np.minimum(1.0, 1.0 / np.maximum(np.max(np.abs(g), axis=1), 1e-300))


# Batch shapes the evaluator sees. Live lanes are evaluated in pieces of 1024, and the last
# piece is padded up to 64, 256 or 1024, so a jitted evaluator compiles at most three shapes
# (XLA takes ~1 s per shape here). Pieces of 1024 lanes x a few hundred points also keep the
# elementwise temporaries in cache: measured twice as fast as one call over all 4500 lanes.
BATCH_SIZES = (1024, 256, 64)


def _pieces(n: int, sizes: tuple[int, ...] = BATCH_SIZES) -> list[tuple[int, int, int]]:
    """(start, stop, padded size) covering range(n) with pieces of at most max(sizes)."""
    big, out = max(sizes), []
    for lo in range(0, n, big):
        hi = min(n, lo + big)
        out.append((lo, hi, min(s for s in sizes if s >= hi - lo)))
    return out


def batched_lbfgs(
    value_and_grad: Callable,
    x0: Any,
    batched: Any = (),
    *,
    m: int = 10,
    max_iter: int = 1000,
    gtol: float = 1e-10,
    ftol: float = 1e-12,
    c1: float = 1e-4,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
) -> BatchedMinimum:
    """Minimise independently from every row of `x0` (S, P), in float64.

    `value_and_grad(X, batched_rows)` evaluates a batch: X (B, P) -> (f (B,), grad (B, P)),
    where `batched_rows` is the pytree `batched` (leaves with leading axis S: per-start data such
    as bootstrap replicate indices) restricted to the same rows. B is always one of
    `batch_sizes` (rows padded with copies of a live one, results discarded), so a jitted
    evaluator compiles only those shapes.

    A lane stops when max|grad| <= gtol, when an accepted step lowers f by <= ftol * |f|, when
    no step along steepest descent lowers f in float64, or after max_iter accepted steps. The
    relative ftol matters for approach 3: its objective is ~1e-3, so scipy's default test
    (decrease <= 2.2e-9 * max(|f|, 1)) is in effect a loose relative one; on a 300-point
    Chinchilla-like problem scipy's L-BFGS-B with defaults stopped 4% above the optimum it
    reaches with tight tolerances, the kind of early stop Besiroglu et al. 2024 diagnosed.
    """
    x = np.array(x0, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x0 must be (starts, params), got shape {x.shape}")
    n_starts, P = x.shape
    batched = jax.tree.map(np.asarray, batched)

    def evaluate(X, rows):
        # Dispatch every piece before reading any back: JAX computes while Python moves on.
        pieces = _pieces(X.shape[0], batch_sizes)
        outs = []
        for lo, hi, size in pieces:
            idx = np.arange(lo, lo + size).clip(max=hi - 1)  # pad by repeating the last row
            outs.append(value_and_grad(X[idx], jax.tree.map(lambda a, i=rows[idx]: a[i], batched)))
        fs, gs = [], []
        for (fo, go), (lo, hi, _) in zip(outs, pieces, strict=True):
            fs.append(np.asarray(fo, np.float64)[: hi - lo])
            gs.append(np.asarray(go, np.float64)[: hi - lo])
        return np.concatenate(fs), np.concatenate(gs)

    every = np.arange(n_starts)
    f, g = evaluate(x, every)
    finite = np.isfinite(f) & np.all(np.isfinite(g), axis=1)
    f = np.where(finite, f, np.inf)
    status = np.where(finite, np.where(np.max(np.abs(g), axis=1) <= gtol, 1, 0), 5)
    d = -g
    t = _first_step(g)
    Sb = np.zeros((n_starts, m, P))
    Yb = np.zeros((n_starts, m, P))
    rho = np.zeros((n_starts, m))
    k = np.zeros(n_starts, dtype=np.int64)
    nit = np.zeros(n_starts, dtype=np.int64)
    nfev = np.ones(n_starts, dtype=np.int64)

    act = np.flatnonzero(status == 0)
    while act.size:
        xa, da, ta, fa, ga = x[act], d[act], t[act], f[act], g[act]
        xt = xa + ta[:, None] * da
        ft, gt = evaluate(xt, act)
        nfev[act] += 1
        finite = np.isfinite(ft) & np.all(np.isfinite(gt), axis=1)
        gd = np.einsum("bp,bp->b", ga, da)
        with np.errstate(invalid="ignore"):
            ok = finite & (ft <= fa + c1 * ta * gd)

        # Accepted lanes: keep the pair if s'y > 0, take the next direction, test convergence.
        A, o = act[ok], ok
        if A.size:
            s, y = xt[o] - xa[o], gt[o] - ga[o]
            sy = np.einsum("bp,bp->b", s, y)
            good = sy > 1e-12 * np.sqrt(np.einsum("bp,bp->b", s, s) * np.einsum("bp,bp->b", y, y))
            Gd = A[good]
            Sb[Gd] = np.concatenate([Sb[Gd, 1:], s[good, None]], axis=1)
            Yb[Gd] = np.concatenate([Yb[Gd, 1:], y[good, None]], axis=1)
            rho[Gd] = np.concatenate([rho[Gd, 1:], 1.0 / sy[good, None]], axis=1)
            k[Gd] = np.minimum(k[Gd] + 1, m)
            dn = -_two_loop(gt[o], Sb[A], Yb[A], rho[A], k[A])
            descent = np.einsum("bp,bp->b", dn, gt[o]) < 0
            dn = np.where(descent[:, None], dn, -gt[o])
            k[A] = np.where(descent, k[A], 0)
            t[A] = np.where(k[A] > 0, 1.0, _first_step(gt[o]))
            nit[A] += 1
            small = fa[o] - ft[o] <= ftol * np.maximum(np.abs(fa[o]), np.abs(ft[o]))
            status[A] = np.where(
                np.max(np.abs(gt[o]), axis=1) <= gtol,
                1,
                np.where(small, 2, np.where(nit[A] >= max_iter, 4, 0)),
            )
            x[A], f[A], g[A], d[A] = xt[o], ft[o], gt[o], dn

        # Rejected lanes: shrink t to the minimiser of the quadratic through f(0), f'(0), f(t),
        # kept within [0.1 t, 0.5 t] so backtracking neither stalls nor collapses.
        R, r = act[~ok], ~ok
        if R.size:
            tr, gdr = ta[r], gd[r]
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                denom = 2.0 * (ft[r] - fa[r] - gdr * tr)
                use_q = finite[r] & (denom > 0)
                tq = -gdr * tr**2 / np.where(use_q, denom, 1.0)
            tn = np.where(use_q, np.clip(tq, 0.1 * tr, 0.5 * tr), 0.1 * tr)
            # The step no longer changes x in float64: restart once from steepest descent; if
            # that direction fails too, no decrease is possible from here.
            tiny = tn * np.max(np.abs(da[r]), axis=1) <= 1e-16 * np.maximum(
                1.0, np.max(np.abs(xa[r]), axis=1)
            )
            restart = tiny & (k[R] > 0)
            d[R] = np.where(restart[:, None], -ga[r], da[r])
            t[R] = np.where(restart, _first_step(ga[r]), tn)
            k[R] = np.where(restart, 0, k[R])
            status[R] = np.where(tiny & ~restart, 3, 0)

        act = act[status[act] == 0]
    return BatchedMinimum(
        x=x, fun=f, grad_max=np.max(np.abs(g), axis=1), n_iter=nit, n_fev=nfev, status=status
    )


# --------------------------------------------------------------------------------------------
# Approach 3: parametric L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, sec. 3.3, D.2)
# --------------------------------------------------------------------------------------------

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


def _a3_evaluator(logN, logD, logL, table=None, delta: float = HUBER_DELTA) -> Callable:
    """value_and_grad(X, (rep,)) for `batched_lbfgs`: lane i weighs the rows by table[rep[i]]
    (table None: a single row of ones, and `batched` may be empty)."""
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
        "E": _safe_exp(le),
        "A": _safe_exp(la),
        "B": _safe_exp(lb),
        "alpha": alpha,
        "beta": beta,
        "a": beta / s if s != 0 else math.nan,
        "b": alpha / s if s != 0 else math.nan,
        "G": _safe_exp(logG),
        "log_A": la,
        "log_B": lb,
        "log_E": le,
    }


def _safe_exp(x: float) -> float:
    if not math.isfinite(x):
        return math.nan if math.isnan(x) else (math.inf if x > 0 else 0.0)
    return math.exp(x) if x < 709.0 else math.inf


def approach3_predict(params: Mapping[str, float], N: Any, D: Any) -> np.ndarray:
    """L(N, D) = E + A/N^alpha + B/D^beta."""
    N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
    return params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]


def approach3_compute_optimal(params: Mapping[str, float], C: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) = (G (C/6)^a, G^-1 (C/6)^b): the minimiser of L(N, D) subject to 6ND = C."""
    C = np.asarray(C, np.float64)
    return params["G"] * (C / 6) ** params["a"], (C / 6) ** params["b"] / params["G"]


# --------------------------------------------------------------------------------------------
# Shared pieces: power laws, grouping, envelopes
# --------------------------------------------------------------------------------------------

# Rows whose N (or D) agree within 1% are the same model size (or token count): guards against
# parameter counts rounded differently in different logs, while real sizes differ by far more.
SIZE_TOL = 0.01

# Chinchilla approach 1 reads the envelope at 1500 log-spaced FLOP values (Hoffmann et al. 2022,
# sec. 3.1); one bin per value, the lowest-loss row in each.
ENVELOPE_BINS = 1500


def power_law_fit(x: Any, y: Any) -> tuple[float, float, float]:
    """Least squares of log y = log k + p log x. Returns (log k, p, rms log residual)."""
    lx, ly = np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64))
    if np.unique(lx).size < 2:
        raise FitError(f"a power law needs >= 2 distinct x values, got {np.unique(lx).size}")
    p, logk = np.polyfit(lx, ly, 1)
    resid = ly - (logk + p * lx)
    return float(logk), float(p), float(np.sqrt(np.mean(resid**2)))


def _scale_from(logk: float, alpha: float) -> float:
    # y = (x_c / x)^alpha = k x^-alpha  =>  x_c = k^(1/alpha); undefined unless alpha > 0.
    return _safe_exp(logk / alpha) if alpha > 0 else math.nan


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


def _per_group_pick(labels: np.ndarray, key: np.ndarray) -> np.ndarray:
    """For each label, the row with the smallest key (lexsort keys: last is primary)."""
    order = np.lexsort((*key, labels)) if isinstance(key, tuple) else np.lexsort((key, labels))
    first = np.ones(order.size, dtype=bool)
    first[1:] = labels[order[1:]] != labels[order[:-1]]
    return order[first]


def _rel_err_stats(pred: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    rel = np.asarray(pred, np.float64) / np.asarray(actual, np.float64) - 1.0
    out: dict[str, Any] = {
        "mean_abs_rel_error": float(np.mean(np.abs(rel))),
        "max_abs_rel_error": float(np.max(np.abs(rel))),
        "mean_rel_error": float(np.mean(rel)),
    }
    if rel.size <= 200:
        out["rel_errors"] = rel.tolist()
    return out


# --------------------------------------------------------------------------------------------
# Kaplan et al. 2020
# --------------------------------------------------------------------------------------------

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
    r = _as_runs(runs)
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
        "joint_N_c": _safe_exp(lNc),
        "joint_alpha_N": float(aN),
        "joint_D_c": _safe_exp(lDc),
        "joint_alpha_D": float(aD),
    }
    return joint, float(np.sqrt(np.mean(best.fun**2)))


# --------------------------------------------------------------------------------------------
# Chinchilla approach 1: minimum over training curves
# --------------------------------------------------------------------------------------------

ALLOCATION_FORMULA = "N_opt = k_N C^a; D_opt = k_D C^b"

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
    r = _as_runs(runs)
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
    r = _as_runs(runs)
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
    params = {"a": a, "b": b, "k_N": _safe_exp(logkN), "k_D": _safe_exp(logkD)}
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


# --------------------------------------------------------------------------------------------
# Chinchilla approach 2: IsoFLOP profiles
# --------------------------------------------------------------------------------------------

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


def _isoflop_budgets(
    r: Runs,
    *,
    budget_tol: float = DEFAULT_BUDGET_TOL,
    min_sizes: int = 3,
    window: int = ISOFLOP_WINDOW,
    window_decades: float = ISOFLOP_WINDOW_DECADES,
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
        C = float(np.exp(np.mean(np.log(r.C[rows]))))
        logN, L = np.log(r.N[rows]), r.L[rows]
        # D at exactly the budget's C: within a budget C_i = fpt(N_i) D_i under whatever
        # convention counted C, so D_i C / C_i is the tokens size N_i gets at compute C.
        logD = np.log(r.D[rows] * C / r.C[rows])
        size = group_relative(r.N[rows], SIZE_TOL)
        n_sizes = int(size.max()) + 1
        if n_sizes < min_sizes:
            dropped.append(_dropped(C, rows, n_sizes, f"fewer than {min_sizes} model sizes"))
            continue
        count = np.bincount(size)
        xs = np.bincount(size, logN) / count
        ys = np.bincount(size, L) / count
        N_range = [float(np.exp(xs[0])), float(np.exp(xs[-1]))]
        j = int(np.argmin(ys))
        if j in (0, n_sizes - 1):
            edge = "smallest" if j == 0 else "largest"
            dropped.append(
                _dropped(
                    C,
                    rows,
                    n_sizes,
                    f"empirical minimum at the {edge} sampled size",
                    N_empirical=float(np.exp(xs[j])),
                    N_range=N_range,
                )
            )
            continue
        # Fit over the window around the empirical minimum; if the vertex's nearest size is
        # another one (noise put the lowest loss off the optimum), move the window there and
        # refit, so the window ends up centred on the optimum it estimates.
        xr = xs - xs[j]
        x_all = logN - xs[j]
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
        # No minimum the window can vouch for: drop rather than clip, since a clipped vertex
        # is a guess at the window's edge that would bias the power law.
        why = None
        if not c2 > 0:
            why = "no minimum near the empirical one: the window's parabola opens downward"
        elif not xr[lo] <= xv <= xr[hi]:
            why = "no minimum near the empirical one: the window's parabola has its vertex "
            why += "outside the window"
        else:
            k = int(np.argmin(np.abs(xr - xv)))
            if k in (0, n_sizes - 1):
                why = f"fitted minimum at the {'smallest' if k == 0 else 'largest'} sampled size"
        if why is not None:
            dropped.append(
                _dropped(C, rows, n_sizes, why, N_empirical=float(np.exp(xs[j])), N_range=N_range)
            )
            continue
        x, y = x_all[inwin], L[inwin]
        fitted = np.polyval(coef, x)
        resid_all.append(np.log(y / fitted) if np.all(fitted > 0) else y / fitted - 1.0)
        # log D against log N over the window's sizes, read at the vertex: exact for 6ND (a
        # line), and for any other FLOPs-per-token convention as smooth as its fpt(N).
        ds = np.bincount(size, logD) / count
        d_coef = np.polyfit(xr[lo : hi + 1], ds[lo : hi + 1], min(2, hi - lo))
        minima.append(
            {
                "C": C,
                "N_opt": float(np.exp(xs[j] + xv)),
                "D_opt": float(np.exp(np.polyval(d_coef, xv))),
                "L_opt": float(np.polyval(coef, xv)),
                "n_points": int(rows.size),
                "n_sizes": n_sizes,
                "n_used": int(inwin.sum()),
                "n_sizes_used": int(hi - lo + 1),
                "window_N": [float(np.exp(xs[lo])), float(np.exp(xs[hi]))],
                "N_empirical": float(np.exp(xs[j])),
                "L_empirical": float(ys[j]),
                "n_recentred": len(visited) - 1,
                "interior": bool(xs[0] <= xs[j] + xv <= xs[-1]),
                "curvature": float(c2),
                "rms_residual": float(np.sqrt(np.mean((y - fitted) ** 2))),
            }
        )
    return minima, dropped, resid_all


def isoflop_minima(
    runs: Runs | Mapping[str, Any],
    *,
    budget_tol: float = DEFAULT_BUDGET_TOL,
    min_sizes: int = 3,
    window: int = ISOFLOP_WINDOW,
    window_decades: float = ISOFLOP_WINDOW_DECADES,
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
    4. D_opt: log D against log N over the window's sizes (a quadratic; each row's D scaled to
       the budget's exact C), read at log N_opt. C is never assumed to be 6ND, so D_opt follows
       whatever FLOPs per token counted C.

    Returns (minima, dropped): minima in increasing C, each with C, N_opt, D_opt, L_opt,
    n_points, n_sizes, n_used (rows in the window), n_sizes_used, window_N ([smallest,
    largest] N of the window), N_empirical, L_empirical, n_recentred, interior (always true
    for a kept budget), curvature (c2, loss per (ln N)^2) and rms_residual; dropped budgets
    with C, n_points, n_sizes and reason (plus N_empirical and N_range where relevant).
    """
    minima, dropped, _ = _isoflop_budgets(
        _as_runs(runs),
        budget_tol=budget_tol,
        min_sizes=min_sizes,
        window=window,
        window_decades=window_decades,
    )
    return minima, dropped


def fit_approach2(
    runs: Runs | Mapping[str, Any],
    *,
    budget_tol: float = DEFAULT_BUDGET_TOL,
    min_sizes: int = 3,
    window: int = ISOFLOP_WINDOW,
    window_decades: float = ISOFLOP_WINDOW_DECADES,
) -> FitResult:
    """Hoffmann et al. 2022 approach 2: the IsoFLOP minima (`isoflop_minima`), then
    N_opt = k_N C^a and D_opt = k_D C^b, each fitted on its own by least squares in log space
    (so b = 1 - a only when the data say so, as under C = 6ND). Keys a, b, k_N, k_D; details
    `budgets` (the minima used) and `dropped_budgets` (each with C and reason); stats
    n_budgets (budgets used), n_budgets_dropped, noise_rel (pooled rms of the windows' log
    residuals, an estimate of the relative loss noise), rms_log_residual of both power laws."""
    r = _as_runs(runs)
    minima, dropped, resid = _isoflop_budgets(
        r, budget_tol=budget_tol, min_sizes=min_sizes, window=window, window_decades=window_decades
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
    params = {"a": a, "b": b, "k_N": _safe_exp(logkN), "k_D": _safe_exp(logkD)}
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
    }
    return FitResult(
        "2",
        ALLOCATION_FORMULA,
        len(r),
        params,
        stats,
        {"budgets": minima, "dropped_budgets": dropped},
    )


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
    fit is the sampling spread (tests/test_fit_isoflop.py checks it against fits to fresh
    noise). Pooling assumes the same relative noise in every budget: a window's own few
    residual degrees of freedom are too few to estimate it alone. Model error (the parabola's
    bias over the window) is not in these intervals.
    """
    kw = {
        k: v
        for k, v in fit_kwargs.items()
        if k in ("budget_tol", "min_sizes", "window", "window_decades")
    }
    _, _, resid = _isoflop_budgets(r, **kw)
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


# --------------------------------------------------------------------------------------------
# Chinchilla approach 3: the fit
# --------------------------------------------------------------------------------------------

APPROACH3_FORMULA = (
    "L(N,D) = E + A/N^alpha + B/D^beta; N_opt(C) = G (C/6)^a, D_opt(C) = G^-1 (C/6)^b, "
    "a = beta/(alpha+beta), b = alpha/(alpha+beta), G = (alpha A/(beta B))^(1/(alpha+beta))"
)

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
    r = _as_runs(runs)
    if len(r) < 5:
        raise FitError(f"approach 3 fits 5 parameters and needs >= 5 rows, got {len(r)}")
    for col, v in (("N", r.N), ("D", r.D)):
        if np.unique(v).size < 2:
            raise FitError(f"approach 3 needs >= 2 distinct values of {col}, got 1")
    starts = chinchilla_grid() if starts is None else np.atleast_2d(np.asarray(starts, float))
    opts = {**A3_OPTIONS, **lbfgs_options}
    logN, logD, logL = np.log(r.N), np.log(r.D), np.log(r.L)
    res = batched_lbfgs(_a3_evaluator(logN, logD, logL, None, delta), starts, **opts)
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
        "rms_log_residual": float(np.sqrt(np.mean(resid**2))),
        "max_abs_log_residual": float(np.max(np.abs(resid))),
        "mean_abs_rel_error": float(np.mean(np.abs(np.expm1(resid)))),
    }
    return FitResult(
        "3",
        APPROACH3_FORMULA,
        len(r),
        params,
        stats,
        {"theta": dict(zip(A3_PARAMS, theta.tolist(), strict=True))},
    )


# --------------------------------------------------------------------------------------------
# Dispatch, bootstrap, extrapolation
# --------------------------------------------------------------------------------------------

_FITTERS = {"kaplan": fit_kaplan, "1": fit_approach1, "2": fit_approach2, "3": fit_approach3}


def _approach(approach: Any) -> str:
    a = str(approach).lower()
    if a not in _FITTERS:
        raise FitError(f"unknown approach {approach!r}: choose from {', '.join(APPROACHES)}")
    return a


def fit_one(runs: Runs | Mapping[str, Any], approach: str, **kwargs: Any) -> FitResult:
    """Dispatch to fit_kaplan / fit_approach1 / fit_approach2 / fit_approach3."""
    return _FITTERS[_approach(approach)](_as_runs(runs), **kwargs)


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
    a = _approach(approach)
    r = _as_runs(runs)
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
        vg = _a3_evaluator(np.log(r.N), np.log(r.D), np.log(r.L), table, delta)
        lane_rep = np.repeat(np.arange(k1 - k0), s).astype(np.int32)
        res = batched_lbfgs(vg, np.tile(starts, (k1 - k0, 1)), (lane_rep,), **opts)
        fun = np.where(np.isfinite(res.fun), res.fun, np.inf).reshape(k1 - k0, s)
        best = np.argmin(fun, axis=1)
        thetas = res.x.reshape(k1 - k0, s, -1)[np.arange(k1 - k0), best]
        rows.extend(approach3_params(t) for t in thetas)
    return rows


def extrapolation_check(
    runs: Runs | Mapping[str, Any],
    approach: str,
    *,
    budget_tol: float = DEFAULT_BUDGET_TOL,
    **fit_kwargs: Any,
) -> dict[str, Any] | None:
    """Fit on all but the largest compute budget and predict it; None with < 3 budgets.

    Budgets are `compute_budgets(C, budget_tol)` groups (approach 2: its valid IsoFLOP
    budgets). Kaplan predicts the held-out rows' loss with the joint L(N, D); approach 3 with
    E + A/N^alpha + B/D^beta; approach 2 predicts the held-out budget's N_opt (and D_opt) from
    the power law; approach 1 predicts N_opt at the held-out envelope rows (of the smoothed
    curves). Errors are prediction / actual - 1.
    """
    a = _approach(approach)
    r = _as_runs(runs)
    if a == "2":
        kw = {k: v for k, v in fit_kwargs.items() if k in ("min_sizes", "window", "window_decades")}
        minima, _ = isoflop_minima(r, budget_tol=budget_tol, **kw)
        if len(minima) < 3:
            return None
        top = minima[-1]
        # Refit on the rows of every compute group below the largest valid budget.
        labels = compute_budgets(r.C, budget_tol)
        top_label = labels[np.argmin(np.abs(np.log(r.C) - math.log(top["C"])))]
        train_rows = labels < top_label
        train = fit_approach2(r.take(np.flatnonzero(train_rows)), budget_tol=budget_tol, **kw)
        p = train.params
        N_pred = p["k_N"] * top["C"] ** p["a"]
        D_pred = p["k_D"] * top["C"] ** p["b"]
        return {
            "target": "N_opt",
            "held_out_C": top["C"],
            "n_train_budgets": len(minima) - 1,
            "train_a": p["a"],
            "train_b": p["b"],
            "N_opt_predicted": N_pred,
            "N_opt_actual": top["N_opt"],
            "rel_error": N_pred / top["N_opt"] - 1.0,
            "D_opt_predicted": D_pred,
            "D_opt_actual": top["D_opt"],
            "D_rel_error": D_pred / top["D_opt"] - 1.0,
        }

    labels = compute_budgets(r.C, budget_tol)
    if labels.max() + 1 < 3:
        return None
    held = labels == labels.max()
    train = fit_one(r.take(np.flatnonzero(~held)), a, **fit_kwargs)
    out: dict[str, Any] = {
        "held_out_C": float(np.exp(np.mean(np.log(r.C[held])))),
        "n_budgets": int(labels.max() + 1),
        "n_train": int((~held).sum()),
        "n_held_out": int(held.sum()),
    }
    p = train.params
    if a == "1":
        Ls = smooth_curves(r, fit_kwargs.get("smooth_width", SMOOTH_WIDTH))
        env = lower_envelope(r.C, Ls, fit_kwargs.get("n_bins", ENVELOPE_BINS))
        env = env[held[env]]
        if env.size == 0:
            return {**out, "target": "N_opt", "note": "no envelope rows in the held-out budget"}
        pred = p["k_N"] * r.C[env] ** p["a"]
        return {
            **out,
            "target": "N_opt",
            "n_envelope_rows": int(env.size),
            **_rel_err_stats(pred, r.N[env]),
        }
    if a == "kaplan":
        pred = kaplan_joint_loss(
            r.N[held],
            r.D[held],
            p["joint_N_c"],
            p["joint_alpha_N"],
            p["joint_D_c"],
            p["joint_alpha_D"],
        )
    else:
        pred = approach3_predict(p, r.N[held], r.D[held])
    return {**out, "target": "loss", **_rel_err_stats(pred, r.L[held])}


def fit(
    runs: Runs | Mapping[str, Any],
    approach: str,
    *,
    n_bootstrap: int = 0,
    seed: int = 0,
    extrapolate: bool = True,
    budget_tol: float = DEFAULT_BUDGET_TOL,
    **fit_kwargs: Any,
) -> FitResult:
    """Fit, then optionally attach bootstrap intervals (`ci95`) and the extrapolation check.

    `fit_kwargs` go to the approach's fitter (and its refits); `budget_tol` groups compute
    budgets for approach 2 and for the extrapolation check.
    """
    a = _approach(approach)
    r = _as_runs(runs)
    if a == "2":
        fit_kwargs = {**fit_kwargs, "budget_tol": budget_tol}
    result = fit_one(r, a, **fit_kwargs)
    if n_bootstrap:
        kw = dict(fit_kwargs)
        if a == "3":
            kw.pop("starts", None)
        b = bootstrap(r, a, n_bootstrap, seed=seed, base=result if a == "3" else None, **kw)
        result = dataclasses.replace(result, ci95=b.ci95, bootstrap=b.info)
    if extrapolate:
        kw = {k: v for k, v in fit_kwargs.items() if k != "budget_tol"}
        ex = extrapolation_check(r, a, budget_tol=budget_tol, **kw)
        if ex is not None:
            result = dataclasses.replace(result, extrapolation=ex)
    return result
