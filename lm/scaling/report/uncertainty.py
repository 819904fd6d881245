"""Each approach's a with an interval for every error source the report can measure: the
bootstrap's (ci95), plus the method's own choices and other whole-pipeline runs (ci95_total).

The method is lm.scaling.fit.sensitivity's (its docstring states it exactly); this module
gathers its inputs: the primary convention's sensitivity rows (fits.method_sensitivity), the
other conventions' a as rows shown but not counted (another convention changes what a means,
not how well it is estimated: Porian et al. 2024, arXiv:2406.19146), and the a values other
runs of the same sweep wrote to their fit.json (`read_replicates`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm.scaling.fit import sensitivity as S
from lm.scaling.report.conventions import CONVENTIONS, Convention
from lm.scaling.report.estimates import APPROACHES, a_estimate
from lm.scaling.report.fits import ConventionFit

CONVENTION_CHOICE = "FLOP and parameter counting (changes what a means: not counted)"
REPLICATES = "whole-pipeline replicates"

METHOD = (
    "ci95_total = [a - sqrt(s_lo^2 + s^2), a + sqrt(s_hi^2 + s^2)]: s_lo = a - lo and "
    "s_hi = hi - a from the bootstrap interval [lo, hi]; s = sqrt(m^2 + r^2) the systematic "
    "half-width, m the largest |change in a| over the method variants (one choice varied at a "
    "time from the defaults, each refitted), r the largest |a_k - a| over other whole-pipeline "
    "runs of the sweep (0 when none are given). Other conventions are shown, not counted."
)


class ReplicateError(ValueError):
    """A replicate directory that cannot be used; the message is one line naming it."""


def read_replicate(path: str | Path) -> dict[str, Any]:
    """{"path", "sweep", "convention", "a": {"1": a or None, "2": ..., "3": ...}} from a sweep
    directory's fit.json summary; ReplicateError (one line naming the path) if there is none."""
    p = Path(path)
    if not p.is_dir():
        raise ReplicateError(f"replicate {p}: no such directory")
    fj = p / "fit.json"
    if not fj.is_file():
        raise ReplicateError(
            f"replicate {p}: not a sweep output with a report (no fit.json; write it with "
            f"`lm scaling plot --sweep {p}`)"
        )
    try:
        doc = json.loads(fj.read_text())
        summary = doc["summary"]
        conv = str(summary["convention"])
        a = {ap: (summary["a"].get(f"approach{ap}") or {}).get("value") for ap in APPROACHES}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ReplicateError(f"replicate {fj}: not a sweep report (no summary with a)") from None
    return {"path": str(p), "sweep": doc.get("sweep", p.name), "convention": conv, "a": a}


def read_replicates(paths: Sequence[str | Path], convention: str, own: Path) -> list[dict]:
    """Every replicate, checked against this sweep: the same primary convention (a differs
    between conventions by more than its noise) and not the directory `own` itself."""
    out = []
    for path in paths:
        rep = read_replicate(path)
        if Path(path).resolve() == Path(own).resolve():
            raise ReplicateError(f"replicate {path}: is the sweep being reported itself")
        if rep["convention"] != convention:
            raise ReplicateError(
                f"replicate {path}: its a is counted in convention {rep['convention']}, this "
                f"sweep's in {convention}; exponents of different conventions are not comparable"
            )
        out.append(rep)
    return out


def convention_rows(fits: dict[str, ConventionFit], primary: Convention) -> list[dict]:
    """Each other convention's a beside the primary's, per approach, as sensitivity rows with
    `counted` False."""
    rows = []
    pf = fits[primary.key]
    for c in CONVENTIONS:
        if c == primary:
            continue
        for ap in APPROACHES:
            e, e0 = a_estimate(fits[c.key], ap), a_estimate(pf, ap)
            a, a0 = (None if x is None else x["value"] for x in (e, e0))
            rows.append({
                "name": f"convention {c.tag}", "approach": ap, "choice": CONVENTION_CHOICE,
                "value": c.title, "default": primary.title, "counted": False, "a": a, "b": None,
                "a_default": a0, "b_default": None,
                "deviation": None if a is None or a0 is None else a - a0, "deviation_b": None,
                "error": None if a is not None else f"not fitted under {c.tag}",
            })  # fmt: skip
    return rows


def approach_total(f: ConventionFit, approach: str) -> dict[str, Any]:
    """{"ci95_total", "systematic"} for one approach's a under f's convention (both None when
    the approach was not fitted): lm.scaling.fit.sensitivity.systematic over f.sensitivity and
    f.replicates, and total_interval around the estimate."""
    e = a_estimate(f, approach)
    if e is None:
        return {"ci95_total": None, "systematic": None}
    reps = [r["a"].get(approach) for r in f.replicates]
    sys_ = S.systematic(f.sensitivity, approach, e["value"], reps)
    total = S.total_interval(e["value"], e["ci95"], sys_["half_width"])
    return {"ci95_total": total, "systematic": sys_}


def statistical_half_width(ci95: Sequence[float] | None) -> float | None:
    """Half the bootstrap interval's width (None without a finite interval)."""
    if not ci95 or not all(x is not None and math.isfinite(x) for x in ci95):
        return None
    return (ci95[1] - ci95[0]) / 2


def document(f: ConventionFit) -> dict[str, Any]:
    """fit.json's `sensitivity`: the method, every row, the replicates, and per approach the
    totals (as in the summary)."""
    return {
        "method": METHOD,
        "rows": f.sensitivity,
        "replicates": f.replicates,
        "approaches": {f"approach{ap}": approach_total(f, ap) for ap in APPROACHES},
    }
