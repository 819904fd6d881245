"""Every fit of one convention: approach 3, Kaplan, approach 1, approach 2, with bootstrap
intervals and extrapolation checks. The fitting itself is lm.scaling.fit; this module decides
what to fit, on which rows, and how its uncertainty is measured.

- Approach 3 (Hoffmann et al. 2022, arXiv:2203.15556): L = E + A/N^alpha + B/D^beta, Huber on
  log L from the paper's 4500 starts; 95% percentile-bootstrap intervals.
- Kaplan et al. 2020 (arXiv:2001.08361): L(N), L(D), L(C) and the joint L(N, D).
- Approach 1: the lower envelope over compute of each size's loss curve. Where sizes have
  several finished runs (a WSD sweep's branches, or separate runs of several lengths) the
  curve joins their final losses (`finished_run_curves`); otherwise it is the training curve of
  curves.csv, each member's labelled with its name so the library smooths it and bootstraps
  by run.
- Approach 2 (IsoFLOP parabolas): on an isoflop sweep's own rows in the convention its budgets
  were planned in; otherwise on IsoFLOP sets interpolated along each size's runs
  (lm.scaling.report.isoflops), whose intervals come from a parametric bootstrap of the runs
  (multiplicative noise with the run-to-run spread), since interpolated points share runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lm.scaling import fit as F
from lm.scaling.fit import sensitivity as S
from lm.scaling.report.allocation import ci_from_samples, effective_allocation, flops_law
from lm.scaling.report.conventions import Convention
from lm.scaling.report.isoflops import grid_isoflops

# L-BFGS options for approach-3 *refits* (bootstrap resamples, hold-out fits), which start
# from the full fit's optimum plus fit.bootstrap_starts' coarse grid. The point fit keeps
# lm.scaling.fit's tight defaults (ftol 1e-12, 1000 steps; the Besiroglu et al. 2024 concern).
# On the synthetic sweep of tests/scaling/test_report.py every resample's parameters agree with
# the defaults' to 1e-6 (relative), at a fifth of the time: the lanes that run to 1000 steps
# are coarse-grid starts drifting along flat directions, never the best lane. 100 steps is not
# enough (10%).
REFIT_OPTIONS = {"ftol": 1e-9, "max_iter": 200}
N_BOOT_KAPLAN = 100  # each Kaplan refit runs a nonlinear least squares: the slow one
MIN_SIZES = 3  # sizes per IsoFLOP budget, as the library's default

APPROACH_NAMES = {"3": "approach 3", "kaplan": "kaplan", "1": "approach 1", "2": "approach 2"}


@dataclass
class ConventionFit:
    """The fits of one convention. `results` maps "3", "kaplan", "1", "2" to a FitResult, or
    None when it could not be done (why: a line of `errors`); `samples` the bootstrap's
    parameter samples per approach."""

    convention: Convention
    primary: bool
    data: dict[str, np.ndarray]
    errors: list[str] = field(default_factory=list)
    results: dict[str, F.FitResult | None] = field(default_factory=dict)
    samples: dict[str, dict] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    flops_law: dict | None = None
    a3_effective: dict | None = None  # approach 3's allocation with the real FLOPs per token
    a1_method: str = ""  # what approach 1's envelope was drawn from
    holdout_largest_N: dict[str, dict | None] = field(default_factory=dict)  # "3", "kaplan"
    curve_runs: F.Runs | None = None  # approach 1's points
    a2_runs: F.Runs | None = None  # approach 2's IsoFLOP points (rows or interpolated)
    a2_method: str | None = None
    # lm.scaling.fit.sensitivity's rows (the primary convention's only; the report adds the
    # other conventions' as rows not counted) and other whole-pipeline runs' a per approach.
    sensitivity: list[dict] = field(default_factory=list)
    replicates: list[dict] = field(default_factory=list)

    def get(self, approach: str) -> F.FitResult | None:
        return self.results.get(approach)


def attempt(what: str, fn: Callable[[], Any], errors: list[str]) -> Any:
    """Run one fit; a fit that cannot be done becomes a line in the report, not a crash."""
    try:
        return fn()
    except F.FitError as e:
        errors.append(f"{what}: {e}")
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as e:
        errors.append(f"{what}: {type(e).__name__}: {e}")
    return None


def holdout_largest_n(runs: F.Runs, approach: str, **kw: Any) -> dict | None:
    """Fit without the largest model size, predict its losses (the extrapolation that matters
    for a grid, where the largest compute budget is a single run)."""
    big = runs.N >= runs.N.max() * (1 - F.SIZE_TOL)
    if (~big).sum() < 5 or np.unique(runs.N[~big]).size < 2:
        return None
    train = F.fit_one(runs.take(np.flatnonzero(~big)), approach, **kw)
    p = train.params
    if approach == "3":
        pred = F.approach3_predict(p, runs.N[big], runs.D[big])
    else:
        pred = F.kaplan_joint_loss(
            runs.N[big], runs.D[big], p["joint_N_c"], p["joint_alpha_N"], p["joint_D_c"],
            p["joint_alpha_D"],
        )  # fmt: skip
    rel = pred / runs.L[big] - 1
    return {
        "held_out_N": float(runs.N.max()),
        "n_train": int((~big).sum()),
        "n_held_out": int(big.sum()),
        "target": "loss",
        "mean_abs_rel_error": float(np.mean(np.abs(rel))),
        "max_abs_rel_error": float(np.max(np.abs(rel))),
        "rel_errors": rel.tolist(),
    }


def fit_convention(
    conv: Convention,
    main: list[dict],
    curves: list[dict],
    *,
    primary: bool,
    isoflop_rows: bool,
    noise: float,
    n_boot: int,
    seed: int,
) -> ConventionFit:
    """Every approach under one convention. `isoflop_rows`: the main rows are IsoFLOP sets in
    this convention (an isoflop sweep's primary convention), so approach 2 fits them as they
    are instead of interpolating."""
    N = np.array([r[conv.n_col] for r in main], np.float64)
    D = np.array([r["D"] for r in main], np.float64)
    L = np.array([r["loss"] for r in main], np.float64)
    C = np.array([r[conv.c_col] for r in main], np.float64)
    out = ConventionFit(conv, primary, {"N": N, "D": D, "L": L, "C": C})
    errors = out.errors
    t = time.perf_counter()
    runs = attempt("rows", lambda: F.Runs.from_arrays(N, D, L, C), errors) if main else None
    if runs is None:
        errors.append("no usable main rows: nothing to fit")
        return out
    sizes = np.unique(N)
    fpt = C / D
    k, p, rms = flops_law(sizes, np.array([np.median(fpt[N == s]) for s in sizes]))
    out.flops_law = {"k": k, "p": p, "rms_log_residual": rms}

    out.results["3"] = _approach3(runs, C, k, p, n_boot, seed, out)
    out.timing["approach3"] = time.perf_counter() - t

    t = time.perf_counter()
    kap = _fit_with_uncertainty(runs, "kaplan", min(n_boot, N_BOOT_KAPLAN), seed, out)
    out.results["kaplan"] = kap
    if kap is not None:
        out.holdout_largest_N["kaplan"] = attempt(
            "kaplan extrapolation (largest N)", lambda: holdout_largest_n(runs, "kaplan"), errors
        )
    out.timing["kaplan"] = time.perf_counter() - t

    t = time.perf_counter()
    out.results["1"] = _approach1(conv, main, curves, runs, noise, n_boot, seed, out)
    out.timing["approach1"] = time.perf_counter() - t

    t = time.perf_counter()
    out.results["2"] = approach2(
        runs, fpt, isoflop_rows=isoflop_rows, noise=noise, n_boot=n_boot, seed=seed, out=out
    )
    out.timing["approach2"] = time.perf_counter() - t
    if primary:
        t = time.perf_counter()
        out.sensitivity = (
            attempt("sensitivity", lambda: method_sensitivity(out, runs), errors) or []
        )
        out.timing["sensitivity"] = time.perf_counter() - t
    return out


def method_sensitivity(out: ConventionFit, runs: F.Runs) -> list[dict]:
    """lm.scaling.fit.sensitivity on the points each approach was fitted to here, with this
    module's settings as the defaults: approach 1 unsmoothed on finished-run curves, approach 2
    with MIN_SIZES on interpolated sets, approach 3 refitted from its optimum plus the coarse
    grid with REFIT_OPTIONS (its default refitted alike, so only the choice differs) and read
    as the effective a, which is the a the summary reports."""
    pts: dict[str, F.Runs] = {}
    defaults: dict[str, dict] = {}
    measure: dict[str, S.Measure] = {}
    if out.get("1") is not None and out.curve_runs is not None:
        pts["1"] = out.curve_runs
        defaults["1"] = {"smooth_width": 0.0} if out.a1_method == FINISHED_RUNS else {}
    if out.get("2") is not None and out.a2_runs is not None:
        pts["2"] = out.a2_runs
        defaults["2"] = {"min_sizes": MIN_SIZES} if out.a2_method == INTERPOLATED else {}
    a3 = out.get("3")
    if a3 is not None:
        pts["3"] = runs
        theta = [a3.details["theta"][q] for q in F.A3_PARAMS]
        defaults["3"] = {"starts": F.bootstrap_starts(theta), **REFIT_OPTIONS}
        if out.a3_effective and out.flops_law:
            C, k, p = out.data["C"], out.flops_law["k"], out.flops_law["p"]
            measure["3"] = lambda r: effective_allocation(r.params, None, C, k, p)
    return S.sensitivity(pts, defaults, measure=measure)


def varpro_comparison(lbfgs: F.FitResult, vp: F.FitResult) -> dict:
    """Variable projection's optimum beside the L-BFGS grid's: the same objective, searched two
    ways, so they must agree; and both problems' condition numbers at the optimum."""
    f_lb, f_vp = lbfgs.stats["objective"], vp.stats["objective"]
    return {
        **{k: vp.params[k] for k in ("a", "alpha", "beta", "E", "A", "B")},
        "objective": f_vp,
        "objective_rel_diff": (f_lb - f_vp) / f_vp if f_vp > 0 else math.nan,
        "a_diff": lbfgs.params["a"] - vp.params["a"],
        "condition_full": vp.stats["condition_full"],
        "condition_projected": vp.stats["condition_projected"],
    }


def _approach3(
    runs: F.Runs, C: np.ndarray, k: float, p: float, n_boot: int, seed: int, out: ConventionFit
) -> F.FitResult | None:
    """Approach 3 with the full 4500-start grid; the bootstrap and hold-outs restart from its
    optimum plus fit.bootstrap_starts' coarse grid. Fills out.samples["3"],
    out.holdout_largest_N["3"] and out.a3_effective (under the FLOPs law C/D = k N^p)."""
    errors = out.errors
    a3 = attempt("approach 3", lambda: F.fit_approach3(runs), errors)
    if a3 is None:
        return None
    vp = attempt("approach 3 (variable projection)", lambda: F.fit_approach3_varpro(runs), errors)
    if vp is not None:
        a3 = dataclasses.replace(a3, stats={**a3.stats, "varpro": varpro_comparison(a3, vp)})
    theta = [a3.details["theta"][q] for q in F.A3_PARAMS]
    starts = F.bootstrap_starts(theta)
    if n_boot:
        b = attempt(
            "approach 3 bootstrap",
            lambda: F.bootstrap(runs, "3", n_boot, seed=seed, base=a3, **REFIT_OPTIONS),
            errors,
        )
        if b is not None:
            info = {**b.info, "lbfgs": REFIT_OPTIONS}
            a3 = dataclasses.replace(a3, ci95=b.ci95, bootstrap=info)
            out.samples["3"] = b.samples
    ex = attempt(
        "approach 3 extrapolation (largest budget)",
        lambda: F.extrapolation_check(runs, "3", starts=starts, **REFIT_OPTIONS),
        errors,
    )
    if ex is not None:
        a3 = dataclasses.replace(a3, extrapolation=ex)
    out.holdout_largest_N["3"] = attempt(
        "approach 3 extrapolation (largest N)",
        lambda: holdout_largest_n(runs, "3", starts=starts, **REFIT_OPTIONS),
        errors,
    )
    out.a3_effective = effective_allocation(a3.params, out.samples.get("3"), C, k, p)
    return a3


def _approach1(
    conv: Convention,
    main: list[dict],
    curves: list[dict],
    runs: F.Runs,
    noise: float,
    n_boot: int,
    seed: int,
    out: ConventionFit,
) -> F.FitResult | None:
    """Approach 1 on finished runs' curves where sizes have several, else on the training
    curves; fills out.a1_method and out.curve_runs."""
    errors = out.errors
    if finished_run_curves(runs) is not None:
        out.a1_method = FINISHED_RUNS
        return _approach1_finished(runs, noise, n_boot, seed, out)
    out.a1_method = "training curves (curves.csv), each run's curve smoothed"
    cruns = attempt("approach 1", lambda: curve_runs(conv, main, curves), errors)
    if cruns is None and not any(e.startswith("approach 1") for e in errors):
        errors.append("approach 1: no training curves (curves.csv empty or missing)")
    elif cruns is not None:
        out.curve_runs = cruns
        return _fit_with_uncertainty(cruns, "1", n_boot, seed, out)
    return None


def _fit_with_uncertainty(runs, approach, n_boot, seed, out) -> F.FitResult | None:
    """Fit, library bootstrap (resampling rows, or runs where they are labelled), and the
    hold-out-the-largest-budget check."""
    name = APPROACH_NAMES[approach]
    errors = out.errors
    res = attempt(name, lambda: F.fit_one(runs, approach), errors)
    if res is None:
        return None
    if n_boot:
        b = attempt(
            f"{name} bootstrap", lambda: F.bootstrap(runs, approach, n_boot, seed=seed), errors
        )
        if b is not None:
            res = dataclasses.replace(res, ci95=b.ci95, bootstrap=b.info)
            out.samples[approach] = b.samples
    ex = attempt(f"{name} extrapolation", lambda: F.extrapolation_check(runs, approach), errors)
    if ex is not None:
        res = dataclasses.replace(res, extrapolation=ex)
    return res


FINISHED_RUNS = (
    "finished runs: each size's final losses at its token counts (every one a complete run: a "
    "WSD cooldown branch is exactly the run of its own length), joined by PCHIP in (log D, "
    "log L) inside the size's trained range"
)
CURVE_POINTS_PER_DECADE = 40


def finished_run_curves(runs: F.Runs, per_decade: int = CURVE_POINTS_PER_DECADE) -> F.Runs | None:
    """Approach 1's curves from finished runs: per size, its final losses joined by monotone
    cubic interpolation (PCHIP, no overshoot) in (log D, log L) at `per_decade` points per
    decade of D, never beyond the D range it was trained on; each size is one labelled curve.

    Hoffmann et al. 2022's approach 1 takes the envelope of training curves of cosine runs whose
    lengths match their schedules. In a WSD sweep a trunk's training loss before its cooldown is
    not what a run of that length reaches (the learning rate has not decayed; measured here,
    the envelope then follows cooldown segments and single-batch noise), while every branch's
    final loss is exactly that. None when fewer than 2 sizes have >= 2 token counts."""
    from scipy.interpolate import PchipInterpolator

    pts = []
    for s in np.unique(runs.N):
        i = np.flatnonzero(runs.N == s)
        i = i[np.argsort(runs.D[i])]
        d, keep = np.unique(runs.D[i], return_index=True)
        if d.size < 2:
            continue
        f = float(np.median(runs.C[i] / runs.D[i]))
        x = np.log(d)
        interp = PchipInterpolator(x, np.log(runs.L[i][keep]))
        n = max(2, int(per_decade * (x[-1] - x[0]) / np.log(10.0)) + 1)
        xs = np.linspace(x[0], x[-1], n)
        # Each point is labelled with the finished run that ends its segment of the curve, so
        # the library's design checks (one D, one D/N) see the finished runs themselves.
        seg = np.searchsorted(x, xs - 1e-12)
        pts += [(s, np.exp(v), float(np.exp(interp(v))), f * np.exp(v), s * 1e3 + j)
                for v, j in zip(xs, seg, strict=True)]  # fmt: skip
    if len({p[0] for p in pts}) < 2:
        return None
    a = np.array(pts, np.float64)
    return F.Runs.from_arrays(a[:, 0], a[:, 1], a[:, 2], a[:, 3], run=a[:, 4])


def _approach1_finished(runs: F.Runs, noise: float, n_boot: int, seed: int, out):
    """Approach 1 on `finished_run_curves` (already smooth: no further smoothing). Intervals from
    a parametric bootstrap of the runs: each finished run's loss times exp(N(0, noise)) with the
    measured run-to-run noise, curves re-joined, refit; resampling the interpolated points would
    treat one run's neighbours as independent."""
    errors = out.errors
    curves = finished_run_curves(runs)
    out.curve_runs = curves
    res = attempt("approach 1", lambda: F.fit_approach1(curves, smooth_width=0.0), errors)
    if res is None:
        return None
    if n_boot:

        def refit(lb):
            return F.fit_approach1(finished_run_curves(runs.with_loss(lb)), smooth_width=0.0)

        method = (f"parametric: finished runs' losses x exp(N(0, {noise:.3g})), curves "
                  "re-joined; run-to-run noise only, not the spacing of the sizes")  # fmt: skip
        res = _parametric_bootstrap(res, "1", runs.L, refit, noise, n_boot, seed, method, out)
    ex = attempt(
        "approach 1 extrapolation",
        lambda: F.extrapolation_check(curves, "1", smooth_width=0.0),
        errors,
    )
    if ex is not None:
        res = dataclasses.replace(res, extrapolation=ex)
    return res


def curve_runs(conv: Convention, main: list[dict], curves: list[dict]) -> F.Runs | None:
    """curves.csv under the convention: N from the member's row, C = its FLOPs per token x D,
    each point labelled with the member's name. A WSD branch that repeats its trunk's curve up
    to the branch point repeats identical points; only the first (the trunk's, which is
    planned first) is kept."""
    by_name = {r["name"]: r for r in main}
    pts: dict[tuple[float, ...], str] = {}
    for c in curves:
        m = by_name.get(c.get("name"))
        if m is None or not (c.get("D") or 0) > 0 or not (c.get("loss") or 0) > 0:
            continue
        key = (m[conv.n_col], c["D"], c["loss"], m[conv.c_col] / m["D"] * c["D"])
        pts.setdefault(key, m["name"])
    if not pts:
        return None
    a = np.array(list(pts), np.float64)
    return F.Runs.from_arrays(a[:, 0], a[:, 1], a[:, 2], a[:, 3], run=list(pts.values()))


def _parametric_bootstrap(res, approach, L, refit, noise, n_boot, seed, method, out):
    """Percentile intervals from refits on the runs' losses times exp(N(0, noise)) (the
    measured run-to-run noise), for fits whose points are derived from shared runs; resamples
    whose fit fails are counted, not kept."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_boot):
        try:
            rows.append(refit(L * np.exp(rng.normal(0.0, noise, L.size))).params)
        except (F.FitError, ArithmeticError):
            pass
    if not rows:
        return res
    samples = {q: np.array([r[q] for r in rows]) for q in rows[0]}
    out.samples[approach] = samples
    info = {"n_boot": n_boot, "n_ok": len(rows), "n_failed": n_boot - len(rows), "seed": seed,
            "method": method, "interval": "percentile [2.5%, 97.5%]"}  # fmt: skip
    return dataclasses.replace(res, ci95=ci_from_samples(samples), bootstrap=info)


INTERPOLATED = (
    "IsoFLOP points interpolated from each size's runs (PCHIP in log D, log L; no "
    "extrapolation beyond a size's trained D)"
)


def approach2(
    runs: F.Runs,
    fpt: np.ndarray,
    *,
    isoflop_rows: bool,
    noise: float,
    n_boot: int,
    seed: int,
    out: ConventionFit,
) -> F.FitResult | None:
    """Approach 2 on the rows themselves (`isoflop_rows`) or on interpolated IsoFLOP sets;
    fills out.a2_method, out.a2_runs and out.samples["2"]."""
    errors = out.errors
    if isoflop_rows:
        out.a2_method = "the sweep's own IsoFLOP rows (no interpolation)"
        out.a2_runs = runs
        return _fit_with_uncertainty(runs, "2", n_boot, seed, out)
    out.a2_method = INTERPOLATED
    N, D, L, C, budgets = grid_isoflops(runs.N, runs.D, runs.L, fpt)
    if N.size == 0:
        errors.append("approach 2: no size has >= 2 token counts to interpolate between")
        return None
    pts = F.Runs.from_arrays(N, D, L, C)
    out.a2_runs = pts
    res = attempt("approach 2", lambda: F.fit_approach2(pts, min_sizes=MIN_SIZES), errors)
    if res is None:
        return None
    if n_boot:
        # Parametric: perturb the runs' losses by the run-to-run noise, redo the interpolation
        # and the fit. Resampling interpolated points would treat shared runs as independent.
        def refit(lb):
            Nb, Db, Lb, Cb, _ = grid_isoflops(runs.N, runs.D, lb, fpt, budgets)
            # A nearly flat parabola puts its vertex at N = inf (a = nan): kept as a failed
            # resample, without numpy's warning.
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                return F.fit_approach2(F.Runs.from_arrays(Nb, Db, Lb, Cb))

        method = f"parametric: run losses x exp(N(0, {noise:.3g})), re-interpolated"
        res = _parametric_bootstrap(res, "2", runs.L, refit, noise, n_boot, seed, method, out)
    ex = attempt("approach 2 extrapolation", lambda: F.extrapolation_check(pts, "2"), errors)
    if ex is not None:
        res = dataclasses.replace(res, extrapolation=ex)
    return res
