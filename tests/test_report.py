"""The sweep report (lm.scaling.report) on a synthetic sweep directory.

The members are those `lm sweep plan` makes for configs/sweeps/cpu-tiny.yaml (real N, N_total,
D and FLOP counts), with losses from KNOWN Chinchilla-form constants in the non-embedding
convention, L = E + A/N^alpha + B/D^beta, times small multiplicative noise. Nothing is trained.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from lm import cli
from lm.scaling import fit as F
from lm.scaling import report
from lm.scaling import sweep as sweep_lib

ROOT = Path(__file__).resolve().parents[1]
TRUE = {"E": 1.2, "A": 60.0, "B": 50.0, "alpha": 0.34, "beta": 0.28}
NOISE = 0.002  # relative, per run
SEED_NOISE = 0.004  # the seed runs' extra spread
COSINE_PENALTY = 0.01  # cosine runs end this much (relative) above WSD, as in Hägele et al.


def true_loss(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def make_sweep_dir(out: Path, seed: int = 0, loss_fn=true_loss) -> sweep_lib.SweepConfig:
    """results.csv, curves.csv and sweep.json as `lm sweep run` writes them."""
    sweep = sweep_lib.load_sweep(ROOT / "configs/sweeps/cpu-tiny.yaml")
    members = sweep_lib.plan(sweep)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(sweep_lib.dataclasses.asdict(sweep)))
    rows, curves, main_loss = [], [], {}
    for m in members:
        c = sweep_lib.compute(m)
        loss = loss_fn(m.N, m.D) * math.exp(rng.normal(0, NOISE))
        if m.group == "main":
            main_loss[m.N, m.D] = loss
        if m.group == "seed":
            loss *= math.exp(rng.normal(0, SEED_NOISE))
        if m.group == "cosine":  # planned after the main members of its size
            loss = main_loss[m.N, m.D] * (1 + COSINE_PENALTY)
        t = m.cfg.train
        rows.append({
            "name": m.name, "group": m.group, "N": m.N, "N_total": m.N_total, "D": m.D,
            "C": c["C_6N"], **c, "loss": loss, "loss_se": 0.003, "bpb": loss / math.log(2),
            "wall_s": 1.0, "budget": "", "n_layers": m.cfg.model.n_layers,
            "d_model": m.cfg.model.d_model, "n_heads": m.cfg.model.n_heads, "lr": t.lr,
            "warmup_steps": t.warmup_steps, "steps": t.steps, "seed": t.seed,
            "schedule": t.schedule, "branch_of": m.trunk or "", "branch_step": m.branch_step or "",
        })  # fmt: skip
        if m.group != "main":
            continue
        # Training curve: as if each checkpoint were a finished run of that length (the
        # idealisation approach 1 assumes), with the per-step noise of a batch loss.
        tpb = t.batch_size * t.seq_len
        for s in range(t.log_every, t.steps + 1, t.log_every):
            d = s * tpb
            cl = loss_fn(m.N, d) * math.exp(rng.normal(0, 3 * NOISE))
            curves.append({"name": m.name, "N": m.N, "N_total": m.N_total, "D": d,
                           "C": 6 * m.N * d, "loss": cl})  # fmt: skip
    _write_csv(out / "results.csv", rows)
    _write_csv(out / "curves.csv", curves)
    return sweep


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    sweep = make_sweep_dir(out)
    lines = []
    t0 = time.perf_counter()
    res = report.write_report(out, sweep, print_fn=lines.append)
    return out, res, lines, time.perf_counter() - t0


def test_report_files_written(synthetic):
    out, res, lines, seconds = synthetic
    md = (out / "report.md").read_text()
    doc = json.loads((out / "fit.json").read_text())
    assert res["report"] == str(out / "report.md")
    for name in ("loss_vs_compute", "isoflop", "loss_vs_N_D", "approach3_pred_vs_actual",
                 "compute_optimal"):  # fmt: skip
        for ext in ("png", "svg"):
            assert (out / "plots" / f"{name}.{ext}").stat().st_size > 1000
        assert f"](plots/{name}.png)" in md  # embedded as a relative link
    for section in ("## Approach 3", "## Kaplan", "## Approach 1", "## Approach 2",
                    "## Conventions side by side", "## Tokens per parameter",
                    "## Extrapolation", "## Seed-to-seed spread", "## WSD branch vs separate",
                    "## Epochs", "## Checks", "C = C_6N"):  # fmt: skip
        assert section in md, section
    assert "200/200 resamples" in md  # the bootstrap count is stated
    kap = doc["conventions"]["non_embedding_C_6N"]
    for key in ("E", "A", "B", "alpha", "beta", "a", "b", "G"):  # the paper's key names
        assert key in kap["approach3"] and key in kap["approach3"]["ci95"]
    assert kap["approach3"]["bootstrap"]["n_boot"] == 200
    assert kap["approach3"]["extrapolation"]["target"] == "loss"
    assert kap["approach3"]["extrapolation_largest_N"]["mean_abs_rel_error"] < 0.03
    assert {"alpha_N", "alpha_D", "alpha_C"} <= set(kap["kaplan"])
    assert {"a", "b", "k_N", "k_D"} <= set(kap["approach1"]) and kap["approach2"] is not None
    assert any(line.startswith("report -> ") for line in lines)
    # ~15-30 s on 2 cores (more when shared); this only guards against a gross regression.
    assert seconds < 120, f"report took {seconds:.1f} s"


def test_fit_recovers_the_true_exponents(synthetic):
    _, res, _, _ = synthetic
    assert res["alpha"] == pytest.approx(TRUE["alpha"], abs=0.06)
    assert res["beta"] == pytest.approx(TRUE["beta"], abs=0.06)
    a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert res["a"] == pytest.approx(a_true, abs=0.05)
    lo, hi = res["ci95"]["alpha"]
    assert lo < res["alpha"] < hi and hi - lo < 0.3
    assert res["alpha_N"] > 0 and res["alpha_D"] > 0


def test_checks_pass_on_clean_data(synthetic):
    out, res, lines, _ = synthetic
    md = (out / "report.md").read_text()
    assert res["all_checks_pass"]
    assert "- PASS: frontier monotone decreasing" in md
    assert "- PASS: (i) Kaplan L(N) exponent alpha_N > 0" in md
    assert "FAIL" not in md
    assert "PASS: (i) Kaplan L(N) exponent alpha_N > 0" in lines


def test_conventions_side_by_side(synthetic):
    out, res, _, _ = synthetic
    comp = res["convention_comparison"]
    row = comp["a, approach 3 effective (convention's FLOPs/token)"]
    a_i, a_ii = row["non_embedding_C_6N"], row["total_C_6N_out"]
    assert a_i == pytest.approx(res["a"], abs=2e-3)  # C = 6ND: effective = closed form
    assert row["shift"] == pytest.approx(a_ii - a_i)
    assert abs(row["shift"]) > 1e-3  # counting embeddings moves it at these sizes
    md = (out / "report.md").read_text()
    assert "| exponent | (i) N, C_6N | (ii) N_total, C_6N_out | shift |" in md
    # Allocation: the numeric optimum agrees with the closed form under C = 6ND.
    p = {k: res[k] for k in ("E", "A", "B", "alpha", "beta", "a", "b", "G")}
    C = np.geomspace(1e10, 1e14, 5)
    n_num, d_num = report.optimal_allocation(p, C)
    n_cf, d_cf = F.approach3_compute_optimal(p, C)
    np.testing.assert_allclose(n_num, n_cf, rtol=1e-3)
    np.testing.assert_allclose(d_num, d_cf, rtol=1e-3)


def test_seed_spread_and_cosine(synthetic):
    out, res, _, _ = synthetic
    sp = res["seed_spread"]
    assert sp["n"] == 3 and len(sp["losses"]) == 3 and sp["std"] > 0
    cos = res["wsd_vs_cosine"]
    assert len(cos) == 3  # the smallest size's shorter token budgets
    for c in cos:
        assert c["diff_cosine_minus_wsd"] == pytest.approx(COSINE_PENALTY * c["loss_wsd"])
    md = (out / "report.md").read_text()
    assert "| N | D | WSD loss | cosine loss | cosine - WSD |" in md
    assert "with this noise in mind" in md


def test_grid_isoflops_interpolate_without_extrapolating():
    N = np.repeat([1e4, 2e4], 3)
    D = np.tile([1e5, 2e5, 4e5], 2)
    L = true_loss(N, D)
    n, d, loss, c, budgets = report.grid_isoflops(N, D, L, 6 * N)
    for s in (1e4, 2e4):
        assert d[n == s].min() >= 1e5 * (1 - 1e-9) and d[n == s].max() <= 4e5 * (1 + 1e-9)
    np.testing.assert_allclose(c, 6 * n * d)
    np.testing.assert_allclose(loss, true_loss(n, d), rtol=2e-3)  # PCHIP on a smooth law


def _tiny_dir(path: Path) -> Path:
    """Four runs, loss *rising* with N; no curves, no seeds, no sweep.json."""
    rows = []
    for n, nt in ((1e4, 2e4), (4e4, 6e4)):
        for d in (1e5, 4e5):
            rows.append({"name": f"N{n:g}-D{d:g}", "group": "main", "N": n, "N_total": nt,
                         "D": d, "C_6N": 6 * n * d, "C_6N_out": 6 * nt * d,
                         "loss": 3 + n / 1e5 - d / 1e7})  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    _write_csv(path / "results.csv", rows)
    return path


def test_degenerate_sweeps_report_why(tmp_path):
    # Approach 3 cannot be fitted (5 parameters, 4 runs), Kaplan can, and its alpha_N check
    # must FAIL.
    out = _tiny_dir(tmp_path / "tiny")
    res = report.write_report(out, None, print_fn=lambda *_: None, n_boot=10)
    md = (out / "report.md").read_text()
    assert "approach 3 fits 5 parameters and needs >= 5 rows" in md
    assert "approach 1: no training curves" in md
    assert "- FAIL: (i) Kaplan L(N) exponent alpha_N > 0" in md
    assert "SKIP: approach 3 exponents" in md
    assert "No seed runs" in md and "No cosine comparison runs" in md
    assert "approach 2 needs an isoflop sweep" in md
    assert not res["all_checks_pass"] and res["alpha_N"] < 0
    json.loads((out / "fit.json").read_text())
    # No runs at all: still a report.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.csv").write_text("")
    res = report.write_report(empty, None, print_fn=lambda *_: None)
    assert "no usable main rows" in (empty / "report.md").read_text()


def test_cli_plot_regenerates(tmp_path, capsys):
    # The command is a thin layer over write_report (tested in full above), so it runs on the
    # tiny sweep, which skips the 4500-start fits.
    out = _tiny_dir(tmp_path / "sweep")
    assert cli.main(["scaling", "plot", "--sweep", str(out), "--bootstrap", "5"]) == 0
    assert (out / "report.md").is_file() and (out / "plots" / "loss_vs_N_D.svg").is_file()
    doc = json.loads((out / "fit.json").read_text())
    assert doc["conventions"]["non_embedding_C_6N"]["kaplan"]["bootstrap"]["n_boot"] == 5
    assert "report -> " in capsys.readouterr().out
    assert cli.main(["scaling", "plot", "--sweep", str(tmp_path / "nope")]) == 2
    assert "no results.csv" in capsys.readouterr().err


def test_isoflop_sweep_uses_its_own_rows(tmp_path):
    # On an isoflop sweep counted with 6N, convention (i) fits approach 2 on the sweep's rows;
    # convention (ii) counts compute differently, so its IsoFLOP sets are interpolated.
    base = sweep_lib.load_sweep(ROOT / "configs/sweeps/cpu-tiny.yaml")
    sweep = sweep_lib.dataclasses.replace(base, kind="isoflop", budgets=(2e11, 6e11, 2e12))
    main = [m for m in sweep_lib.plan(sweep) if m.group == "main"]
    assert len(main) >= 9  # the plan drops (size, budget) pairs outside its tokens/param range
    for conv, method in zip(report.CONVENTIONS, ("isoflop rows", "interpolated"), strict=True):
        N = np.array([float(getattr(m, conv.n_col)) for m in main])
        D = np.array([float(m.D) for m in main])
        C = np.array([sweep_lib.compute(m)[conv.c_col] for m in main])
        runs = F.Runs.from_arrays(N, D, true_loss(np.array([m.N for m in main]), D), C)
        out, errors = {"samples": {}}, []
        res = report._fit_approach2(
            conv, runs, C / D, sweep_lib.dataclasses.asdict(sweep), 0.002, 20, 0, errors, out
        )
        assert method in out["a2_method"] and not errors, errors
        if method == "isoflop rows":
            assert res.stats["n_budgets"] == 3
            assert res.params["a"] == pytest.approx(TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"]),
                                                    abs=0.05)  # fmt: skip
        assert res.bootstrap["n_boot"] == 20


def test_epochs_from_the_token_cache(tmp_path):
    from lm import config as config_lib
    from lm import data
    from lm.tokenizer import ByteTokenizer, save_tokenizer

    out = _tiny_dir(tmp_path / "sweep")
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
    n_train = len(data.prepare_data(cfg.data, tok, progress=False).train)
    res = report.write_report(out, None, print_fn=lambda *_: None, n_boot=0)
    assert res["epochs"]["corpus_train_tokens"] == n_train
    assert res["epochs"]["max_epochs"] == pytest.approx(4e5 / n_train)
    assert f"{n_train:,}-token training split" in (out / "report.md").read_text()
