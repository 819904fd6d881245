"""The sweep's out-of-sample stage (`holdout_budget_factor`): after the main members, approach 2
on their results predicts N_opt at C_out = factor x the largest budget, and three whole runs at
N_opt/2, N_opt and 2 N_opt (group "holdout") are planned alike on every host and trained once.

The main members' losses here are written, not trained (a Chinchilla-form law in the fit's own
N, so the prediction is known); the end-to-end test trains the three holdout runs for real."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_sweep_base

from lm.config import ConfigError
from lm.scaling import fit as F
from lm.scaling import report
from lm.scaling import sweep as sweep_lib
from lm.scaling.report import checks, out_of_sample, tables

CONV = "6N_out_attn"
# E + A/N^alpha + B/D^beta with alpha = beta: N_opt ~ (A/B)^(1/(2 alpha)) (C/6)^0.5, with D/N
# about 2 at the optimum, so that the tiny fixtures' shapes (N_out 3.7e3 to 6.8e4: a 2-layer,
# 8-wide model's output layer alone is 2e3) bracket it at every budget, and the holdout runs at
# C_out = 1.44e10 are 130-430 steps.
LAW = {"E": 1.5, "A": 24.0, "B": 30.0, "alpha": 0.3, "beta": 0.3}
SIZES = (3e3, 6e3, 1.2e4, 2.4e4, 4e4, 6e4)
BUDGETS = (1.2e9, 2.4e9, 4.8e9)


def law(N, D):
    return LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]


def _sweep(tmp_path: Path, **kw) -> sweep_lib.SweepConfig:
    args = dict(name="ho", kind="isoflop", base=tiny_sweep_base(tmp_path), sizes=SIZES,
                budgets=BUDGETS, seeds=1, compare_cosine=False, eval_tokens=512, head_dim=8,
                flops_convention=CONV, min_tokens_per_param=0.1, min_sizes_per_budget=3,
                min_sizes_each_side=1, holdout_budget_factor=3.0)  # fmt: skip
    return sweep_lib.SweepConfig(**{**args, **kw})


def _record(out: Path, m: sweep_lib.Member) -> None:
    """A main member's done.json, as train_member writes it, with the law's loss."""
    loss = law(sweep_lib.fit_count(m.cfg.model, CONV), m.D)
    run = out / "runs" / m.name
    run.mkdir(parents=True, exist_ok=True)
    (run / "done.json").write_text(json.dumps({
        "name": m.name, "val_loss": loss, "val_loss_se": 0.001, "val_bpb": loss / math.log(2),
        "wall_s": 0.0, "timings": {}, "trained_by": {}}))  # fmt: skip


def _main_done(sw, out: Path) -> list[sweep_lib.Member]:
    main = [m for m in sweep_lib.plan(sw) if m.group == "main"]
    for m in main:
        _record(out, m)
    return main


# ---------------------------------------------------------------- the key


def test_holdout_is_off_by_default_and_checked(tmp_path):
    sw = _sweep(tmp_path, holdout_budget_factor=0.0)
    assert sweep_lib.SweepConfig(sizes=(1e4,), tokens=(1e5,)).holdout_budget_factor == 0
    assert not sw.holdout_budget_factor
    for bad in (2.0, -3.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match=r"^holdout_budget_factor=.*>= 3[^\n]*$"):
            _sweep(tmp_path, holdout_budget_factor=bad)
    with pytest.raises(ConfigError, match="holdout_budget_factor=3.0: needs kind: isoflop"):
        _sweep(tmp_path, kind="grid", tokens=(2560.0,))
    p = tmp_path / "s.yaml"
    p.write_text("kind: isoflop\nsizes: [2e4]\nbudgets: [1e9]\n")
    assert sweep_lib.load_sweep(p, ["holdout_budget_factor=3"]).holdout_budget_factor == 3.0
    # `lm sweep plan` says what the stage will cost; off, it says nothing
    lines: list[str] = []
    sweep_lib.print_plan(_sweep(tmp_path), lines.append, peak=1e11)
    assert any(x.startswith("holdout: then 3 whole runs at C_out = 3 x 4.8e+09") for x in lines)
    lines.clear()
    sweep_lib.print_plan(_sweep(tmp_path, holdout_budget_factor=0), lines.append, peak=1e11)
    assert not any(x.startswith("holdout") for x in lines)


def test_fit_count_pairs_n_with_c_as_the_report_does():
    keys = {"N": "non_embedding", "N_total": "total", "N_out": "non_embedding_out"}
    for c in report.CONVENTIONS:
        assert sweep_lib.FIT_COUNT[c.c_col.removeprefix("C_")] == keys[c.n_col], c


# ---------------------------------------------------------------- planning (no training)


def test_three_sizes_around_the_prediction(tmp_path):
    sw, out = _sweep(tmp_path), tmp_path / "sweep"
    main = _main_done(sw, out)
    rule = sweep_lib.LRRule(0.05, -0.2)
    doc = sweep_lib.holdout_doc(sw, main, out, rule)
    assert doc["C_out"] == 3 * max(BUDGETS) and doc["n_rows"] == len(main)
    # The prediction is approach 2's, fitted as the report fits an isoflop sweep's own rows.
    rows = sweep_lib.results_rows(sw, main, out)
    a2 = F.fit_one(F.Runs.from_arrays(*([r[k] for r in rows] for k in
                                        ("N_out", "D", "loss", f"C_{CONV}"))), "2")  # fmt: skip
    assert doc["N_opt"] == pytest.approx(a2.params["k_N"] * doc["C_out"] ** a2.params["a"])
    assert 1e4 < doc["N_opt"] < 1e5 and doc["a"] == pytest.approx(0.5, abs=0.05)

    hold = sweep_lib.plan_holdout(sw, doc["C_out"], doc["N_opt"], rule)
    assert [m.name for m in hold] == [x["name"] for x in doc["members"]]
    ratios = [sweep_lib.fit_count(m.cfg.model, CONV) / doc["N_opt"] for m in hold]
    assert len(hold) == 3 and ratios == sorted(ratios)
    for r, want in zip(ratios, (0.5, 1.0, 2.0), strict=True):
        assert abs(math.log(r / want)) < math.log(1.6), ratios  # whole heads of 8 at d ~ 40
    for m in hold:
        c = m.cfg
        assert m.group == "holdout" and m.name.startswith("holdout-") and m.budget == doc["C_out"]
        assert m.trunk is None and m.branch_step is None  # a whole run each
        assert c.model.d_model == c.model.n_heads * 8  # whole heads
        assert sweep_lib.compute(m)[f"C_{CONV}"] == pytest.approx(doc["C_out"], rel=0.01)
        assert m.D == c.train.steps * c.train.batch_size * c.train.seq_len
        n_conv = sweep_lib.params_for(c.model, CONV)
        assert c.train.lr == pytest.approx(rule(n_conv))  # the main members' rule
        assert c.train.schedule == "wsd" and c.train.eval_every == c.train.steps
        assert c.train.warmup_steps < c.train.steps
    # Main members get no holdout group, and a holdout row is not a fitted row.
    assert all(m.group != "holdout" for m in sweep_lib.plan(sw))


def test_every_host_plans_the_same_members_from_one_file(tmp_path):
    sw, out = _sweep(tmp_path), tmp_path / "sweep"
    main = _main_done(sw, out)
    first = sweep_lib.holdout_doc(sw, main, out)
    text = (out / sweep_lib.HOLDOUT_FILE).read_text()
    again = sweep_lib.holdout_doc(sw, main, out)  # a resumed sweep, or another host
    assert again == first and (out / sweep_lib.HOLDOUT_FILE).read_text() == text
    a = sweep_lib.plan_holdout(sw, first["C_out"], first["N_opt"])
    b = sweep_lib.plan_holdout(sw, again["C_out"], again["N_opt"])
    assert [sweep_lib.member_to_dict(m) for m in a] == [sweep_lib.member_to_dict(m) for m in b]

    # The first writer wins: a host that finds another's prediction for the same results plans
    # from it, even where its own arithmetic would differ in the last digit.
    doc = json.loads(text)
    doc["N_opt"] *= 1.0 + 1e-12
    (out / sweep_lib.HOLDOUT_FILE).write_text(json.dumps(doc))
    assert sweep_lib.holdout_doc(sw, main, out)["N_opt"] == doc["N_opt"]
    # A file from other main results (a changed design) is replaced.
    doc["rows_sha256"] = "0" * 64
    (out / sweep_lib.HOLDOUT_FILE).write_text(json.dumps(doc))
    assert sweep_lib.holdout_doc(sw, main, out) == first
    assert json.loads((out / sweep_lib.HOLDOUT_FILE).read_text()) == first


def test_no_holdout_without_an_approach2_fit(tmp_path):
    sw, out = _sweep(tmp_path), tmp_path / "sweep"
    main = [m for m in sweep_lib.plan(sw) if m.group == "main"]
    for m in main:  # loss falling with N at every budget: every minimum at the largest size
        _record(out, m)
        d = json.loads((out / "runs" / m.name / "done.json").read_text())
        d["val_loss"] = 5.0 - math.log(m.N)
        (out / "runs" / m.name / "done.json").write_text(json.dumps(d))
    doc = sweep_lib.holdout_doc(sw, main, out)
    assert "N_opt" not in doc and "approach 2 could not be fitted" in doc["error"]
    assert sweep_lib.holdout_line(doc).startswith("holdout: no runs planned: approach 2")


# ---------------------------------------------------------------- end to end


def _fake_main(real, calls: list[str]):
    """train_member that writes the law's losses for main members (no training) and trains
    holdout members for real, recording their names."""

    def train_member(m, out, stop_after=None, **kw):
        if m.group != "holdout":
            if stop_after is None:
                _record(out, m)
            return {"wall": 0.0, "timings": {}}
        calls.append(m.name)
        return real(m, out, stop_after, **kw)

    return train_member


def _rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A sweep run to its end through an interruption after the first holdout run: (sweep,
    directory, holdout runs trained in order, printed lines, seconds, run_sweep's result)."""
    tmp = tmp_path_factory.mktemp("holdout")
    sw, out = _sweep(tmp), tmp / "sweep"
    calls: list[str] = []
    fake = _fake_main(sweep_lib.train_member, calls)

    def stop_second(m, out_, stop_after=None, **kw):
        if m.group == "holdout" and len(calls) == 1:
            raise KeyboardInterrupt
        return fake(m, out_, stop_after, **kw)

    lines: list[str] = []
    t0 = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep_lib, "train_member", stop_second)
        with pytest.raises(KeyboardInterrupt):
            sweep_lib.run_sweep(sw, out, progress=False, print_fn=lines.append, workers=1)
        assert len(calls) == 1
        mp.setattr(sweep_lib, "train_member", fake)
        res = sweep_lib.run_sweep(sw, out, progress=False, print_fn=lines.append, workers=1)
    return sw, out, list(calls), lines, time.perf_counter() - t0, res


