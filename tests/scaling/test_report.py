"""The sweep report (lm.scaling.report) on synthetic sweep directories (tests/synthetic_sweep.py):
real parameter and FLOP counts, losses from known Chinchilla-form constants. Nothing is trained.

The checks that must FAIL on designs that cannot answer are in tests/scaling/test_report_checks.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import chex
import numpy as np
import pytest
import synthetic_sweep as S

from lm import cli
from lm import config as config_lib
from lm.data import dataset
from lm.data.tokenizer import ByteTokenizer, save_tokenizer
from lm.scaling import fit as F
from lm.scaling import report
from lm.scaling.report import checks as C
from lm.scaling.report.markdown import g

# A clean isoflop sweep: 8 budgets over 2.3 decades, sizes a factor 2 apart within a factor 6
# of the true optimum (44 main runs), seeds, cosine runs, a learning-rate search, and three
# holdout runs at 3x the largest budget (never fitted: the out-of-sample test).
CLEAN = {"budgets": (1e11, 2e11, 5e11, 1e12, 2e12, 5e12, 1e13, 2e13), "span": 6.0}
C_OUT = 3 * CLEAN["budgets"][-1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    S.write_sweep(out, **CLEAN)
    S.add_holdout(out, C_OUT)
    lr = S.write_lr(out)
    lines: list[str] = []
    t0 = time.perf_counter()
    res = report.write_report(out, None, print_fn=lines.append)
    return out, res, lines, time.perf_counter() - t0, lr


def _md(out: Path) -> str:
    return (out / "report.md").read_text()


def test_report_files_written(synthetic):
    out, res, lines, seconds, _ = synthetic
    md = _md(out)
    doc = json.loads((out / "fit.json").read_text())
    assert res["report"] == str(out / "report.md")
    for name in ("loss_vs_compute", "isoflop", "loss_vs_N_D", "approach3_pred_vs_actual",
                 "compute_optimal", "lr_sweep"):  # fmt: skip
        for ext in ("png", "svg"):
            assert (out / "plots" / f"{name}.{ext}").stat().st_size > 1000
        assert f"](plots/{name}.png)" in md  # embedded as a relative link
    for section in ("## Approach 3", "## Kaplan", "## Approach 1", "## Approach 2",
                    "## Conventions side by side", "## Tokens per parameter",
                    "## Extrapolation", "## Learning rate: tuned, not borrowed",
                    "## Seed-to-seed spread", "## WSD branch vs separate", "## Epochs",
                    "## Checks", "compute `C_6N`",
                    "## Sensitivity: method choices and whole-pipeline replicates",
                    "## Out of sample"):  # fmt: skip
        assert section in md, section
    assert "200/200 resamples" in md  # the bootstrap count is stated
    assert set(doc["conventions"]) == {c.key for c in report.CONVENTIONS}
    kap = doc["conventions"]["non_embedding_C_6N"]
    for key in ("E", "A", "B", "alpha", "beta", "a", "b", "G"):  # the paper's key names
        assert key in kap["approach3"] and key in kap["approach3"]["ci95"]
    assert kap["approach3"]["bootstrap"]["n_boot"] == 200
    assert kap["approach3"]["extrapolation"]["target"] == "loss"
    assert kap["approach3"]["extrapolation_largest_N"]["mean_abs_rel_error"] < 0.03
    assert {"alpha_N", "alpha_D", "alpha_C"} <= set(kap["kaplan"])
    assert {"a", "b", "k_N", "k_D"} <= set(kap["approach1"]) and kap["approach2"] is not None
    assert [line for line in lines if line.startswith("report -> ")]
    # ~25-40 s on 2 quiet cores; this only guards against a gross regression.
    assert seconds < 150, f"report took {seconds:.1f} s"


def test_fit_recovers_the_true_exponents(synthetic):
    _, res, _, _, _ = synthetic
    assert res["primary_convention"] == "non_embedding_C_6N"  # the sweep counted with 6N
    assert res["alpha"] == pytest.approx(S.TRUE["alpha"], abs=0.03)
    assert res["beta"] == pytest.approx(S.TRUE["beta"], abs=0.03)
    assert res["a"] == pytest.approx(S.A_TRUE, abs=0.02)
    lo, hi = res["ci95"]["alpha"]
    assert lo < res["alpha"] < hi and hi - lo < 0.3
    a = res["summary"]["a"]
    assert a["approach2"]["value"] == pytest.approx(S.A_TRUE, abs=0.02)
    assert a["approach3"]["value"] == pytest.approx(S.A_TRUE, abs=0.02)
    # Approach 1 reads N_opt off discrete sizes a factor 2 apart: looser.
    assert a["approach1"]["value"] == pytest.approx(S.A_TRUE, abs=0.06)


def test_checks_pass_on_clean_data(synthetic):
    out, res, lines, _, _ = synthetic
    md = _md(out)
    failed = [c for c in res["checks"] if c["pass"] is False]
    assert not failed, failed
    assert res["all_checks_pass"] and res["n_checks_failed"] == 0
    names = [c["name"] for c in res["checks"]]
    for name in (C.INTERIOR, C.AGREE, C.CI_WIDTH, C.EXTRAPOLATION, C.ALL_FITTED, C.FRONTIER,
                 C.OUT_OF_SAMPLE):  # fmt: skip
        assert names.count(name) == 1
        assert f"- PASS: {name}" in md
    assert "FAIL:" not in md
    assert lines[-1].startswith("0 checks FAIL")  # the sweep's last word


def test_summary_object(synthetic):
    out, res, _, _, _ = synthetic
    s = json.loads((out / "fit.json").read_text())["summary"]
    assert s == json.loads(json.dumps(res["summary"]))  # the same object, as JSON
    assert s["convention"] == "non_embedding_C_6N"
    assert set(s) == {"convention", "a", "approach2_interior_budgets", "checks", "out_of_sample"}
    assert set(s["a"]) == {"approach1", "approach2", "approach3"}
    for v in s["a"].values():
        assert set(v) == {"value", "ci95", "ci95_total", "systematic"}
        lo, hi = v["ci95"]
        assert lo <= v["value"] <= hi
        # The total interval contains the bootstrap's (lm.scaling.fit.sensitivity).
        tlo, thi = v["ci95_total"]
        assert tlo <= lo and hi <= thi
        assert v["systematic"]["n_variants"] >= 2 and v["systematic"]["half_width"] >= 0
    assert s["approach2_interior_budgets"] == len(CLEAN["budgets"])
    for c in s["checks"]:
        assert set(c) == {"name", "pass", "detail"}
        assert isinstance(c["name"], str) and isinstance(c["detail"], str)
        assert c["pass"] in (True, False, None)
    # The out-of-sample test: the three holdout rows at C_OUT against each approach.
    oos = s["out_of_sample"]
    assert oos["C_out"] == C_OUT and len(oos["runs"]) == 3 and oos["limit"] == 0.01
    assert set(oos["approaches"]) == {"approach1", "approach2", "approach3"}
    for e in oos["approaches"].values():
        assert {"N_opt", "N_opt_ci95", "loss", "loss_ci95", "loss_method", "nearest_run",
                "measured_loss", "rel_error", "best_of_three"} <= set(e)  # fmt: skip
        assert abs(e["rel_error"]) <= 0.01
    # The older keys stay.
    doc = json.loads((out / "fit.json").read_text())
    assert doc["rows"]["holdout"] == 3 and doc["rows"]["main"] == 44
    for key in ("conventions", "convention_comparison", "tokens_per_parameter", "checks",
                "seed_spread", "wsd_vs_cosine", "epochs", "plots", "notes",
                "sensitivity"):  # fmt: skip
        assert key in doc, key


def test_opening_paragraph(synthetic):
    out, res, _, _, _ = synthetic
    md = _md(out)
    first = md.split("\n\n")[1]  # after the title
    assert first.startswith("**In short.**")
    a = res["summary"]["a"]
    for ap in ("1", "2", "3"):
        assert f"a = {a[f'approach{ap}']['value']:.3f}" in first
        assert f"by approach {ap}" in first
    assert (
        "N_opt ∝ C^a" in first and "Under convention (i) (" in first and "the sweep's own" in first
    )
    assert "agree within their 95% intervals" in first
    assert "Kaplan et al. 2020 found 0.73" in first and "Hoffmann et al. 2022 found ~0.50" in first
    assert "**0 checks FAIL**" in first


def test_approach2_uses_the_sweeps_rows_and_lists_dropped_budgets(synthetic):
    out, _, _, _, _ = synthetic
    md = _md(out)
    doc = json.loads((out / "fit.json").read_text())
    primary = doc["conventions"]["non_embedding_C_6N"]["approach2"]
    assert "own IsoFLOP rows" in primary["method"]
    for key in ("total_C_6N_out", "non_embedding_out_C_6N_out_attn"):
        m = doc["conventions"][key]["approach2"]
        assert m is None or "interpolated" in m["method"]
    assert "- Method (i) (own rows)" in md and "- Method (ii) (interpolated)" in md
    assert "Budgets left out of approach 2, and why:" in md


def test_conventions_side_by_side(synthetic):
    out, res, _, _, _ = synthetic
    comp = res["convention_comparison"]
    row = comp["a, approach 3 effective (convention's FLOPs/token)"]
    a_i, a_ii, a_iii = (row[c.key] for c in report.CONVENTIONS)
    assert a_i == pytest.approx(res["a"], abs=2e-3)  # C = 6ND: effective = closed form
    assert row["shift"] == pytest.approx(a_ii - a_i)
    assert row["shift_non_embedding_out_C_6N_out_attn"] == pytest.approx(a_iii - a_i)
    assert abs(a_ii - a_i) > 1e-3 and abs(a_iii - a_i) > 1e-3  # counting moves it here
    md = _md(out)
    assert "| exponent | (i) N, C_6N | (ii) N_total, C_6N_out | (iii) N_out, C_6N_out_attn |" in md
    # Allocation: the numeric optimum agrees with the closed form under C = 6ND.
    p = {k: res[k] for k in ("E", "A", "B", "alpha", "beta", "a", "b", "G")}
    Cs = np.geomspace(1e10, 1e14, 5)
    n_num, d_num = report.optimal_allocation(p, Cs)
    n_cf, d_cf = F.approach3_compute_optimal(p, Cs)
    chex.assert_trees_all_close((n_num, d_num), (n_cf, d_cf), rtol=1e-3)


def test_learning_rate_section(synthetic):
    out, _, _, _, lr = synthetic
    md = _md(out)
    sec = md.split("## Learning rate: tuned, not borrowed")[1].split("\n## ")[0]
    assert lr["method"] in sec
    for s in lr["per_size"]:
        assert f"| {g(s['N'])} | {g(s['lr_opt'])} | {s['note']} |" in sec
    assert "lr(N) = k * N^p with k = 0.05, p = -0.3" in sec
    assert "](plots/lr_sweep.png)" in sec
    assert "| N (sweep size) | lr used | rule's lr |" in sec  # the rule next to what ran
    doc = json.loads((out / "fit.json").read_text())
    assert doc["learning_rate"]["rule"]["p"] == -0.3


def test_seed_spread_and_cosine(synthetic):
    out, res, _, _, _ = synthetic
    sp = res["seed_spread"]
    assert sp["n"] == 3 and len(sp["losses"]) == 3 and sp["std"] > 0
    cos = res["wsd_vs_cosine"]
    assert len(cos) >= 1  # the smallest size's shorter runs
    for c in cos:
        assert c["diff_cosine_minus_wsd"] == pytest.approx(S.COSINE_PENALTY * c["loss_wsd"])
    md = _md(out)
    assert "| N | D | WSD loss | cosine loss | cosine - WSD |" in md
    assert "with this noise in mind" in md


def test_grid_isoflops_interpolate_without_extrapolating():
    N = np.repeat([1e4, 2e4], 3)
    D = np.tile([1e5, 2e5, 4e5], 2)
    L = S.true_loss(N, D)
    n, d, loss, c, budgets = report.grid_isoflops(N, D, L, 6 * N)
    for s in (1e4, 2e4):
        assert d[n == s].min() >= 1e5 * (1 - 1e-9) and d[n == s].max() <= 4e5 * (1 + 1e-9)
    np.testing.assert_allclose(c, 6 * n * d)
    np.testing.assert_allclose(loss, S.true_loss(n, d), rtol=2e-3)  # PCHIP on a smooth law


def test_degenerate_sweeps_report_why(tmp_path):
    # Approach 3 cannot be fitted (5 parameters, 4 runs), Kaplan can, and its alpha_N check
    # must FAIL.
    out = S.write_tiny(tmp_path / "tiny")
    lines: list[str] = []
    res = report.write_report(out, None, print_fn=lines.append, n_boot=10)
    md = _md(out)
    assert "approach 3 fits 5 parameters and needs >= 5 rows" in md
    # Approach 1 is drawn from the finished runs (two token counts per size), and the envelope
    # without its edge sizes spans none: refused, with the library's reason.
    assert "approach 1 needs the loss envelope to span >= 2 model sizes" in md
    assert f"- FAIL: {C.KAPLAN_ALPHA_N}" in md
    assert f"- FAIL: {C.ALL_FITTED}" in md and f"- FAIL: {C.INTERIOR}" in md
    assert f"SKIP: {C.A3_SIGNS}" in md
    assert "No seed runs" in md and "No cosine comparison runs" in md
    assert "approach 2 needs an isoflop sweep" in md
    assert "Learning rate" not in md  # no lr.json: no section, no note
    assert "N_out worked out as C_6N_out / 6D for 4 row(s)" in md
    assert not res["all_checks_pass"] and res["alpha_N"] < 0
    n_fail = res["n_checks_failed"]
    assert n_fail >= 3 and lines[-1].startswith(f"{n_fail} checks FAIL")
    assert f"**{n_fail} checks FAIL**" in md
    doc = json.loads((out / "fit.json").read_text())
    assert doc["summary"]["a"]["approach3"] is None  # null where not fitted
    # No runs at all: still a report.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.csv").write_text("")
    report.write_report(empty, None, print_fn=lambda *_: None)
    assert "no usable main rows" in _md(empty)


def test_cli_plot_regenerates(tmp_path, capsys):
    # The command is a thin layer over write_report (tested in full above), so it runs on the
    # tiny sweep, which skips the 4500-start fits.
    out = S.write_tiny(tmp_path / "sweep")
    assert cli.main(["scaling", "plot", "--sweep", str(out), "--bootstrap", "5"]) == 0
    assert (out / "report.md").is_file() and (out / "plots" / "loss_vs_N_D.svg").is_file()
    doc = json.loads((out / "fit.json").read_text())
    assert doc["conventions"]["non_embedding_C_6N"]["kaplan"]["bootstrap"]["n_boot"] == 5
    printed = capsys.readouterr().out
    assert "report -> " in printed and "checks FAIL" in printed  # failures exit 0
    assert cli.main(["scaling", "plot", "--sweep", str(tmp_path / "nope")]) == 2
    assert "no results.csv" in capsys.readouterr().err


def test_primary_convention_follows_the_sweep():
    keys = {fc: report.primary_convention({"flops_convention": fc}) for fc in
            ("6N", "6N_out", "6N_out_attn", "6N_attn")}  # fmt: skip
    assert keys["6N"] == (report.CONVENTIONS[0], None)
    assert keys["6N_out"] == (report.CONVENTIONS[1], None)
    assert keys["6N_out_attn"] == (report.CONVENTIONS[2], None)
    conv, note = keys["6N_attn"]  # none of the three: (i), said so
    assert conv == report.CONVENTIONS[0] and "6N_attn" in note
    assert report.primary_convention({}) == (report.CONVENTIONS[0], None)


def test_isoflop_sweep_uses_its_own_rows(tmp_path):
    # On an isoflop sweep counted with 6N_out_attn, convention (iii) is primary and fits
    # approach 2 on the sweep's rows; (i) counts compute differently, so its IsoFLOP sets are
    # interpolated along each size's runs.
    main = S.write_sweep(tmp_path, flops_convention="6N_out_attn",
                         budgets=(2e11, 6e11, 2e12), span=4.0)  # fmt: skip
    info = json.loads((tmp_path / "sweep.json").read_text())
    primary, _ = report.primary_convention(info)
    assert primary.n_col == "N_out"
    for conv in report.CONVENTIONS:
        N = np.array([r[conv.n_col] for r in main], np.float64)
        D = np.array([r["D"] for r in main], np.float64)
        Cc = np.array([r[conv.c_col] for r in main], np.float64)
        L = np.array([r["loss"] for r in main], np.float64)
        runs = F.Runs.from_arrays(N, D, L, Cc)
        out = report.ConventionFit(conv, conv == primary, {})
        res = report.approach2(runs, Cc / D, isoflop_rows=conv == primary, noise=0.002,
                               n_boot=20, seed=0, out=out)  # fmt: skip
        if conv == primary:
            assert "own IsoFLOP rows" in out.a2_method and not out.errors, out.errors
            assert res.stats["n_budgets"] == 3
            assert res.bootstrap["n_boot"] == 20
        else:
            assert "interpolated" in out.a2_method


def test_epochs_from_the_token_cache(tmp_path):
    out = S.write_tiny(tmp_path / "sweep")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(4000)))
    cfg = config_lib.from_dict(
        {"data": {"source": str(corpus), "cache_dir": str(tmp_path / "cache")}}
    )
    run_dir = out / "runs" / "N10000-D100000"  # the first main row
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_lib.dump(cfg))
    tok = ByteTokenizer()
    save_tokenizer(tok, run_dir)
    n_train = len(dataset.prepare_data(cfg.data, tok, progress=False).train)
    res = report.write_report(out, None, print_fn=lambda *_: None, n_boot=0)
    assert res["epochs"]["corpus_train_tokens"] == n_train
    assert res["epochs"]["max_epochs"] == pytest.approx(4e5 / n_train)
    assert f"{n_train:,}-token training split" in _md(out)
