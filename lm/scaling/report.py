"""A sweep's scaling laws: fits, bootstrap intervals, plots and a markdown report.

`write_report(DIR)` reads what `lm sweep run` wrote (DIR/results.csv, DIR/curves.csv,
DIR/sweep.json) and writes DIR/report.md, DIR/fit.json and DIR/plots/*.{png,svg};
`lm scaling plot --sweep DIR` does the same from the command line. The fitting itself is
lm.scaling.fit; this module decides what to fit, on which rows, and how to show it.

What is fitted, on the `main` rows (one final validation loss per (N, D)):
- Chinchilla approach 3 (Hoffmann et al. 2022, arXiv:2203.15556): L = E + A/N^alpha + B/D^beta,
  Huber on log L from the paper's 4500 starts; 95% percentile-bootstrap intervals.
- Kaplan et al. 2020 (arXiv:2001.08361): L(N) on the best loss per size, L(D) on the largest
  size per token count, L(C) on the loss-vs-compute envelope, and the joint L(N, D).
- Approach 1 on curves.csv: the lower envelope of every training curve over compute gives
  N_opt(C) and D_opt(C). WSD cooldowns branched off one trunk per size (Hägele et al. 2024,
  arXiv:2405.18392) put several finished runs of different lengths on each size's curve.
- Approach 2 (IsoFLOP parabolas). On an isoflop sweep, on its own rows. On a grid there are no
  IsoFLOP sets, so they are made by interpolation (`grid_isoflops`): each size's final losses
  are interpolated in (log D, log L) onto common budgets, only *inside* the D range that size
  was trained on, and a budget is kept only if >= 3 sizes reach it. Interpolated points share
  runs across budgets, so their intervals come from a parametric bootstrap of the runs
  (multiplicative noise with the seed-to-seed spread), not from resampling the points.

Each fit is done under two conventions side by side, because the compute-optimal exponent
depends on what is counted (Porian et al. 2024, arXiv:2406.19146; Pearce & Song 2024,
arXiv:2406.12907): (i) Kaplan's non-embedding N with C = C_6N, and (ii) total parameters N_total
with C = C_6N_out (the output layer's FLOPs counted). Approach 3's closed form
a = beta/(alpha + beta) assumes C = 6ND; the "effective" a minimises the fitted L(N, D) at fixed
C with each convention's real FLOPs per token, which moves a under (ii) at small sizes where the
output layer is a large share of the model.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lm.scaling import fit as F

if TYPE_CHECKING:
    from lm.scaling.sweep import SweepConfig

N_BOOT = 200  # approach-3 resamples: ~100 lanes per resample-batch call keep this a few seconds
# L-BFGS options for approach-3 *refits* (bootstrap resamples, hold-out fits), which start
# from the full fit's optimum plus fit.bootstrap_starts' coarse grid. The point fit keeps
# fit.py's tight defaults (ftol 1e-12, 1000 steps; the Besiroglu et al. 2024 concern). On the
# synthetic sweep of tests/test_report.py every resample's parameters agree with the defaults'
# to 1e-6 (relative), at a fifth of the time: the lanes that run to 1000 steps are coarse-grid
# starts drifting along flat directions, never the best lane. 100 steps is not enough (10%).
REFIT_OPTIONS = {"ftol": 1e-9, "max_iter": 200}
N_BOOT_KAPLAN = 100  # each Kaplan refit runs a nonlinear least squares: the slow one
MIN_SIZES = 3  # sizes per IsoFLOP budget, as the library's default
FALLBACK_NOISE = 0.005  # relative loss noise for approach 2's parametric bootstrap, last resort


@dataclass(frozen=True)
class Convention:
    key: str  # fit.json key
    n_col: str  # results.csv column with the parameter count
    c_col: str  # results.csv column with the compute
    title: str


CONVENTIONS = (
    Convention("non_embedding_C_6N", "N", "C_6N", "(i) non-embedding N, C = 6ND (Kaplan)"),
    Convention(
        "total_C_6N_out", "N_total", "C_6N_out", "(ii) total N, C = 6(N + N_out)D (output layer)"
    ),
)

NUMERIC = {
    "N", "N_total", "D", "C", "C_6N", "C_6N_attn", "C_6N_out", "C_chinchilla", "C_hardware",
    "loss", "loss_se", "bpb", "wall_s", "budget", "n_layers", "d_model", "n_heads", "lr",
    "warmup_steps", "steps", "seed", "branch_step",
}  # fmt: skip


# ---------------------------------------------------------------- reading


def read_table(path: Path) -> list[dict[str, Any]]:
    """A CSV as dicts; NUMERIC columns as floats (None when empty or not a number)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in r:
            if k in NUMERIC:
                r[k] = _num(r[k])
    return rows


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _usable(rows: list[dict], cols: tuple[str, ...]) -> tuple[list[dict], int]:
    """Rows whose cols are all positive numbers (a diverged run has no finite loss)."""
    ok = [r for r in rows if all((r.get(c) or 0) > 0 for c in cols)]
    return ok, len(rows) - len(ok)


def _sweep_info(out_dir: Path, sweep: SweepConfig | None) -> tuple[dict, str | None]:
    if sweep is not None:
        return dataclasses.asdict(sweep), None
    p = out_dir / "sweep.json"
    try:
        return json.loads(p.read_text()), None
    except (OSError, ValueError):
        return {}, f"no readable {p.name}: assuming a grid sweep counted with 6N"


# ---------------------------------------------------------------- pieces


def seed_spread(rows: list[dict]) -> dict | None:
    """Final losses of the `seed` rows and the main row with the same (N, D)."""
    seeds = [r for r in rows if r["group"] == "seed"]
    if not seeds:
        return None
    N, D = seeds[0]["N"], seeds[0]["D"]
    same = [r for r in rows if r["N"] == N and r["D"] == D and r["group"] in ("main", "seed")]
    L = np.array([r["loss"] for r in same])
    std = float(np.std(L, ddof=1)) if L.size > 1 else math.nan
    out = {
        "N": N,
        "D": D,
        "names": [r["name"] for r in same],
        "losses": L.tolist(),
        "n": int(L.size),
        "mean": float(L.mean()),
        "std": std,
        "rel_std": std / float(L.mean()),
    }
    # Scale: the loss gap to the next size up at the same D, which the L(N) fit must resolve.
    bigger = sorted(
        (r for r in rows if r["group"] == "main" and r["D"] == D and r["N"] > N),
        key=lambda r: r["N"],
    )
    if bigger and math.isfinite(std):
        gap = out["mean"] - bigger[0]["loss"]
        out.update(next_size_N=bigger[0]["N"], gap_to_next_size=gap)
        out["std_over_gap"] = std / gap if gap > 0 else math.nan
    return out


def wsd_vs_cosine(rows: list[dict]) -> list[dict]:
    """Each separate cosine run next to the main (WSD) run of the same (N, D)."""
    out = []
    for c in (r for r in rows if r["group"] == "cosine"):
        m = next(
            (r for r in rows if r["group"] == "main" and r["N"] == c["N"] and r["D"] == c["D"]),
            None,
        )
        if m is None:
            continue
        out.append(
            {
                "N": c["N"],
                "D": c["D"],
                "wsd_name": m["name"],
                "cosine_name": c["name"],
                "loss_wsd": m["loss"],
                "loss_cosine": c["loss"],
                "diff_cosine_minus_wsd": c["loss"] - m["loss"],
                "wsd_branch_of": m.get("branch_of") or "",
            }
        )
    return sorted(out, key=lambda x: x["D"])


def frontier(C: np.ndarray, L: np.ndarray) -> list[dict]:
    """Lowest final loss in each factor-2 compute bin centred on the smallest C.

    On a grid of sizes and token counts that double, the bins are the near-IsoFLOP diagonals
    (N x 2, D / 2 keeps C), so this is the empirical compute frontier of finished runs."""
    k = np.rint(np.log2(C / C.min())).astype(int)
    out = []
    for b in np.unique(k):
        i = np.flatnonzero(k == b)
        j = i[np.argmin(L[i])]
        out.append({"bin": int(b), "C": float(C[j]), "loss": float(L[j]), "n_runs": int(i.size)})
    return out


