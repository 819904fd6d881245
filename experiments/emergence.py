"""Emergence or mirage: exact-match accuracy and per-token loss of multi-digit addition against
training compute, across model sizes (Wei et al. 2022, arXiv:2206.07682; Schaeffer et al. 2023,
arXiv:2304.15004).

    python experiments/emergence.py --out runs/emergence

Runs the sweep in configs/experiments/emergence.yaml with the sweep machinery (the same
`run_sweep` as `lm sweep run`; finished members are skipped on a rerun), then loads every
member's final checkpoint and scores it on held-out additions (inputs the hash split never
trains on): exact match of greedy generation (a discontinuous metric: one wrong digit scores 0)
and the mean loss of the answer tokens given the prompt (a continuous one). Writes
emergence.png, members.csv and RESULT.md.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def score(out: Path, rows: list[dict], n_eval: int, print_fn=print) -> list[dict]:
    from lm.data import tasks
    from lm.inference import task_eval
    from lm.training import checkpoint

    common.quiet()
    scored = []
    x = None
    for row in rows:
        cfg, params, _ = checkpoint.load_run(out / "runs" / row["name"])
        if x is None:
            x = tasks.inputs(cfg.data, "val", n_eval)
        ev = task_eval.evaluate(params, cfg, x)
        scored.append({**row, "exact_match": ev.accuracy, "answer_loss": ev.answer_loss,
                       "answer_token_accuracy": ev.token_accuracy})  # fmt: skip
        print_fn(
            f"{row['name']}: exact match {ev.accuracy:.3f}, answer loss "
            f"{ev.answer_loss:.4f} nats/token, token accuracy {ev.token_accuracy:.3f}"
        )
    return scored


def mean_answer_tokens(cfg, n: int = 2000) -> float:
    from lm.data import tasks

    return float(
        np.mean([len(tasks.answer(cfg.data, r)) for r in tasks.inputs(cfg.data, "val", n)])
    )


def plot(scored: list[dict], path: Path, answer_len: float) -> None:
    fig, (a1, a2, a3) = common.figure(15, 4.2, 3)
    sizes = sorted({r["N"] for r in scored})
    cmap = __import__("matplotlib").colormaps["viridis"]
    for i, n in enumerate(sizes):
        pts = sorted((r for r in scored if r["N"] == n), key=lambda r: r["C"])
        c = cmap(i / max(len(sizes) - 1, 1))
        C = [r["C"] for r in pts]
        a1.plot(C, [r["exact_match"] for r in pts], "o-", c=c, label=f"N={n:,}")
        a2.plot(C, [r["answer_loss"] for r in pts], "o-", c=c, label=f"N={n:,}")
    for a in (a1, a2):
        a.set_xscale("log")
        a.set_xlabel("training compute C = 6ND (FLOPs)")
    a1.set_ylabel("exact match (held-out)")
    a1.set_ylim(-0.03, 1.03)
    a1.set_title("discontinuous metric", fontsize=10)
    a2.set_ylim(bottom=0)  # linear, as the continuous metric is read
    a2.set_ylabel("answer-token loss (nats/token)")
    a2.set_title("continuous metric", fontsize=10)
    a1.legend(fontsize=7)
    loss = np.array([r["answer_loss"] for r in scored])
    a3.scatter(loss, [r["exact_match"] for r in scored], c="k", s=14, label="members")
    grid = np.geomspace(max(loss.min() / 2, 1e-4), loss.max() * 1.2, 200)
    a3.plot(grid, np.exp(-answer_len * grid), c="tab:red",
            label=f"exp(-{answer_len:.1f} x loss): every token right, independently")  # fmt: skip
    a3.set_xscale("log")
    a3.set_xlabel("answer-token loss (nats/token)")
    a3.set_ylabel("exact match")
    a3.set_title("the same models: exact match as a function of loss", fontsize=10)
    a3.legend(fontsize=7)
    fig.savefig(path, dpi=100)


def report(scored: list[dict], out: Path, sweep, wall_s: float, eval_s: float, n_eval: int,
           answer_len: float) -> str:  # fmt: skip
    zero_pad = sweep.base["data"].get("task_zero_pad", False)
    reverse = sweep.base["data"].get("task_reverse", True)
    lines = [
        "# Emergence or mirage: multi-digit addition",
        "",
        f"Machine: {common.machine()}.",
        "",
        f"Sweep `{sweep.name}` (`configs/experiments/emergence.yaml`, run through the sweep "
        f"machinery): {len({r['N'] for r in scored})} sizes x {len(sweep.tokens)} token budgets, "
        f"WSD with branched cooldowns. Task: a + b with {sweep.base['data']['task_min_digits']}- "
        f"to {sweep.base['data']['task_max_digits']}-digit operands"
        + (", written with leading zeros to a fixed width" if zero_pad else "")
        + (", answer digits least-significant first" if reverse else "")
        + ". Scored on "
        f"{n_eval} held-out additions (inputs never trained on); {answer_len:.2f} answer tokens "
        "on average (digits and EOS).",
        f"Time: sweep {wall_s:.0f} s, scoring {eval_s:.0f} s.",
        "",
        "| member | N | D | C (6ND) | exact match | answer loss (nats/token) "
        "| answer token accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(scored, key=lambda r: (r["N"], r["D"])):
        lines.append(
            f"| {r['name']} | {r['N']:,} | {r['D']:,} | {r['C']:.2e} | {r['exact_match']:.3f} "
            f"| {r['answer_loss']:.4f} | {r['answer_token_accuracy']:.4f} |"
        )
    lines += ["", "![emergence](emergence.png)", ""]
    text = "\n".join(lines) + "\n"
    (out / "RESULT.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = common.parser(__doc__.splitlines()[0], "configs/experiments/emergence.yaml")
    ap.add_argument("--eval", type=int, default=500, help="held-out additions per member")
    args = ap.parse_args(argv)
    from lm import config
    from lm.scaling import sweep as sweep_lib

    sweep = sweep_lib.load_sweep(args.config, args.set)
    out = Path(args.out)
    t0 = time.perf_counter()
    res = sweep_lib.run_sweep(sweep, out, progress=False)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows = [
        {k: (float(v) if k in ("C", "D", "N") else v) for k, v in r.items()} for r in res["rows"]
    ]
    for r in rows:
        r["N"], r["D"] = int(r["N"]), int(r["D"])
    scored = score(out, rows, args.eval)
    eval_s = time.perf_counter() - t1
    answer_len = mean_answer_tokens(config.from_dict(sweep.base))
    with (out / "members.csv").open("w", newline="") as f:
        keys = [
            "name",
            "N",
            "D",
            "C",
            "loss",
            "exact_match",
            "answer_loss",
            "answer_token_accuracy",
        ]
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(scored)
    plot(scored, out / "emergence.png", answer_len)
    print(report(scored, out, sweep, wall, eval_s, args.eval, answer_len))
    assert all(math.isfinite(r["answer_loss"]) for r in scored)
    return 0


if __name__ == "__main__":
    sys.exit(main())
