"""How far the compute-optimal exponent a (N_opt ~ C^a) moves when the method, not the data,
changes, and intervals that include that: `sensitivity`, `systematic`, `total_interval`.

The bootstrap intervals (lm.scaling.fit.resample) hold the method fixed and resample the data,
so they measure only the noise of the points fitted. Two error sources are outside them:

- method choices: settings with no single right value (approach 2's window of sizes, whether a
  budget whose minimum is at the edge of its sizes is dropped or extrapolated, approach 3's
  Huber delta, ...). `sensitivity` refits each approach with one choice varied at a time
  (`default_variants`) and records the deviation of a from the fit with every default.
- whole-pipeline replicates: the same sweep run again from scratch with other seeds (its
  learning-rate search included), whose a differs by more than the bootstrap says when the
  pipeline has steps (the LR rule) that no resample repeats.

The method, exactly
-------------------
For one approach with estimate a and percentile-bootstrap interval [lo, hi]:

    statistical half-widths  s_lo = a - lo,  s_hi = hi - a   (each side kept: percentile
                                                             intervals are asymmetric)
    method half-width        m = max |a_v - a_0| over the counted variants v, where a_0 is
                                 the refit with every default (same optimizer settings)
    replicate half-width     r = max |a_k - a| over the other whole-pipeline runs k
    systematic half-width    s = sqrt(m^2 + r^2)
    ci95_total               [a - sqrt(s_lo^2 + s^2), a + sqrt(s_hi^2 + s^2)]

With s = 0 this is the bootstrap interval itself. The three parts are added in quadrature as
independent sources (the usual rule for combining statistical and systematic errors, e.g. the
Particle Data Group's Review of Particle Physics, ch. "Statistics"). A method variant is not a
random draw, so its deviation has no sampling distribution: the largest one is the half-width
(one alternative analysis at a time; several choices varied together were not measured). The
replicates use the largest deviation from *this* run rather than half their range, because the
interval is centred on this run's estimate: half the range would leave a replicate outside
whenever this run is at one end of them. A replicate's a also carries its own statistical
noise, so r counts some of it twice: conservative, by at most a factor sqrt(2) when the
replicates differ only by noise.

Variants whose fit fails are listed with the reason and not counted. Variants that change what
a means rather than how it is estimated (another FLOP-counting convention, Porian et al. 2024,
arXiv:2406.19146) are rows with `counted` False: shown beside the others, left out of m.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lm.scaling import DEFAULT_BUDGET_TOL
from lm.scaling.fit.approach1 import SMOOTH_WIDTH
from lm.scaling.fit.approach2 import ISOFLOP_WINDOW, ISOFLOP_WINDOW_DECADES
from lm.scaling.fit.approach3 import HUBER_DELTA
from lm.scaling.fit.data import FitError, Runs
from lm.scaling.fit.dispatch import fit_one
from lm.scaling.fit.result import FitResult
from lm.scaling.fit.shared import ENVELOPE_BINS

# A measure maps a fit to the exponents compared: {"a": ..., "b": ...}. The default reads the
# fit's own a and b; the report passes approach 3's effective allocation instead.
Measure = Callable[[FitResult], Mapping[str, float]]


@dataclass(frozen=True)
class Variant:
    """One method choice varied: `kwargs` (on top of the approach's defaults) make the fit."""

    approach: str  # "1", "2" or "3"
    choice: str  # what is varied, e.g. "window half-width (decades of N)"
    value: Any  # its value in this variant
    default: Any  # its value in the default fit
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    counted: bool = True  # False: shown, but not part of the systematic half-width

    @property
    def name(self) -> str:
        return f"approach {self.approach}: {self.choice} {_show(self.value)}"


def _show(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def default_variants(defaults: Mapping[str, Mapping[str, Any]] | None = None) -> list[Variant]:
    """The choices each approach exposes, one at a time, each side of its default where it is a
    number. `defaults[approach]` are the keywords the default fit uses (the values varied
    start from them; the library's defaults otherwise). A variant equal to its default is
    left out: it could only show a deviation of zero.

    - approach 1: envelope points at the smallest and largest size kept (Hoffmann et al. 2022
      sec. 3.1 keep them; the default drops them), the envelope's bins (1500 in the paper) a
      third and three times as many, the smoothing half-width halved and doubled.
    - approach 2: budgets with an edge minimum kept and extrapolated (as one parabola per
      budget does); the window half-width 0.25 decades narrower and wider (the tuning in
      approach2.py found 0.6-0.9 best); the window's floor of sizes each side one fewer and
      one more; the budget tolerance halved and doubled.
    - approach 3: the Huber delta (1e-3 in Hoffmann et al. 2022 app. D.2) ten times smaller
      and larger.
    """
    d = {ap: dict((defaults or {}).get(ap, {})) for ap in ("1", "2", "3")}
    bins = d["1"].get("n_bins", ENVELOPE_BINS)
    width = d["1"].get("smooth_width", SMOOTH_WIDTH)
    decades = d["2"].get("window_decades", ISOFLOP_WINDOW_DECADES)
    floor = d["2"].get("window", ISOFLOP_WINDOW)
    tol = d["2"].get("budget_tol", DEFAULT_BUDGET_TOL)
    delta = d["3"].get("delta", HUBER_DELTA)
    edge1 = "dropped" if d["1"].get("drop_edge_sizes", True) else "kept"
    edge2 = "dropped" if d["2"].get("drop_edge_minima", True) else "kept"
    spec = [
        ("1", "edge sizes in the envelope", "drop_edge_sizes", "kept", edge1, False),
        ("1", "envelope bins", "n_bins", bins // 3, bins, bins // 3),
        ("1", "envelope bins", "n_bins", bins * 3, bins, bins * 3),
        ("1", "smoothing half-width (ln D)", "smooth_width", width / 2, width, width / 2),
        ("1", "smoothing half-width (ln D)", "smooth_width", width * 2, width, width * 2),
        ("2", "budgets with an edge minimum", "drop_edge_minima", "kept", edge2, False),
        ("2", "window half-width (decades of N)", "window_decades", decades - 0.25, decades,
         decades - 0.25),
        ("2", "window half-width (decades of N)", "window_decades", decades + 0.25, decades,
         decades + 0.25),
        ("2", "window floor (sizes each side)", "window", floor - 1, floor, floor - 1),
        ("2", "window floor (sizes each side)", "window", floor + 1, floor, floor + 1),
        ("2", "budget tolerance", "budget_tol", tol / 2, tol, tol / 2),
        ("2", "budget tolerance", "budget_tol", tol * 2, tol, tol * 2),
        ("3", "Huber delta", "delta", delta / 10, delta, delta / 10),
        ("3", "Huber delta", "delta", delta * 10, delta, delta * 10),
    ]  # fmt: skip
    out = []
    for ap, choice, key, shown, default, kw_value in spec:
        if shown == default or (key == "window" and kw_value < 1):
            continue
        out.append(Variant(ap, choice, shown, default, {key: kw_value}))
    return out


def _params(result: FitResult) -> Mapping[str, float]:
    return result.params


def _estimate(runs: Runs, approach: str, kwargs: Mapping[str, Any], measure: Measure) -> dict:
    """{"a", "b"} of one fit, or {"error": why} when it cannot be made."""
    try:
        got = measure(fit_one(runs, approach, **kwargs))
    except (FitError, ArithmeticError, ValueError) as e:
        return {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    a, b = got.get("a"), got.get("b")
    if a is None or not math.isfinite(a):
        return {"error": "no finite a"}
    return {"a": float(a), "b": None if b is None or not math.isfinite(b) else float(b)}


def sensitivity(
    runs: Mapping[str, Runs],
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    variants: Sequence[Variant] | None = None,
    measure: Mapping[str, Measure] | None = None,
) -> list[dict]:
    """Refit each approach under each variant (`default_variants(defaults)` unless given).

    `runs[approach]` are the points that approach fits (approach 1 a run's curve, approach 2
    IsoFLOP rows, ...); approaches absent from `runs` are skipped. `defaults[approach]` are the
    default fit's keywords (optimizer settings included, so the default and its variants are
    fitted alike); `measure[approach]` reads {"a", "b"} off a fit (default: its params).

    Returns one row per variant: name, approach, choice, value, default, counted, a, b (None
    when the fit failed), a_default, b_default, deviation (a - a_default), deviation_b, and
    error (None, or why the variant or the default could not be fitted).
    """
    defaults = {ap: dict((defaults or {}).get(ap, {})) for ap in runs}
    variants = default_variants(defaults) if variants is None else variants
    measure = measure or {}
    base = {ap: _estimate(r, ap, defaults[ap], measure.get(ap, _params)) for ap, r in runs.items()}
    rows = []
    for v in variants:
        if v.approach not in runs:
            continue
        b0 = base[v.approach]
        kw = {**defaults[v.approach], **v.kwargs}
        got = _estimate(runs[v.approach], v.approach, kw, measure.get(v.approach, _params))
        error = got.get("error") or (b0.get("error") and f"default fit: {b0['error']}")
        a, a0 = got.get("a"), b0.get("a")
        b, bb = got.get("b"), b0.get("b")
        rows.append({
            "name": v.name, "approach": v.approach, "choice": v.choice, "value": v.value,
            "default": v.default, "counted": v.counted, "a": a, "b": b,
            "a_default": a0, "b_default": bb,
            "deviation": None if error else a - a0,
            "deviation_b": None if error or b is None or bb is None else b - bb,
            "error": error or None,
        })  # fmt: skip
    return rows


def method_half_width(rows: Sequence[Mapping[str, Any]], approach: str) -> tuple[float, str | None]:
    """(m, the variant that sets it): the largest |deviation| of the approach's counted rows
    that were fitted; (0.0, None) when there are none."""
    best, who = 0.0, None
    for r in rows:
        dev = r.get("deviation")
        if r["approach"] != approach or not r.get("counted", True) or dev is None:
            continue
        if abs(dev) > best or who is None:
            best, who = abs(float(dev)), r["name"]
    return best, who


def replicate_half_width(values: Sequence[float | None], estimate: float) -> float:
    """r: the largest |a_k - a| over the replicates' finite values (0.0 without any)."""
    devs = [abs(v - estimate) for v in values if v is not None and math.isfinite(v)]
    return max(devs, default=0.0)


def systematic(
    rows: Sequence[Mapping[str, Any]],
    approach: str,
    estimate: float,
    replicates: Sequence[float | None] = (),
) -> dict[str, Any]:
    """The systematic half-width s = sqrt(m^2 + r^2) of one approach's a and what drives it:
    {"half_width", "driver" (the variant, or "whole-pipeline replicates", whichever part is
    larger; None when both are 0 or nothing was measured), "method_half_width",
    "method_driver", "replicates_half_width", "n_variants" (fitted, counted),
    "n_variants_failed", "n_replicates"}."""
    m, who = method_half_width(rows, approach)
    mine = [r for r in rows if r["approach"] == approach and r.get("counted", True)]
    fitted = [r for r in mine if r.get("deviation") is not None]
    vals = [v for v in replicates if v is not None and math.isfinite(v)]
    r = replicate_half_width(vals, estimate)
    s = math.hypot(m, r)
    driver = None
    if s > 0:
        driver = who if m >= r else "whole-pipeline replicates"
    return {
        "half_width": s if fitted or vals else None,
        "driver": driver,
        "method_half_width": m if fitted else None,
        "method_driver": who,
        "replicates_half_width": r if vals else None,
        "n_variants": len(fitted),
        "n_variants_failed": len(mine) - len(fitted),
        "n_replicates": len(vals),
    }


def total_interval(
    estimate: float, ci95: Sequence[float] | None, half_width: float | None
) -> list[float] | None:
    """ci95_total: [a - sqrt(s_lo^2 + s^2), a + sqrt(s_hi^2 + s^2)] with s_lo = a - lo and
    s_hi = hi - a from the bootstrap interval [lo, hi] and s the systematic half-width; None
    without a finite bootstrap interval or a systematic half-width (neither part is known)."""
    if ci95 is None or half_width is None or not all(math.isfinite(x) for x in ci95):
        return None
    lo, hi = ci95
    # A percentile interval need not contain the point estimate; a side that does not reach
    # it contributes nothing rather than a negative width.
    s_lo, s_hi = max(estimate - lo, 0.0), max(hi - estimate, 0.0)
    return [estimate - math.hypot(s_lo, half_width), estimate + math.hypot(s_hi, half_width)]