def flops_law(N: np.ndarray, fpt: np.ndarray) -> tuple[float, float, float]:
    """FLOPs per token as k N^p over the sweep's sizes: (k, p, rms log residual). Exact for 6N;
    for 6N_out vs N_total a power law through the sizes, used to extrapolate allocations."""
    if np.unique(N).size < 2:
        return float(fpt[0] / N[0]), 1.0, 0.0
    logk, p, rms = F.power_law_fit(N, fpt)
    return math.exp(logk), p, rms


def optimal_allocation(
    params: dict, C: Any, k: float = 6.0, p: float = 1.0, span: float = 5.0, n: int = 801
) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) minimising E + A/N^alpha + B/D^beta subject to C = k N^p D, numerically.

    With k = 6, p = 1 this is approach 3's closed form (Hoffmann et al. 2022 eq. 4); other
    conventions count FLOPs per token differently, so their optimum is found on a log-N grid of
    +-span e-folds around the closed form, refined by a parabola through the best three points.
    NaN where the minimum is at the grid's edge (no interior optimum)."""
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


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


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


# ---------------------------------------------------------------- fitting


def _try(what: str, fn: Callable[[], Any], errors: list[str]) -> Any:
    """Run one fit; a fit that cannot be done becomes a line in the report, not a crash."""
    try:
        return fn()
    except F.FitError as e:
        errors.append(f"{what}: {e}")
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as e:
        errors.append(f"{what}: {type(e).__name__}: {e}")
    return None


def _ci_from_samples(samples: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
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


def _holdout_largest_n(runs: F.Runs, approach: str, **kw: Any) -> dict | None:
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
    sweep: dict,
    noise: float,
    n_boot: int,
    seed: int,
) -> dict:
    """Every approach under one convention. Values: FitResult (or None) per approach, the
    bootstrap samples, approach-3 allocations, and `errors` (why an approach was not fitted)."""
    errors: list[str] = []
    out: dict[str, Any] = {"convention": conv, "errors": errors, "samples": {}, "timing": {}}
    t = time.perf_counter()
    N = np.array([r[conv.n_col] for r in main], np.float64)
    D = np.array([r["D"] for r in main], np.float64)
    L = np.array([r["loss"] for r in main], np.float64)
    C = np.array([r[conv.c_col] for r in main], np.float64)
    out["data"] = {"N": N, "D": D, "L": L, "C": C}
    runs = _try("rows", lambda: F.Runs.from_arrays(N, D, L, C), errors) if main else None
    if runs is None:
        errors.append("no usable main rows: nothing to fit")
        return out
    sizes = np.unique(N)
    fpt = C / D
    k, p, rms = flops_law(sizes, np.array([np.median(fpt[N == s]) for s in sizes]))
    out["flops_law"] = {"k": k, "p": p, "rms_log_residual": rms}

    # Approach 3 with the full 4500-start grid; the bootstrap and hold-outs restart from its
    # optimum plus fit.bootstrap_starts' coarse grid.
    a3 = _try("approach 3", lambda: F.fit_approach3(runs), errors)
    if a3 is not None:
        theta = [a3.details["theta"][q] for q in F.A3_PARAMS]
        starts = F.bootstrap_starts(theta)
        if n_boot:
            b = _try(
                "approach 3 bootstrap",
                lambda: F.bootstrap(runs, "3", n_boot, seed=seed, base=a3, **REFIT_OPTIONS),
                errors,
            )
            if b is not None:
                info = {**b.info, "lbfgs": REFIT_OPTIONS}
                a3 = dataclasses.replace(a3, ci95=b.ci95, bootstrap=info)
                out["samples"]["3"] = b.samples
        ex = _try(
            "approach 3 extrapolation (largest budget)",
            lambda: F.extrapolation_check(runs, "3", starts=starts, **REFIT_OPTIONS),
            errors,
        )
        if ex is not None:
            a3 = dataclasses.replace(a3, extrapolation=ex)
        out["a3_holdout_N"] = _try(
            "approach 3 extrapolation (largest N)",
            lambda: _holdout_largest_n(runs, "3", starts=starts, **REFIT_OPTIONS),
            errors,
        )
        out["a3_effective"] = _a3_effective(a3, out["samples"].get("3"), C, k, p)
    out["3"] = a3
    out["timing"]["approach3"] = time.perf_counter() - t

    t = time.perf_counter()
    out["kaplan"] = _fit_plus(runs, "kaplan", min(n_boot, N_BOOT_KAPLAN), seed, errors, out)
    if out["kaplan"] is not None:
        out["kaplan_holdout_N"] = _try(
            "kaplan extrapolation (largest N)", lambda: _holdout_largest_n(runs, "kaplan"), errors
        )
    out["timing"]["kaplan"] = time.perf_counter() - t

    t = time.perf_counter()
    cruns = _curve_runs(conv, main, curves)
    if cruns is None:
        errors.append("approach 1: no training curves (curves.csv empty or missing)")
        out["1"] = None
    else:
        out["curve_data"] = cruns
        out["1"] = _fit_plus(cruns, "1", n_boot, seed, errors, out)
    out["timing"]["approach1"] = time.perf_counter() - t

    t = time.perf_counter()
    out["2"] = _fit_approach2(conv, runs, fpt, sweep, noise, n_boot, seed, errors, out)
    out["timing"]["approach2"] = time.perf_counter() - t
    return out


def _fit_plus(runs, approach, n_boot, seed, errors, out) -> F.FitResult | None:
    """Fit, library bootstrap (row resampling), and hold-out-the-largest-budget check."""
    name = {"kaplan": "kaplan", "1": "approach 1", "2": "approach 2"}[approach]
    res = _try(name, lambda: F.fit_one(runs, approach), errors)
    if res is None:
        return None
    if n_boot:
        b = _try(
            f"{name} bootstrap", lambda: F.bootstrap(runs, approach, n_boot, seed=seed), errors
        )
        if b is not None:
            res = dataclasses.replace(res, ci95=b.ci95, bootstrap=b.info)
            out["samples"][approach] = b.samples
    ex = _try(f"{name} extrapolation", lambda: F.extrapolation_check(runs, approach), errors)
    if ex is not None:
        res = dataclasses.replace(res, extrapolation=ex)
    return res


def _curve_runs(conv: Convention, main: list[dict], curves: list[dict]) -> F.Runs | None:
    """curves.csv under the convention: N from the member's row, C = its FLOPs per token x D.
    A WSD branch repeats its trunk's curve up to the branch point; duplicates are dropped."""
    by_name = {r["name"]: r for r in main}
    pts = []
    for c in curves:
        m = by_name.get(c.get("name"))
        if m is None or not (c.get("D") or 0) > 0 or not (c.get("loss") or 0) > 0:
            continue
        pts.append((m[conv.n_col], c["D"], c["loss"], m[conv.c_col] / m["D"] * c["D"]))
    if not pts:
        return None
    a = np.unique(np.array(pts, np.float64), axis=0)
    return F.Runs.from_arrays(a[:, 0], a[:, 1], a[:, 2], a[:, 3])


