"""What other tools read: fit.json's per-convention fits and its `summary` object, the key
numbers write_report returns, and the lines it prints."""

from __future__ import annotations

import math
from typing import Any

from lm.scaling import fit as F
from lm.scaling.report.checks import count, interior_budgets, verdict
from lm.scaling.report.conventions import CONVENTIONS, Convention
from lm.scaling.report.estimates import APPROACHES, a_estimate
from lm.scaling.report.fits import ConventionFit
from lm.scaling.report.uncertainty import approach_total


def summary_object(f: ConventionFit, checks: list[dict], out_of_sample: dict | None = None) -> dict:
    """fit.json's `summary`, for the primary convention:
    {"convention": key, "a": {"approach1": {"value", "ci95", "ci95_total", "systematic"} or
     null, ...}, "approach2_interior_budgets": k or null, "checks": [{"name", "pass",
     "detail"}], "out_of_sample": {...}}. ci95_total and systematic:
    lm.scaling.report.uncertainty.approach_total; out_of_sample:
    lm.scaling.report.out_of_sample.evaluate (with no holdout runs, `runs` is empty and `note`
    says why)."""
    return {
        "convention": f.convention.key,
        "a": {f"approach{ap}": _a_entry(f, ap) for ap in APPROACHES},
        "approach2_interior_budgets": interior_budgets(f),
        "checks": [{"name": c["name"], "pass": c["pass"], "detail": c["detail"]} for c in checks],
        "out_of_sample": out_of_sample
        or {"runs": [], "approaches": {}, "note": "out of sample not evaluated"},
    }


def _a_entry(f: ConventionFit, approach: str) -> dict | None:
    e = a_estimate(f, approach)
    return None if e is None else {**e, **approach_total(f, approach)}


def key_numbers(fits: dict[str, ConventionFit], primary: Convention, checks: list[dict]) -> dict:
    """The numbers write_report returns: approach 3 and Kaplan under the primary convention,
    and the check tally."""
    s: dict[str, Any] = {"primary_convention": primary.key}
    f = fits[primary.key]
    a3 = f.get("3")
    if a3 is not None:
        s.update({q: a3.params[q] for q in ("E", "A", "B", "alpha", "beta", "a", "b", "G")})
        s["ci95"] = a3.ci95
    k = f.get("kaplan")
    if k is not None:
        s.update({q: k.params[q] for q in ("alpha_N", "alpha_D", "alpha_C")})
    s["n_checks_failed"] = count(checks, "FAIL")
    s["all_checks_pass"] = s["n_checks_failed"] == 0
    return s


def fits_json(f: ConventionFit) -> dict:
    out: dict[str, Any] = {"description": f.convention.title, "errors": f.errors}
    out["n_col"], out["C_col"] = f.convention.n_col, f.convention.c_col
    out["primary"] = f.primary
    for key, name in (("3", "approach3"), ("kaplan", "kaplan"), ("1", "approach1"),
                      ("2", "approach2")):  # fmt: skip
        r = f.get(key)
        out[name] = None if r is None else r.to_json()
    if out["approach3"] is not None:
        out["approach3"]["extrapolation_largest_N"] = f.holdout_largest_N.get("3")
        out["approach3"]["effective_allocation"] = f.a3_effective
    if out["kaplan"] is not None:
        out["kaplan"]["extrapolation_largest_N"] = f.holdout_largest_N.get("kaplan")
    if out["approach2"] is not None:
        out["approach2"]["method"] = f.a2_method
        out["approach2"]["interior_budgets"] = interior_budgets(f)
    out["flops_per_token_law"] = f.flops_law
    out["timing_s"] = f.timing
    return out


# JSON-ready: numpy to Python, non-finite numbers to null (the fit library's own).
clean = F.jsonable


def _g(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.3f}"


def console_lines(
    s: dict, summary: dict, comparison: dict, errors: dict[str, list[str]], timing: dict
) -> list[str]:
    """What write_report prints: headline numbers, every check, what was not fitted, and last
    the tally of failed checks."""
    lines = []
    conv = next(c for c in CONVENTIONS if c.key == summary["convention"])
    a = summary["a"]
    lines.append(
        f"a (N_opt ~ C^a), {conv.title}: "
        + ", ".join(
            f"approach {ap} {_g(a[f'approach{ap}'] and a[f'approach{ap}']['value'])}"
            + _ci((a[f"approach{ap}"] or {}).get("ci95"))
            + _ci((a[f"approach{ap}"] or {}).get("ci95_total"), " total")
            for ap in APPROACHES
        )
    )
    if "alpha" in s:
        ci = s.get("ci95") or {}
        lines.append(
            f"approach 3 {conv.tag}: "
            + ", ".join(f"{q} {s[q]:.4g}{_ci(ci.get(q))}" for q in ("alpha", "beta", "a", "E"))
        )
    row = comparison["a, approach 3 effective (convention's FLOPs/token)"]
    vals = [row[c.key] for c in CONVENTIONS]
    if None not in vals:
        lines.append(
            "a, approach 3 effective: "
            + ", ".join(f"{c.tag} {v:.3f}" for c, v in zip(CONVENTIONS, vals, strict=True))
        )
    if "alpha_N" in s:
        lines.append(f"Kaplan {conv.tag}: alpha_N {s['alpha_N']:.3f}, alpha_D {s['alpha_D']:.3f}")
    if s.get("seed_std") is not None:
        lines.append(f"seed-to-seed std of the final loss: {s['seed_std']:.4f} nats")
    for c in summary["checks"]:
        lines.append(f"{verdict(c)}: {c['name']}" + (f" — {c['detail']}" if c["detail"] else ""))
    for k, errs in errors.items():
        for e in errs:
            lines.append(f"not fitted [{k}]: {e}")
    lines.append(
        f"report -> {s['report']} ({timing['total']:.1f} s: fits {timing['fits']:.1f} s, plots "
        f"{timing['plots']:.1f} s)"
    )
    lines.append(tally(summary["checks"]))
    return lines


def tally(checks: list[dict]) -> str:
    """The last line: how many checks FAIL (a finding about the sweep, not an error)."""
    n = {r: count(checks, r) for r in ("FAIL", "PASS", "SKIP")}
    why = ": a finding about the sweep, not an error; see report.md ## Checks" if n["FAIL"] else ""
    return f"{n['FAIL']} checks FAIL ({n['PASS']} PASS, {n['SKIP']} SKIP){why}"


def _ci(ci: Any, label: str = "") -> str:
    if not ci or any(x is None or not math.isfinite(x) for x in ci):
        return ""
    return f"{label} [{ci[0]:.3f}, {ci[1]:.3f}]"
