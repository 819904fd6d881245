"""Does one learning rate transfer across the main job's widths? Loss against the base learning
rate at the smallest and largest width of `configs/sweeps/cpu-tiny.yaml`, at two training
lengths, under muP and under the standard parametrization.

    python experiments/mup_transfer.py --out experiments/results/mup_transfer

Every run is the sweep's own member recipe (its base config, shape rule, WSD schedule, AdamW
beta2 0.99) with one rate from the grid; muP's base width is the sweep's LR-proxy width
(`lm.scaling.sweep.proxy_width` of the sweep with parametrization=mup), so at that width muP is
the standard parametrization. Warmup is the same number of steps for every run, so the horizons
differ only in the stable phase and the cooldown. Each (parametrization, width, horizon)'s
optimum is the LR sweep's own estimate (`fit_lr_rule`: a parabola in log lr around the best
rate). The check (PASS or FAIL): under muP, every optimum within one grid step (a factor of the
grid's ratio) of every other; the same measure is printed for SP, where the optimum is expected
to move with width (Yang et al. 2022, arXiv:2203.03466, fig. 1) and with the horizon under both
(Bjorck et al. 2024, arXiv:2409.19913). Writes results.csv, RESULT.md and transfer.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from common import REPO, figure, machine, quiet

from lm import config as config_lib
from lm.scaling import sweep as sweep_lib
from lm.training import loop
from lm.util.files import atomic_write

SWEEP = REPO / "configs" / "sweeps" / "cpu-tiny.yaml"
LRS = (2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2, 8e-2, 1.6e-1)
HORIZONS = (250, 1000)  # optimizer steps (x 2048 tokens)
WARMUP = 50


def run_config(sweep, n_target: float, par: str, base_width: int, steps: int, lr: float) -> dict:
    raw = json.loads(json.dumps(sweep.base))
    raw.setdefault("model", {}).update(
        sweep_lib.shape_for(n_target, sweep.aspect, sweep.head_dim, sweep.min_layers),
        parametrization=par,
        mup_base_width=base_width,
    )
    raw.setdefault("train", {}).update(
        steps=steps, lr=lr, warmup_steps=WARMUP, schedule="wsd",
        decay_fraction=sweep.cooldown_fraction, eval_every=steps, beta2=0.99,
        eval_windows=max(1, math.ceil(sweep.eval_tokens / raw["train"].get("seq_len", 64))),
        ckpt_every=steps, keep_ckpts=1,
    )  # fmt: skip
    return raw


def optima(rows: list[dict]) -> dict[tuple, dict]:
    """(parametrization, width, steps) -> fit_lr_rule's per-size optimum of those runs."""
    out = {}
    for key in sorted({(r["parametrization"], r["d_model"], r["steps"]) for r in rows}):
        pts = [{"N": 1.0, "lr": r["lr"], "loss": r["loss"]} for r in rows
               if (r["parametrization"], r["d_model"], r["steps"]) == key
               and math.isfinite(r["loss"])]  # fmt: skip
        out[key] = sweep_lib.fit_lr_rule(pts)["per_size"][0]
    return out


def spread_steps(opt: dict[tuple, dict], par: str, ratio: float) -> float:
    """The largest distance between two optima of one parametrization, in grid steps."""
    lo = [math.log(v["lr_opt"]) for k, v in opt.items() if k[0] == par]
    return (max(lo) - min(lo)) / math.log(ratio)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parametrizations", nargs="+", default=["mup", "sp"])
    args = ap.parse_args()
    quiet()
    sweep = sweep_lib.load_sweep(SWEEP)
    widths = (min(sweep.sizes), max(sweep.sizes))
    mup = sweep_lib.SweepConfig(**{**sweep.__dict__, "lr_sweep_sizes": (6144.0,),
                                   "base": {**sweep.base, "model": {**sweep.base["model"],
                                            "parametrization": "mup"}}})  # fmt: skip
    base_width = sweep_lib.proxy_width(mup)
    rows = []
    csv_path = args.out / "results.csv"
    done = {}
    if csv_path.exists():  # resume: runs already measured are kept
        for r in csv.DictReader(open(csv_path)):
            done[r["name"]] = r
    for par in args.parametrizations:
        for n in widths:
            for steps in HORIZONS:
                for lr in LRS:
                    raw = run_config(sweep, n, par, base_width, steps, lr)
                    d = raw["model"]["d_model"]
                    name = f"{par}-d{d}-T{steps}-lr{lr:g}"
                    if name in done:
                        r = done[name]
                        loss = float(r["loss"])
                    else:
                        cfg = config_lib.from_dict(raw)
                        res = loop.train_run(cfg, args.out / "runs" / name, progress=False,
                                             print_fn=lambda *a: None)  # fmt: skip
                        loss = float(res.get("val_loss", math.nan))
                        print(f"{name}: {loss:.4f}", flush=True)
                    rows.append(dict(name=name, parametrization=par, d_model=d, n_target=n,
                                     steps=steps, lr=lr, loss=loss))  # fmt: skip
                    keys = list(rows[0])
                    atomic_write(csv_path, ",".join(keys) + "\n" + "".join(
                        ",".join(str(r[k]) for k in keys) + "\n" for r in rows))  # fmt: skip
    report(rows, args.out, base_width)


