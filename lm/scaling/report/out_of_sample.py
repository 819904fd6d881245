"""The out-of-sample test of a sweep with `holdout_budget_factor` (lm.scaling.sweep): after its
main runs, the sweep predicted N_opt at C_out, a budget beyond every fitted one, by approach 2,
and trained three runs there at N_opt/2, N_opt and 2 N_opt (group "holdout", never fitted).
Here each approach's own prediction at C_out, made from the main runs alone, is set against
those three measured losses.

Per approach (Hoffmann et al. 2022, arXiv:2203.15556): the predicted N_opt at C_out, and the
predicted compute-optimal loss there.
- Approach 3 reads both off its L(N, D) = E + A/N^alpha + B/D^beta: the minimum over N at
  fixed C_out with the convention's real FLOPs per token (lm.scaling.report.allocation), and
  the loss at it. It also predicts each holdout run's loss at the run's own (N, D) (`at_runs`).
- Approaches 1 and 2 fit no L(N, D): N_opt = k_N C^a, and the loss from L*(C) = E + K C^-g
  (lm.scaling.fit.frontier; K C^-g when E is not identified, and the result says which) through
  their own compute-optimal points: approach 2's IsoFLOP minima (each kept budget's parabola
  minimum), approach 1's envelope (the lowest loss at each compute, the rows its power laws
  were fitted to).
The measured loss an approach is judged against is that of the holdout run nearest its
predicted N_opt (in log N; for approach 2 the run planned at it): an IsoFLOP profile is flat at
its minimum, so the run nearest the optimum measures the compute-optimal loss best.
`best_of_three` says whether that run is also the lowest of the three.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lm.scaling import fit as F
from lm.scaling.report.allocation import ci_from_samples, optimal_allocation
from lm.scaling.report.fits import FINISHED_RUNS, ConventionFit

APPROACHES = ("1", "2", "3")
HOLDOUT_GROUP = "holdout"
# The check's limit on |predicted / measured - 1|: the loss gap between neighbouring IsoFLOP
# budgets a factor 1.5 apart is a few percent at these scales, so a prediction off by more than
# 1% half a decade out could not tell C_out from its neighbours.
MAX_LOSS_ERROR = 0.01


def holdout_runs(rows: list[dict], n_col: str, c_col: str) -> list[dict]:
    """The holdout rows, smallest N first, with N and C in the convention's columns."""
    runs = [{"name": r["name"], "N": float(r[n_col]), "D": float(r["D"]), "C": float(r[c_col]),
             "loss": float(r["loss"]), "loss_se": r.get("loss_se"), "budget": r.get("budget")}
            for r in rows if r.get("group") == HOLDOUT_GROUP]  # fmt: skip
    return sorted(runs, key=lambda r: r["N"])


def evaluate(f: ConventionFit, rows: list[dict], own: bool, planned: dict | None) -> dict:
    """fit.json's summary.out_of_sample for the fits `f` (the primary convention) and the
    results rows. `own`: f's convention is the one the sweep planned C_out in, so C_out is the
    runs' planned budget; otherwise it is the geometric mean of their C in f's convention.
    `planned`: holdout.json (the sweep's prediction), or None."""
    conv = f.convention
    out: dict[str, Any] = {"n_col": conv.n_col, "c_col": conv.c_col,
                           "planned": _planned(planned), "limit": MAX_LOSS_ERROR}  # fmt: skip
    runs = holdout_runs(rows, conv.n_col, conv.c_col)
    out["runs"] = runs
    if not runs:
        why = (planned or {}).get("error")
        out["approaches"] = {}
        out["note"] = f"no holdout runs: {why}" if why else (
            "no holdout runs (the sweep's holdout_budget_factor is 0)")  # fmt: skip
        return out
    budgets = {r["budget"] for r in runs}
    if own and len(budgets) == 1 and (next(iter(budgets)) or 0) > 0:
        c_out = float(next(iter(budgets)))
    else:
        c_out = float(np.exp(np.mean(np.log([r["C"] for r in runs]))))
    best = int(np.argmin([r["loss"] for r in runs]))
    out.update(C_out=c_out, best_run=runs[best]["name"],
               C_max=float(f.data["C"].max()) if f.data["C"].size else None)  # fmt: skip
    out["approaches"] = {f"approach{ap}": _approach(f, ap, c_out, runs, best) for ap in APPROACHES}
    errs = [abs(e["rel_error"]) for e in out["approaches"].values() if e and "rel_error" in e]
    out["max_abs_rel_error"] = max(errs) if errs else None
    return out


def _planned(doc: dict | None) -> dict | None:
    """The sweep's own prediction from holdout.json, the keys the report shows."""
    if not doc:
        return None
    keys = ("factor", "C_max", "C_out", "N_opt", "a", "n_budgets", "n_rows", "error", "members")
    return {k: doc[k] for k in keys if k in doc}


