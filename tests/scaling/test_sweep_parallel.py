"""Sweeps in parallel (lm.scaling.workers): members side by side in worker processes on
disjoint slices of one machine, and hosts that split one sweep directory between them."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lm.cli import build_parser
from lm.config import ConfigError
from lm.model import flops
from lm.scaling import sweep as sweep_lib
from lm.scaling import workers as wk

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parents[1]))
from test_sweep import _tiny_sweep  # noqa: E402
from tiny import FAST_XLA_FLAGS, tiny_sweep_base  # noqa: E402


def _work(members) -> dict[str, float]:
    def one(m):
        steps = m.cfg.train.steps - (m.branch_step or 0)
        fpt = flops.flops_per_token(m.cfg.model, m.cfg.train.seq_len)["hardware"]
        return steps * fpt * m.cfg.train.batch_size * m.cfg.train.seq_len

    return {m.name: one(m) for m in members}


def _losses(path: Path) -> dict[str, float]:
    with path.open() as f:
        return {r["name"]: float(r["loss"]) for r in csv.DictReader(f)}


def _done(out: Path, name: str) -> dict:
    return json.loads((out / "runs" / name / "done.json").read_text())


# ---------------------------------------------------------------- planning (no training)


def test_units_keep_branches_with_their_trunk_and_run_longest_first(tmp_path):
    sw = _tiny_sweep(tmp_path, sizes=(2e4, 4e4), tokens=(2560.0, 5120.0, 10240.0), seeds=2,
                     compare_cosine=True)  # fmt: skip
    members = sweep_lib.plan(sw)
    work = _work(members)
    units = wk.make_units(members, work)
    # every member in exactly one unit; a trunk's branches follow it, shortest cooldown first
    names = [n for u in units for n in u.members]
    assert sorted(names) == sorted(m.name for m in members)
    by = {m.name: m for m in members}
    for u in units:
        first, rest = by[u.members[0]], [by[n] for n in u.members[1:]]
        assert first.trunk is None and all(b.trunk == first.name for b in rest)
        assert [b.branch_step for b in rest] == sorted(b.branch_step for b in rest)
        assert u.cost == pytest.approx(sum(work[n] for n in u.members))
    assert sum(len(u.members) > 1 for u in units) == 2  # one chain per size
    order = wk.longest_first(units)
    assert [u.cost for u in order] == sorted((u.cost for u in units), reverse=True)
    assert order[0].members[0].startswith("N4e+04")  # the larger size's chain leads
    assert wk.longest_first(reversed(units)) == order  # the same on every host


def test_longest_first_shortens_the_schedule():
    # Longest first onto the first free worker: 5 and 4 start, a 3 follows the 4 (at 4), one
    # the 5 (at 5), the last the first of those (at 7): 10 (the best split, 5+4 | 3+3+3, is 9;
    # this greedy rule is within 4/3 of it).
    assert wk.makespan([3, 3, 4, 3, 5], [1.0, 1.0]) == 10
    # in the order given the 4 would start last, at 2, and end at 6
    assert wk.makespan([1, 1, 1, 1, 4], [1.0, 1.0]) == 4
    assert wk.makespan([2, 2], [2.0, 1.0]) == 2  # speeds count
    assert wk.makespan([], [1.0]) == 0


def test_hosts_partition_every_unit_once_deterministically():
    units = [wk.Unit(f"u{i}", (f"u{i}",), c, "main") for i, c in
             enumerate([10, 9, 8, 3, 2, 2, 1, 7])]  # fmt: skip
    shares = wk.partition(units, 3)
    flat = [u.name for s in shares for u in s]
    assert sorted(flat) == sorted(u.name for u in units)  # every unit, once
    assert wk.partition(list(reversed(units)), 3) == shares  # same on every host
    # longest first, each to the least loaded host (the lowest index on a tie): 10, 9, 8 open
    # hosts 0-2; 7 joins the 8, 3 the 9, 2 the 10, 2 the 10 again (a tie at 12), 1 the 9+3
    assert [[u.cost for u in s] for s in shares] == [[10, 2, 2], [9, 3, 1], [8, 7]]
    for s in shares:
        assert s == wk.longest_first(s)
    assert wk.partition(units, 1) == [wk.longest_first(units)]
    assert wk.partition(units[:1], 3)[1:] == [[], []]  # a host may have nothing to do


def test_share_from_flags_and_cluster_variables():
    assert wk.share_from(None, None, {}) == wk.Share()
    assert wk.share_from(1, 3, {}).index == 1
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1",
             "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"}  # fmt: skip
    s = wk.share_from(None, None, slurm)
    assert (s.index, s.count) == (2, 4) and "SLURM" in s.source
    k8s = {"JOB_COMPLETION_INDEX": "3", "LM_NUM_WORKERS": "4"}
    assert (wk.share_from(None, None, k8s).index, wk.share_from(None, None, k8s).count) == (3, 4)
    assert wk.share_from(0, None, k8s).index == 0  # a flag wins over the environment
    with pytest.raises(ValueError, match="num-workers"):
        wk.share_from(None, None, {"JOB_COMPLETION_INDEX": "3"})
    with pytest.raises(ValueError, match="0 <= index < count"):
        wk.share_from(4, 4, {})
    with pytest.raises(ValueError, match="worker-index"):
        wk.share_from(None, 4, {})


def test_slices_are_disjoint_and_each_splits_every_batch(tmp_path):
    members = sweep_lib.plan(_tiny_sweep(tmp_path))  # batch 8
    cpu = wk.Machine("cpu", 1, (0, 1, 2))
    a, b = wk.plan_slices(cpu, 2, members)
    assert (a.cpus, b.cpus) == ((0, 1), (2,)) and a.devices == b.devices == (0,)
    assert a.env({})["LM_SWEEP_CPUS"] == "0,1" and "XLA_FLAGS" not in a.env({})
    assert wk.plan_slices(cpu, 1, members)[0].cpus == ()  # one worker: not pinned
    with pytest.raises(ConfigError, match="core"):
        wk.plan_slices(cpu, 4, members)
    # XLA's host devices (how sub-meshes are tested on a CPU): 4 split into 2 x 2
    fake = wk.Machine("cpu", 4, (0, 1))
    s = wk.plan_slices(fake, 2, members)
    flags = s[1].env({"XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_foo=1"})
    assert flags["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=2"
    assert [x.cpus for x in s] == [(0,), (1,)]
    # accelerators: equal contiguous device groups, named as this process was given them
    gpu = wk.Machine("gpu", 8, tuple(range(16)), memory=80e9)
    s = wk.plan_slices(gpu, 4, members)
    assert [x.devices for x in s] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    seen = {"CUDA_VISIBLE_DEVICES": "4,5,6,7,0,1,2,3"}
    assert s[1].env(seen)["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert set(s[0].cpus).isdisjoint(s[1].cpus)
    tpu = wk.plan_slices(wk.Machine("tpu", 4, (0, 1)), 2, members)[1].env({})
    assert tpu["TPU_VISIBLE_CHIPS"] == "2,3" and tpu["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,2,1"
    # a slice whose sub-mesh does not split a member's batch is refused
    base = json.loads(json.dumps(_tiny_sweep(tmp_path).base))
    base["train"]["batch_size"] = 6
    odd = sweep_lib.plan(_tiny_sweep(tmp_path, base=base))
    with pytest.raises(ConfigError, match="does not divide its 6"):
        wk.plan_slices(gpu, 2, odd)  # 4 devices per worker
    assert len(wk.plan_slices(gpu, 4, odd)) == 4  # 2 per worker divide 6
    with pytest.raises(ConfigError, match="equal groups"):
        wk.plan_slices(gpu, 3, members)


def test_auto_runs_side_by_side_only_where_that_is_estimated_faster(tmp_path):
    members = sweep_lib.plan(_tiny_sweep(tmp_path))
    big = [[4e13, 4e13, 3e13, 3e13]]
    assert wk.auto_workers(wk.Machine("cpu", 1, (0,)), big, members)[0] == 1
    assert wk.auto_workers(wk.Machine("cpu", 1, (0, 1)), big, members)[0] == 2
    assert wk.auto_workers(wk.Machine("cpu", 1, (0, 1, 2, 3)), big, members)[0] == 4
    # one unit holds most of the work: a worker on half the cores would finish it last
    w, why = wk.auto_workers(wk.Machine("cpu", 1, (0, 1)), [[9e13, 1e13]], members)
    assert w == 1 and "not estimated" in why
    # fewer, wider workers can beat one per core: the 6e13 unit on 2 cores ends first
    four = wk.Machine("cpu", 1, (0, 1, 2, 3))
    assert wk.auto_workers(four, [[6e13, 1e13, 1e13, 1e13]], members)[0] == 2
    # too little work to pay for starting workers; one unit only
    assert wk.auto_workers(wk.Machine("cpu", 1, (0, 1)), [[1e9, 1e9]], members)[0] == 1
    assert wk.auto_workers(wk.Machine("cpu", 1, (0, 1)), [[4e13]], members)[0] == 1
    # with no gain from a second core (alpha = 1), no parallelism
    assert wk.auto_workers(wk.Machine("cpu", 1, (0, 1)), big, members, alpha=1.0)[0] == 1
    # accelerators: a device per small member, no more workers than units at once
    gpu = wk.Machine("gpu", 8, (0, 1), memory=80e9)
    assert wk.auto_workers(gpu, big, members)[0] == 4
    assert wk.auto_workers(gpu, [[1e9] * 12], members)[0] == 8
    # a member that needs more than half a device gets two: 8 / 2 workers
    small = wk.Machine("gpu", 8, (0, 1), memory=wk.member_bytes(members[0]) * 1.5)
    assert wk.auto_workers(small, [[1e9] * 12], members)[0] == 4


def test_cli_flags():
    p = build_parser()
    args = p.parse_args(["sweep", "run", "f.yaml", "--out", "d"])
    assert args.workers == "auto" and args.worker_index is None and args.num_workers is None
    args = p.parse_args(["sweep", "run", "f.yaml", "--out", "d", "--workers", "1",
                         "--worker-index", "2", "--num-workers", "3"])  # fmt: skip
    assert (args.workers, args.worker_index, args.num_workers) == (1, 2, 3)
    for bad in (["--workers", "0"], ["--workers", "many"], ["--worker-index", "-1"]):
        with pytest.raises(SystemExit):
            p.parse_args(["sweep", "run", "f.yaml", "--out", "d", *bad])


# ---------------------------------------------------------------- training


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_two_workers_give_the_same_results_as_one(tmp_path):
    """A member's losses do not depend on which worker, or how many, trained it. The shape
    (2048 tokens a step) and rate are ones where XLA:CPU's results depend on its thread pool's
    size: workers that pinned themselves before JAX started (LM_SWEEP_EXACT=0) differ from one
    process on both cores by 6e-5 in the seed run's loss here."""
    base = json.loads(json.dumps(_tiny_sweep(tmp_path).base))
    base["model"]["max_seq_len"] = 64
    base["train"].update(seq_len=64, batch_size=32, steps_per_call=10, log_every=10)
    # a trunk with its branch, and a seed run: 2 units
    sw = _tiny_sweep(tmp_path, seeds=2, base=base, tokens=(20480.0, 40960.0), lr_scale=10.0,
                     eval_tokens=2048)  # fmt: skip
    quiet = dict(progress=False, print_fn=lambda *_: None)
    one = sweep_lib.run_sweep(sw, tmp_path / "one", workers=1, **quiet)
    two = sweep_lib.run_sweep(sw, tmp_path / "two", workers=2, **quiet)
    assert one["complete"] and two["complete"] and two["workers"] == 2
    a, b = _losses(tmp_path / "one" / "results.csv"), _losses(tmp_path / "two" / "results.csv")
    assert len(a) == 3 and a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-5, (k, a[k], b[k])
    # both workers trained, each on its own core; a branch ran where its trunk did
    by = {k: _done(tmp_path / "two", k)["trained_by"] for k in b}
    assert {tuple(t["cpus"]) for t in by.values()} == {(0,), (1,)}
    assert len({t["pid"] for t in by.values()}) == 2
    branch = next(m for m in one["members"].values() if m.trunk)
    assert by[branch.name]["pid"] == by[branch.trunk]["pid"]
    # same table columns as the sequential sweep; a rerun trains nothing
    rows = (tmp_path / "two" / "results.csv").read_text().splitlines()
    assert rows[0] == (tmp_path / "one" / "results.csv").read_text().splitlines()[0]
    again = sweep_lib.run_sweep(sw, tmp_path / "two", workers=2, **quiet)
    assert again["timings"] == {}


