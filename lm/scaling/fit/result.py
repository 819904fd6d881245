"""A fit's result, `FitResult`, and its outputs: the JSON document and the table printed after a
fit."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 or v == 0 else f"{v:.4e}"
    return str(v)


def format_table(out: dict[str, Any], params: list[str]) -> str:
    """The human-readable summary printed after a fit."""
    lines = [
        f"approach {out['approach']}: {out['n_points']} points",
        f"  {out['formula']}",
        "",
    ]
    ci = out.get("ci95") or {}
    head = f"  {'name':<14} {'value':>12}" + (f"  {'95% CI':>27}" if ci else "")
    lines += [head, "  " + "-" * (len(head) - 2)]
    for k in params:
        row = f"  {k:<14} {_fmt(out.get(k)):>12}"
        if k in ci:
            lo, hi = ci[k]
            row += f"  [{_fmt(lo):>11}, {_fmt(hi):>11}]"
        lines.append(row)
    if out.get("bootstrap"):
        b = out["bootstrap"]
        lines.append(f"  bootstrap: {b['n_ok']}/{b['n_boot']} resamples, {b['method']}")
    stats = out.get("stats", {})
    if "objective" in stats:
        lines.append(
            f"  objective {stats['objective']:.6g}; {stats['n_starts_at_best']}/"
            f"{stats['n_starts']} starts reached it; rms log residual "
            f"{stats['rms_log_residual']:.4g}"
        )
    if "smoothing" in stats:
        lines.append(f"  {stats['n_runs']} runs; smoothing: {stats['smoothing']}")
    if out.get("budgets"):
        lines += ["", f"  {'C':>11} {'N_opt':>11} {'D_opt':>11} {'L_opt':>8} sizes window"]
        for m in out["budgets"]:
            lines.append(
                f"  {m['C']:>11.4e} {m['N_opt']:>11.4e} {m['D_opt']:>11.4e} "
                f"{m['L_opt']:>8.4f} {m['n_sizes']:>5} {m['n_sizes_used']:>6}"
            )
        for d in out.get("dropped_budgets", []):
            lines.append(f"  dropped budget C={d['C']:.4e}: {d['reason']}")
    ex = out.get("extrapolation")
    if ex:
        if "rel_error" in ex:
            err = f"rel error {ex['rel_error']:+.3%}"
        elif "mean_abs_rel_error" in ex:
            err = (
                f"mean |rel error| {ex['mean_abs_rel_error']:.3%}, "
                f"max {ex['max_abs_rel_error']:.3%}"
            )
        else:
            err = ex.get("note", "")
        lines += [
            "",
            f"  extrapolation: fit without the largest budget (C={ex['held_out_C']:.4e}), "
            f"predict {ex['target']}: {err}",
        ]
    return "\n".join(lines)


def approach2_json(out: dict[str, Any]) -> dict[str, Any]:
    """Approach 2's output: the exponents, their intervals and which budgets were used first,
    then everything else the fit reports."""
    head: dict[str, Any] = {"a": out["a"], "b": out["b"]}
    if "ci95" in out:
        head["ci95"] = out["ci95"]
    head["budgets_used"] = len(out.get("budgets", []))
    head["budgets_dropped"] = [
        {"C": d["C"], "reason": d["reason"], **d} for d in out.get("dropped_budgets", [])
    ]
    rest = {k: v for k, v in out.items() if k not in head and k != "dropped_budgets"}
    return {**head, **rest}
