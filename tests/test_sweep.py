import csv
import math
from pathlib import Path

import pytest

from lm import flops, loop
from lm.config import ConfigError
from lm.scaling import sweep as sweep_lib

ROOT = Path(__file__).resolve().parents[1]


def _tiny_sweep(tmp_path, **kw):
    base = {
        "preset": "gpt2",
        "model": {"vocab_size": 259, "max_seq_len": 32, "bias": False},
        "data": {"max_docs": 300, "cache_dir": str(tmp_path / "cache")},
        "train": {
            "seq_len": 32,
            "batch_size": 8,
            "steps_per_call": 4,
            "log_every": 4,
            "ckpt_every": 1000,
            "peak_flops": 1e11,
        },
    }
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
    sw = sweep_lib.load_sweep(ROOT / "configs" / "sweeps" / "cpu-tiny.yaml")
    main = [m for m in sweep_lib.plan(sw) if m.group == "main"]
    assert len({m.N for m in main}) >= 5 and len({m.D for m in main}) >= 4
    cs = [sweep_lib.compute(m)["C_6N"] for m in main]
    assert math.log10(max(cs) / min(cs)) >= 1.5
    assert all(m.cfg.model.n_layers >= 2 for m in main)
    assert all(3e4 * 0.7 <= m.N <= 1e6 * 1.3 for m in main)


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
