import csv
import math
from pathlib import Path

import pytest
from tiny import tiny_sweep_base

from lm.config import ConfigError
from lm.model import flops
from lm.scaling import sweep as sweep_lib
from lm.training import loop
from lm.util import dirlock

ROOT = Path(__file__).resolve().parents[2]


def _tiny_sweep(tmp_path, **kw):
    base = tiny_sweep_base(tmp_path)
    args = dict(
        name="t", kind="grid", base=base, sizes=(2e4,), tokens=(2560.0, 5120.0),
        seeds=1, compare_cosine=False, eval_tokens=512, head_dim=8,
    )  # fmt: skip
    args.update(kw)
    return sweep_lib.SweepConfig(**args)


@pytest.mark.parametrize("n", [3e4, 1e5, 5e5, 3e6, 1e8])
def test_shape_rule_hits_the_target_size(n):
    shape = sweep_lib.shape_for(n, aspect=32, head_dim=16, min_layers=2)
    assert shape["d_model"] == shape["n_heads"] * 16
    got = 12 * shape["n_layers"] * shape["d_model"] ** 2
    assert abs(got - n) / n < 0.35  # rounding to whole heads at the small end
    if n >= 1e8:  # at scale the aspect ratio is what was asked
        assert 16 <= shape["d_model"] / shape["n_layers"] <= 64


def test_kaplan_lr_rule():
    assert sweep_lib.kaplan_lr(1e6) == pytest.approx(0.003239 - 0.0001395 * math.log(1e6))
    assert sweep_lib.kaplan_lr(1e5) > sweep_lib.kaplan_lr(1e7) > 0


def test_plan_branches_and_rules(tmp_path):
    sw = _tiny_sweep(tmp_path, sizes=(2e4, 4e4), tokens=(2560.0, 5120.0, 10240.0), seeds=2,
                     compare_cosine=True)  # fmt: skip
    members = sweep_lib.plan(sw)
    main = [m for m in members if m.group == "main"]
    assert len(main) == 6
    for m in main:
        assert m.cfg.train.schedule == "wsd" and m.cfg.train.eval_windows == 16
        assert m.N == flops.count_params(m.cfg.model)["non_embedding"]
        assert m.D == m.cfg.train.steps * 8 * 32
        if m.trunk:
            trunk = next(t for t in members if t.name == m.trunk)
            assert trunk.cfg.train.steps > m.cfg.train.steps
            assert m.branch_step == m.cfg.train.steps - int(m.cfg.train.steps * 0.2)
            assert trunk.cfg.train.warmup_steps == m.cfg.train.warmup_steps <= m.branch_step
    assert sum(m.group == "seed" for m in members) == 1
    assert {m.cfg.train.schedule for m in members if m.group == "cosine"} == {"cosine"}


def test_isoflop_members_spend_the_budget(tmp_path):
    sw = _tiny_sweep(tmp_path, kind="isoflop", budgets=(1e9, 3e9), sizes=(2e4, 4e4))
    for m in sweep_lib.plan(sw):
        c = sweep_lib.compute(m)["C_6N"]
        assert abs(c - m.budget) / m.budget < 0.15  # D is rounded to whole steps


