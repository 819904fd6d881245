"""`lm sweep run` and `lm sweep plan`: the command line over lm.scaling.sweep.

`run` trains a sweep (lm.scaling.sweep, its workers lm.scaling.workers), then has
lm.scaling.report fit, plot and write report.md. That orchestration lives here, above both, so
that the sweep itself never imports the report, which reads the sweep's results.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lm.cli.common import UsageError, add_distributed_options, add_set_option, init_distributed
from lm.util import dirlock


def cmd_plan(args) -> int:
    from lm.scaling import sweep  # lazy: jax loads only when a command runs

    sweep.print_plan(sweep.load_sweep(args.file, args.set))
    return 0


def cmd_run(args) -> int:
    # lazy: jax loads only when a command runs
    from lm.scaling import report, workers
    from lm.scaling import sweep as sweep_lib  # lazy, as above

    sweep = sweep_lib.load_sweep(args.file, args.set)
    try:
        share = workers.share_from(args.worker_index, args.num_workers)
    except ValueError as e:
        raise UsageError(str(e)) from None
    init_distributed(args)
    out = Path(args.out)
    res = sweep_lib.run_sweep(sweep, out, progress=not args.no_progress, workers=args.workers,
                    share=share)  # fmt: skip
    if not res["main"]:  # process 0 fits, plots and reports
        return 0
    if not res["complete"]:
        print(
            f"{res['n_done']} of {len(res['members'])} members done: the run that finishes "
            f"the last one writes the report (any time: lm scaling plot --sweep {out})"
        )
        return 0
    # Hosts sharing the sweep may finish together: one of them writes the report.
    try:
        with dirlock.hold(out / "claims" / "report", "sweep report", lambda *_: None):
            t1 = time.perf_counter()
            report.write_report(out, sweep, print_fn=print)
            post = time.perf_counter() - t1
    except dirlock.Busy:
        print("another process is writing this sweep's report")
        return 0
    print(sweep_lib.time_breakdown(out, res["members"], post))
    return 0


def _workers_arg(s: str) -> int | str:
    if s == "auto":
        return s
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: a number of workers, or auto") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: at least 1")
    return n


def _index_arg(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: expected an integer") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n}: must be >= 0")
    return n


def add_parsers(sub) -> None:
    sw = sub.add_parser(
        "sweep",
        help="scaling sweeps over model size and data size",
        description="Train a family of models from one sweep file (configs/sweeps/*.yaml): an "
        "LR sweep if the file asks for one, then every IsoFLOP budget x size (or grid point), "
        "then fits, plots and report.md. `plan` shows the members and the design check first.",
    )
    ssub = sw.add_subparsers(dest="sweep_command", required=True)
    r = ssub.add_parser(
        "run",
        help="run every member (rerun to resume), then fit and plot",
        description="Run a sweep file; rerunning skips finished members and resumes the rest.",
    )
    r.add_argument("file", help="sweep file, e.g. configs/sweeps/cpu-tiny.yaml")
    r.add_argument("--out", required=True, help="sweep directory")
    add_set_option(r, "override sweep keys, e.g. --set seeds=1 base.train.batch_size=16")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument(
        "--workers",
        type=_workers_arg,
        default="auto",
        metavar="N|auto",
        help="members trained side by side on this machine, each in a worker process on its "
        "own cores (CPU) or devices (GPU/TPU); longest first, a WSD trunk with its branches in "
        "one worker. auto (default): as many as are estimated faster than one at a time, else "
        "1; 1: every member in this process, one after another, on everything it sees",
    )
    r.add_argument(
        "--worker-index",
        type=_index_arg,
        metavar="I",
        help="many hosts: this host's index, 0..N-1; each of N hosts runs the same command on "
        "one shared --out and trains its share (default: LM_WORKER_INDEX, SLURM_ARRAY_TASK_ID, "
        "or a Kubernetes indexed Job's JOB_COMPLETION_INDEX)",
    )
    r.add_argument(
        "--num-workers",
        type=int,
        metavar="N",
        help="many hosts: how many share the sweep (default: LM_NUM_WORKERS or "
        "SLURM_ARRAY_TASK_COUNT); the last to finish writes the report",
    )
    add_distributed_options(r)
    r.set_defaults(func=cmd_run)
    p = ssub.add_parser(
        "plan",
        help="print members, FLOPs and estimated wall time; no training",
        description="Print every member a sweep file would train (LR-sweep runs, IsoFLOP or grid "
        "members, seeds), its shape, tokens, compute and an estimated time at mfu_estimate of "
        "the machine's peak, then the design check: per budget, how many sizes lie on each "
        "side of the optimum expected at expected_tokens_per_param (a FAIL line where a budget "
        "cannot bracket it). Trains nothing.",
    )
    p.add_argument("file", help="sweep file, e.g. configs/sweeps/tpu-isoflop.yaml")
    add_set_option(p, "override sweep keys, as for run")
    p.set_defaults(func=cmd_plan)
