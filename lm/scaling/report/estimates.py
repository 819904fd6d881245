"""The headline numbers read off the fits: each approach's compute-optimal exponent a with its
interval, the exponents side by side across conventions, and tokens per parameter."""

from __future__ import annotations

import math
from typing import Any

from lm.scaling.report.allocation import ci_from_samples
from lm.scaling.report.conventions import CONVENTIONS
from lm.scaling.report.fits import ConventionFit

APPROACHES = ("1", "2", "3")


def a_estimate(f: ConventionFit, approach: str) -> dict | None:
    """{"value": a, "ci95": [lo, hi] or None} of N_opt ~ C^a under f's convention, or None when
    the approach was not fitted. Approach 3's is the *effective* a (the optimum at fixed C with
    the convention's real FLOPs per token), the quantity approaches 1 and 2 measure; under
    C = 6ND it equals the closed form beta/(alpha+beta)."""
    r = f.get(approach)
    if r is None:
        return None
    if approach == "3" and f.a3_effective:
        value, ci = f.a3_effective["a"], (f.a3_effective.get("ci95") or {}).get("a")
    else:
        value, ci = r.params.get("a"), (r.ci95 or {}).get("a")
    if value is None or not math.isfinite(value):
        return None
    return {"value": float(value), "ci95": list(ci) if ci is not None else None}


def _param(approach: str, key: str):
    def get(f: ConventionFit):
        r = f.get(approach)
        return None if r is None else r.params.get(key)

    return get


def _effective(key: str):
    def get(f: ConventionFit):
        return None if not f.a3_effective else f.a3_effective[key]

    return get


# (label, getter) for the convention table: the compute-optimal exponents a (N_opt ~ C^a) and b.
EXPONENT_SOURCES = (
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


def convention_comparison(fits: dict[str, ConventionFit]) -> dict[str, dict]:
    """Each exponent under every convention, and its shift from (i): `shift_<key>` for each
    other convention, and `shift` for (ii), the one fit.json had before (iii) was added."""
    base = CONVENTIONS[0].key
    comp = {}
    for name, get in EXPONENT_SOURCES:
        row: dict[str, Any] = {c.key: get(fits[c.key]) for c in CONVENTIONS}
        for c in CONVENTIONS[1:]:
            v, v0 = row[c.key], row[base]
            row[f"shift_{c.key}"] = v - v0 if v is not None and v0 is not None else None
        row["shift"] = row[f"shift_{CONVENTIONS[1].key}"]
        comp[name] = row
    return comp


def tokens_per_param(fits: dict[str, ConventionFit]) -> dict:
    """D_opt / N_opt at each convention's largest compute budget, and how it scales (C^(b-a))."""
    out = {}
    for key, f in fits.items():
        d: dict[str, Any] = {}
        C = f.data["C"]
        if C.size == 0:
            continue
        Cmax = float(C.max())
        eff = f.a3_effective
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
            s = f.samples.get(ap)
            ci = None
            if s:
                ci = ci_from_samples({"r": s["k_D"] / s["k_N"] * Cmax ** (s["b"] - s["a"])})["r"]
            d[f"approach{ap}"] = {
                "C_max": Cmax,
                "D_opt_over_N_opt": ratio,
                "ci95": ci,
                "scales_as_C_to": q["b"] - q["a"],
            }
        out[key] = d
    return out