def test_bad_sweep_files(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("kind: grid\nsizes: [1e5]\ntokens: [1e6]\ncolour: red\n")
    with pytest.raises(ConfigError, match="colour"):
        sweep_lib.load_sweep(p)
    p.write_text("kind: grid\nsizes: [1e5]\n")
    with pytest.raises(ConfigError, match="tokens"):
        sweep_lib.load_sweep(p)
    p.write_text("kind: grid\nsizes: [1e5]\ntokens: [1e6]\nbase: {train: {lr: -1}}\n")
    with pytest.raises(ConfigError, match="train.lr"):
        sweep_lib.load_sweep(p)


def test_shipped_sweeps_load_and_plan():
    files = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    assert files
    for f in files:
        members = sweep_lib.plan(sweep_lib.load_sweep(f))
        assert members


def test_cpu_tiny_preset_meets_the_spec():
    # The main job answers approach 2 from trained runs: >= 5 IsoFLOP budgets over >= 1.5
    # decades, each with >= 5 sizes, learning rates from its own LR sweep.
    sw = sweep_lib.load_sweep(ROOT / "configs" / "sweeps" / "cpu-tiny.yaml")
    assert sw.kind == "isoflop" and len(sw.budgets) >= 5
    assert math.log10(max(sw.budgets) / min(sw.budgets)) >= 1.5 - 1e-9
    main = [m for m in sweep_lib.plan(sw) if m.group == "main"]
    for c in sw.budgets:
        assert len({m.N for m in main if m.budget == c}) >= 5, c
    assert all(m.cfg.model.n_layers >= 2 for m in main)
    # muP: one base rate, tuned at one proxy size on several seeds, serves every width
    assert sw.transfers_lr and len(sw.lr_sweep_sizes) == 1 and sw.lr_sweep_seeds >= 3
    assert len(sw.lr_sweep_lrs) >= 3
    assert all(m.cfg.train.beta2 == 0.99 for m in main)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_branch_equals_a_separate_wsd_run_and_rerun_skips(tmp_path):
    """A cooldown branched off the trunk is exactly the WSD run of its own length."""
    sw = _tiny_sweep(tmp_path)
    out = tmp_path / "sweep"
    res = sweep_lib.run_sweep(sw, out, progress=False, print_fn=lambda *_: None)
    rows = {r["name"]: r for r in _rows(out / "results.csv")}
    assert len(rows) == 2
    branch = next(m for m in res["members"].values() if m.trunk)
    alone = loop.train_run(branch.cfg, tmp_path / "alone", progress=False,
                           print_fn=lambda *_: None)  # fmt: skip
    assert float(rows[branch.name]["loss"]) == pytest.approx(alone["val_loss"], abs=1e-6)
    assert rows[branch.name]["branch_of"] == branch.trunk
    for r in rows.values():
        assert float(r["C_6N"]) == pytest.approx(6 * int(r["N"]) * int(r["D"]))
        assert float(r["loss_se"]) > 0 and float(r["wall_s"]) > 0

    # rerun: nothing is trained again, same table
    before = (out / "results.csv").read_text()
    res2 = sweep_lib.run_sweep(sw, out, progress=False, print_fn=lambda *_: None)
    assert res2["timings"] == {}
    assert (out / "results.csv").read_text() == before
    assert len(_rows(out / "curves.csv")) > 0


def test_lr_rule_recovers_a_known_power_law():
    # Loss is a parabola in log lr around lr*(N) = 5 N^-0.6 (an independent closed form), sampled
    # on a factor-2 grid that does not contain the optimum: the per-size vertices and the fitted
    # rule must land on it.
    pts = []
    for n in (1e4, 3e4, 1e5):
        opt = 5.0 * n**-0.6
        for lr in (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2):
            pts.append({"N": n, "lr": lr, "loss": 2.0 + 0.1 * math.log(lr / opt) ** 2})
    doc = sweep_lib.fit_lr_rule(pts)
    assert not any(s["edge"] for s in doc["per_size"])
    for s in doc["per_size"]:
        assert s["lr_opt"] == pytest.approx(5.0 * s["N"] ** -0.6, rel=1e-9)
    assert doc["rule"]["p"] == pytest.approx(-0.6, abs=1e-9)
    assert doc["rule"]["k"] == pytest.approx(5.0, rel=1e-9)
    rule = sweep_lib.LRRule(doc["rule"]["k"], doc["rule"]["p"])
    assert rule(1e4) == pytest.approx(5.0 * 1e4**-0.6)


def test_lr_rule_flags_an_optimum_beyond_the_rates_tried():
    pts = [{"N": n, "lr": lr, "loss": 3.0 - lr} for n in (1e4, 1e5) for lr in (1e-3, 2e-3, 4e-3)]
    doc = sweep_lib.fit_lr_rule(pts)
    assert all(s["edge"] and s["lr_opt"] == pytest.approx(4e-3) for s in doc["per_size"])
    assert "edge" in doc["per_size"][0]["note"]


def test_lr_sweep_members_and_rule_in_the_plan(tmp_path):
    sw = _tiny_sweep(tmp_path, kind="isoflop", budgets=(1e9, 3e9), sizes=(2e4, 4e4),
                     lr_sweep_sizes=(2e4, 4e4), lr_sweep_lrs=(1e-3, 3e-3, 1e-2),
                     lr_sweep_tokens_per_param=2.0, flops_convention="6N_out_attn")  # fmt: skip
    lr_members = sweep_lib.plan_lr(sw)
    assert len(lr_members) == 6 and {m.group for m in lr_members} == {"lr"}
    assert sorted({m.cfg.train.lr for m in lr_members}) == [1e-3, 3e-3, 1e-2]
    for m in lr_members:
        n = sweep_lib.params_for(m.cfg.model, "6N_out_attn")
        assert abs(m.D - 2.0 * n) <= m.cfg.train.batch_size * m.cfg.train.seq_len
    rule = sweep_lib.LRRule(0.3, -0.5)
    for m in sweep_lib.plan(sw, rule):
        n = sweep_lib.params_for(m.cfg.model, "6N_out_attn")
        assert m.cfg.train.lr == pytest.approx(0.3 * n**-0.5)
        assert m.cfg.train.beta2 == 0.99


def _mup_sweep(tmp_path, **kw):
    base = tiny_sweep_base(tmp_path)
    base["model"] = {**base.get("model", {}), "parametrization": "mup"}
    args = dict(kind="isoflop", base=base, budgets=(1e9, 3e9), sizes=(2e4, 4e4),
                lr_sweep_sizes=(2e4,), lr_sweep_lrs=(1e-3, 3e-3, 1e-2), lr_sweep_seeds=3,
                lr_sweep_tokens_per_param=2.0, flops_convention="6N_out_attn")  # fmt: skip
    return _tiny_sweep(tmp_path, **{**args, **kw})


def test_mup_sweep_tunes_one_proxy_on_several_seeds(tmp_path):
    sw = _mup_sweep(tmp_path)
    assert sw.transfers_lr
    lr_members = sweep_lib.plan_lr(sw)
    assert len(lr_members) == 9  # 3 rates x 3 seeds at the one proxy size
    assert len({m.name for m in lr_members}) == 9
    assert len({(m.cfg.train.lr, m.cfg.train.seed) for m in lr_members}) == 9
    width = sweep_lib.shape_for(2e4, sw.aspect, sw.head_dim, sw.min_layers)["d_model"]
    assert sweep_lib.proxy_width(sw) == width
    # every member is muP with the proxy as its base width: at the proxy muP is SP, so the rate
    # tuned there is the base rate every wider member scales from
    for m in lr_members + sweep_lib.plan(sw, sweep_lib.LRRule(3e-3, 0.0)):
        assert m.cfg.model.parametrization == "mup"
        assert m.cfg.model.mup_base_width == width
        if m.group != "lr":
            assert m.cfg.train.lr == pytest.approx(3e-3)


def test_mup_sweep_refuses_a_per_size_rule(tmp_path):
    with pytest.raises(ConfigError, match="lr_sweep_sizes.*one proxy size"):
        _mup_sweep(tmp_path, lr_sweep_sizes=(2e4, 4e4))
    with pytest.raises(ConfigError, match="lr_sweep_seeds"):
        _tiny_sweep(tmp_path, lr_sweep_seeds=0)


def test_lr_rule_takes_the_optimum_of_the_mean_over_seeds():
    # Seed 0 alone is best at 4e-3, but the mean over three seeds is a parabola in log lr with
    # its vertex at 6e-3 (closed form: the noise terms cancel in the mean), and one size gives
    # the constant rule p = 0.
    opt = 6e-3
    noise = {0: (0.0, 0.0, -0.02, 0.0, 0.0), 1: (0.0, 0.0, 0.01, 0.0, 0.0),
             2: (0.0, 0.0, 0.01, 0.0, 0.0)}  # fmt: skip
    lrs = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)
    pts = [{"N": 1e4, "lr": lr, "loss": 2.0 + 0.1 * math.log(lr / opt) ** 2 + noise[s][i]}
           for s in noise for i, lr in enumerate(lrs)]  # fmt: skip
    assert min(pts[:5], key=lambda p: p["loss"])["lr"] == 4e-3
    doc = sweep_lib.fit_lr_rule(pts)
    assert doc["per_size"][0]["lr_opt"] == pytest.approx(opt, rel=1e-9)
    assert doc["rule"]["p"] == 0.0 and doc["rule"]["k"] == pytest.approx(opt, rel=1e-9)