def report(rows: list[dict], out: Path, base_width: int) -> None:
    ratio = LRS[1] / LRS[0]
    opt = optima(rows)
    lines = [
        "# One learning rate across widths: muP against the standard parametrization",
        "",
        "Made with `python experiments/mup_transfer.py --out experiments/results/mup_transfer`",
        f"on {machine()}. Runs: the main job's member recipe (configs/sweeps/cpu-tiny.yaml) at",
        f"its smallest and largest width, {len(LRS)} rates a factor {ratio:g} apart, "
        f"{' and '.join(str(h) for h in HORIZONS)} steps of 2048 tokens, warmup {WARMUP} steps; "
        f"muP base width {base_width} (the sweep's LR proxy). Loss: held-out nats/token.",
        "",
        "| parametrization | d_model | steps | best rate tried | optimum (parabola) | edge |",
        "|---|---|---|---|---|---|",
    ]
    for (par, d, steps), v in opt.items():
        lines.append(f"| {par} | {d} | {steps} | {v['best_tried']:g} | {v['lr_opt']:.4g} | "
                     f"{'yes' if v['edge'] else ''} |")  # fmt: skip
    lines += ["", "Loss per rate:", "", "| run | " + " | ".join(f"{x:g}" for x in LRS) + " |",
              "|---|" + "---|" * len(LRS)]  # fmt: skip
    for key in opt:
        by = {r["lr"]: r["loss"] for r in rows
              if (r["parametrization"], r["d_model"], r["steps"]) == key}  # fmt: skip
        lines.append(f"| {key[0]} d{key[1]} T{key[2]} | "
                     + " | ".join(f"{by.get(x, math.nan):.4f}" for x in LRS) + " |")  # fmt: skip
    lines.append("")
    for par in sorted({k[0] for k in opt}):
        for steps in HORIZONS:  # width transfer alone, one horizon at a time
            one = {k: v for k, v in opt.items() if k[0] == par and k[2] == steps}
            s = spread_steps(one, par, ratio)
            lines.append(f"- {par} at {steps} steps: optima across widths {s:.2f} grid steps "
                         f"apart -> {'PASS' if s <= 1.0 else 'FAIL'}")  # fmt: skip
        s = spread_steps(opt, par, ratio)
        edges = any(v["edge"] for k, v in opt.items() if k[0] == par)
        verdict = "PASS" if s <= 1.0 and not edges else "FAIL"
        tag = "check" if par == "mup" else "for comparison"
        edge_note = ", an optimum at the grid edge" if edges else ""
        lines.append(f"- {tag}: {par} optima across widths and horizons within one grid step "
                     f"(x{ratio:g}): spread {s:.2f} steps{edge_note} -> **{verdict}**")  # fmt: skip
    atomic_write(out / "RESULT.md", "\n".join(lines) + "\n")
    plot(rows, opt, out / "transfer.png")
    print("\n".join(lines))


def plot(rows: list[dict], opt: dict, path: Path) -> None:
    pars = sorted({r["parametrization"] for r in rows})
    fig, axes = figure(5.0 * len(pars), 3.6, len(pars))
    for ax, par in zip(axes, pars, strict=True):
        for key in [k for k in opt if k[0] == par]:
            pts = sorted((r["lr"], r["loss"]) for r in rows
                         if (r["parametrization"], r["d_model"], r["steps"]) == key)  # fmt: skip
            best = min(loss for _, loss in pts)  # curves of very different loss, one scale
            pts = [(lr, loss - best) for lr, loss in pts]
            line = ax.plot(*zip(*pts, strict=True), marker="o", ms=3,
                           ls="-" if key[2] == max(HORIZONS) else "--",
                           label=f"d_model {key[1]}, {key[2]} steps")[0]  # fmt: skip
            ax.axvline(opt[key]["lr_opt"], color=line.get_color(), lw=0.8, alpha=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("base learning rate")
        ax.set_ylabel("loss - the curve's best (nats/token)")
        ax.set_title(f"{par}: vertical lines mark each curve's optimum")
        ax.set_ylim(-0.02, 0.45)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
