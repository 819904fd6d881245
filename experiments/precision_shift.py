"""How far a sweep's losses move when only its precision changes, against seed-to-seed noise.

    S=configs/sweeps/cpu-tiny.yaml
    lm sweep run $S --out runs/f32 --set base.model.compute_dtype=float32
    lm sweep run $S --out runs/bf16 --set base.model.compute_dtype=bfloat16
    python experiments/precision_shift.py runs/f32 runs/bf16 [--out FILE.md]

Rows are matched by name (the LR sweep's names carry the rate; a main member's rate comes from
each sweep's own fitted LR rule, so it may differ a little and is shown). The noise yardstick
is the first sweep's seed spread: the standard deviation of the final losses of one member
trained at `seeds` seeds (fit.json's `seed_spread`). The checks (PASS or FAIL): each sweep's
runs computed in one dtype, a different one in each (their config.yaml, as run); the
root-mean-square shift over the main members is below the seed spread; and each approach's
exponent a moves by less than the half-width of the first sweep's 95% interval.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from lm import config


def read_rows(sweep_dir: Path) -> dict[str, dict]:
    with open(sweep_dir / "results.csv", newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def dtypes(sweep_dir: Path) -> dict[str, int]:
    """How many of the sweep's runs computed in each dtype (their config.yaml's, as run)."""
    out: dict[str, int] = {}
    for path in sorted((sweep_dir / "runs").glob("*/config.yaml")):
        dtype = config.read_yaml(path).get("model", {}).get("compute_dtype", "?")
        out[dtype] = out.get(dtype, 0) + 1
    return out


def shifts(a: dict[str, dict], b: dict[str, dict]) -> dict[str, list[tuple[str, float, float]]]:
    """Per group: (name, loss in a, loss in b) for every row both sweeps have."""
    out: dict[str, list] = {}
    for name in sorted(a.keys() & b.keys()):
        out.setdefault(a[name]["group"], []).append(
            (name, float(a[name]["loss"]), float(b[name]["loss"]))
        )
    return out


def summarize(pairs: list[tuple[str, float, float]]) -> dict[str, float]:
    d = [lb - la for _, la, lb in pairs]
    return {
        "n": len(d),
        "mean": sum(d) / len(d),
        "rms": math.sqrt(sum(x * x for x in d) / len(d)),
        "max_abs": max(abs(x) for x in d),
        "rel_rms": math.sqrt(sum(((lb - la) / la) ** 2 for _, la, lb in pairs) / len(d)),
    }


def report(dir_a: Path, dir_b: Path, label_a: str, label_b: str) -> tuple[list[str], bool]:
    """The markdown lines and whether every check passed."""
    a, b = read_rows(dir_a), read_rows(dir_b)
    fit_a = json.loads((dir_a / "fit.json").read_text())
    fit_b = json.loads((dir_b / "fit.json").read_text())
    spread = fit_a["seed_spread"]["std"]
    groups = shifts(a, b)
    lines = [
        f"| rows ({label_b} - {label_a}) | n | mean shift | rms shift | max abs | rms, relative |",
        "|---|---|---|---|---|---|",
    ]
    for group, pairs in groups.items():
        s = summarize(pairs)
        lines.append(
            f"| {group} | {s['n']} | {s['mean']:+.4f} | {s['rms']:.4f} | {s['max_abs']:.4f} | "
            f"{100 * s['rel_rms']:.2f}% |"
        )
    main = groups.get("main", [])
    lr_ratio = max(
        (
            max(float(a[n]["lr"]), float(b[n]["lr"])) / min(float(a[n]["lr"]), float(b[n]["lr"]))
            for n, _, _ in main
        ),
        default=1.0,
    )
    seeds = fit_a["seed_spread"]
    lines += [
        "",
        f"Seed-to-seed spread ({label_a}): std {spread:.4f} over {seeds['n']} seeds of "
        f"{seeds['names'][0]} (losses {', '.join(f'{x:.4f}' for x in seeds['losses'])}); "
        f"{label_b}'s: std {fit_b['seed_spread']['std']:.4f}.",
        f"Main members' learning rates differ by up to {100 * (lr_ratio - 1):.1f}% (each sweep "
        "fits its own LR rule).",
        "",
        f"| approach | a, {label_a} | a, {label_b} | shift | half-width, {label_a} |",
        "|---|---|---|---|---|",
    ]
    ran = {label: dtypes(d) for label, d in ((label_a, dir_a), (label_b, dir_b))}
    shown = "; ".join(
        f"{label}: " + ", ".join(f"{n} in {k}" for k, n in sorted(c.items()))
        for label, c in ran.items()
    )
    one = [next(iter(c)) if len(c) == 1 else None for c in ran.values()]
    checks = [(f"each sweep ran in one dtype, not the same ({shown})", None not in one
               and one[0] != one[1])]  # fmt: skip
    if main:
        rms = summarize(main)["rms"]
        checks.append((f"main members' rms shift {rms:.4f} < seed std {spread:.4f}", rms < spread))
    for k, va in fit_a["summary"]["a"].items():
        vb = fit_b["summary"]["a"].get(k)
        if not (va and vb and va.get("value") is not None and vb.get("value") is not None):
            continue
        half = (va["ci95"][1] - va["ci95"][0]) / 2
        shift = vb["value"] - va["value"]
        lines.append(f"| {k} | {va['value']:.3f} | {vb['value']:.3f} | {shift:+.3f} | {half:.3f} |")
        checks.append((f"{k}: a moves {abs(shift):.3f} < half-width {half:.3f}", abs(shift) < half))
    lines.append("")
    lines += [f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in checks]
    failed = sum(not ok for _, ok in checks)
    lines.append(f"{failed} checks FAIL" if failed else f"all {len(checks)} checks PASS")
    return lines, failed == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="the reference sweep directory (float32)")
    ap.add_argument("b", type=Path, help="the sweep to compare (bfloat16)")
    ap.add_argument("--labels", nargs=2, default=["fp32", "bf16"])
    ap.add_argument("--out", type=Path, help="also write the lines to this markdown file")
    args = ap.parse_args()
    for d in (args.a, args.b):
        for f in ("results.csv", "fit.json"):
            if not (d / f).is_file():
                raise SystemExit(f"{d / f}: not found (a finished `lm sweep run` directory?)")
    lines, _ = report(args.a, args.b, *args.labels)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
