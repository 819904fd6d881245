"""The report's checks can fail: each FAILs on a sweep design that cannot answer the question
(and passes on the clean sweep of tests/scaling/test_report.py). First the rules on hand-made
fits, then real fits of synthetic designs (tests/synthetic_sweep.py), primary convention only."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import synthetic_sweep as S

from lm.scaling import fit as F
from lm.scaling import report
from lm.scaling.report import checks as C
from lm.scaling.report import tables
from lm.scaling.report.summary import summary_object

# ---------------------------------------------------------------- the rules, on hand-made fits


def _result(approach, a, ci=None, extrapolation=None, stats=None, details=None):
    params = {"a": a, "b": 1 - a, "k_N": 1.0, "k_D": 1.0}
    if approach == "3":
        params.update(alpha=0.3, beta=0.3)
    return F.FitResult(
        approach, "", 10, params, stats or {"n_starts_at_best": 50, "n_starts": 4500},
        details or {}, ci95=None if ci is None else {"a": ci}, extrapolation=extrapolation,
    )  # fmt: skip


def _fit(results: dict, errors=()) -> report.ConventionFit:
    f = report.ConventionFit(report.CONVENTIONS[0], True, {k: np.zeros(0) for k in "NDLC"})
    f.results.update(results)
    f.errors.extend(errors)
    f.a2_method = "rows"
    return f


def _by_name(f) -> dict:
    return {c["name"]: c for c in report.run_checks(f)}


GOOD_EX = {"target": "N_opt", "held_out_C": 1e13, "rel_error": 0.02}


def _three(a1=(0.45, (0.40, 0.50)), a2=(0.45, (0.43, 0.47)), a3=(0.45, (0.44, 0.46)), **kw):
    budgets = kw.pop("budgets", [{"C": c, "N_opt": 1.0, "interior": True} for c in (1, 2, 3)])
    return _fit({
        "1": _result("1", a1[0], a1[1], kw.get("ex1", GOOD_EX)),
        "2": _result("2", a2[0], a2[1], kw.get("ex2", GOOD_EX), {"n_budgets": len(budgets)},
                     {"budgets": budgets, "dropped_budgets": []}),
        "3": _result("3", a3[0], a3[1], kw.get("ex3", GOOD_EX), kw.get("stats3")),
    })  # fmt: skip


def test_agreement_rule_is_the_sum_of_half_widths():
    # |0.25 - 0.5| = 0.25 against half-widths 0.125 + 0.125: agree, at the boundary (binary
    # fractions, so no rounding decides it).
    a1, a3 = (0.25, (0.125, 0.375)), (0.375, (0.25, 0.5))
    ok = _by_name(_three(a1=a1, a2=(0.5, (0.375, 0.625)), a3=a3))[C.AGREE]
    assert ok["pass"] is True
    bad = _by_name(_three(a1=a1, a2=(0.51, (0.385, 0.635)), a3=a3))[C.AGREE]
    assert bad["pass"] is False
    assert bad["detail"] == (
        "approach 1 a = 0.250 [0.125, 0.375] vs approach 2 a = 0.510 [0.385, 0.635]: "
        "|difference| 0.260 > half-widths summed 0.250"
    )
    # Without intervals nothing is compared: a skip, not a pass.
    none = _by_name(_three(a1=(0.45, None), a2=(0.6, None), a3=(0.7, None)))[C.AGREE]
    assert none["pass"] is None


def test_interval_width_rule():
    assert _by_name(_three(a1=(0.45, (0.30, 0.60))))[C.CI_WIDTH]["pass"] is True  # 0.30
    wide = _by_name(_three(a1=(0.45, (0.30, 0.61))))[C.CI_WIDTH]
    assert wide["pass"] is False and "approach 1: 0.310 (too wide)" in wide["detail"]
    nan = _by_name(_three(a2=(0.45, (math.nan, math.nan))))[C.CI_WIDTH]
    assert nan["pass"] is False and "approach 2: no finite interval" in nan["detail"]


def test_extrapolation_rule():
    at = {**GOOD_EX, "rel_error": -0.10}
    assert _by_name(_three(ex2=at))[C.EXTRAPOLATION]["pass"] is True
    over = _by_name(_three(ex2={**GOOD_EX, "rel_error": 0.101}))[C.EXTRAPOLATION]
    assert over["pass"] is False and "approach 2: 10.1%" in over["detail"]
    loss = {"target": "loss", "held_out_C": 1e13, "mean_abs_rel_error": 0.2}
    assert _by_name(_three(ex3=loss))[C.EXTRAPOLATION]["pass"] is False
    # Too few budgets to hold one out: the design cannot answer.
    short = _by_name(_three(ex3=None))[C.EXTRAPOLATION]
    assert short["pass"] is False and "fewer than 3 compute budgets" in short["detail"]
    # A check that ran but had nothing to score is listed, not judged.
    note = {"target": "N_opt", "held_out_C": 1e13, "note": "no envelope rows"}
    listed = _by_name(_three(ex1=note))[C.EXTRAPOLATION]
    assert (
        listed["pass"] is True and "approach 1: not checked: no envelope rows" in listed["detail"]
    )


def test_approach1_extrapolation_within_size_rounding_is_not_judged():
    f = _three(ex1={"target": "N_opt", "held_out_C": 1e13, "mean_abs_rel_error": 0.3})
    f.curve_runs = F.Runs.from_arrays([1e4, 2e4, 4e4], [1e5] * 3, [3.0] * 3)  # a 2x ladder
    c = _by_name(f)[C.EXTRAPOLATION]
    assert c["pass"] is True and "not judged" in c["detail"] and "41%" in c["detail"]
    f.results["1"] = _result("1", 0.45, (0.4, 0.5), {**GOOD_EX, "rel_error": 0.5})
    assert _by_name(f)[C.EXTRAPOLATION]["pass"] is False  # beyond the rounding: judged


def test_interior_budget_rule_and_summary():
    two = [{"C": c, "N_opt": 1.0, "interior": c != 3} for c in (1, 2, 3)]
    f = _three(budgets=two)
    c = _by_name(f)[C.INTERIOR]
    assert c["pass"] is False and c["detail"].startswith("2 interior of 3 budgets used")
    s = summary_object(f, report.run_checks(f))
    assert s["approach2_interior_budgets"] == 2
    a1 = s["a"]["approach1"]
    assert {k: a1[k] for k in ("value", "ci95")} == {"value": 0.45, "ci95": [0.40, 0.50]}
    f.results["2"] = None
    f.errors.append("approach 2: no budgets")
    c = _by_name(f)[C.INTERIOR]
    assert c["pass"] is False and c["detail"] == "approach 2: no budgets"
    assert _by_name(f)[C.ALL_FITTED]["pass"] is False
    s = summary_object(f, report.run_checks(f))
    assert s["a"]["approach2"] is None and s["approach2_interior_budgets"] is None


def test_approach3_starts_rule():
    # A design that puts the optimum on exactly one of 4500 lanes is not one to build on
    # purpose; the rule is shown on the fit's own statistic.
    f = _three(stats3={"n_starts_at_best": 1, "n_starts": 4500})
    c = _by_name(f)[C.A3_STARTS]
    assert c["pass"] is False and c["detail"] == "1 of 4500"


def test_approach3_fails_when_variable_projection_beats_the_grid():
    vp = {"objective_rel_diff": 0.0, "a_diff": 0.0, "condition_full": 3e6,
          "condition_projected": 7.0}  # fmt: skip
    f = _three(stats3={"n_starts_at_best": 30, "n_starts": 4500, "varpro": vp})
    c = _by_name(f)[C.A3_STARTS]
    assert c["pass"] is True and "3e+06 (5 parameters) vs 7 (the 2 exponents)" in c["detail"]
    # the grid's optimum 1e-4 above variable projection's: it missed the optimum
    vp["objective_rel_diff"] = 1e-4
    assert _by_name(f)[C.A3_STARTS]["pass"] is False


# ---------------------------------------------------------------- designs that cannot answer

BUDGETS = (1e11, 3e11, 1e12, 3e12, 1e13)


def _swapped(N, D):
    """Curves that follow another law than the final losses (exponents swapped)."""
    t = S.TRUE
    return t["E"] + t["A"] / N ** t["beta"] + t["B"] / D ** t["alpha"]


def _kinked(N, D):
    """The largest budget favours bigger models than the smaller ones predict."""
    A = S.TRUE["A"] * (1.6 if 6 * N * D > 5e12 else 1.0)
    return S.TRUE["E"] + A / N ** S.TRUE["alpha"] + S.TRUE["B"] / D ** S.TRUE["beta"]


def _anti(N, D):
    """Loss that grows with size and data."""
    return 2 + 0.1 * math.log(N) + 0.05 * math.log(D)


DESIGNS = {
    # Every size far below the optimum: each budget's minimum is at its largest size.
    "minima at the edges": (
        {"budgets": (1e12, 3e12, 1e13), "sizes": [1e4, 2e4, 4e4, 8e4]},
        {C.INTERIOR: "empirical minimum at the largest sampled size", C.ALL_FITTED: "approach 2"},
    ),
    # Two budgets: approach 2 fits a line through 2 minima, and nothing can be held out.
    "two budgets": (
        {"budgets": (1e11, 1e12), "span": 6.0},
        {C.INTERIOR: "2 interior of 2", C.EXTRAPOLATION: "fewer than 3 compute budgets"},
    ),
    "noisy": ({"budgets": BUDGETS, "noise": 0.05}, {C.CI_WIDTH: "too wide"}),
    "curves follow another law": ({"budgets": BUDGETS, "curve_fn": _swapped}, {C.AGREE: " vs "}),
    "largest budget off the law": (
        {"budgets": BUDGETS, "loss_fn": _kinked},
        {C.EXTRAPOLATION: "approach 2: 5"},  # N_opt mispredicted by ~50%
    ),
    "loss grows with N and D": (
        {"kind": "grid", "sizes": [1e4, 4e4, 1.6e5], "tokens": (1e6, 4e6, 1.6e7), "loss_fn": _anti},
        {C.FRONTIER: "C_6N", C.A3_SIGNS: "alpha = -"},
    ),  # fmt: skip
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # failed resamples, as write_report
@pytest.mark.parametrize("design", list(DESIGNS))
def test_design_that_cannot_answer_fails(tmp_path, design):
    kw, expected = DESIGNS[design]
    S.write_sweep(tmp_path, **kw)
    t = tables.load(tmp_path)
    conv, _ = report.primary_convention(t.info)
    f = report.fit_convention(
        conv, t.main, t.curves, primary=True, isoflop_rows=t.info["kind"] == "isoflop",
        noise=S.NOISE, n_boot=30, seed=0,
    )  # fmt: skip
    by = _by_name(f)
    for name, why in expected.items():
        assert by[name]["pass"] is False, (name, by[name])
        assert why in by[name]["detail"], (name, by[name]["detail"])


def test_lr_check_fails_when_an_optimum_is_at_the_edge_of_the_rates():
    inside = {"per_size": [{"N": 1e4, "lr_opt": 0.02, "edge": False},
                           {"N": 5e4, "lr_opt": 0.01, "edge": False}]}  # fmt: skip
    assert C.lr_check(inside)["pass"] is True
    edge = {"per_size": [{"N": 1e4, "lr_opt": 0.048, "edge": True},
                         {"N": 5e4, "lr_opt": 0.01, "edge": False}]}  # fmt: skip
    got = C.lr_check(edge)
    assert got["pass"] is False and "(edge)" in got["detail"]
    assert C.lr_check(None) is None


def test_an_edge_learning_rate_in_lr_json_fails_the_report_check(tmp_path):
    # Through the files: an lr.json whose smallest size's best rate is the top of the grid
    # makes the report's LR check FAIL (read_lr must keep the edge flag).
    out = S.write_tiny(tmp_path / "tiny")
    per_size = [{"N": 1e4, "lr_opt": 0.08, "edge": True, "note": "best rate at the edge"},
                {"N": 4e4, "lr_opt": 0.01, "edge": False, "note": ""}]  # fmt: skip
    points = [{"N": s["N"], "lr": lr, "loss": 2.0 + lr} for s in per_size for lr in (0.01, 0.08)]
    doc = {"method": "m", "points": points, "per_size": per_size,
           "rule": {"formula": "lr(N) = k * N^p", "k": 1.0, "p": -0.5}}  # fmt: skip
    (out / "lr.json").write_text(json.dumps(doc))
    report.write_report(out, None, print_fn=lambda *_: None, n_boot=0)
    checks = json.loads((out / "fit.json").read_text())["summary"]["checks"]
    lr = next(c for c in checks if c["name"].startswith("every LR-sweep size"))
    assert lr["pass"] is False and "(edge)" in lr["detail"]
