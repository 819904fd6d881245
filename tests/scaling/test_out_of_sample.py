"""The out-of-sample test in the report (lm.scaling.report.out_of_sample, the check
"out-of-sample loss error <= 1%") and the L*(C) fit behind approaches 1 and 2's loss
predictions (lm.scaling.fit.frontier), on synthetic rows (tests/synthetic_sweep.py: losses
from known Chinchilla-form constants). The sweep's side is tests/scaling/test_holdout.py; the
whole report with holdout rows, tests/scaling/test_report.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import synthetic_sweep as S

from lm.scaling import fit as F
from lm.scaling import report
from lm.scaling.report import checks as C
from lm.scaling.report import markdown, out_of_sample, tables
from lm.scaling.report.summary import summary_object

# ---------------------------------------------------------------- L*(C)


def test_loss_frontier_finds_E_where_it_is_identified():
    C = np.geomspace(1e11, 5e12, 8)
    L = 1.5 + 40.0 * C**-0.12
    fr = F.fit_loss_frontier(C, L)
    assert fr["E_identified"] and fr["formula"] == F.LOSS_FRONTIER_FORMULA and not fr["why"]
    assert fr["E"] == pytest.approx(1.5, rel=1e-3) and fr["g"] == pytest.approx(0.12, rel=1e-3)
    assert F.loss_frontier(fr, 1.5e13) == pytest.approx(1.5 + 40.0 * 1.5e13**-0.12, rel=1e-5)


def test_loss_frontier_falls_back_to_a_power_law_and_says_why():
    C = np.geomspace(1e11, 5e12, 8)
    few = F.fit_loss_frontier(C[:4], (1.5 + 40.0 * C**-0.12)[:4])
    assert not few["E_identified"] and few["E"] == 0.0
    assert few["formula"] == F.POWER_FRONTIER_FORMULA and few["why"].startswith("4 points")
    pure = F.fit_loss_frontier(C, 30.0 * C**-0.1)  # no curvature: E = 0
    assert not pure["E_identified"] and "E is 0" in pure["why"]
    assert pure["K"] == pytest.approx(30.0, rel=1e-6) and pure["g"] == pytest.approx(0.1, rel=1e-6)
    with pytest.raises(F.FitError, match="distinct compute"):
        F.fit_loss_frontier([1e11, 1e11], [3.0, 2.9])
    with pytest.raises(F.FitError, match="point 1"):
        F.fit_loss_frontier([1e11, 2e11], [3.0, float("nan")])


def test_loss_frontier_is_not_bent_by_one_stray_point():
    # approach 1's envelope starts wherever the leftmost curve does: one point 7% high
    C = np.geomspace(1e11, 5e12, 40)
    L = 1.5 + 40.0 * C**-0.12
    L[0] *= 1.07
    fr = F.fit_loss_frontier(C, L)
    assert F.loss_frontier(fr, 1.5e13) == pytest.approx(1.5 + 40.0 * 1.5e13**-0.12, rel=2e-3)


# ---------------------------------------------------------------- the check, on hand-made results


def _oos(*errors):
    aps = {}
    for i, e in enumerate(errors, start=1):
        if isinstance(e, float):
            e = {"rel_error": e, "loss": 2.0 * (1 + e), "measured_loss": 2.0, "nearest_run": "r"}
        aps[f"approach{i}"] = e
    return {"runs": [{"name": "r"}], "C_out": 1e13, "approaches": aps}


def test_check_passes_fails_and_skips():
    ok = C.out_of_sample_check(_oos(0.004, -0.009, 0.001))
    assert ok["name"] == C.OUT_OF_SAMPLE == "out-of-sample loss error <= 1%"
    assert ok["pass"] is True and "approach 2: -0.90%" in ok["detail"]
    bad = C.out_of_sample_check(_oos(0.004, 0.02, 0.001))
    assert bad["pass"] is False and "approach 2: +2.00%" in bad["detail"]
    assert "(too far)" in bad["detail"] and C.verdict(bad) == "FAIL"
    # an approach not fitted is not judged; one fitted but unable to predict is listed
    part = C.out_of_sample_check(_oos(None, {"error": "no L*(C)"}, 0.003))
    assert part["pass"] is True and "approach 2: not judged (no L*(C))" in part["detail"]
    none = {"runs": [], "approaches": {}, "note": "no holdout runs (holdout_budget_factor 0)"}
    skip = C.out_of_sample_check(none)
    assert skip["pass"] is None and C.verdict(skip) == "SKIP" and "holdout" in skip["detail"]
    assert C.out_of_sample_check(_oos(None, None, None))["pass"] is None


# ---------------------------------------------------------------- on fits of a synthetic sweep

BUDGETS = (1e11, 2e11, 5e11, 1e12, 2e12, 5e12)
C_OUT = 3 * BUDGETS[-1]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A synthetic isoflop sweep with three holdout rows at C_OUT (true losses) and a
    holdout.json; the primary convention's fits of its main rows."""
    out = tmp_path_factory.mktemp("oos")
    S.write_sweep(out, budgets=BUDGETS, span=6.0, cosine=False)
    S.add_holdout(out, C_OUT)
    (out / "holdout.json").write_text(json.dumps({"factor": 3.0, "C_max": BUDGETS[-1],
                                                  "C_out": C_OUT, "N_opt": 7e5, "a": 0.45,
                                                  "n_rows": 34, "rows_sha256": "x"}))  # fmt: skip
    t = tables.load(out)
    conv = report.CONVENTIONS[0]
    with np.errstate(all="ignore"):
        f = report.fit_convention(conv, t.main, t.curves, primary=False, isoflop_rows=True,
                                  noise=S.NOISE, n_boot=20, seed=0)  # fmt: skip
    return t, f


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # bootstrap resamples, as in the report
def test_predictions_against_true_losses_pass(fitted):
    t, f = fitted
    oos = out_of_sample.evaluate(f, t.rows, True, t.holdout)
    assert oos["C_out"] == C_OUT and oos["planned"]["N_opt"] == 7e5 and oos["limit"] == 0.01
    assert [r["N"] for r in oos["runs"]] == sorted(r["N"] for r in oos["runs"])
    true_opt = float(S.true_n_opt(C_OUT))
    for key in ("approach1", "approach2", "approach3"):
        e = oos["approaches"][key]
        assert abs(e["rel_error"]) < 0.005, (key, e["rel_error"])
        assert e["best_of_three"] and e["nearest_run"] == oos["best_run"]
        assert abs(np.log(e["N_opt"] / true_opt)) < np.log(1.5), key
        lo, hi = e["N_opt_ci95"]
        assert lo <= hi
    a3, a2 = oos["approaches"]["approach3"], oos["approaches"]["approach2"]
    assert a3["loss_ci95"][0] <= a3["loss"] <= a3["loss_ci95"][1]
    assert len(a3["at_runs"]) == 3 and all(abs(x["rel_error"]) < 0.01 for x in a3["at_runs"])
    assert a2["frontier"]["n_points"] == len(f.get("2").details["budgets"])
    assert "IsoFLOP minima" in a2["loss_method"] and a2["loss_ci95"] is None
    assert "envelope" in oos["approaches"]["approach1"]["loss_method"]
    check = C.out_of_sample_check(oos)
    assert check["pass"] is True, check["detail"]
    s = summary_object(f, [check], oos)
    assert s["out_of_sample"] is oos and {"convention", "a", "checks"} <= set(s)
    md = "\n".join(markdown.out_of_sample_section(oos, {"seed_spread": None}))
    assert "## Out of sample" in md and "predicted N_opt = 7.000e+05" in md
    assert md.count("| yes |") == 3 and "Henighan et al. 2020" in md


def test_predictions_against_losses_3pct_higher_fail(fitted):
    t, f = fitted
    rows = [{**r, "loss": r["loss"] * 1.03} if r["group"] == "holdout" else r for r in t.rows]
    oos = out_of_sample.evaluate(f, rows, True, None)
    assert all(e["rel_error"] < -0.02 for e in oos["approaches"].values())
    check = C.out_of_sample_check(oos)
    assert check["pass"] is False and check["detail"].count("(too far)") == 3


def test_without_holdout_rows_the_check_skips(fitted):
    t, f = fitted
    oos = out_of_sample.evaluate(f, t.main, True, None)
    assert oos["runs"] == [] and oos["approaches"] == {} and "holdout_budget_factor" in oos["note"]
    assert C.out_of_sample_check(oos)["pass"] is None
    failed = out_of_sample.evaluate(f, t.main, True, {"error": "approach 2 could not be fitted"})
    assert failed["note"] == "no holdout runs: approach 2 could not be fitted"
    md = "\n".join(markdown.out_of_sample_section(oos, {}))
    assert "Not tested" in md
    assert summary_object(f, [])["out_of_sample"]["runs"] == []
