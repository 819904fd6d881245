"""`fit`: one approach's fit with its bootstrap intervals and extrapolation check attached."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lm.scaling import DEFAULT_BUDGET_TOL
from lm.scaling.fit.data import Runs, as_runs
from lm.scaling.fit.dispatch import approach_key, fit_one
from lm.scaling.fit.extrapolation import extrapolation_check
from lm.scaling.fit.resample import bootstrap
from lm.scaling.fit.result import FitResult


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
    a = approach_key(approach)
    r = as_runs(runs)
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
