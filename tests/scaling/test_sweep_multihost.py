"""`lm sweep run` across two processes (fake CPU devices, jax.distributed on localhost) gives the
same results table as one process, with one writer and no member trained twice."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import yaml
from tiny import FAST_XLA_FLAGS, tiny_sweep_base

ROOT = Path(__file__).resolve().parents[2]
TOL = dict(rtol=2e-4, atol=2e-5)  # reductions split across processes sum in another order


def _sweep_file(tmp_path: Path) -> Path:
    sweep = {
        "name": "mh", "kind": "grid", "sizes": [2.0e4], "tokens": [2560.0, 5120.0],
        "seeds": 1, "compare_cosine": False, "eval_tokens": 512, "head_dim": 8,
        "base": tiny_sweep_base(tmp_path),
    }  # fmt: skip
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _start(args: list[str], devices: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST_XLA_FLAGS}",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "lm.cli", "sweep", "run", *args, "--no-progress"], cwd=ROOT,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait(p: subprocess.Popen) -> str:
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    return out


def _losses(out: Path) -> dict[str, float]:
    with (out / "results.csv").open() as f:
        return {r["name"]: float(r["loss"]) for r in csv.DictReader(f)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(path: Path, out: Path) -> list[str]:
    """`lm sweep run` as processes 0 and 1 of one jax.distributed job; their stdouts."""
    coord = f"127.0.0.1:{_free_port()}"
    flags = ["--out", str(out), "--coordinator", coord, "--num-processes", "2"]
    procs = [_start([str(path), *flags, "--process-id", str(i)], 1) for i in range(2)]
    return [_wait(p) for p in procs]


def test_two_process_sweep_matches_one_process(tmp_path):
    path = _sweep_file(tmp_path)
    _wait(_start([str(path), "--out", str(tmp_path / "one")], 2))
    one = _losses(tmp_path / "one")
    assert len(one) == 2

    two_dir = tmp_path / "two"
    outs = _two_processes(path, two_dir)
    two = _losses(two_dir)
    assert two.keys() == one.keys()
    chex.assert_trees_all_close({k: two[k] for k in one}, one, **TOL)
    # process 0 reports; the other prints nothing of its own
    assert "results.csv" in outs[0] and "results.csv" not in outs[1]
    for name in one:
        lines = (two_dir / "runs" / name / "metrics.jsonl").read_text().splitlines()
        steps = [json.loads(x)["step"] for x in lines if "train_loss" in json.loads(x)]
        assert steps == sorted(set(steps)), f"{name}: a step logged twice (two writers?)"
    assert (two_dir / "report.md").is_file()

    # rerun on both processes: everything is done, nothing trains, same table
    before = (two_dir / "results.csv").read_text()
    outs = _two_processes(path, two_dir)
    assert "(2 already done)" in outs[0]
    assert (two_dir / "results.csv").read_text() == before
