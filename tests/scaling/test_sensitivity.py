"""Intervals with the method's own choices in them (lm.scaling.fit.sensitivity and
lm.scaling.report.uncertainty): the quadrature against hand-computed numbers, variants that
must change nothing, a design where one variant moves a far beyond the bootstrap (the check
FAILs) and the same design without it (it PASSes), the summary's keys, and replicates."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import synthetic_sweep as S

from lm import cli
from lm.scaling import fit as F
from lm.scaling import report
from lm.scaling.fit import sensitivity as SE
from lm.scaling.report import checks
from lm.scaling.report import uncertainty as U
from lm.scaling.report.summary import summary_object


def _row(approach, name, dev, counted=True):
    return {"name": name, "approach": approach, "counted": counted, "deviation": dev}


def test_total_interval_adds_each_side_in_quadrature():
    # a = 0.5, bootstrap [0.46, 0.572]: s_lo = 0.04, s_hi = 0.072. Method m = 0.024 (the
    # largest counted |deviation|), replicates r = 0.018 (largest |a_k - a|): s = 0.03, so
    # the sides become sqrt(0.04^2 + 0.03^2) = 0.05 and sqrt(0.072^2 + 0.03^2) = 0.078.
    rows = [
        _row("2", "narrow", -0.024),
        _row("2", "wide", 0.01),
        _row("2", "failed", None),
        _row("2", "other convention", 0.3, counted=False),  # shown, not counted
        _row("1", "another approach's", 0.5),
    ]
    sy = SE.systematic(rows, "2", 0.5, replicates=[0.518, 0.49, None])
    assert sy["method_half_width"] == pytest.approx(0.024)
    assert sy["method_driver"] == "narrow" and sy["driver"] == "narrow"
    assert sy["replicates_half_width"] == pytest.approx(0.018)
    assert sy["half_width"] == pytest.approx(0.03)
    assert (sy["n_variants"], sy["n_variants_failed"], sy["n_replicates"]) == (2, 1, 2)
    lo, hi = SE.total_interval(0.5, [0.46, 0.572], sy["half_width"])
    assert (lo, hi) == (pytest.approx(0.45), pytest.approx(0.578))
    # The replicates drive it when they are the larger part.
    assert SE.systematic(rows, "2", 0.5, replicates=[0.45])["driver"] == (
        "whole-pipeline replicates"
    )


def test_no_systematic_leaves_the_bootstrap_interval_and_unknowns_give_none():
    assert SE.total_interval(0.5, [0.46, 0.572], 0.0) == [pytest.approx(0.46), 0.572]
    assert SE.total_interval(0.5, None, 0.03) is None
    assert SE.total_interval(0.5, [math.nan, 0.6], 0.03) is None
    assert SE.total_interval(0.5, [0.4, 0.6], None) is None
    nothing = SE.systematic([_row("2", "failed", None)], "2", 0.5)
    assert nothing["half_width"] is None and nothing["driver"] is None


def _budget(C, x, y):
    """One IsoFLOP budget at log10 N offsets x from 1e9 with losses y; D from C = 6ND."""
    N = 1e9 * 10 ** np.asarray(x, float)
    return N, C / (6 * N), np.asarray(y, float), np.full(N.size, C)


def _approach2_runs(edge: bool, seed: int = 0) -> F.Runs:
    """Three budgets bracketing N_opt = 1e9 (C / 1e20)^0.5 (a = 0.5), 0.2% noise; with `edge`,
    a fourth whose sizes stop 0.6 decades short of its optimum, its profile still falling
    convexly (as A/N^alpha does below the optimum): no minimum inside it, and a parabola
    through it puts its vertex wherever the curvature happens to say."""
    rng = np.random.default_rng(seed)
    cols = []
    for C in (1e19, 1e20, 1e21):
        x0 = 0.5 * math.log10(C / 1e20)
        x = x0 + np.arange(-3, 4) * 0.3
        cols.append(_budget(C, x, (2 + 0.05 * (x - x0) ** 2) * np.exp(rng.normal(0, 0.002, 7))))
    if edge:
        x = 1.0 + np.arange(-6, -1) * 0.3
        y = (2 + 0.3 * np.exp(-2 * (x - x[0]))) * np.exp(rng.normal(0, 0.002, x.size))
        cols.append(_budget(1e22, x, y))
    return F.Runs.from_arrays(*(np.concatenate(c) for c in zip(*cols, strict=True)))


def test_edge_minima_kept_extrapolates_the_vertex():
    x = np.arange(-3, 4) * 0.3
    good = [_budget(C, x, 2.0 + 0.05 * (x - 0.1) ** 2) for C in (1e19, 1e20)]
    below = _budget(3e20, x, 2.0 + 0.05 * (x + 1.5) ** 2)  # optimum 0.6 decades below the sizes
    r = F.Runs.from_arrays(*(np.concatenate(c) for c in zip(*good, below, strict=True)))
    dropped = F.fit_approach2(r)
    assert dropped.stats["n_budgets"] == 2 and dropped.stats["drop_edge_minima"] is True
    kept = F.fit_approach2(r, drop_edge_minima=False)
    m = kept.details["budgets"][-1]
    assert kept.stats["n_budgets"] == 3 and not kept.details["dropped_budgets"]
    assert math.log10(m["N_opt"] / 1e9) == pytest.approx(-1.5, abs=1e-9)  # exact parabola
    assert m["interior"] is False and kept.stats["n_exterior_minima"] == 1


def test_variants_that_change_nothing_give_zero_and_defaults_are_not_repeated():
    r = _approach2_runs(edge=False)
    rows = {row["name"]: row for row in SE.sensitivity({"2": r})}
    # Budgets 10x apart are grouped alike at any tolerance; no budget has an edge minimum.
    for name in (
        "budget tolerance 0.05",
        "budget tolerance 0.2",
        "budgets with an edge minimum kept",
    ):
        row = rows[f"approach 2: {name}"]
        assert row["deviation"] == 0.0 and row["error"] is None, row
    assert all(row["approach"] == "2" for row in rows.values())  # only what was asked for
    # A default of 0 smoothing has no halved or doubled width; a given default is the centre.
    names = [
        v.name
        for v in SE.default_variants({"1": {"smooth_width": 0.0}, "2": {"window_decades": 0.6}})
    ]
    assert not [n for n in names if "smoothing" in n]
    assert "approach 2: window half-width (decades of N) 0.35" in names
    assert "approach 2: window half-width (decades of N) 0.85" in names


def _fit_with_sensitivity(runs: F.Runs) -> report.ConventionFit:
    f = report.ConventionFit(report.CONVENTIONS[0], True, {k: np.zeros(0) for k in "NDLC"})
    res = F.fit_approach2(runs)
    b = F.bootstrap(runs, "2", 100, seed=0)
    f.results["2"] = F.FitResult(res.approach, res.formula, res.n_points, res.params,
                                 res.stats, res.details, ci95=b.ci95)  # fmt: skip
    f.sensitivity = SE.sensitivity({"2": runs})
    return f


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_systematic_check_fails_where_a_variant_moves_a_beyond_twice_the_bootstrap():
    f = _fit_with_sensitivity(_approach2_runs(edge=True))
    by = {c["name"]: c for c in report.run_checks(f)}
    c = by[checks.SYSTEMATIC]
    assert c["pass"] is False, c
    assert (
        "approach 2: systematic" in c["detail"]
        and "budgets with an edge minimum kept" in (c["detail"])
    )
    assert "(more than 2x)" in c["detail"]
    total = U.approach_total(f, "2")
    e = summary_object(f, [])["a"]["approach2"]
    lo, hi = e["ci95"]
    assert total["ci95_total"][0] < lo and total["ci95_total"][1] > hi
    # The same design without the short budget: nothing moves a that far.
    ok = {c["name"]: c for c in report.run_checks(_fit_with_sensitivity(_approach2_runs(False)))}
    assert ok[checks.SYSTEMATIC]["pass"] is True, ok[checks.SYSTEMATIC]


def test_summary_keeps_its_keys_and_adds_the_total():
    f = report.ConventionFit(report.CONVENTIONS[0], True, {k: np.zeros(0) for k in "NDLC"})
    params = {"a": 0.5, "b": 0.5, "k_N": 1.0, "k_D": 1.0}
    f.results["2"] = F.FitResult("2", "", 10, params, {}, {}, ci95={"a": (0.46, 0.572)})
    f.sensitivity = [_row("2", "approach 2: narrow", -0.024)]
    f.replicates = [{"path": "b", "a": {"1": None, "2": 0.518, "3": None}}]
    s = summary_object(f, report.run_checks(f))
    assert set(s) == {"convention", "a", "approach2_interior_budgets", "checks", "out_of_sample"}
    e = s["a"]["approach2"]
    assert set(e) == {"value", "ci95", "ci95_total", "systematic"}
    assert e["value"] == 0.5 and e["ci95"] == [0.46, 0.572]
    assert e["ci95_total"] == [pytest.approx(0.45), pytest.approx(0.578)]
    assert e["systematic"]["driver"] == "approach 2: narrow"
    assert s["a"]["approach1"] is None
    # No bootstrap interval: the check cannot judge, and says so.
    f.results["2"] = F.FitResult("2", "", 10, params)
    c = {c["name"]: c for c in report.run_checks(f)}[checks.SYSTEMATIC]
    assert c["pass"] is None and "no bootstrap interval" in c["detail"]


def _fit_json(path, convention="non_embedding_C_6N", a2=0.55):
    path.mkdir(parents=True, exist_ok=True)
    summary = {"convention": convention, "a": {"approach1": None, "approach2": {"value": a2}}}
    (path / "fit.json").write_text(json.dumps({"sweep": "x", "summary": summary}))
    return path


def test_replicates_are_read_and_checked(tmp_path):
    good = _fit_json(tmp_path / "b")
    got = U.read_replicates([good], "non_embedding_C_6N", tmp_path / "a")
    assert got[0]["a"] == {"1": None, "2": 0.55, "3": None}
    cases = {
        tmp_path / "missing": "no such directory",
        S.write_tiny(tmp_path / "no-report"): "no fit.json",
        _fit_json(tmp_path / "other", "total_C_6N_out"): "in convention total_C_6N_out",
        good: "is the sweep being reported itself",
    }
    for path, why in cases.items():
        own = good if why.startswith("is the sweep") else tmp_path / "a"
        with pytest.raises(U.ReplicateError, match=why) as e:
            U.read_replicates([path], "non_embedding_C_6N", own)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_cli_names_a_replicate_it_cannot_use(tmp_path, capsys):
    sweep = S.write_tiny(tmp_path / "a")
    other = _fit_json(tmp_path / "b", "total_C_6N_out")
    for rep, why in ((tmp_path / "nope", "no such directory"), (other, "in convention")):
        rc = cli.main(["scaling", "plot", "--sweep", str(sweep), "--replicates", str(rep)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1, err
        assert err.startswith("error: ") and str(rep) in err and why in err
    assert not (sweep / "fit.json").exists()  # refused before any fit
