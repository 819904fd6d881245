"""report.md: the fits, checks and plots of a sweep as a document a reader can follow,
opening with a plain-language answer."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lm.scaling import fit as F
from lm.scaling.report.checks import AGREE, verdict
from lm.scaling.report.conventions import CONVENTIONS, DEFAULT_FLOPS_CONVENTION, Convention
from lm.scaling.report.estimates import APPROACHES
from lm.scaling.report.fits import INTERPOLATED, N_BOOT_KAPLAN, ConventionFit
from lm.scaling.report.plots import LR_PLOT
from lm.scaling.report.summary import tally
from lm.scaling.report.uncertainty import CONVENTION_CHOICE, METHOD, statistical_half_width

# Published compute-optimal exponents the opening paragraph compares with.
KAPLAN_A = 0.73  # Kaplan et al. 2020 (arXiv:2001.08361), N_opt ~ C^0.73
HOFFMANN_A = 0.50  # Hoffmann et al. 2022 (arXiv:2203.15556): a ~ 0.49-0.50 by approach
APPROACH_WHAT = {
    "1": "the envelope of the loss curves",
    "2": "IsoFLOP parabolas",
    "3": "the fitted L(N, D)",
}


def _approaches(aps: list[str]) -> str:
    """["1"] -> "approach 1"; ["1", "3"] -> "approaches 1 and 3"."""
    if len(aps) == 1:
        return f"approach {aps[0]}"
    return f"approaches {', '.join(aps[:-1])} and {aps[-1]}"


def g(v: Any, digits: int = 4) -> str:
    """A number for a table: thousands separators for integers, 4 significant digits, and
    exponent form outside [1e-3, 1e5); an em dash for a missing or non-finite value."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{v:,}"
    v = float(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def ci_text(ci: Any) -> str:
    if not ci or any(x is None or not math.isfinite(x) for x in ci):
        return ""
    return f" [{g(ci[0])}, {g(ci[1])}]"


def _a_text(e: dict | None) -> str:
    if e is None:
        return "—"
    ci, total = e["ci95"], e.get("ci95_total")
    if ci and all(x is not None and math.isfinite(x) for x in ci):
        with_sys = f"; total {total[0]:.3f}-{total[1]:.3f}" if total else ""
        return f"{e['value']:.3f} (95%: {ci[0]:.3f}-{ci[1]:.3f}{with_sys})"
    return f"{e['value']:.3f} (no interval)"


def opening(summary: dict, primary: ConventionFit, own: bool) -> list[str]:
    """The plain-language paragraph: what a is, what we measured, whether the approaches agree,
    how that compares with Kaplan and Hoffmann, and how many checks failed. `own`: the primary
    convention is the one the sweep was planned in."""
    conv = primary.convention
    a = summary["a"]
    measured = [(ap, a[f"approach{ap}"]) for ap in APPROACHES]
    fitted = [(ap, e) for ap, e in measured if e is not None]
    whose = "the sweep's own" if own else "the default"
    text = [
        "**In short.** The exponent *a* in N_opt ∝ C^a says how fast the compute-optimal model "
        "size grows with training compute: with a = 0.5, ten times the compute is best spent on "
        "a model about 3.2 times larger (and the rest on more data); with a = 0.73, 5.4 times "
        f"larger. Under convention {conv.tag} ({conv.title[len(conv.tag) + 1 :]}; {whose}), "
        "we measured"
    ]
    if fitted:
        text.append(
            ", ".join(
                f"a = {_a_text(e)} by approach {ap} ({APPROACH_WHAT[ap]})" for ap, e in fitted
            )
            + "."
        )
    else:
        text.append("nothing: no approach could be fitted.")
    missing = [ap for ap, e in measured if e is None]
    if missing and fitted:
        text.append("Approach " + " and ".join(missing) + " could not be fitted (see its section).")
    if any(e.get("ci95_total") for _, e in fitted):
        text.append(
            "The first interval is the bootstrap's (the noise of the runs, method fixed); the "
            "total adds the method's own choices and other runs of the whole sweep (see "
            "Sensitivity)."
        )
    agree = next((c for c in summary["checks"] if c["name"] == AGREE), None)
    if agree is not None and agree["pass"] is True:
        text.append("The approaches agree within their 95% intervals.")
    elif agree is not None and agree["pass"] is False:
        text.append(f"The approaches do **not** agree: {agree['detail']}.")
    elif len(fitted) >= 2:
        text.append("Without intervals, whether they agree is not judged.")
    text.append(_literature(fitted))
    n_fail = sum(verdict(c) == "FAIL" for c in summary["checks"])
    text.append(
        f"**{n_fail} checks FAIL**"
        + (" (see Checks: each is a limit of this sweep's design or data)." if n_fail else ".")
    )
    return [" ".join(text)]


def _literature(fitted: list[tuple[str, dict]]) -> str:
    """Which of our intervals contain the published exponents."""
    if not fitted:
        return "For comparison, Kaplan et al. 2020 found 0.73 and Hoffmann et al. 2022 ~0.50."
    refs = (("Kaplan et al. 2020", KAPLAN_A, "0.73"), ("Hoffmann et al. 2022", HOFFMANN_A, "~0.50"))
    with_ci = [(ap, e) for ap, e in fitted if e["ci95"] and all(map(math.isfinite, e["ci95"]))]
    parts = []
    for who, ref, shown in refs:
        if not with_ci:
            near = [ap for ap, e in fitted if abs(e["value"] - ref) <= 0.05]
            parts.append(
                f"{who} found {shown}" + (f", within 0.05 of {_approaches(near)}"
                                          if near else ", more than 0.05 from every value here")
            )  # fmt: skip
            continue
        inside = [ap for ap, e in with_ci if e["ci95"][0] <= ref <= e["ci95"][1]]
        parts.append(
            f"{who} found {shown}, "
            + (f"inside the interval of {_approaches(inside)}" if inside
               else "outside every interval here")
        )  # fmt: skip
    return (
        "For comparison, "
        + "; ".join(parts)
        + ". Small models and other ways of counting move a (see the conventions side by side)."
    )


def _param_table(fits: dict[str, ConventionFit], approach: str, keys: tuple[str, ...]):
    head = "| | " + " | ".join(c.title for c in CONVENTIONS) + " |"
    lines = [head, "|---" * (len(CONVENTIONS) + 1) + "|"]
    for k in keys:
        cells = []
        for c in CONVENTIONS:
            r = fits[c.key].get(approach)
            if r is None:
                cells.append("—")
            else:
                cells.append(g(r.params.get(k)) + ci_text((r.ci95 or {}).get(k)))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def _boot_line(fits: dict[str, ConventionFit], approach: str) -> str:
    """How the intervals were made, conventions sharing a method named together."""
    by_method: dict[str, list[str]] = {}
    for c in CONVENTIONS:
        r = fits[c.key].get(approach)
        if r is not None and r.bootstrap:
            b = r.bootstrap
            method = b["method"]
            if "lbfgs" in b:
                method += ", L-BFGS " + ", ".join(f"{k} {v:g}" for k, v in b["lbfgs"].items())
            by_method.setdefault(method, []).append(f"{c.tag} {b['n_ok']}/{b['n_boot']} resamples")
    if not by_method:
        return "No bootstrap (n_boot = 0 or every resample failed)."
    parts = [f"{', '.join(who)} ({method})" for method, who in by_method.items()]
    return f"95% intervals: percentile bootstrap, {'; '.join(parts)}."


def _errors_for(fits: dict[str, ConventionFit], prefix: str) -> list[str]:
    out = []
    for c in CONVENTIONS:
        for e in fits[c.key].errors:
            if e.startswith(prefix):
                out.append(f"- Not done under {c.tag}: {e}")
    return out


def _extrap_cell(ex: dict | None) -> str:
    if not ex:
        return "not done: fewer than 3 compute budgets (IsoFLOP budgets for approach 2)"
    if ex.get("rel_error") is not None:
        return f"{ex['rel_error']:+.2%} (N_opt)"
    if ex.get("mean_abs_rel_error") is not None:
        return f"mean {ex['mean_abs_rel_error']:.2%}, max {ex['max_abs_rel_error']:.2%}"
    return ex.get("note", "—")


def render(
    doc: dict,
    fits: dict[str, ConventionFit],
    primary: Convention,
    summary: dict,
    info: dict,
    n_boot: int,
    dirname: str,
) -> str:
    """report.md's text."""
    pf = fits[primary.key]
    L: list[str] = [f"# Scaling report: {doc['sweep']}", ""]
    own = primary.c_col == f"C_{info.get('flops_convention', DEFAULT_FLOPS_CONVENTION)}"
    L += opening(summary, pf, own)
    L.append("")
    main_n = doc["rows"]["main"]
    d = pf.data
    L.append(
        f"Sweep `{doc['sweep']}` ({doc['kind']}, members counted with "
        f"`{info.get('flops_convention', '6N')}`), directory `{dirname}`: {main_n} main runs, "
        f"{doc['rows']['all']} in all, {doc['rows']['curve_points']} training-curve points."
    )
    if main_n:
        L.append(
            f"{primary.n_col} from {g(d['N'].min())} to {g(d['N'].max())}, D from "
            f"{g(d['D'].min())} to {g(d['D'].max())} tokens, {primary.c_col} from "
            f"{g(d['C'].min())} to {g(d['C'].max())} FLOPs "
            f"({math.log10(d['C'].max() / d['C'].min()):.2f} decades)."
        )
    L += ["", "Losses are final validation losses in nats/token. Every fit is done three times:"]
    for c in CONVENTIONS:
        mark = " — **primary** (the sweep's own; the summary and checks use it)"
        L.append(
            f"- **{c.title}**: parameters `{c.n_col}`, compute `{c.c_col}`"
            + (mark if c == primary else "")
            + "."
        )
    L += [
        "",
        "Porian et al. 2024 (arXiv:2406.19146) and Pearce & Song 2024 (arXiv:2406.12907) trace "
        "much of the Kaplan/Chinchilla disagreement on the compute-optimal exponent to this "
        "choice (the output layer's and attention's FLOPs), so all three are shown side by side.",
        "",
    ]
    for n in doc["notes"]:
        L.append(f"> Note: {n}")
    L += _approach3(fits)
    L += _kaplan(fits)
    L += _approach1(fits)
    L += _approach2(fits, doc, primary)
    L += _side_by_side(fits, doc)
    L += sensitivity_section(doc["sensitivity"], summary)
    L += _tokens_per_param(doc)
    L += _extrapolation(fits)
    L += out_of_sample_section(summary["out_of_sample"], doc)
    if doc["learning_rate"] is not None:
        L += lr_section(doc["learning_rate"], doc)
    L += _controls(doc)
    L += ["", "## Checks", ""]
    L.append(f"On the primary convention {primary.tag}. {tally(summary['checks'])}.")
    L.append("")
    for c in summary["checks"]:
        L.append(f"- {verdict(c)}: {c['name']}" + (f" — {c['detail']}" if c["detail"] else ""))
    L += _plots(doc, primary, n_boot)
    return "\n".join(L) + "\n"


def _approach3(fits) -> list[str]:
    L = ["", "## Approach 3: L(N, D) = E + A/N^alpha + B/D^beta", ""]
    L.append(
        "Hoffmann et al. 2022 (arXiv:2203.15556) App. D.2: Huber (delta 1e-3) on log L, L-BFGS "
        "from the paper's 4500-start grid, best objective kept. N_opt = G (C/6)^a, "
        "D_opt = G^-1 (C/6)^b. Beside it, the same objective by variable projection (Golub and "
        "Pereyra 1973; `lm.scaling.fit.varpro`): E, A, B solved for each (alpha, beta), only the "
        "two exponents searched; the check fails if it beats the grid."
    )
    L.append("")
    L += _param_table(fits, "3", ("E", "A", "B", "alpha", "beta", "a", "b", "G"))
    L += ["", _boot_line(fits, "3")]
    for c in CONVENTIONS:
        r = fits[c.key].get("3")
        if r is not None:
            s = r.stats
            L.append(
                f"- {c.tag}: objective {s['objective']:.4g}, reached by "
                f"{s['n_starts_at_best']} of {s['n_starts']} starts; rms log residual "
                f"{s['rms_log_residual']:.4f} (mean |rel. error| {s['mean_abs_rel_error']:.2%})."
            )
            if s.get("varpro"):
                v = s["varpro"]
                L.append(
                    f"  Variable projection: a = {v['a']:.4f}, objective {v['objective']:.4g} "
                    f"({-v['objective_rel_diff']:+.1e} relative to the grid's); Hessian "
                    f"condition number {v['condition_full']:.2g} over the 5 parameters, "
                    f"{v['condition_projected']:.2g} over the 2 exponents."
                )
    return L + _errors_for(fits, "approach 3")


def _kaplan(fits) -> list[str]:
    L = ["", "## Kaplan et al. 2020 power laws", ""]
    L.append(
        "L(N) = (N_c/N)^alpha_N on the lowest loss of each size; L(D) = (D_c/D)^alpha_D on the "
        "largest size at each D; L(C) = (C_c/C)^alpha_C on the envelope of final losses over "
        "compute; joint L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D on every run "
        "(arXiv:2001.08361 eqs. 1.1-1.5). Single-variable laws are only meaningful in their "
        "limit (D large for L(N)); on a small grid read them as descriptive."
    )
    L.append("")
    L += _param_table(fits, "kaplan", ("alpha_N", "N_c", "alpha_D", "D_c", "alpha_C", "C_c",
                                       "joint_alpha_N", "joint_alpha_D"))  # fmt: skip
    L += ["", _boot_line(fits, "kaplan")]
    return L + _errors_for(fits, "kaplan")


def _approach1(fits) -> list[str]:
    L = ["", "## Approach 1: lower envelope of the loss curves", ""]
    L.append(
        "The lowest loss reached at each compute over every size's loss curve, kept only while "
        "it decreases, gives N_opt = k_N C^a and D_opt = k_D C^b (Hoffmann et al. 2022 sec. "
        "3.1); envelope points at the smallest and largest size are left out (the optimum may "
        "lie beyond them). The curves, per convention:"
    )
    for c in CONVENTIONS:
        method = fits[c.key].a1_method
        if method:
            L.append(f"- {c.tag}: {method}.")
    L.append(
        "On a WSD sweep the training loss before a cooldown is not what a run of that length "
        "reaches (Hägele et al. 2024, arXiv:2405.18392: the learning rate has not decayed), so "
        "where sizes have several finished runs the curves are made of those."
    )
    L.append("")
    L += _param_table(fits, "1", ("a", "b", "k_N", "k_D"))
    L += ["", _boot_line(fits, "1")]
    for c in CONVENTIONS:
        r = fits[c.key].get("1")
        if r is not None:
            s = r.stats
            if "envelope_points" in s:
                L.append(
                    f"- {c.tag}: {s['envelope_points']} envelope points over "
                    f"{s.get('envelope_sizes', '?')} sizes."
                )
    return L + _errors_for(fits, "approach 1")


def _approach2(fits, doc, primary: Convention) -> list[str]:
    L = ["", "## Approach 2: IsoFLOP profiles", ""]
    L.append(
        "A parabola in log N per compute budget gives that budget's N_opt (Hoffmann et al. "
        "2022 sec. 3.2); N_opt = k_N C^a and D_opt = k_D C^b through the minima."
    )
    own_rows = fits[primary.key].a2_method not in (None, INTERPOLATED)
    if doc["kind"] == "isoflop" and own_rows:
        L.append(
            f"On this isoflop sweep the primary convention {primary.tag} uses the sweep's own "
            "IsoFLOP rows. The other conventions count compute differently, so the same runs do "
            "not share a budget under them: their IsoFLOP sets are interpolated along each "
            "size's runs (labelled below)."
        )
    else:
        why = (
            "This is a grid sweep, and approach 2 needs an isoflop sweep."
            if doc["kind"] != "isoflop"
            else "This isoflop sweep's budgets are not IsoFLOP in any convention shown here."
        )
        L.append(
            f"{why} IsoFLOP profiles are therefore *interpolated*: each size's final losses in "
            "(log D, log L) by monotone cubic (PCHIP), evaluated at D = C / (FLOPs per token) "
            "for budgets a factor sqrt(2) apart, only inside the D range that size was trained "
            "on; a budget needs >= 3 sizes. The window of sizes per budget is only as wide as "
            "the D range, so minima near its edge are extrapolations. Intervals: parametric "
            "bootstrap of the runs, since one run feeds several budgets."
        )
    L.append("")
    for c in CONVENTIONS:
        m = fits[c.key].a2_method
        if m:
            label = "interpolated" if m == INTERPOLATED else "own rows"
            L.append(f"- Method {c.tag} ({label}): {m}.")
    L.append("")
    L += _param_table(fits, "2", ("a", "b", "k_N", "k_D"))
    L += ["", _boot_line(fits, "2")]
    for c in CONVENTIONS:
        r = fits[c.key].get("2")
        if r is None:
            continue
        s = r.stats
        L.append(
            f"- {c.tag}: {s.get('n_budgets', len(r.details.get('budgets', [])))} budgets used, "
            f"{s.get('n_budgets_dropped', 0)} dropped"
            + (f", {s['n_exterior_minima']} minima outside the sampled sizes"
               if "n_exterior_minima" in s else "")
            + "."
        )  # fmt: skip
    L += _errors_for(fits, "approach 2")
    pn = doc["parametric_noise"]
    L.append(f"- Parametric noise: relative std {pn['rel_std']:.3g} ({pn['source']}).")
    L += ["", "Budgets left out of approach 2, and why:", ""]
    rows = []
    for c in sorted(CONVENTIONS, key=lambda c: c != primary):
        r = fits[c.key].get("2")
        if r is None:
            why = next((e for e in fits[c.key].errors if e.startswith("approach 2")), "")
            rows.append(f"| {c.tag} | — | — | approach 2 not fitted: {why or 'no rows'} |")
            continue
        for b in r.details.get("dropped_budgets", []):
            rows.append(
                f"| {c.tag} | {g(b['C'])} | {b.get('n_sizes', '—')} | dropped: {b['reason']} |"
            )
        for b in r.details.get("budgets", []):
            if b.get("interior") is False:
                rows.append(
                    f"| {c.tag} | {g(b['C'])} | {b.get('n_sizes', '—')} | kept, but its minimum "
                    f"(N = {g(b['N_opt'])}) is outside the sampled sizes |"
                )
    if rows:
        L += ["| convention | C | sizes | what |", "|---|---|---|---|", *rows]
    else:
        L.append("None: every budget has a minimum inside its sampled sizes.")
    return L


def _side_by_side(fits, doc) -> list[str]:
    L = ["", "## Conventions side by side: the compute-optimal exponent", ""]
    L.append(
        "N_opt ~ C^a, D_opt ~ C^b. Approach 3's closed form a = beta/(alpha+beta) assumes "
        "C = 6ND in the convention's own N; the *effective* a minimises the fitted L(N, D) at "
        "fixed C with the convention's real FLOPs per token (a power law k N^p through the "
        "sizes), as the slope over the sweep's compute range. Shifts are from (i)."
    )
    tags = [c.tag for c in CONVENTIONS]
    head = " | ".join(f"{c.tag} {c.n_col}, {c.c_col}" for c in CONVENTIONS)
    shifts = " | ".join(f"shift {t}" for t in tags[1:])
    L += ["", f"| exponent | {head} | {shifts} |", "|---" * (2 * len(CONVENTIONS)) + "|"]
    for name, row in doc["convention_comparison"].items():
        vals = " | ".join(g(row[c.key]) for c in CONVENTIONS)
        sh = " | ".join(
            "—" if row[f"shift_{c.key}"] is None else f"{row[f'shift_{c.key}']:+.4f}"
            for c in CONVENTIONS[1:]
        )
        L.append(f"| {name} | {vals} | {sh} |")
    L.append("")
    for c in CONVENTIONS:
        f = fits[c.key]
        e, fl = f.a3_effective, f.flops_law
        if e and fl:
            ci = e.get("ci95") or {}
            L.append(
                f"- {c.tag}: FLOPs/token = {fl['k']:.4g} N^{fl['p']:.4f} "
                f"(rms log residual {fl['rms_log_residual']:.2g}); effective a = "
                f"{g(e['a'])}{ci_text(ci.get('a'))}, b = {g(e['b'])}{ci_text(ci.get('b'))}."
            )
    return L


def _dev(row: dict | None) -> str:
    if row is None:
        return "—"
    if row["deviation"] is None:
        return f"not fitted: {row['error']}"
    return f"{row['deviation']:+.4f} (a = {row['a']:.3f})"


def _sensitivity_table(doc: dict, summary: dict) -> list[str]:
    """Rows: each variant, convention and replicate; columns: the approaches' change in a."""
    aps = ("1", "2", "3")
    by: dict[tuple[str, str], dict[str, dict]] = {}
    for r in doc["rows"]:
        by.setdefault((r["name"].split(": ", 1)[-1], r["choice"]), {})[r["approach"]] = r
    L = ["| variant | counted | " + " | ".join(f"approach {ap}" for ap in aps) + " |"]
    L.append("|---" * (len(aps) + 2) + "|")
    for (name, choice), cells in by.items():
        counted = "no" if choice == CONVENTION_CHOICE else "yes"
        L.append(f"| {name} | {counted} | " + " | ".join(_dev(cells.get(ap)) for ap in aps) + " |")
    for rep in doc["replicates"]:
        cells = []
        for ap in aps:
            v, e = rep["a"].get(ap), summary["a"][f"approach{ap}"]
            cells.append("—" if v is None or e is None else f"{v - e['value']:+.4f} (a = {v:.3f})")
        L.append(f"| replicate `{rep['path']}` | yes | " + " | ".join(cells) + " |")
    return L


def sensitivity_section(doc: dict, summary: dict) -> list[str]:
    """The sensitivity table and, per approach, how ci95 becomes ci95_total."""
    L = ["", "## Sensitivity: method choices and whole-pipeline replicates", ""]
    L.append(
        "The bootstrap intervals hold the method fixed. Here each approach is refitted with one "
        "of its choices changed (every other setting at its default, on the primary "
        "convention's points), and the change in a is listed; another convention changes what "
        "a means, not how well it is measured (Porian et al. 2024), so it is shown for scale. "
        f"{METHOD}"
    )
    L += [""] + _sensitivity_table(doc, summary) + [""]
    if not doc["replicates"]:
        L.append(
            "No other whole-pipeline runs were given (`lm scaling plot --replicates DIR ...`): "
            "the learning-rate search and the runs' seeds vary only inside the bootstrap's noise "
            "here, so ci95_total can still miss a fresh run of the same sweep."
        )
    L.append("")
    for ap in ("1", "2", "3"):
        e = summary["a"][f"approach{ap}"]
        if e is None or e.get("systematic") is None:
            continue
        sy, stat, tot = e["systematic"], statistical_half_width(e["ci95"]), e["ci95_total"]
        parts = [f"- approach {ap}: method {g(sy['method_half_width'])}"]
        if sy["method_driver"]:
            parts.append(f" ({sy['method_driver'].split(': ', 1)[-1]})")
        if sy["replicates_half_width"] is not None:
            parts.append(f", replicates {g(sy['replicates_half_width'])} ({sy['n_replicates']})")
        parts.append(f"; systematic {g(sy['half_width'])} vs statistical {g(stat)}")
        if tot:
            ci = e["ci95"]
            parts.append(
                f"; 95% [{ci[0]:.3f}, {ci[1]:.3f}] (width {ci[1] - ci[0]:.3f}) -> total "
                f"[{tot[0]:.3f}, {tot[1]:.3f}] (width {tot[1] - tot[0]:.3f})"
            )
        L.append("".join(parts) + ".")
    return L


def _tokens_per_param(doc) -> list[str]:
    L = ["", "## Tokens per parameter at the optimum", ""]
    L.append(
        "D_opt / N_opt at each convention's largest compute budget. In general "
        "D_opt/N_opt = (k_D/k_N) C^(b - a) (approaches 1, 2) and G^-2 (C/6)^(b - a) with "
        "b - a = (alpha - beta)/(alpha + beta) (approach 3, C = 6ND): constant, as Hoffmann "
        "et al.'s ~20 tokens per parameter, only if a = b. The last column is b - a (for "
        "approach 3, from the effective a and b)."
    )
    L += ["", "| convention | approach | C_max | D_opt/N_opt | ~ C^ |", "|---|---|---|---|---|"]
    for c in CONVENTIONS:
        for ap, v in doc["tokens_per_parameter"].get(c.key, {}).items():
            L.append(
                f"| {c.tag} | {ap} | {g(v['C_max'])} | "
                f"{g(v['D_opt_over_N_opt'])}{ci_text(v['ci95'])} | {g(v['scales_as_C_to'])} |"
            )
    return L


def _extrapolation(fits) -> list[str]:
    L = ["", "## Extrapolation", ""]
    L.append(
        "Fit without the largest compute budget (runs within 10% of the largest C) or without "
        "the largest model size, then predict the held-out runs. Approach 3 and Kaplan predict "
        "the loss; approaches 1 and 2 predict N_opt. Errors are prediction / actual - 1."
    )
    L += ["", "| convention | fit | held out | error |", "|---|---|---|---|"]
    for c in CONVENTIONS:
        f = fits[c.key]
        for key, label in (("3", "approach 3"), ("kaplan", "Kaplan joint L(N,D)"),
                           ("1", "approach 1"), ("2", "approach 2")):  # fmt: skip
            r = f.get(key)
            if r is None:
                continue
            ex = r.extrapolation
            held = f"largest C ({g(ex['held_out_C'])})" if ex else "largest C"
            L.append(f"| {c.tag} | {label} | {held} | {_extrap_cell(ex)} |")
            hn = f.holdout_largest_N.get(key)
            if hn:
                L.append(
                    f"| {c.tag} | {label} | largest N ({g(hn['held_out_N'])}) | "
                    f"{_extrap_cell(hn)} |"
                )
    return L


OOS_METHOD = (
    "Loss predictions: approach 3 reads the compute-optimal loss off its L(N, D), minimised "
    "over N at C_out with the convention's real FLOPs per token. Approaches 1 and 2 have no "
    "L(N, D), so the compute-optimal loss L*(C) = E + K C^-g (Henighan et al. 2020, "
    "arXiv:2010.14701) is fitted through their own compute-optimal points (approach 2: each "
    "kept budget's IsoFLOP minimum; approach 1: its envelope; Huber on log L as approach 3's "
    "fit, so a stray point cannot bend it) and read at C_out. Where E is not identified (fewer "
    f"than {F.MIN_POINTS_FOR_E} points, or the fitted E at 0 or at the smallest loss) the pure "
    "power law K C^-g is used (Kaplan et al. 2020's L(C), eq. 1.3), as said per approach. Each "
    "is judged against the measured loss of the holdout run nearest its own predicted N_opt "
    "(in log N): an IsoFLOP profile is flat at its minimum, so that run measures the "
    "compute-optimal loss best."
)


def out_of_sample_section(oos: dict, doc: dict) -> list[str]:
    """The holdout runs at C_out beyond every fitted budget against each approach's prediction
    (lm.scaling.report.out_of_sample)."""
    L = ["", "## Out of sample", ""]
    if not oos.get("runs"):
        L.append(
            f"Not tested: {oos.get('note', 'no holdout runs')}. With `holdout_budget_factor: f` "
            "(>= 3) in the sweep file, the sweep predicts N_opt at f x its largest budget from "
            "its main runs (approach 2) and trains three runs there to test the prediction."
        )
        return L
    runs, plan = oos["runs"], oos.get("planned") or {}
    c_out, c_max = oos["C_out"], oos.get("C_max")
    beyond = ""
    if c_max:
        beyond = f", {math.log10(c_out / c_max):.2f} decades beyond the largest fitted budget"
    said = (f"approach 2 on its {plan['n_rows']} main runs (a = {plan['a']:.3f}) predicted "
            f"N_opt = {g(plan['N_opt'])} there, and it" if "N_opt" in plan else "it")  # fmt: skip
    L.append(
        f"After the main runs, the sweep set C_out = {g(c_out)} ({oos['c_col']}{beyond}); "
        f"{said} trained {len(runs)} whole runs at C_out, at N_opt/2, N_opt and 2 N_opt (shapes "
        "rounded to whole heads). No fit here uses them: every prediction below comes from the "
        f"main runs alone. {OOS_METHOD}"
    )
    L += ["", f"| run | {oos['n_col']} | D | {oos['c_col']} | loss |", "|---|---|---|---|---|"]
    for r in runs:
        best = " (lowest)" if r["name"] == oos["best_run"] else ""
        L.append(f"| {r['name']} | {g(r['N'])} | {g(r['D'])} | {g(r['C'])} | "
                 f"{r['loss']:.4f}{best} |")  # fmt: skip
    L += _oos_table(oos)
    sp = doc.get("seed_spread")
    if sp and sp.get("std") is not None and math.isfinite(sp["std"]):
        L.append(
            f"- Seed-to-seed std of one run's final loss: {sp['std']:.4f} nats "
            f"({sp['rel_std']:.2%}): the three runs' losses differ by "
            f"{max(r['loss'] for r in runs) - min(r['loss'] for r in runs):.4f} at most."
        )
    return L


def _oos_table(oos: dict) -> list[str]:
    """Per approach: prediction, the run it is judged on, error, best of three; then how."""
    L = ["", "| approach | predicted N_opt | predicted loss at C_out | run nearest its N_opt | "
         "measured loss | error | nearest run the best of the three? |",
         "|---|---|---|---|---|---|---|"]  # fmt: skip
    notes = []
    for key, e in oos["approaches"].items():
        ap = key.removeprefix("approach")
        if e is None or "rel_error" not in e:
            why = "not fitted" if e is None else e.get("error", "no prediction")
            L.append(f"| {ap} | — | — | — | — | — | {why} |")
            continue
        L.append(
            f"| {ap} | {g(e['N_opt'])}{ci_text(e['N_opt_ci95'])} | {e['loss']:.4f}"
            f"{ci_text(e['loss_ci95'])} | {e['nearest_run']} | {e['measured_loss']:.4f} | "
            f"{e['rel_error']:+.2%} | {'yes' if e['best_of_three'] else 'no'} |"
        )
        notes.append(f"- Approach {ap}: {e['loss_method']}.")
        if e.get("at_runs"):
            notes.append(
                "  At each run's own (N, D), its L(N, D) predicts "
                + ", ".join(f"{x['predicted']:.4f} ({x['rel_error']:+.2%})" for x in e["at_runs"])
                + "."
            )
    return L + [""] + notes


def lr_section(lr: dict, doc: dict) -> list[str]:
    """The evidence that each size's learning rate was searched for, not taken from another
    paper's setup (Porian et al. 2024 find a mistuned rate per size biases a)."""
    L = ["", "## Learning rate: tuned, not borrowed", ""]
    sizes = sorted({p["N"] for p in lr["points"]})
    tokens = (
        f", {lr['tokens']:,} tokens per run"
        if isinstance(lr.get("tokens"), int)
        else f", {lr['tokens_per_param']:g} tokens per parameter"
        if lr.get("tokens_per_param")
        else ""
    )
    L.append(
        f"Before the sweep, a short learning-rate search at {len(sizes)} sizes "
        f"({len(lr['points'])} runs{tokens}). Method: {lr['method'] or 'not stated'}."
    )
    if lr.get("seeds", 1) > 1:
        L[-1] += f" Each (size, rate) at {lr['seeds']} seeds; the optimum is their mean loss's."
    if lr.get("transfer"):
        L[-1] += (
            f" The members are muP (Yang et al. 2022, arXiv:2203.03466) with base width "
            f"{lr['transfer']['base_width']}, the tuned size's d_model: one rate tuned there "
            "transfers to every width, so every member uses it (p = 0) instead of a per-size "
            "rule fitted to noisy optima (see experiments/results/mup_transfer for the evidence)."
        )
    n_col = lr.get("n_col", "N")
    L += ["", f"| {n_col} | best lr | note |", "|---|---|---|"]
    for s in sorted(lr["per_size"], key=lambda s: s["N"]):
        L.append(f"| {g(s['N'])} | {g(s['lr_opt'])} | {s['note']} |")
    rule = lr.get("rule")
    if rule:
        L += ["", f"Fitted rule: {rule['formula']} with k = {g(rule['k'])}, p = {g(rule['p'])}."]
        used = doc.get("lr_used") or []
        if used:
            L += [
                "",
                f"| {n_col} (sweep size) | lr used | rule's lr | used / rule |",
                "|---|---|---|---|",
            ]
            for u in used:
                L.append(
                    f"| {g(u['N'])} | {g(u['lr'])} | {g(u['rule'])} | {u['lr'] / u['rule']:.3f} |"
                )
    if LR_PLOT in doc["plots"]:
        cap = doc["plots"][LR_PLOT]
        L += ["", f"![{cap}](plots/{LR_PLOT}.png)", "", f"*{cap}* ([SVG](plots/{LR_PLOT}.svg))"]
    return L


def _controls(doc) -> list[str]:
    L = ["", "## Seed-to-seed spread", ""]
    sp = doc["seed_spread"]
    if not sp:
        L.append("No seed runs (sweep `seeds: 1`): the run-to-run noise is unknown.")
    else:
        L.append(
            f"{sp['n']} runs of the smallest size (N = {g(sp['N'])}, D = {g(sp['D'])}) "
            f"differing only in seed: mean {sp['mean']:.4f}, std {g(sp['std'])} nats "
            f"({sp['rel_std']:.2%}); losses {', '.join(f'{x:.4f}' for x in sp['losses'])}."
        )
        if "gap_to_next_size" in sp:
            L.append(
                f"The loss gap to the next size (N = {g(sp['next_size_N'])}) at this D is "
                f"{sp['gap_to_next_size']:.4f}: the seed std is {sp['std_over_gap']:.1%} of it."
            )
        L.append(
            "Read the fitted exponents with this noise in mind: a seed std of this size moves "
            "each run's loss by that much, and with a few sizes spanning about one decade the "
            "exponents inherit it (the bootstrap intervals above measure the same thing "
            "from the fit's residuals)."
        )

    L += ["", "## WSD branch vs separate cosine run", ""]
    cos = doc["wsd_vs_cosine"]
    if not cos:
        L.append("No cosine comparison runs (sweep `compare_cosine: false`, or not WSD).")
    else:
        L.append(
            "Same size, same D, same seed: the WSD member (a cooldown branched off the trunk; "
            "Hägele et al. 2024) vs a separate cosine-schedule run."
        )
        L += ["", "| N | D | WSD loss | cosine loss | cosine - WSD |", "|---|---|---|---|---|"]
        for c in cos:
            L.append(
                f"| {g(c['N'])} | {g(c['D'])} | {c['loss_wsd']:.4f} | {c['loss_cosine']:.4f} "
                f"| {c['diff_cosine_minus_wsd']:+.4f} |"
            )
        mean = float(np.mean([c["diff_cosine_minus_wsd"] for c in cos]))
        L.append("")
        scale = f" (seed std {sp['std']:.4f})" if sp and math.isfinite(sp["std"]) else ""
        L.append(f"Mean cosine - WSD: {mean:+.4f} nats{scale}.")

    L += ["", "## Epochs", ""]
    ep = doc["epochs"]
    if "corpus_train_tokens" in ep:
        L.append(
            f"Largest D = {g(ep['max_D'])} tokens of a {ep['corpus_train_tokens']:,}-token "
            f"training split: {ep['max_epochs']:.3f} epochs"
            + (" (no repeated data)." if ep["max_epochs"] <= 1 else " (data repeated).")
        )
    else:
        L.append(f"Not reported: {ep.get('note')}.")
    return L


def _plots(doc, primary: Convention, n_boot: int) -> list[str]:
    L = ["", "## Plots", ""]
    L.append(
        f"Plots in the primary convention {primary.tag} unless labelled: compute "
        f"`{primary.c_col}`, parameters `{primary.n_col}`; the compute-optimal, IsoFLOP, L(N) "
        "and approach-3 plots show every convention."
    )
    L.append("")
    for name, cap in doc["plots"].items():
        if name == LR_PLOT:
            continue  # shown in its own section
        L.append(f"![{cap}](plots/{name}.png)")
        L.append("")
        L.append(f"*{cap}* ([SVG](plots/{name}.svg))")
        L.append("")
    L.append(
        f"Bootstrap resamples: {n_boot} (approach 3, approach 1, approach 2), "
        f"{min(n_boot, N_BOOT_KAPLAN)} (Kaplan). Timings in fit.json."
    )
    return L
