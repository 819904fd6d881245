"""One fitter by name: "kaplan", "1", "2" or "3"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lm.scaling import APPROACHES
from lm.scaling.fit.approach1 import fit_approach1
from lm.scaling.fit.approach2 import fit_approach2
from lm.scaling.fit.approach3 import fit_approach3
from lm.scaling.fit.data import FitError, Runs, as_runs
from lm.scaling.fit.kaplan import fit_kaplan
from lm.scaling.fit.result import FitResult

_FITTERS = {"kaplan": fit_kaplan, "1": fit_approach1, "2": fit_approach2, "3": fit_approach3}


def approach_key(approach: Any) -> str:
    """The approach's key in APPROACHES (case-insensitive); FitError naming the choices if none."""
    a = str(approach).lower()
    if a not in _FITTERS:
        raise FitError(f"unknown approach {approach!r}: choose from {', '.join(APPROACHES)}")
    return a


def fit_one(runs: Runs | Mapping[str, Any], approach: str, **kwargs: Any) -> FitResult:
    """Dispatch to fit_kaplan / fit_approach1 / fit_approach2 / fit_approach3."""
    return _FITTERS[approach_key(approach)](as_runs(runs), **kwargs)
