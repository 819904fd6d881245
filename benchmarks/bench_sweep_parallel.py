"""A sweep's wall time trained one member at a time vs side by side (`lm sweep run --workers`).

    python benchmarks/bench_sweep_parallel.py [--workers 1 2] [--repeat 1] [--set KEY=VALUE ...]

Runs `lm sweep run configs/sweeps/cpu-tiny.yaml` shrunk to one IsoFLOP budget with a small LR
stage and two seeds (the main job's model shapes: 2-3 layers, widths 8-80, seq 64, batch 32),
once per --workers value, each in a fresh directory with a fresh compilation cache (so every
mode compiles what it needs, as a new sweep does). For each it prints the training wall time
(from the sweep's invocation records: report excluded), the tokens every member trained
divided by it, the CPU time the processes used, and the largest difference in any member's
final loss from the first mode (results.csv), which shows whether a member's numbers depend on
how many threads XLA ran it on. Timings on a shared machine measure the other tenants too: the
load average before and after each run is printed beside it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lm.scaling import sweep as sweep_lib

ROOT = Path(__file__).resolve().parents[1]
SHRINK = [
    "budgets=[1.0e11]",
    "lr_sweep_sizes=[6144,13824]",
    "lr_sweep_lrs=[1.0e-2,2.0e-2,4.0e-2]",
    "lr_sweep_tokens_per_param=20",
    "eval_tokens=20480",
    "min_sizes_per_budget=3",
    "seeds=2",
]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def tokens_trained(sets: list[str]) -> int:
    """Tokens of every member's own training (a branch counts from its branch step)."""
    sw = sweep_lib.load_sweep(ROOT / "configs" / "sweeps" / "cpu-tiny.yaml", sets)
    members = sweep_lib.plan_lr(sw) + sweep_lib.plan(sw)
    return sum((m.cfg.train.steps - (m.branch_step or 0)) * m.cfg.train.batch_size
               * m.cfg.train.seq_len for m in members)  # fmt: skip


def losses(out: Path) -> dict[str, float]:
    with (out / "results.csv").open() as f:
        return {r["name"]: float(r["loss"]) for r in csv.DictReader(f)}


def run(workers: int, sets: list[str], root: Path) -> dict:
    out = root / f"workers{workers}"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(root / f"cache{workers}"),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    cmd = [sys.executable, "-m", "lm.cli", "sweep", "run", "configs/sweeps/cpu-tiny.yaml",
           "--out", str(out), "--no-progress", "--workers", str(workers),
           "--set", *sets]  # fmt: skip
    load0 = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"--workers {workers} failed:\n{r.stderr[-3000:]}")
    runs = [json.loads(p.read_text()) for p in (out / "invocations").glob("*.json")]
    train_wall = max(x["end"] for x in runs) - min(x["start"] for x in runs)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"workers": workers, "out": out, "train_wall": train_wall, "total": total,
            "cpu": cpu, "load": (load0, os.getloadavg()[0]),
            "tokens": tokens_trained(sets), "losses": losses(out)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=1, help="rounds, modes alternating")
    ap.add_argument("--set", nargs="*", default=[], help="more sweep overrides")
    ap.add_argument("--keep", help="keep the sweep directories here")
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}; {len(os.sched_getaffinity(0))} cores usable; "
          f"sweep: cpu-tiny.yaml with {' '.join(SHRINK + args.set)}")  # fmt: skip
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    results: list[dict] = []
    for k in range(args.repeat):
        for w in args.workers:
            r = run(w, SHRINK + args.set, root / f"round{k}")
            ref = next((x for x in results if x["losses"].keys() == r["losses"].keys()), None)
            diff = max((abs(r["losses"][n] - ref["losses"][n]) for n in r["losses"]),
                       default=0.0) if ref else 0.0  # fmt: skip
            results.append(r)
            print(
                f"--workers {w}: training wall {r['train_wall']:.1f} s "
                f"({r['total']:.1f} s with startup and report), {r['tokens']:,} tokens -> "
                f"{r['tokens'] / r['train_wall']:,.0f} tokens/s; CPU {r['cpu']:.0f} s; "
                f"{len(r['losses'])} members, max |loss - first mode's| = {diff:.2e}; "
                f"load average {r['load'][0]:.2f} -> {r['load'][1]:.2f}"
            )
    base = [r for r in results if r["workers"] == args.workers[0]]
    for w in args.workers[1:]:
        mine = [r for r in results if r["workers"] == w]
        s = sum(b["train_wall"] for b in base) / sum(m["train_wall"] for m in mine)
        print(f"--workers {w} vs --workers {args.workers[0]}: {s:.2f}x the speed (training wall)")


if __name__ == "__main__":
    main()
