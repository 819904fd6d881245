"""The extrapolation check: fit without the largest compute budget, predict it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from lm.scaling import DEFAULT_BUDGET_TOL
from lm.scaling.fit.approach1 import SMOOTH_WIDTH, smooth_curves
from lm.scaling.fit.approach2 import fit_approach2, isoflop_minima
from lm.scaling.fit.approach3 import approach3_predict
from lm.scaling.fit.data import Runs, as_runs
from lm.scaling.fit.dispatch import approach_key, fit_one
from lm.scaling.fit.kaplan import kaplan_joint_loss
from lm.scaling.fit.shared import ENVELOPE_BINS, compute_budgets, lower_envelope, rel_err_stats


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
    a = approach_key(approach)
    r = as_runs(runs)
    if a == "2":
        kw = {
            k: v
            for k, v in fit_kwargs.items()
            if k in ("min_sizes", "window", "window_decades", "drop_edge_minima")
        }
        return _approach2(r, budget_tol, kw)
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
        return {**out, **_approach1(r, held, p, fit_kwargs)}
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
    return {**out, "target": "loss", **rel_err_stats(pred, r.L[held])}


def _approach2(r: Runs, budget_tol: float, kw: dict[str, Any]) -> dict[str, Any] | None:
    """Approach 2 without its largest valid IsoFLOP budget, predicting that budget's N_opt and
    D_opt; None with < 3 valid budgets."""
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


def _approach1(
    r: Runs, held: np.ndarray, p: Mapping[str, float], fit_kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Approach 1's prediction of N_opt at the held-out budget's envelope rows (of the
    smoothed curves), from the fit `p` without that budget."""
    Ls = smooth_curves(r, fit_kwargs.get("smooth_width", SMOOTH_WIDTH))
    env = lower_envelope(r.C, Ls, fit_kwargs.get("n_bins", ENVELOPE_BINS))
    env = env[held[env]]
    if env.size == 0:
        return {"target": "N_opt", "note": "no envelope rows in the held-out budget"}
    pred = p["k_N"] * r.C[env] ** p["a"]
    return {"target": "N_opt", "n_envelope_rows": int(env.size), **rel_err_stats(pred, r.N[env])}