def _approach(f: ConventionFit, ap: str, c_out: float, runs: list[dict], best: int) -> dict | None:
    """One approach's prediction at c_out against the runs; None when it was not fitted,
    {"error": why} when it was but cannot predict there."""
    r = f.get(ap)
    if r is None:
        return None
    try:
        pred = _approach3(f, r, c_out, runs) if ap == "3" else _from_frontier(f, ap, r, c_out)
    except (F.FitError, ValueError, ArithmeticError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    near = int(np.argmin([abs(math.log(x["N"] / pred["N_opt"])) for x in runs]))
    measured = runs[near]["loss"]
    return {**pred, "nearest_run": runs[near]["name"], "measured_loss": measured,
            "rel_error": pred["loss"] / measured - 1.0, "best_of_three": near == best}  # fmt: skip


def _n_interval(samples: dict | None, c_out: float) -> list[float] | None:
    """The bootstrap's 95% interval on k_N C^a at c_out (approaches 1 and 2)."""
    if not samples or "k_N" not in samples or "a" not in samples:
        return None
    with np.errstate(all="ignore"):
        n = np.asarray(samples["k_N"]) * c_out ** np.asarray(samples["a"])
    lo, hi = ci_from_samples({"N": n})["N"]
    return [lo, hi] if math.isfinite(lo) else None


def _frontier_points(f: ConventionFit, ap: str, r: F.FitResult) -> tuple[list, list, str]:
    """(C, L, what they are) of an approach's compute-optimal points."""
    if ap == "2":
        b = r.details.get("budgets", [])
        what = f"approach 2's {len(b)} IsoFLOP minima (each kept budget's parabola minimum)"
        return [x["C"] for x in b], [x["L_opt"] for x in b], what
    env = r.details.get("envelope", [])
    kind = "final validation losses" if f.a1_method == FINISHED_RUNS else "training losses"
    what = f"approach 1's {len(env)} envelope points ({kind}, as smoothed for its envelope)"
    return [x["C"] for x in env], [x["loss_smoothed"] for x in env], what


def _from_frontier(f: ConventionFit, ap: str, r: F.FitResult, c_out: float) -> dict:
    """Approaches 1 and 2: N_opt from the power law, the loss from L*(C) through their points."""
    C, L, what = _frontier_points(f, ap, r)
    fr = F.fit_loss_frontier(C, L)
    p = r.params
    return {
        "N_opt": p["k_N"] * c_out ** p["a"],
        "N_opt_ci95": _n_interval(f.samples.get(ap), c_out),
        "loss": float(F.loss_frontier(fr, c_out)),
        "loss_ci95": None,
        "loss_method": f"{fr['formula']} through {what}"
        + (f"; E not identified: {fr['why']}" if fr["why"] else ""),
        "frontier": fr,
    }


def _approach3(f: ConventionFit, r: F.FitResult, c_out: float, runs: list[dict]) -> dict:
    """Approach 3: its L(N, D) minimised at c_out (the convention's FLOPs per token), with the
    bootstrap's 95% intervals, and its loss at each run's own (N, D)."""
    if not f.flops_law:
        raise ValueError("no FLOPs-per-token law to place the optimum at C_out")
    k, p = f.flops_law["k"], f.flops_law["p"]

    def at(params):
        No, Do = optimal_allocation(params, c_out, k, p)
        return float(No[0]), float(F.approach3_predict(params, No, Do)[0])

    n_opt, loss = at(r.params)
    if not (math.isfinite(n_opt) and math.isfinite(loss)):
        raise ValueError(f"L(N, D) has no interior minimum at C_out = {c_out:.3g}")
    out = {"N_opt": n_opt, "N_opt_ci95": None, "loss": loss, "loss_ci95": None,
           "loss_method": "approach 3's L(N, D) at its minimum over N at C_out (the "
           "convention's FLOPs per token)"}  # fmt: skip
    s = f.samples.get("3")
    if s:
        vals = np.array([at({q: s[q][i] for q in s}) for i in range(len(next(iter(s.values()))))])
        ci = ci_from_samples({"N": vals[:, 0], "L": vals[:, 1]})
        out["N_opt_ci95"], out["loss_ci95"] = list(ci["N"]), list(ci["L"])
    pred = F.approach3_predict(r.params, np.array([x["N"] for x in runs]),
                               np.array([x["D"] for x in runs]))  # fmt: skip
    out["at_runs"] = [{"name": x["name"], "predicted": float(v), "rel_error": v / x["loss"] - 1}
                      for x, v in zip(runs, pred, strict=True)]  # fmt: skip
    return out
