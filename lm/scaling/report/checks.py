"""Checks that can fail: whether the primary convention's fits answer the question.

Each check is {"name", "pass", "detail"} with pass True, False, or None (skipped: the input it
needs does not exist, e.g. no bootstrap was asked for). A FAIL is a finding about the sweep's
design or data, not an error: the report is still written and the sweep still exits 0.

The rules, beyond basic signs:
- approach 2 needs >= 3 budgets with an interior minimum (inside the sampled sizes): a minimum
  at the edge of a budget's sizes is an extrapolation, and a line through 2 points has no
  residual to judge it by;
- approaches 1, 2 and 3 measure the same a, so two whose difference exceeds the sum of their
  95% half-widths disagree beyond their stated uncertainty;
- a 95% interval on a wider than 0.3 spans the whole range between Kaplan et al. 2020 (0.73)
  and Hoffmann et al. 2022 (~0.50) and more: it cannot tell them apart;
- refitted without the largest compute budget, each approach must predict it within 10%
  (N_opt for approaches 1 and 2, the loss for approach 3, as lm.scaling.fit reports them); a
  design with too few budgets to hold one out fails. Approach 1's held-out N_opt are sampled
  sizes, so an error below the rounding to the nearest size says nothing and is not judged;
- out of sample (a sweep with holdout_budget_factor): each approach's compute-optimal loss at
  C_out, beyond every fitted budget, within 1% of the measured loss of the holdout run nearest
  its predicted N_opt (lm.scaling.report.out_of_sample); skipped without holdout runs;
- an approach's systematic half-width on a (the largest change under its method variants and
  across other whole-pipeline runs, lm.scaling.fit.sensitivity) may be at most twice its
  statistical (bootstrap) half-width: beyond that the bootstrap interval understates the
  uncertainty by more than half, and the answer is the method's as much as the data's.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from lm.scaling.report.estimates import APPROACHES, a_estimate
from lm.scaling.report.fits import ConventionFit
from lm.scaling.report.out_of_sample import MAX_LOSS_ERROR
from lm.scaling.report.uncertainty import approach_total, statistical_half_width

MIN_INTERIOR_BUDGETS = 3
MAX_A_CI_WIDTH = 0.3
MAX_EXTRAPOLATION_ERROR = 0.10
MAX_SYSTEMATIC_RATIO = 2.0

# Check names, stable for tools that read fit.json's summary.
FRONTIER = "frontier monotone decreasing (lowest final loss per factor-2 compute bin)"
KAPLAN_ALPHA_N = "Kaplan L(N) exponent alpha_N > 0"
A3_SIGNS = "approach 3 exponents alpha > 0 and beta > 0"
A3_STARTS = "approach 3 optimum reached from >= 2 of the grid's starts (Besiroglu et al. 2024)"
ALL_FITTED = "approaches 1, 2 and 3 all fitted"
INTERIOR = f"approach 2 has >= {MIN_INTERIOR_BUDGETS} IsoFLOP budgets with an interior minimum"
AGREE = "approaches 1, 2 and 3 agree on a within their 95% intervals"
CI_WIDTH = f"every approach's 95% interval on a is at most {MAX_A_CI_WIDTH:g} wide"
EXTRAPOLATION = (
    f"every approach predicts the held-out largest budget within {MAX_EXTRAPOLATION_ERROR:.0%}"
)
SYSTEMATIC = (
    f"systematic within {MAX_SYSTEMATIC_RATIO:g}x statistical: every approach's half-width on a "
    f"from method variants and replicates is at most {MAX_SYSTEMATIC_RATIO:g}x its bootstrap "
    "half-width"
)

OUT_OF_SAMPLE = f"out-of-sample loss error <= {MAX_LOSS_ERROR:.0%}"

LR_INSIDE = "every LR-sweep size's best rate is inside the rates tried"


def lr_check(lr: dict | None) -> dict | None:
    """The tuned learning rate is only a fit where each size's optimum was bracketed: a best
    rate at the edge of the grid means the rule was fitted to a bound, not an optimum. None
    when the sweep ran no LR sweep (nothing to check)."""
    if not lr or not lr.get("per_size"):
        return None
    edge = [s for s in lr["per_size"] if s.get("edge")]
    detail = ", ".join(f"N = {s['N']:.3g}: lr_opt {s['lr_opt']:.3g}" + (" (edge)" if s.get("edge")
                       else "") for s in lr["per_size"])  # fmt: skip
    return check(LR_INSIDE, not edge, detail)


def out_of_sample_check(oos: dict) -> dict:
    """FAIL if any fitted approach's predicted loss at C_out is off the measured one by more
    than MAX_LOSS_ERROR (out_of_sample.evaluate's `rel_error`); SKIP without holdout runs. An
    approach fitted but unable to predict there is listed and not judged."""
    if not oos.get("runs"):
        return check(OUT_OF_SAMPLE, None, oos.get("note", "no holdout runs"))
    parts, verdicts = [], []
    for key, e in oos["approaches"].items():
        ap = key.removeprefix("approach")
        if e is None:
            continue
        if "rel_error" not in e:
            parts.append(f"approach {ap}: not judged ({e.get('error', 'no prediction')})")
            continue
        ok = abs(e["rel_error"]) <= MAX_LOSS_ERROR
        verdicts.append(ok)
        parts.append(
            f"approach {ap}: {e['rel_error']:+.2%} (predicted {e['loss']:.4f}, measured "
            f"{e['measured_loss']:.4f} at {e['nearest_run']})" + ("" if ok else " (too far)")
        )
    head = f"C_out = {oos['C_out']:.3g}: "
    if not verdicts:
        return check(OUT_OF_SAMPLE, None, head + ("; ".join(parts) or "no approach fitted"))
    return check(OUT_OF_SAMPLE, all(verdicts), head + "; ".join(parts))


def check(name: str, ok: bool | None, detail: str = "") -> dict:
    return {"name": name, "pass": None if ok is None else bool(ok), "detail": detail}


def verdict(c: dict) -> str:
    return "SKIP" if c["pass"] is None else ("PASS" if c["pass"] else "FAIL")


def count(checks: list[dict], result: str) -> int:
    return sum(verdict(c) == result for c in checks)


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


def interior_budgets(f: ConventionFit) -> int | None:
    """Budgets approach 2 used whose minimum lies inside their sampled sizes (None: approach
    2 not fitted). A library that drops edge minima marks every budget it keeps interior."""
    r = f.get("2")
    if r is None:
        return None
    return sum(1 for b in r.details.get("budgets", []) if b.get("interior", True))


# Variable projection finding a lower objective than this means the grid missed the optimum;
# above it, the two are the same optimum up to the inner solver's tolerance (on the committed
# cpu-tiny sweep they agree to 1e-15; on its bootstrap resamples VarPro was at most 1.2e-4 above).
A3_VARPRO_RTOL = 1e-6


def _a3_optimum(s: dict) -> tuple[bool, str]:
    """Approach 3's optimum: reached from >= 2 grid starts, and not beaten by variable
    projection (`lm.scaling.fit.varpro`, when it was fitted: `stats["varpro"]`)."""
    ok, detail = s["n_starts_at_best"] >= 2, f"{s['n_starts_at_best']} of {s['n_starts']}"
    vp = s.get("varpro")
    if vp:
        ok = ok and vp["objective_rel_diff"] <= A3_VARPRO_RTOL
        detail += (
            f"; variable projection: objective {vp['objective_rel_diff']:+.1e} relative to "
            f"it, a {vp['a_diff']:+.1e} from it; condition number "
            f"{vp['condition_full']:.2g} (5 parameters) vs {vp['condition_projected']:.2g} "
            "(the 2 exponents)"
        )
    return ok, detail


def run_checks(f: ConventionFit) -> list[dict]:
    """Every check on the primary convention's fits, in a fixed order."""
    tag = f.convention.tag
    out = [_frontier(f)]
    k = f.get("kaplan")
    # No check of Kaplan's alpha_C > 0: L(C) is fitted to the loss envelope over compute, which
    # decreases by construction, so a check on its sign could never fail.
    if k is None:
        out.append(check(KAPLAN_ALPHA_N, None, "Kaplan fit not done"))
    else:
        p = k.params
        out.append(check(KAPLAN_ALPHA_N, p["alpha_N"] > 0, f"{tag} alpha_N = {p['alpha_N']:.4g}"))
    a3 = f.get("3")
    if a3 is None:
        out.append(check(A3_SIGNS, None, "approach 3 not fitted"))
        out.append(check(A3_STARTS, None, "approach 3 not fitted"))
    else:
        p, s = a3.params, a3.stats
        out.append(check(A3_SIGNS, p["alpha"] > 0 and p["beta"] > 0,
                         f"{tag} alpha = {p['alpha']:.4g}, beta = {p['beta']:.4g}"))  # fmt: skip
        out.append(check(A3_STARTS, *_a3_optimum(s)))
    out += [_all_fitted(f), _interior(f), _agree(f), _ci_width(f), _extrapolation(f)]
    out.append(_systematic(f))
    return out


def _systematic(f: ConventionFit) -> dict:
    """FAIL if an approach's systematic half-width exceeds MAX_SYSTEMATIC_RATIO times its
    statistical one; approaches without both (no bootstrap, no sensitivity rows) are listed
    and not judged."""
    parts, verdicts = [], []
    for ap in APPROACHES:
        e = a_estimate(f, ap)
        if e is None:
            continue
        stat = statistical_half_width(e["ci95"])
        sys_ = approach_total(f, ap)["systematic"]
        if stat is None or sys_ is None or sys_["half_width"] is None:
            why = "no bootstrap interval" if stat is None else "no variant could be refitted"
            parts.append(f"approach {ap}: not judged ({why})")
            continue
        s = sys_["half_width"]
        ok = s <= MAX_SYSTEMATIC_RATIO * stat
        verdicts.append(ok)
        driver = f", from {sys_['driver']}" if sys_["driver"] else ""
        parts.append(
            f"approach {ap}: systematic {s:.3f}{driver} vs statistical {stat:.3f}"
            + ("" if ok else f" (more than {MAX_SYSTEMATIC_RATIO:g}x)")
        )
    if not verdicts:
        return check(SYSTEMATIC, None, "; ".join(parts) or "no approach fitted")
    return check(SYSTEMATIC, all(verdicts), "; ".join(parts))


def _frontier(f: ConventionFit) -> dict:
    C, L = f.data["C"], f.data["L"]
    if C.size < 2:
        return check(FRONTIER, None, "fewer than 2 runs")
    fr = frontier(C, L)
    if len(fr) < 2:
        return check(FRONTIER, None, "fewer than 2 compute bins")
    mono = all(b["loss"] < a["loss"] for a, b in zip(fr, fr[1:], strict=False))
    detail = f"{f.convention.c_col}: " + ", ".join(f"{x['C']:.3g}: {x['loss']:.4f}" for x in fr)
    return check(FRONTIER, mono, detail)


def _why_not(f: ConventionFit, approach: str) -> str:
    prefix = f"approach {approach}"
    why = next((e for e in f.errors if e.startswith(prefix)), f"{prefix}: not fitted")
    return why


def _all_fitted(f: ConventionFit) -> dict:
    missing = [ap for ap in APPROACHES if f.get(ap) is None]
    if not missing:
        return check(ALL_FITTED, True)
    return check(ALL_FITTED, False, "; ".join(_why_not(f, ap) for ap in missing))


def _interior(f: ConventionFit) -> dict:
    k = interior_budgets(f)
    if k is None:
        return check(INTERIOR, False, _why_not(f, "2"))
    r = f.get("2")
    used = r.stats.get("n_budgets", len(r.details.get("budgets", [])))
    dropped = r.details.get("dropped_budgets", [])
    detail = f"{k} interior of {used} budgets used, {len(dropped)} dropped ({f.a2_method})"
    return check(INTERIOR, k >= MIN_INTERIOR_BUDGETS, detail)


def _fmt_a(ap: str, e: dict) -> str:
    ci = e["ci95"]
    return f"approach {ap} a = {e['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _finite_ci(e: dict | None) -> bool:
    return bool(e and e["ci95"] and all(math.isfinite(x) for x in e["ci95"]))


def _agree(f: ConventionFit) -> dict:
    est = {ap: a_estimate(f, ap) for ap in APPROACHES}
    have = {ap: e for ap, e in est.items() if _finite_ci(e)}
    if len(have) < 2:
        return check(AGREE, None, "fewer than 2 approaches with a value and a 95% interval")
    bad = []
    for (i, ei), (j, ej) in combinations(have.items(), 2):
        diff = abs(ei["value"] - ej["value"])
        hw = (ei["ci95"][1] - ei["ci95"][0]) / 2 + (ej["ci95"][1] - ej["ci95"][0]) / 2
        if diff > hw:
            bad.append(
                f"{_fmt_a(i, ei)} vs {_fmt_a(j, ej)}: |difference| {diff:.3f} > "
                f"half-widths summed {hw:.3f}"
            )
    if bad:
        return check(AGREE, False, "; ".join(bad))
    left = [f"approach {ap}" for ap in APPROACHES if ap not in have]
    detail = "; ".join(_fmt_a(ap, e) for ap, e in have.items())
    if left:
        detail += f" ({', '.join(left)} without a value and interval: not compared)"
    return check(AGREE, True, detail)


def _ci_width(f: ConventionFit) -> dict:
    est = {ap: a_estimate(f, ap) for ap in APPROACHES if f.get(ap) is not None}
    if not any(e and e["ci95"] for e in est.values()):
        return check(CI_WIDTH, None, "no bootstrap intervals (bootstrap off, or nothing fitted)")
    parts, ok = [], True
    for ap, e in est.items():
        if not _finite_ci(e):
            ok = False
            parts.append(f"approach {ap}: no finite interval")
            continue
        w = e["ci95"][1] - e["ci95"][0]
        ok &= w <= MAX_A_CI_WIDTH
        parts.append(f"approach {ap}: {w:.3f}" + ("" if w <= MAX_A_CI_WIDTH else " (too wide)"))
    return check(CI_WIDTH, ok, "; ".join(parts))


def extrapolation_error(ex: dict | None) -> tuple[float | None, str]:
    """(|error|, what was predicted) of a library extrapolation check; (None, why) when it
    could not be made."""
    if not ex:
        return None, "cannot be checked: fewer than 3 compute budgets"
    if ex.get("rel_error") is not None:
        return abs(ex["rel_error"]), f"{ex['target']} at C = {ex['held_out_C']:.3g}"
    if ex.get("mean_abs_rel_error") is not None:
        return ex["mean_abs_rel_error"], f"mean |error| of {ex['target']} at the held-out rows"
    return None, f"not checked: {ex.get('note', 'no error reported')}"


def size_rounding(f: ConventionFit) -> float:
    """The relative error approach 1's extrapolation has from rounding alone: its held-out
    envelope rows are sampled sizes, so the true N_opt can be half a ladder step from the
    nearest one (sqrt(ratio) - 1 for the median ratio of neighbouring sizes)."""
    cr = f.curve_runs
    if cr is None:
        return 0.0
    N = np.unique(cr.N)
    if N.size < 2:
        return 0.0
    return float(np.sqrt(np.median(N[1:] / N[:-1])) - 1)


def _extrapolation(f: ConventionFit) -> dict:
    """FAIL if an approach's held-out prediction is off by more than the limit, or if the
    design has too few budgets to hold one out. An approach whose check ran but could not
    score (e.g. no envelope rows in the held-out budget), or approach 1 off by more than the
    limit but less than the rounding to the nearest sampled size, is listed and not judged."""
    fitted = [ap for ap in APPROACHES if f.get(ap) is not None]
    parts, verdicts = [], []
    for ap in fitted:
        ex = f.get(ap).extrapolation
        err, what = extrapolation_error(ex)
        if err is None or not math.isfinite(err):
            parts.append(f"approach {ap}: {what}")
            if not ex:
                verdicts.append(False)
            continue
        text = f"approach {ap}: {err:.1%} ({what})"
        rounding = size_rounding(f) if ap == "1" else 0.0
        if MAX_EXTRAPOLATION_ERROR < err <= rounding:
            parts.append(
                f"{text}, not judged: the held-out rows are sampled sizes, so up to "
                f"{rounding:.0%} is rounding to the nearest size"
            )
            continue
        verdicts.append(err <= MAX_EXTRAPOLATION_ERROR)
        parts.append(text)
    if not verdicts:
        return check(EXTRAPOLATION, None, "; ".join(parts) or "no approach fitted")
    return check(EXTRAPOLATION, all(verdicts), "; ".join(parts))