def test_sweep_trains_the_holdout_stage_once(trained, monkeypatch):
    sw, out, calls, lines, seconds, res = trained
    assert res["complete"]
    doc = json.loads((out / sweep_lib.HOLDOUT_FILE).read_text())
    names = [x["name"] for x in doc["members"]]
    # each trained once, the first before the interruption and not again after it
    assert len(names) == 3 and len(calls) == 3 and set(calls) == set(names)
    assert any(x.startswith("holdout: approach 2 on") for x in lines)
    rows = _rows(out)
    hold = [r for r in rows if r["group"] == "holdout"]
    assert sorted(r["name"] for r in hold) == sorted(names)
    for r in hold:
        assert float(r["budget"]) == doc["C_out"] and r["branch_of"] == ""
        assert math.isfinite(float(r["loss"])) and float(r["C_6N_out_attn"]) > 0
    assert {r["group"] for r in rows} == {"main", "holdout"}
    np.testing.assert_allclose([float(r["N_out"]) for r in hold],
                               sorted(x["N"] for x in doc["members"]))  # fmt: skip
    # curves.csv (approach 1's curves) holds main members only
    with (out / "curves.csv").open() as f:
        assert not any(r["name"].startswith("holdout-") for r in csv.DictReader(f))
    # A rerun: nothing trains, the table is the same.
    before = (out / "results.csv").read_text()
    again_calls: list[str] = []
    monkeypatch.setattr(sweep_lib, "train_member", _fake_main(sweep_lib.train_member, again_calls))
    again = sweep_lib.run_sweep(sw, out, progress=False, print_fn=lines.append, workers=1)
    assert again["complete"] and again_calls == [] and again["timings"] == {}
    assert (out / "results.csv").read_text() == before
    # Every fitter reads the main rows only.
    runs = F.read_runs(out / "results.csv", "N_out", "D", "loss", f"C_{CONV}")
    assert len(runs) == sum(r["group"] == "main" for r in rows)
    assert seconds < 120, f"the holdout stage took {seconds:.0f} s"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # approach 3's L-BFGS lanes, as the report