def _fit_approach2(conv, runs, fpt, sweep, noise, n_boot, seed, errors, out):
    isoflop = sweep.get("kind") == "isoflop"
    same = "C_" + str(sweep.get("flops_convention", "6N")) == conv.c_col
    if isoflop and same:
        out["a2_method"] = "isoflop rows of the sweep"
        out["a2_runs"] = runs
        return _fit_plus(runs, "2", n_boot, seed, errors, out)
    out["a2_method"] = (
        "IsoFLOP points interpolated from each size's runs (PCHIP in log D, log L; no "
        "extrapolation beyond a size's trained D)"
        + ("" if not isoflop else "; the sweep's budgets are IsoFLOP only in its own convention")
    )
    N, D, L, C, budgets = grid_isoflops(runs.N, runs.D, runs.L, fpt)
    if N.size == 0:
        errors.append("approach 2: no size has >= 2 token counts to interpolate between")
        return None
    pts = F.Runs.from_arrays(N, D, L, C)
    out["a2_runs"] = pts
    res = _try("approach 2", lambda: F.fit_approach2(pts, min_sizes=MIN_SIZES), errors)
    if res is None:
        return None
    if n_boot:
        # Parametric: perturb the runs' losses by the run-to-run noise, redo the interpolation
        # and the fit. Resampling interpolated points would treat shared runs as independent.
        rng = np.random.default_rng(seed)
        rows = []
        for _ in range(n_boot):
            Lb = runs.L * np.exp(rng.normal(0.0, noise, runs.L.size))
            Nb, Db, Lb, Cb, _ = grid_isoflops(runs.N, runs.D, Lb, fpt, budgets)
            try:
                # A nearly flat parabola puts its vertex at N = inf (a = nan): kept as a failed
                # resample, without numpy's warning.
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    rows.append(F.fit_approach2(F.Runs.from_arrays(Nb, Db, Lb, Cb)).params)
            except (F.FitError, ArithmeticError):
                pass
        if rows:
            samples = {q: np.array([r[q] for r in rows]) for q in rows[0]}
            out["samples"]["2"] = samples
            info = {
                "n_boot": n_boot,
                "n_ok": len(rows),
                "n_failed": n_boot - len(rows),
                "seed": seed,
                "method": f"parametric: run losses x exp(N(0, {noise:.3g})), re-interpolated",
                "interval": "percentile [2.5%, 97.5%]",
            }
            res = dataclasses.replace(res, ci95=_ci_from_samples(samples), bootstrap=info)
    ex = _try("approach 2 extrapolation", lambda: F.extrapolation_check(pts, "2"), errors)
    if ex is not None:
        res = dataclasses.replace(res, extrapolation=ex)
    return res


def _a3_effective(a3: F.FitResult, samples: dict | None, C: np.ndarray, k: float, p: float):
    """Approach 3's allocation with the convention's own FLOPs per token (k N^p), over the
    sweep's compute range: exponents a, b as slopes, and D/N at the largest budget."""
    Cg = np.geomspace(C.min(), C.max(), 25)

    def one(params):
        No, Do = optimal_allocation(params, Cg, k, p)
        return _slope(Cg, No), _slope(Cg, Do), float(Do[-1] / No[-1])

    a, b, r = one(a3.params)
    out = {"a": a, "b": b, "tokens_per_param_at_C_max": r, "C_max": float(C.max())}
    if samples:
        n = len(next(iter(samples.values())))
        vals = np.array([one({q: samples[q][i] for q in samples}) for i in range(n)])
        ci = _ci_from_samples(
            dict(zip(("a", "b", "tokens_per_param_at_C_max"), vals.T, strict=True))
        )
        out["ci95"] = ci
    return out


# ---------------------------------------------------------------- epochs


def corpus_tokens(out_dir: Path, run_name: str) -> tuple[int | None, str]:
    """Training-split tokens of the corpus a run trained on, read from the token cache's
    meta.json (the CSVs do not record it). (None, why) when it cannot be found."""
    run_dir = out_dir / "runs" / run_name
    if not (run_dir / "config.yaml").is_file():
        return None, f"no {run_dir / 'config.yaml'} to read the data config from"
    try:
        from lm import config as config_lib
        from lm import data
        from lm.tokenizer import load_tokenizer

        cfg = config_lib.load(run_dir / "config.yaml")
        tok = load_tokenizer(run_dir)
        key = {
            "format": data.FORMAT_VERSION,
            "corpus": data.corpus_fingerprint(cfg.data),
            "tokenizer": tok.identity,
            "val_fraction": cfg.data.val_fraction,
            "max_docs": cfg.data.max_docs,
        }
        key = json.loads(json.dumps(key))
        root = Path(cfg.data.cache_dir).expanduser() / "tokens"
        for meta_path in sorted(root.glob("*/meta.json")):
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == key:
                return int(meta["train"]["tokens"]), str(meta_path.parent)
        return None, f"no token cache under {root} matches {run_dir}'s data config"
    except Exception as e:  # noqa: BLE001 - optional information: any failure is a note
        return None, f"corpus size not found ({type(e).__name__}: {e})"


# ---------------------------------------------------------------- the report