def test_params_for_each_convention(tmp_path):
    m = sweep_lib.plan(_tiny_sweep(tmp_path))[0].cfg.model
    c = flops.count_params(m)
    out = m.d_model * m.vocab_size
    assert sweep_lib.params_for(m, "6N") == c["non_embedding"]
    assert sweep_lib.params_for(m, "6N_out") == c["non_embedding"] + out
    assert sweep_lib.params_for(m, "6N_out_attn") == c["non_embedding"] + out
    assert sweep_lib.params_for(m, "chinchilla") == c["total"]


def test_design_check_passes_a_bracketing_design_and_fails_others(tmp_path):
    # Sizes 1e4..1.6e5 at budgets whose expected optimum (D/N = 20) sits mid-range: PASS.
    kw = dict(kind="isoflop", sizes=(1e4, 2e4, 4e4, 8e4, 1.6e5), min_sizes_per_budget=5,
              min_sizes_each_side=2, expected_tokens_per_param=20.0,
              max_tokens_per_param=1e4)  # fmt: skip
    good = _tiny_sweep(tmp_path, budgets=(6 * 4e4 * 20 * 4e4,), **kw)
    rows = sweep_lib.design_check(good, sweep_lib.plan(good))
    assert [r["pass"] for r in rows] == [True]
    assert rows[0]["below"] >= 2 and rows[0]["above"] >= 2
    # A budget so large that every size is below its optimum cannot bracket it: FAIL.
    bad = _tiny_sweep(tmp_path, budgets=(6 * 1e7 * 20 * 1e7,), **kw)
    rows = sweep_lib.design_check(bad, sweep_lib.plan(bad))
    assert [r["pass"] for r in rows] == [False] and rows[0]["above"] == 0
    lines = sweep_lib.design_lines(bad, sweep_lib.plan(bad))
    assert lines[0].startswith("design FAIL") and "cannot bracket" in lines[-1]
    # Too few sizes: FAIL even when they straddle the optimum.
    few = _tiny_sweep(tmp_path, budgets=(6 * 4e4 * 20 * 4e4,), **{**kw, "sizes": (2e4, 4e4, 8e4)})
    assert not sweep_lib.design_check(few, sweep_lib.plan(few))[0]["pass"]
    # A grid cannot: approach 2 would interpolate.
    assert not sweep_lib.design_check(_tiny_sweep(tmp_path), [])[0]["pass"]