def test_the_report_makes_the_sweeps_prediction_from_the_same_rows(trained):
    """The report's primary approach 2, fitted to the main rows results.csv holds, predicts the
    N_opt the sweep planned from; the holdout rows reach the out-of-sample test and no fit."""
    _, out, _, _, _, _ = trained
    t = tables.load(out)
    assert {r["group"] for r in t.main} == {"main"} and t.holdout["N_opt"] > 0
    primary, note = report.primary_convention(t.info)
    assert note is None and primary.c_col == f"C_{CONV}"
    # primary=False: no sensitivity refits, which the prediction does not use
    f = report.fit_convention(primary, t.main, t.curves, primary=False, isoflop_rows=True,
                              noise=0.005, n_boot=0, seed=0)  # fmt: skip
    p = f.get("2").params
    assert p["k_N"] * t.holdout["C_out"] ** p["a"] == pytest.approx(t.holdout["N_opt"], rel=1e-9)
    oos = out_of_sample.evaluate(f, t.rows, True, t.holdout)
    assert oos["C_out"] == t.holdout["C_out"] and len(oos["runs"]) == 3
    assert oos["planned"]["N_opt"] == t.holdout["N_opt"]
    e2 = oos["approaches"]["approach2"]
    assert e2["N_opt"] == pytest.approx(t.holdout["N_opt"], rel=1e-9)
    middle = sorted(oos["runs"], key=lambda r: r["N"])[1]["name"]
    assert e2["nearest_run"] == middle  # the run planned at the prediction
    # The main losses are a law's, the holdout losses a real model's: judged, and far apart.
    assert checks.out_of_sample_check(oos)["pass"] is False