def _sweep_file(tmp_path: Path) -> Path:
    sweep = {
        "name": "hosts", "kind": "isoflop", "sizes": [2.0e4, 4.0e4], "budgets": [2.0e9],
        "min_tokens_per_param": 0.01, "seeds": 1, "compare_cosine": False, "eval_tokens": 512,
        "head_dim": 8, "lr_sweep_sizes": [2.0e4, 4.0e4], "lr_sweep_lrs": [1e-3, 3e-3, 1e-2],
        "lr_sweep_tokens_per_param": 0.1, "min_sizes_per_budget": 3,
        "base": tiny_sweep_base(tmp_path),
    }  # fmt: skip
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _host(path: Path, out: Path, index: int, count: int, workers: int = 1, devices: int = 1):
    flags = f"--xla_force_host_platform_device_count={devices} {FAST_XLA_FLAGS}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": flags}
    cmd = [sys.executable, "-m", "lm.cli", "sweep", "run", str(path), "--out", str(out),
           "--no-progress", "--workers", str(workers), "--worker-index", str(index),
           "--num-workers", str(count)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait(p: subprocess.Popen) -> str:
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    return out


def test_hosts_split_a_sweep_through_its_directory(tmp_path):
    """Three `lm sweep run --worker-index I --num-workers 3` on one directory (an LR stage, then
    the main members): every member trained once, by the host the partition names, the report
    written once all are in, and a rerun of an index trains nothing. Host 0 runs two workers on
    2-device sub-meshes of 4 host devices."""
    path = _sweep_file(tmp_path)
    out = tmp_path / "sweep"
    procs = [_host(path, out, 0, 3, workers=2, devices=4)]
    procs += [_host(path, out, i, 3) for i in (1, 2)]
    logs = [_wait(p) for p in procs]

    sw = sweep_lib.load_sweep(path)
    lr, main = sweep_lib.plan_lr(sw), sweep_lib.plan(sw)
    assert len(lr) == 6 and len(main) >= 2
    work = _work(lr + main)
    owner = {n: i for ms in (lr, main)
             for i, units in enumerate(wk.partition(wk.make_units(ms, work), 3))
             for u in units for n in u.members}  # fmt: skip
    assert set(owner.values()) == {0, 1, 2}
    for name, i in owner.items():
        by = _done(out, name)["trained_by"]
        assert by["share"] == [i, 3], name
        assert by["devices"] == (2 if i == 0 else 1), name
        lines = (out / "runs" / name / "metrics.jsonl").read_text().splitlines()
        steps = [json.loads(x)["step"] for x in lines if "train_loss" in json.loads(x)]
        assert steps == sorted(set(steps)), f"{name}: a step logged twice (two trainers?)"
    rows = _losses(out / "results.csv")
    assert rows.keys() == owner.keys()
    assert (out / "lr.json").is_file() and (out / "report.md").is_file()
    # the hosts that finished before the last member waited for it, and said who reports
    assert sum("writes the report" in log for log in logs) >= 1
    assert all("(0 already done)" in log for log in logs)

    # a rerun of one index: nothing trained, nothing rewritten but the tables and report
    times = {n: (out / "runs" / n / "time.json").read_text() for n in owner}
    before = (out / "results.csv").read_text()
    log = _wait(_host(path, out, 1, 3))
    n1 = sum(i == 1 for i in owner.values())
    assert f"{n1} members of its share ({n1} already done)" in log
    assert {n: (out / "runs" / n / "time.json").read_text() for n in owner} == times
    assert (out / "results.csv").read_text() == before