def test_shipped_isoflop_presets_pass_their_design_check():
    for name in ("cpu-tiny", "tpu-isoflop"):
        sw = sweep_lib.load_sweep(ROOT / "configs" / "sweeps" / f"{name}.yaml")
        rows = sweep_lib.design_check(sw, sweep_lib.plan(sw))
        assert rows and all(r["pass"] for r in rows), (name, rows)
        if name == "tpu-isoflop":
            assert all(r["n_sizes"] >= 7 for r in rows)


def test_bad_lr_sweep_keys(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("kind: grid\nsizes: [1e5]\ntokens: [1e6]\nlr_sweep_sizes: [1e4, 2e4]\n"
                 "lr_sweep_lrs: [1e-3, 2e-3]\n")  # fmt: skip
    with pytest.raises(ConfigError, match="lr_sweep_lrs"):
        sweep_lib.load_sweep(p)
    p.write_text("kind: grid\nsizes: [.inf]\ntokens: [1e6]\n")
    with pytest.raises(ConfigError, match="sizes"):
        sweep_lib.load_sweep(p)
    p.write_text("kind: grid\nsizes: [1e5]\ntokens: [1e6]\nbase: 5\n")
    with pytest.raises(ConfigError, match="base=5"):
        sweep_lib.load_sweep(p)


def test_a_held_sweep_directory_is_refused(tmp_path):
    # Two `lm sweep run` on one --out would train every member twice: the second is refused
    # while the first holds the directory (flock on a second open file conflicts even within
    # one process, so the holder here stands in for another process).
    out = tmp_path / "sweep"
    with dirlock.hold(out, "sweep directory"):
        with pytest.raises(dirlock.Busy, match="sweep directory"):
            sweep_lib.run_sweep(_tiny_sweep(tmp_path), out, progress=False,
                                print_fn=lambda *_: None)  # fmt: skip
    assert not (out / "runs").exists()  # nothing was trained


def test_lr_rule_is_fitted_to_the_bracketed_sizes_only():
    # Two sizes bracketed on lr* = 5 N^-0.5, a third whose best rate is the grid's top edge: the
    # rule follows the two, and the edge size is flagged and left out of it.
    pts = []
    for n in (1e4, 4e4):
        for lr in (0.01, 0.02, 0.04, 0.08, 0.16):
            pts.append({"N": n, "lr": lr, "loss": 2.0 + 0.1 * math.log(lr / (5 * n**-0.5)) ** 2})
    pts += [{"N": 2e3, "lr": lr, "loss": 3.0 - lr} for lr in (0.01, 0.02, 0.04, 0.08, 0.16)]
    doc = sweep_lib.fit_lr_rule(pts)
    edge = {s["N"]: s for s in doc["per_size"]}[2e3]
    assert edge["edge"] and not edge["in_rule"]
    assert doc["rule"]["p"] == pytest.approx(-0.5, abs=1e-9)
    assert doc["rule"]["k"] == pytest.approx(5.0, rel=1e-9)