def write_report(
    out_dir: Path,
    sweep: SweepConfig | None = None,
    print_fn=print,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """Fit, plot and write DIR/report.md, DIR/fit.json and DIR/plots/; return the key numbers.

    n_boot resamples for every bootstrap (Kaplan's capped at N_BOOT_KAPLAN); 0 skips them."""
    import warnings

    # Bootstrap resamples that fail (a flat parabola, an overflowing power) are dropped and
    # counted in the report; numpy's per-resample warnings would only bury the summary.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _write_report(out_dir, sweep, print_fn, n_boot=n_boot, seed=seed)


def _write_report(out_dir, sweep, print_fn, *, n_boot: int, seed: int) -> dict:
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    info, sweep_note = _sweep_info(out_dir, sweep)
    notes = [sweep_note] if sweep_note else []
    rows, bad = _usable(read_table(out_dir / "results.csv"), ("N", "N_total", "D", "loss"))
    if bad:
        notes.append(f"{bad} result row(s) without a finite positive loss were left out")
    rows, bad = _usable(rows, tuple(c.c_col for c in CONVENTIONS))
    if bad:
        notes.append(f"{bad} result row(s) without C_6N / C_6N_out were left out")
    for r in rows:
        r["group"] = r.get("group") or "main"
    main = [r for r in rows if r["group"] == "main"]
    if not main:
        notes.append("no usable main rows in results.csv: nothing to fit")
    curves = read_table(out_dir / "curves.csv")

    spread = seed_spread(rows)
    cosine = wsd_vs_cosine(rows)
    # Run-to-run noise for approach 2's parametric bootstrap: the seed spread, else the eval's
    # own standard error, else a stated guess.
    if spread and math.isfinite(spread["std"]) and spread["std"] > 0:
        noise, noise_src = spread["rel_std"], "seed-to-seed relative std"
    elif any(r.get("loss_se") for r in main):
        noise = float(np.median([r["loss_se"] / r["loss"] for r in main if r.get("loss_se")]))
        noise_src = "median eval standard error (no seed spread)"
    else:
        noise, noise_src = FALLBACK_NOISE, "assumed (no seed spread, no eval standard error)"

    fits = _fit_conventions(main, curves, info, noise, n_boot, seed)
    t_fit = time.perf_counter() - t0

    checks = _checks(main, fits)
    epochs = _epochs(out_dir, main)
    tpp = _tokens_per_param(fits)
    t1 = time.perf_counter()
    plots = _plots(out_dir / "plots", main, curves, fits)
    t_plot = time.perf_counter() - t1

    summary = _summary(fits, spread, cosine, checks, tpp)
    summary["timing_s"] = {"fits": t_fit, "plots": t_plot}
    doc = {
        "sweep": info.get("name", out_dir.name),
        "kind": info.get("kind", "grid"),
        "rows": {"main": len(main), "all": len(rows), "curve_points": len(curves)},
        "conventions": {k: _fits_json(v) for k, v in fits.items()},
        "convention_comparison": summary["convention_comparison"],
        "tokens_per_parameter": tpp,
        "seed_spread": spread,
        "parametric_noise": {"rel_std": noise, "source": noise_src},
        "wsd_vs_cosine": cosine,
        "epochs": epochs,
        "checks": checks,
        "plots": plots,
        "notes": notes,
    }
    md = _markdown(info, doc, fits, n_boot, out_dir.name)
    summary["timing_s"]["total"] = time.perf_counter() - t0
    doc["timing_s"] = summary["timing_s"]
    (out_dir / "fit.json").write_text(json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n")
    (out_dir / "report.md").write_text(md)
    summary.update(
        report=str(out_dir / "report.md"), fit_json=str(out_dir / "fit.json"), plots=plots,
        checks=checks, seed_spread=spread, wsd_vs_cosine=cosine, epochs=epochs,
        errors={k: list(v["errors"]) for k, v in fits.items()},
    )  # fmt: skip
    for line in _summary_lines(summary):
        print_fn(line)
    return summary


def _fit_worker(in_path: str, out_path: str) -> None:
    """Child-process side of `_fit_conventions`: pickled arguments in, pickled fit out."""
    import pickle
    import warnings

    args = pickle.loads(Path(in_path).read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = fit_convention(*args)
    tmp = Path(out_path + ".tmp")
    tmp.write_bytes(pickle.dumps(out))
    tmp.replace(out_path)


_WORKER = "import sys; from lm.scaling.report import _fit_worker; _fit_worker(*sys.argv[1:])"


def _fit_conventions(main, curves, info, noise, n_boot, seed) -> dict:
    """fit_convention for every convention: the first here, the others each in a child
    process meanwhile.

    The fits are independent, and their L-BFGS loops are many small numpy operations that hold
    the GIL, so threads mostly take turns. A child process (a plain interpreter running
    `_fit_worker`, ~2 s to import, overlapped with the fit here) runs truly in parallel; not
    multiprocessing, whose spawn would re-run the caller's main script. Where no child can be
    started or it fails, the fit is done here instead. The numbers are the same either way."""
    import pickle
    import subprocess
    import sys
    import tempfile

    first, rest = CONVENTIONS[0], CONVENTIONS[1:]
    args = lambda c: (c, main, curves, info, noise, n_boot, seed)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="lm-fit-") as tmp:
        children = {}
        for c in rest:
            inp, outp = Path(tmp) / f"{c.key}.in", Path(tmp) / f"{c.key}.out"
            inp.write_bytes(pickle.dumps(args(c)))
            cmd = [sys.executable, "-c", _WORKER, str(inp), str(outp)]
            try:
                children[c] = (subprocess.Popen(cmd), outp)
            except OSError:
                pass  # fitted below, here
        try:
            fits = {first.key: fit_convention(*args(first))}
            for c in rest:
                proc, outp = children.get(c, (None, None))
                if proc is not None and proc.wait() == 0 and outp.is_file():
                    fits[c.key] = pickle.loads(outp.read_bytes())
                else:
                    fits[c.key] = fit_convention(*args(c))
        finally:
            for proc, _ in children.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return fits


def _tokens_per_param(fits: dict) -> dict:
    """D_opt / N_opt at each convention's largest compute budget, and how it scales (C^(b-a))."""
    out = {}
    for key, f in fits.items():
        d: dict[str, Any] = {}
        C = f["data"]["C"]
        if C.size == 0:
            continue
        Cmax = float(C.max())
        eff = f.get("a3_effective")
        if eff:
            d["approach3"] = {
                "C_max": Cmax,
                "D_opt_over_N_opt": eff["tokens_per_param_at_C_max"],
                "ci95": (eff.get("ci95") or {}).get("tokens_per_param_at_C_max"),
                "scales_as_C_to": eff["b"] - eff["a"],
            }
        for ap in ("1", "2"):
            r = f.get(ap)
            if r is None:
                continue
            q = r.params
            ratio = q["k_D"] / q["k_N"] * Cmax ** (q["b"] - q["a"])
            s = f["samples"].get(ap)
            ci = None
            if s:
                ci = _ci_from_samples({"r": s["k_D"] / s["k_N"] * Cmax ** (s["b"] - s["a"])})["r"]
            d[f"approach{ap}"] = {
                "C_max": Cmax,
                "D_opt_over_N_opt": ratio,
                "ci95": ci,
                "scales_as_C_to": q["b"] - q["a"],
            }
        out[key] = d
    return out


def _epochs(out_dir: Path, main: list[dict]) -> dict:
    if not main:
        return {"note": "no runs"}
    n, where = corpus_tokens(out_dir, main[0]["name"])
    D = max(r["D"] for r in main)
    if n is None:
        return {"max_D": D, "note": where}
    return {"corpus_train_tokens": n, "max_D": D, "max_epochs": D / n, "cache": where}


def _checks(main: list[dict], fits: dict) -> list[dict]:
    """Sanity checks, each PASS / FAIL, or SKIP with the reason."""
    out = []

    def add(name, ok, detail=""):
        out.append({"check": name, "result": _verdict(ok), "detail": detail})

    kap = fits[CONVENTIONS[0].key]
    if len(main) >= 2:
        C = np.array([r["C_6N"] for r in main])
        L = np.array([r["loss"] for r in main])
        fr = frontier(C, L)
        mono = all(b["loss"] < a["loss"] for a, b in zip(fr, fr[1:], strict=False))
        detail = ", ".join(f"{x['C']:.3g}: {x['loss']:.4f}" for x in fr)
        add(
            "frontier monotone decreasing (lowest final loss per factor-2 C_6N bin)",
            mono if len(fr) >= 2 else None,
            detail if len(fr) >= 2 else "fewer than 2 compute bins",
        )
    else:
        add("frontier monotone decreasing", None, "fewer than 2 runs")
    for conv in CONVENTIONS:
        k = fits[conv.key].get("kaplan")
        tag = conv.title.split(" ")[0]
        if k is None:
            add(f"{tag} Kaplan L(N) exponent alpha_N > 0", None, "Kaplan fit not done")
            continue
        add(f"{tag} Kaplan L(N) exponent alpha_N > 0", k.params["alpha_N"] > 0,
            f"alpha_N = {k.params['alpha_N']:.4g}")  # fmt: skip
    k = kap.get("kaplan")
    if k is not None:
        add("fitted frontier L(C) decreasing: Kaplan alpha_C > 0 (i)", k.params["alpha_C"] > 0,
            f"alpha_C = {k.params['alpha_C']:.4g}")  # fmt: skip
    a3 = kap.get("3")
    if a3 is None:
        add("approach 3 exponents alpha > 0 and beta > 0 (i)", None, "approach 3 not fitted")
    else:
        p = a3.params
        add("approach 3 exponents alpha > 0 and beta > 0 (i)", p["alpha"] > 0 and p["beta"] > 0,
            f"alpha = {p['alpha']:.4g}, beta = {p['beta']:.4g}")  # fmt: skip
        s = a3.stats
        add(
            "approach 3 optimum reached from >= 2 of the grid's starts (i) (Besiroglu et al. 2024)",
            s["n_starts_at_best"] >= 2,
            f"{s['n_starts_at_best']} of {s['n_starts']}",
        )
    return out


def _verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else ("PASS" if ok else "FAIL")


# ---------------------------------------------------------------- summaries and JSON


def _summary(fits, spread, cosine, checks, tpp) -> dict:
    s: dict[str, Any] = {}
    kap, tot = (fits[c.key] for c in CONVENTIONS)
    if kap.get("3") is not None:
        s.update({q: kap["3"].params[q] for q in ("E", "A", "B", "alpha", "beta", "a", "b", "G")})
        s["ci95"] = kap["3"].ci95
    if kap.get("kaplan") is not None:
        s.update({q: kap["kaplan"].params[q] for q in ("alpha_N", "alpha_D", "alpha_C")})
    comp = {}
    for name, get in _EXPONENT_SOURCES:
        vi, vt = get(kap), get(tot)
        comp[name] = {
            CONVENTIONS[0].key: vi,
            CONVENTIONS[1].key: vt,
            "shift": (vt - vi) if vi is not None and vt is not None else None,
        }
    s["convention_comparison"] = comp
    s["tokens_per_parameter"] = tpp
    s["all_checks_pass"] = all(c["result"] != "FAIL" for c in checks)
    if cosine:
        s["mean_cosine_minus_wsd"] = float(np.mean([c["diff_cosine_minus_wsd"] for c in cosine]))
    if spread:
        s["seed_std"] = spread["std"]
    return s


def _param(approach: str, key: str):
    def get(f):
        r = f.get(approach)
        return None if r is None else r.params.get(key)

    return get


def _effective(key: str):
    def get(f):
        e = f.get("a3_effective")
        return None if not e else e[key]

    return get


# (label, getter) for the convention table: the compute-optimal exponents a (N_opt ~ C^a) and b.
_EXPONENT_SOURCES = (
    ("a, approach 1", _param("1", "a")),
    ("a, approach 2", _param("2", "a")),
    ("a, approach 3 closed form beta/(alpha+beta)", _param("3", "a")),
    ("a, approach 3 effective (convention's FLOPs/token)", _effective("a")),
    ("b, approach 1", _param("1", "b")),
    ("b, approach 2", _param("2", "b")),
    ("b, approach 3 effective", _effective("b")),
    ("alpha (approach 3)", _param("3", "alpha")),
    ("beta (approach 3)", _param("3", "beta")),
    ("alpha_N (Kaplan L(N))", _param("kaplan", "alpha_N")),
)


def _fits_json(f: dict) -> dict:
    out: dict[str, Any] = {"description": f["convention"].title, "errors": f["errors"]}
    out["n_col"], out["C_col"] = f["convention"].n_col, f["convention"].c_col
    for key, name in (("3", "approach3"), ("kaplan", "kaplan"), ("1", "approach1"),
                      ("2", "approach2")):  # fmt: skip
        r = f.get(key)
        out[name] = None if r is None else r.to_json()
    if out["approach3"] is not None:
        out["approach3"]["extrapolation_largest_N"] = f.get("a3_holdout_N")
        out["approach3"]["effective_allocation"] = f.get("a3_effective")
    if out["kaplan"] is not None:
        out["kaplan"]["extrapolation_largest_N"] = f.get("kaplan_holdout_N")
    if out["approach2"] is not None:
        out["approach2"]["method"] = f.get("a2_method")
    out["flops_per_token_law"] = f.get("flops_law")
    out["timing_s"] = f["timing"]
    return out


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _summary_lines(s: dict) -> list[str]:
    lines = []
    if "alpha" in s:
        ci = s.get("ci95") or {}
        lines.append(
            "approach 3 (i): "
            + ", ".join(f"{q} {_g(s[q])}{_ci(ci.get(q))}" for q in ("alpha", "beta", "a", "E"))
        )
    comp = s["convention_comparison"]
    for name in ("a, approach 1", "a, approach 3 effective (convention's FLOPs/token)"):
        c = comp[name]
        vals = [c[CONVENTIONS[0].key], c[CONVENTIONS[1].key]]
        if None not in vals:
            lines.append(f"{name}: (i) {vals[0]:.3f}, (ii) {vals[1]:.3f}, shift {c['shift']:+.3f}")
    if "alpha_N" in s:
        lines.append(f"Kaplan (i): alpha_N {s['alpha_N']:.3f}, alpha_D {s['alpha_D']:.3f}")
    if s.get("seed_std") is not None:
        lines.append(f"seed-to-seed std of the final loss: {s['seed_std']:.4f} nats")
    for c in s["checks"]:
        lines.append(f"{c['result']}: {c['check']}")
    for k, errs in s["errors"].items():
        for e in errs:
            lines.append(f"not fitted [{k}]: {e}")
    t = s["timing_s"]
    lines.append(
        f"report -> {s['report']} ({t['total']:.1f} s: fits {t['fits']:.1f} s, plots "
        f"{t['plots']:.1f} s)"
    )
    return lines


# ---------------------------------------------------------------- markdown


def _g(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{v:,}"
    v = float(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def _ci(ci: Any) -> str:
    if not ci or any(x is None or not math.isfinite(x) for x in ci):
        return ""
    return f" [{_g(ci[0])}, {_g(ci[1])}]"


def _param_table(fits: dict, approach: str, keys: tuple[str, ...]) -> list[str]:
    head = "| | " + " | ".join(c.title for c in CONVENTIONS) + " |"
    lines = [head, "|---" * (len(CONVENTIONS) + 1) + "|"]
    for k in keys:
        cells = []
        for c in CONVENTIONS:
            r = fits[c.key].get(approach)
            if r is None:
                cells.append("—")
            else:
                cells.append(_g(r.params.get(k)) + _ci((r.ci95 or {}).get(k)))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def _boot_line(fits: dict, approach: str) -> str:
    parts = []
    for c in CONVENTIONS:
        r = fits[c.key].get(approach)
        if r is not None and r.bootstrap:
            b = r.bootstrap
            parts.append(f"{c.title.split(' ')[0]} {b['n_ok']}/{b['n_boot']} resamples")
            method = b["method"]
            if "lbfgs" in b:
                method += ", L-BFGS " + ", ".join(f"{k} {v:g}" for k, v in b["lbfgs"].items())
    if not parts:
        return "No bootstrap (n_boot = 0 or every resample failed)."
    return f"95% intervals: percentile bootstrap, {'; '.join(parts)} ({method})."


def _errors_for(fits: dict, prefix: str) -> list[str]:
    out = []
    for c in CONVENTIONS:
        for e in fits[c.key]["errors"]:
            if e.startswith(prefix):
                out.append(f"- Not done under {c.title.split(' ')[0]}: {e}")
    return out


def _extrap_cell(ex: dict | None) -> str:
    if not ex:
        return "not done: fewer than 3 compute budgets (IsoFLOP budgets for approach 2)"
    if "rel_error" in ex:
        return f"{ex['rel_error']:+.2%} (N_opt)"
    if "mean_abs_rel_error" in ex:
        return f"mean {ex['mean_abs_rel_error']:.2%}, max {ex['max_abs_rel_error']:.2%}"
    return ex.get("note", "—")


def _markdown(info: dict, doc: dict, fits: dict, n_boot: int, dirname: str) -> str:
    kap = fits[CONVENTIONS[0].key]
    L: list[str] = [f"# Scaling report: {doc['sweep']}", ""]
    main_n = doc["rows"]["main"]
    d = kap["data"]
    L.append(
        f"Sweep `{doc['sweep']}` ({doc['kind']}, members counted with "
        f"`{info.get('flops_convention', '6N')}`), directory `{dirname}`: {main_n} main runs, "
        f"{doc['rows']['all']} in all, {doc['rows']['curve_points']} training-curve points."
    )
    if main_n:
        L.append(
            f"Non-embedding N from {_g(d['N'].min())} to {_g(d['N'].max())}, D from "
            f"{_g(d['D'].min())} to {_g(d['D'].max())} tokens, C_6N from {_g(d['C'].min())} to "
            f"{_g(d['C'].max())} FLOPs ({math.log10(d['C'].max() / d['C'].min()):.2f} decades)."
        )
    L += ["", "Losses are final validation losses in nats/token. Every number is fitted twice:"]
    for c in CONVENTIONS:
        L.append(f"- **{c.title}**: parameters `{c.n_col}`, compute `{c.c_col}`.")
    L += [
        "",
        "Porian et al. 2024 (arXiv:2406.19146) and Pearce & Song 2024 (arXiv:2406.12907) trace "
        "much of the Kaplan/Chinchilla disagreement on the compute-optimal exponent to this "
        "choice (and to the output layer's FLOPs), so both are shown side by side.",
        "",
    ]
    for n in doc["notes"]:
        L.append(f"> Note: {n}")
    L += ["", "## Approach 3: L(N, D) = E + A/N^alpha + B/D^beta", ""]
    L.append(
        "Hoffmann et al. 2022 (arXiv:2203.15556) App. D.2: Huber (delta 1e-3) on log L, L-BFGS "
        "from the paper's 4500-start grid, best objective kept. N_opt = G (C/6)^a, "
        "D_opt = G^-1 (C/6)^b."
    )
    L.append("")
    L += _param_table(fits, "3", ("E", "A", "B", "alpha", "beta", "a", "b", "G"))
    L += ["", _boot_line(fits, "3")]
    for c in CONVENTIONS:
        r = fits[c.key].get("3")
        if r is not None:
            s = r.stats
            L.append(
                f"- {c.title.split(' ')[0]}: objective {s['objective']:.4g}, reached by "
                f"{s['n_starts_at_best']} of {s['n_starts']} starts; rms log residual "
                f"{s['rms_log_residual']:.4f} (mean |rel. error| {s['mean_abs_rel_error']:.2%})."
            )
    L += _errors_for(fits, "approach 3")
    L += ["", "## Kaplan et al. 2020 power laws", ""]
    L.append(
        "L(N) = (N_c/N)^alpha_N on the lowest loss of each size; L(D) = (D_c/D)^alpha_D on the "
        "largest size at each D; L(C) = (C_c/C)^alpha_C on the envelope of final losses over "
        "compute; joint L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D on every run "
        "(arXiv:2001.08361 eqs. 1.1-1.5). Single-variable laws are only meaningful in their "
        "limit (D large for L(N)); on a small grid read them as descriptive."
    )
    L.append("")
    L += _param_table(fits, "kaplan", ("alpha_N", "N_c", "alpha_D", "D_c", "alpha_C", "C_c",
                                       "joint_alpha_N", "joint_alpha_D"))  # fmt: skip
    L += ["", _boot_line(fits, "kaplan")]
    L += _errors_for(fits, "kaplan")
    L += ["", "## Approach 1: lower envelope of the training curves", ""]
    L.append(
        "Every logged training loss of every main run (curves.csv), binned over log C "
        "(1500 bins), lowest loss per bin, kept only while it decreases; N_opt = k_N C^a and "
        "D_opt = k_D C^b fitted to the envelope's (C, N, D). Training loss, not validation, "
        "and WSD curves (one trunk per size, cooldowns branched off; Hägele et al. 2024): the "
        "stable phase lies above a finished run's loss, so the envelope is made by the "
        "cooldowns and the discrete sizes."
    )
    L.append("")
    L += _param_table(fits, "1", ("a", "b", "k_N", "k_D"))
    L += ["", _boot_line(fits, "1")]
    for c in CONVENTIONS:
        r = fits[c.key].get("1")
        if r is not None:
            L.append(
                f"- {c.title.split(' ')[0]}: {r.stats['envelope_points']} envelope points over "
                f"{r.stats['envelope_sizes']} sizes."
            )
    L += _errors_for(fits, "approach 1")
    L += ["", "## Approach 2: IsoFLOP profiles", ""]
    methods = {fits[c.key].get("a2_method") for c in CONVENTIONS} - {None}
    if doc["kind"] != "isoflop":
        L.append(
            "This is a grid sweep, and approach 2 needs an isoflop sweep. IsoFLOP profiles are "
            "therefore *interpolated*: each size's final losses in (log D, log L) by monotone "
            "cubic (PCHIP), evaluated at D = C / (FLOPs per token) for budgets a factor "
            "sqrt(2) apart, only inside the D range that size was trained on; a budget needs >= 3 "
            "sizes. A parabola in log N per budget gives N_opt (Hoffmann et al. 2022 sec. 3.2). "
            "The window of sizes per budget is only as wide as the grid's D range, so minima "
            "near its edge are extrapolations (counted below as exterior). Intervals: "
            "parametric bootstrap of the runs (see below), since one run feeds several "
            "budgets."
        )
    for m in sorted(methods):
        L.append(f"- Method: {m}.")
    L.append("")
    L += _param_table(fits, "2", ("a", "b", "k_N", "k_D"))
    L += ["", _boot_line(fits, "2")]
    for c in CONVENTIONS:
        r = fits[c.key].get("2")
        if r is not None:
            s = r.stats
            L.append(
                f"- {c.title.split(' ')[0]}: {s['n_budgets']} budgets ({s['n_budgets_dropped']} "
                f"dropped), {s['n_exterior_minima']} minima outside the sampled sizes."
            )
    L += _errors_for(fits, "approach 2")
    pn = doc["parametric_noise"]
    L.append(f"- Parametric noise: relative std {pn['rel_std']:.3g} ({pn['source']}).")

    L += ["", "## Conventions side by side: the compute-optimal exponent", ""]
    L.append(
        "N_opt ~ C^a, D_opt ~ C^b. Approach 3's closed form a = beta/(alpha+beta) assumes "
        "C = 6ND in the convention's own N; the *effective* a minimises the fitted L(N, D) at "
        "fixed C with the convention's real FLOPs per token (a power law k N^p through the "
        "sizes), as the slope over the sweep's compute range. Shift = (ii) - (i)."
    )
    L += ["", "| exponent | (i) N, C_6N | (ii) N_total, C_6N_out | shift |", "|---|---|---|---|"]
    for name, c in doc["convention_comparison"].items():
        vi, vt = c[CONVENTIONS[0].key], c[CONVENTIONS[1].key]
        shift = "—" if c["shift"] is None else f"{c['shift']:+.4f}"
        L.append(f"| {name} | {_g(vi)} | {_g(vt)} | {shift} |")
    L.append("")
    for c in CONVENTIONS:
        e = fits[c.key].get("a3_effective")
        fl = fits[c.key].get("flops_law")
        if e and fl:
            ci = e.get("ci95") or {}
            L.append(
                f"- {c.title.split(' ')[0]}: FLOPs/token = {fl['k']:.4g} N^{fl['p']:.4f} "
                f"(rms log residual {fl['rms_log_residual']:.2g}); effective a = "
                f"{_g(e['a'])}{_ci(ci.get('a'))}, b = {_g(e['b'])}{_ci(ci.get('b'))}."
            )

    L += ["", "## Tokens per parameter at the optimum", ""]
    L.append(
        "D_opt / N_opt at each convention's largest compute budget. In general "
        "D_opt/N_opt = (k_D/k_N) C^(b - a) (approaches 1, 2) and G^-2 (C/6)^(b - a) with "
        "b - a = (alpha - beta)/(alpha + beta) (approach 3, C = 6ND): constant, as Hoffmann "
        "et al.'s ~20 tokens per parameter, only if a = b. The last column is b - a (for "
        "approach 3, from the effective a and b)."
    )
    L += ["", "| convention | approach | C_max | D_opt/N_opt | ~ C^ |", "|---|---|---|---|---|"]
    for c in CONVENTIONS:
        for ap, v in doc["tokens_per_parameter"].get(c.key, {}).items():
            L.append(
                f"| {c.title.split(' ')[0]} | {ap} | {_g(v['C_max'])} | "
                f"{_g(v['D_opt_over_N_opt'])}{_ci(v['ci95'])} | {_g(v['scales_as_C_to'])} |"
            )

    L += ["", "## Extrapolation", ""]
    L.append(
        "Fit without the largest compute budget (runs within 10% of the largest C) or without "
        "the largest model size, then predict the held-out runs. Approach 3 and Kaplan predict "
        "the loss; approaches 1 and 2 predict N_opt. Errors are prediction / actual - 1."
    )
    L += ["", "| convention | fit | held out | error |", "|---|---|---|---|"]
    for c in CONVENTIONS:
        f = fits[c.key]
        tag = c.title.split(" ")[0]
        for key, label in (("3", "approach 3"), ("kaplan", "Kaplan joint L(N,D)"),
                           ("1", "approach 1"), ("2", "approach 2")):  # fmt: skip
            r = f.get(key)
            if r is None:
                continue
            ex = r.extrapolation
            held = f"largest C ({_g(ex['held_out_C'])})" if ex else "largest C"
            L.append(f"| {tag} | {label} | {held} | {_extrap_cell(ex)} |")
            hn = f.get({"3": "a3_holdout_N", "kaplan": "kaplan_holdout_N"}.get(key, ""))
            if hn:
                L.append(
                    f"| {tag} | {label} | largest N ({_g(hn['held_out_N'])}) | {_extrap_cell(hn)} |"
                )

    L += ["", "## Seed-to-seed spread", ""]
    sp = doc["seed_spread"]
    if not sp:
        L.append("No seed runs (sweep `seeds: 1`): the run-to-run noise is unknown.")
    else:
        L.append(
            f"{sp['n']} runs of the smallest size (N = {_g(sp['N'])}, D = {_g(sp['D'])}) "
            f"differing only in seed: mean {sp['mean']:.4f}, std {_g(sp['std'])} nats "
            f"({sp['rel_std']:.2%}); losses {', '.join(f'{x:.4f}' for x in sp['losses'])}."
        )
        if "gap_to_next_size" in sp:
            L.append(
                f"The loss gap to the next size (N = {_g(sp['next_size_N'])}) at this D is "
                f"{sp['gap_to_next_size']:.4f}: the seed std is {sp['std_over_gap']:.1%} of it."
            )
        L.append(
            "Read the fitted exponents with this noise in mind: a seed std of this size moves "
            "each run's loss by that much, and with a few sizes spanning about one decade the "
            "exponents inherit it (the bootstrap intervals above measure the same thing "
            "from the fit's residuals)."
        )

    L += ["", "## WSD branch vs separate cosine run", ""]
    cos = doc["wsd_vs_cosine"]
    if not cos:
        L.append("No cosine comparison runs (sweep `compare_cosine: false`, or not WSD).")
    else:
        L.append(
            "Same size, same D, same seed: the WSD member (a cooldown branched off the trunk; "
            "Hägele et al. 2024) vs a separate cosine-schedule run."
        )
        L += ["", "| N | D | WSD loss | cosine loss | cosine - WSD |", "|---|---|---|---|---|"]
        for c in cos:
            L.append(
                f"| {_g(c['N'])} | {_g(c['D'])} | {c['loss_wsd']:.4f} | {c['loss_cosine']:.4f} "
                f"| {c['diff_cosine_minus_wsd']:+.4f} |"
            )
        mean = float(np.mean([c["diff_cosine_minus_wsd"] for c in cos]))
        L.append("")
        scale = f" (seed std {sp['std']:.4f})" if sp and math.isfinite(sp["std"]) else ""
        L.append(f"Mean cosine - WSD: {mean:+.4f} nats{scale}.")

    L += ["", "## Epochs", ""]
    ep = doc["epochs"]
    if "corpus_train_tokens" in ep:
        L.append(
            f"Largest D = {_g(ep['max_D'])} tokens of a {ep['corpus_train_tokens']:,}-token "
            f"training split: {ep['max_epochs']:.3f} epochs"
            + (" (no repeated data)." if ep["max_epochs"] <= 1 else " (data repeated).")
        )
    else:
        L.append(f"Not reported: {ep.get('note')}.")

    L += ["", "## Checks", ""]
    for c in doc["checks"]:
        L.append(f"- {c['result']}: {c['check']}" + (f" — {c['detail']}" if c["detail"] else ""))

    L += ["", "## Plots", ""]
    L.append(
        "Plots in convention (i) unless labelled: C = C_6N (6 x non-embedding N x D) and "
        "non-embedding N; the compute-optimal plot and the IsoFLOP plot show both conventions."
    )
    L.append("")
    for name, cap in doc["plots"].items():
        L.append(f"![{cap}](plots/{name}.png)")
        L.append("")
        L.append(f"*{cap}* ([SVG](plots/{name}.svg))")
        L.append("")
    L.append(
        f"Bootstrap resamples: {n_boot} (approach 3, approach 1, approach 2), "
        f"{min(n_boot, N_BOOT_KAPLAN)} (Kaplan). Timings in fit.json."
    )
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- plots


def _plots(plot_dir: Path, main: list[dict], curves: list[dict], fits: dict) -> dict[str, str]:
    """Every figure as PNG and SVG; returns name -> caption."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    plot_dir.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    if not main:
        return made
    kap, tot = (fits[c.key] for c in CONVENTIONS)
    d = kap["data"]
    cmap = colormaps["viridis"]
    norm = LogNorm(d["N"].min(), d["N"].max() * (1.0001 if d["N"].min() == d["N"].max() else 1))

    def save(fig, name, caption):
        for ax in fig.axes:
            _log_ticks(ax)
        for ext in ("png", "svg"):
            fig.savefig(plot_dir / f"{name}.{ext}", dpi=100)
        made[name] = caption

    # 1. loss vs compute
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    names = {}
    for c in curves:
        if (c.get("D") or 0) > 0 and (c.get("loss") or 0) > 0 and c.get("N"):
            names.setdefault(c["name"], []).append((c["C"], c["loss"], c["N"]))
    for pts in names.values():
        a = np.array(sorted(pts))
        ax.plot(a[:, 0], a[:, 1], color=cmap(norm(a[0, 2])), lw=0.7, alpha=0.5)
    ax.scatter(d["C"], d["L"], c=d["N"], cmap=cmap, norm=norm, edgecolor="k", zorder=3, s=28,
               label="final val loss (main runs)")  # fmt: skip
    Cg = np.geomspace(d["C"].min() / 2, d["C"].max() * 2, 100)
    if kap.get("kaplan") is not None:
        p = kap["kaplan"].params
        if math.isfinite(p["C_c"]):
            ax.plot(Cg, (p["C_c"] / Cg) ** p["alpha_C"], "r-", lw=1.5,
                    label=f"Kaplan L(C), alpha_C = {p['alpha_C']:.3f}")  # fmt: skip
    if kap.get("1") is not None:
        env = kap["1"].details["envelope"]
        ax.plot([e["C"] for e in env], [e["loss"] for e in env], "r.", ms=3,
                label="approach 1 envelope (training curves)")  # fmt: skip
    if kap.get("3") is not None:
        No, Do = optimal_allocation(kap["3"].params, Cg)
        ax.plot(Cg, F.approach3_predict(kap["3"].params, No, Do), "k--", lw=1,
                label="approach 3 L(N_opt, D_opt)")  # fmt: skip
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="non-embedding N")
    ax.set(xscale="log", yscale="log", xlabel="C_6N = 6 N D (FLOPs)", ylabel="loss (nats/token)",
           title="Loss vs compute: training curves coloured by N")  # fmt: skip
    _legend(ax, 7)
    save(fig, "loss_vs_compute", "Loss vs compute (C_6N): training curves (train loss) coloured "
         "by N, final validation losses, and fitted frontiers")  # fmt: skip

    # 2. IsoFLOP profiles, both conventions
    if any(f.get("2") is not None for f in (kap, tot)):
        fig = Figure(figsize=(11, 4.5), layout="constrained")
        for j, f in enumerate((kap, tot)):
            ax = fig.add_subplot(1, 2, j + 1)
            r, pts = f.get("2"), f.get("a2_runs")
            conv = f["convention"]
            ax.set(xscale="log", xlabel=conv.n_col, ylabel="loss", title=conv.title)
            if r is None or pts is None:
                ax.text(0.5, 0.5, "not fitted", transform=ax.transAxes, ha="center")
                continue
            budgets = r.details["budgets"]
            bn = LogNorm(min(b["C"] for b in budgets), max(b["C"] for b in budgets) * 1.0001)
            labels = F.compute_budgets(pts.C)
            for b in budgets:
                g = labels == labels[np.argmin(np.abs(np.log(pts.C / b["C"])))]
                col = colormaps["plasma"](0.85 * bn(b["C"]))
                ax.plot(pts.N[g], pts.L[g], "o", color=col, mfc="none", ms=5)
                x = np.linspace(np.log(pts.N[g].min()) - 0.3, np.log(pts.N[g].max()) + 0.3, 50)
                xv = math.log(b["N_opt"])
                ax.plot(np.exp(x), b["L_opt"] + b["curvature"] * (x - xv) ** 2, "-", color=col,
                        lw=1, label=f"C = {b['C']:.2g}")  # fmt: skip
                ax.plot(b["N_opt"], b["L_opt"], "*", color=col, ms=11, mec="k")
            _legend(ax, 6)
        save(fig, "isoflop", "IsoFLOP profiles (open circles: interpolated on a grid sweep) with "
             "parabola fits in log N and their minima (stars), both conventions")  # fmt: skip

    # 3. L(N) and L(D)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axN, axD = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for f, col in ((kap, "C0"), (tot, "C1")):
        conv, fd = f["convention"], f["data"]
        best = {}
        for n, ll in zip(fd["N"], fd["L"], strict=True):
            if n not in best or ll < best[n]:
                best[n] = ll
        ns = np.array(sorted(best))
        axN.plot(fd["N"], fd["L"], ".", color=col, alpha=0.3)
        axN.plot(ns, [best[n] for n in ns], "o", color=col, label=f"best per size, {conv.n_col}")
        k = f.get("kaplan")
        if k is not None and math.isfinite(k.params["N_c"]):
            x = np.geomspace(ns.min() / 1.5, ns.max() * 1.5, 50)
            axN.plot(x, (k.params["N_c"] / x) ** k.params["alpha_N"], "-", color=col,
                     label=f"L(N) alpha_N = {k.params['alpha_N']:.3f}")  # fmt: skip
    axN.set(xscale="log", yscale="log", xlabel="N (parameters)", ylabel="loss",
            title="L(N): Kaplan fit to the best loss per size")  # fmt: skip
    _legend(axN, 7)
    largest = {}
    for n, dd, ll in zip(d["N"], d["D"], d["L"], strict=True):
        if dd not in largest or n > largest[dd][0]:
            largest[dd] = (n, ll)
    ds = np.array(sorted(largest))
    axD.scatter(d["D"], d["L"], c=d["N"], cmap=cmap, norm=norm, s=14, alpha=0.6)
    axD.plot(ds, [largest[x][1] for x in ds], "ks", mfc="none", label="largest N per D")
    k = kap.get("kaplan")
    if k is not None and math.isfinite(k.params["D_c"]):
        x = np.geomspace(ds.min() / 1.5, ds.max() * 1.5, 50)
        axD.plot(x, (k.params["D_c"] / x) ** k.params["alpha_D"], "k-",
                 label=f"L(D) alpha_D = {k.params['alpha_D']:.3f}")  # fmt: skip
    fig.colorbar(ScalarMappable(norm, cmap), ax=axD, label="non-embedding N")
    axD.set(xscale="log", yscale="log", xlabel="D (tokens)", ylabel="loss",
            title="L(D): Kaplan fit to the largest size per D")  # fmt: skip
    _legend(axD, 7)
    save(fig, "loss_vs_N_D", "L(N) (both conventions) and L(D) with Kaplan power-law fits")

    # 4. approach 3: predicted vs actual
    if any(f.get("3") is not None for f in (kap, tot)):
        fig = Figure(figsize=(5.5, 5), layout="constrained")
        ax = fig.add_subplot()
        for f, mk in ((kap, "o"), (tot, "^")):
            r = f.get("3")
            if r is None:
                continue
            fd = f["data"]
            pred = F.approach3_predict(r.params, fd["N"], fd["D"])
            ax.scatter(fd["L"], pred, c=d["N"], cmap=cmap, norm=norm, marker=mk, edgecolor="k",
                       s=26, label=f"{f['convention'].title.split(' ')[0]} "
                       f"rms log resid. {r.stats['rms_log_residual']:.4f}")  # fmt: skip
        lo, hi = d["L"].min() * 0.98, d["L"].max() * 1.02
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set(xlabel="actual final loss", ylabel="approach 3 prediction",
               title="Approach 3: predicted vs actual")  # fmt: skip
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="non-embedding N")
        _legend(ax, 7)
        save(fig, "approach3_pred_vs_actual", "Approach 3 fit: predicted vs actual final loss")

    # 5. N_opt(C), D_opt(C), both conventions
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = (fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2))
    for f, col in ((kap, "C0"), (tot, "C1")):
        tag = f["convention"].title.split(" ")[0]
        fd = f["data"]
        Cg = np.geomspace(fd["C"].min() / 2, fd["C"].max() * 2, 60)
        r1 = f.get("1")
        if r1 is not None:
            env = r1.details["envelope"]
            for ax, key, ex in ((axes[0], "N", "a"), (axes[1], "D", "b")):
                ax.plot([e["C"] for e in env], [e[key] for e in env], ".", color=col, alpha=0.3,
                        ms=3)  # fmt: skip
                kk = r1.params[f"k_{key}"]
                ax.plot(Cg, kk * Cg ** r1.params[ex], "-", color=col, lw=1,
                        label=f"{tag} approach 1, {ex} = {r1.params[ex]:.3f}")  # fmt: skip
        r2 = f.get("2")
        if r2 is not None:
            b = r2.details["budgets"]
            for ax, key, ex in ((axes[0], "N", "a"), (axes[1], "D", "b")):
                ax.plot([m["C"] for m in b], [m[f"{key}_opt"] for m in b], "s", color=col,
                        mfc="none")  # fmt: skip
                kk = r2.params[f"k_{key}"]
                ax.plot(Cg, kk * Cg ** r2.params[ex], ":", color=col, lw=1.2,
                        label=f"{tag} approach 2, {ex} = {r2.params[ex]:.3f}")  # fmt: skip
        r3 = f.get("3")
        if r3 is not None:
            fl = f["flops_law"]
            No, Do = optimal_allocation(r3.params, Cg, fl["k"], fl["p"])
            e = f["a3_effective"]
            axes[0].plot(Cg, No, "--", color=col, lw=1.5,
                         label=f"{tag} approach 3, a = {e['a']:.3f}")  # fmt: skip
            axes[1].plot(Cg, Do, "--", color=col, lw=1.5,
                         label=f"{tag} approach 3, b = {e['b']:.3f}")  # fmt: skip
    for ax, what in zip(axes, ("N_opt (parameters)", "D_opt (tokens)"), strict=True):
        ax.set(xscale="log", yscale="log", ylabel=what,
               xlabel="C (FLOPs): C_6N for (i), C_6N_out for (ii)")  # fmt: skip
        _legend(ax, 6)
    axes[0].set_title("Compute-optimal model size")
    axes[1].set_title("Compute-optimal data")
    save(fig, "compute_optimal", "N_opt(C) and D_opt(C): approaches 1-3 under (i) N, C_6N and "
         "(ii) N_total, C_6N_out")  # fmt: skip
    return made


def _legend(ax, fontsize: int) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend is only a warning
        ax.legend(fontsize=fontsize)


def _log_ticks(ax) -> None:
    """Readable log axes: loss axes (a fraction of a decade) get ticks at 1, 1.5, 2, 3, ...
    labelled plainly; wide axes get 1, 2, 5 per decade (1 past 3 decades); no minor labels,
    which matplotlib otherwise draws, overlapping, on axes spanning about one decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def label(v, _pos):
        if 1e-2 <= abs(v) < 1e4:
            return f"{v:g}"
        mantissa, exp = f"{v:.0e}".split("e")
        return f"{mantissa}e{int(exp)}"

    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log" or min(lim) <= 0:
            continue
        decades = math.log10(max(lim) / min(lim))
        subs = (1, 1.5, 2, 3, 4, 5, 6, 8) if decades < 1 else (1, 2, 5) if decades <= 3 else (1,)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_major_formatter(FuncFormatter(label))
        axis.set_minor_formatter(NullFormatter())


# ---------------------------------------------------------------- command line


def cmd_plot(args: argparse.Namespace) -> int:
    out = Path(args.sweep)
    if not (out / "results.csv").is_file():
        raise FileNotFoundError(f"--sweep {out}: no results.csv (run `lm sweep run` first)")
    if args.bootstrap < 0:
        from lm.cli import UsageError

        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    write_report(out, None, print_fn=print, n_boot=args.bootstrap, seed=args.seed)
    return 0


def add_plot_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `plot` on the subparsers object of `lm scaling`."""
    p = sub.add_parser(
        "plot",
        help="fits, plots and report.md for a sweep directory (from its CSVs)",
        description="Regenerate DIR/report.md, DIR/fit.json and DIR/plots/ from the "
        "results.csv, curves.csv and sweep.json that `lm sweep run` wrote.",
    )
    p.add_argument("--sweep", required=True, help="sweep directory (lm sweep run --out DIR)")
    p.add_argument("--bootstrap", type=int, default=N_BOOT, metavar="K",
                   help="bootstrap resamples per fit (default %(default)s; 0: none)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=cmd_plot)
    return p
