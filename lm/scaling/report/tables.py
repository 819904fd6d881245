"""Reading a sweep directory: results.csv, curves.csv, sweep.json, lr.json, the token cache.

Nothing here fits or judges; it turns files into rows, and says in `notes` what it had to
leave out or work out, so that the report can state it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lm import config as config_lib
from lm.data import dataset
from lm.data.tokenizer import load_tokenizer
from lm.scaling.report.conventions import CONVENTIONS

if TYPE_CHECKING:
    from lm.scaling.sweep import SweepConfig

NUMERIC = {
    "N", "N_total", "N_out", "D", "C", "C_6N", "C_6N_attn", "C_6N_out", "C_6N_out_attn",
    "C_chinchilla", "C_hardware", "loss", "loss_se", "bpb", "wall_s", "budget", "n_layers",
    "d_model", "n_heads", "lr", "warmup_steps", "steps", "seed", "branch_step",
}  # fmt: skip


def read_table(path: Path) -> list[dict[str, Any]]:
    """A CSV as dicts; NUMERIC columns as floats (None when empty or not a number)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in r:
            if k in NUMERIC:
                r[k] = _num(r[k])
    return rows


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def usable(rows: list[dict], cols: tuple[str, ...]) -> tuple[list[dict], int]:
    """Rows whose cols are all positive numbers (a diverged run has no finite loss)."""
    ok = [r for r in rows if all((r.get(c) or 0) > 0 for c in cols)]
    return ok, len(rows) - len(ok)


def sweep_info(out_dir: Path, sweep: SweepConfig | None) -> tuple[dict, str | None]:
    if sweep is not None:
        return dataclasses.asdict(sweep), None
    p = out_dir / "sweep.json"
    try:
        return json.loads(p.read_text()), None
    except (OSError, ValueError):
        return {}, f"no readable {p.name}: assuming a grid sweep counted with 6N"


def derive_columns(rows: list[dict]) -> list[str]:
    """Fill the columns of the third convention where a results.csv predates it; returns notes.

    Both follow exactly from columns every results.csv has (lm.model.flops): C_6N_out = 6 N_out D
    gives N_out, and the causal-attention FLOPs are C_6N_attn - C_6N, so
    C_6N_out_attn = C_6N_out + C_6N_attn - C_6N."""
    notes = []
    n_out = n_c = 0
    for r in rows:
        if not r.get("N_out") and (r.get("C_6N_out") or 0) > 0 and (r.get("D") or 0) > 0:
            r["N_out"] = float(round(r["C_6N_out"] / (6.0 * r["D"])))
            n_out += 1
        if not r.get("C_6N_out_attn") and all(
            r.get(k) is not None for k in ("C_6N_out", "C_6N_attn", "C_6N")
        ):
            r["C_6N_out_attn"] = r["C_6N_out"] + r["C_6N_attn"] - r["C_6N"]
            n_c += 1
    if n_out:
        notes.append(f"N_out worked out as C_6N_out / 6D for {n_out} row(s) without it")
    if n_c:
        notes.append(
            f"C_6N_out_attn worked out as C_6N_out + C_6N_attn - C_6N for {n_c} row(s) without it"
        )
    return notes


@dataclass
class SweepTables:
    """What a sweep directory holds, ready to fit: `main` are the rows fitted (group "main"),
    `rows` every usable row (seeds and cosine runs too)."""

    info: dict
    rows: list[dict]
    main: list[dict]
    curves: list[dict]
    lr: dict | None = None
    notes: list[str] = field(default_factory=list)
    holdout: dict | None = None  # DIR/holdout.json: the sweep's out-of-sample prediction


def load(out_dir: Path, sweep: SweepConfig | None = None) -> SweepTables:
    info, note = sweep_info(out_dir, sweep)
    notes = [note] if note else []
    rows = read_table(out_dir / "results.csv")
    notes += derive_columns(rows)
    rows, bad = usable(rows, ("N", "N_total", "N_out", "D", "loss"))
    if bad:
        notes.append(f"{bad} result row(s) without a finite positive loss were left out")
    c_cols = tuple(c.c_col for c in CONVENTIONS)
    rows, bad = usable(rows, c_cols)
    if bad:
        notes.append(f"{bad} result row(s) without {' / '.join(c_cols)} were left out")
    for r in rows:
        r["group"] = r.get("group") or "main"
    main = [r for r in rows if r["group"] == "main"]
    if not main:
        notes.append("no usable main rows in results.csv: nothing to fit")
    lr, lr_note = read_lr(out_dir)
    if lr_note:
        notes.append(lr_note)
    curves = read_table(out_dir / "curves.csv")
    holdout, note = read_holdout(out_dir)
    if note:
        notes.append(note)
    return SweepTables(info, rows, main, curves, lr, notes, holdout)


def read_holdout(out_dir: Path) -> tuple[dict | None, str | None]:
    """DIR/holdout.json (lm.scaling.sweep.HOLDOUT_FILE), the sweep's out-of-sample prediction;
    (None, None) when there is none, (None, why) when it cannot be read."""
    p = out_dir / "holdout.json"
    if not p.is_file():
        return None, None
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        return None, f"{p.name} not used ({type(e).__name__}: {e})"
    return (doc, None) if isinstance(doc, dict) else (None, f"{p.name} not used: not an object")


def read_lr(out_dir: Path) -> tuple[dict | None, str | None]:
    """DIR/lr.json, the sweep's learning-rate search, checked for the fields the report shows;
    (None, None) when there is none, (None, why) when it cannot be used."""
    p = out_dir / "lr.json"
    if not p.is_file():
        return None, None
    try:
        doc = json.loads(p.read_text())
        points = [
            {k: float(pt[k]) for k in ("N", "lr", "loss")} | {"loss_se": _num(pt.get("loss_se"))}
            for pt in doc["points"]
        ]
        per_size = [
            {
                "N": float(s["N"]),
                "lr_opt": float(s["lr_opt"]),
                "note": str(s.get("note", "")),
                "edge": bool(s.get("edge", False)),
                "in_rule": bool(s.get("in_rule", True)),
            }
            for s in doc.get("per_size", [])
        ]
        rule = doc.get("rule") or {}
        rule = {
            "formula": str(rule.get("formula", "lr(N) = k * N^p")),
            "k": float(rule["k"]),
            "p": float(rule["p"]),
        } if rule else None  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{p.name} not used ({type(e).__name__}: {e})"
    bad = [x for x in points if not (x["N"] > 0 and x["lr"] > 0 and math.isfinite(x["loss"]))]
    if bad or not points:
        return None, f"{p.name} not used: points need N > 0, lr > 0 and a finite loss"
    return {
        "method": str(doc.get("method", "")),
        "points": points,
        "per_size": per_size,
        "rule": rule,
        "tokens": doc.get("tokens"),
        "tokens_per_param": _num(doc.get("tokens_per_param")),
        "convention": doc.get("convention"),
    }, None


def lr_rule(lr: dict, N: float) -> float | None:
    """The learning rate lr.json's fitted rule gives a size (None without a rule)."""
    rule = lr.get("rule")
    return None if not rule else rule["k"] * N ** rule["p"]


def lr_used(lr: dict, main: list[dict], n_col: str) -> list[dict]:
    """Each sweep size's learning rate next to the rule's, to show the rule was applied; N in
    `n_col`, the count the rule is a function of."""
    out = []
    for n in sorted({r[n_col] for r in main}):
        lrs = [r["lr"] for r in main if r[n_col] == n and r.get("lr")]
        rule = lr_rule(lr, n)
        if lrs and rule:
            out.append({"N": n, "lr": float(sorted(lrs)[len(lrs) // 2]), "rule": rule})
    return out


def corpus_tokens(out_dir: Path, run_name: str) -> tuple[int | None, str]:
    """Training-split tokens of the corpus a run trained on, read from the token cache's
    meta.json (the CSVs do not record it). (None, why) when it cannot be found."""
    run_dir = out_dir / "runs" / run_name
    if not (run_dir / "config.yaml").is_file():
        return None, f"no {run_dir / 'config.yaml'} to read the data config from"
    try:
        cfg = config_lib.load(run_dir / "config.yaml")
        tok = load_tokenizer(run_dir)
        key = {
            "format": dataset.FORMAT_VERSION,
            "corpus": dataset.corpus_fingerprint(cfg.data),
            "tokenizer": tok.identity,
            "val_fraction": cfg.data.val_fraction,
            "max_docs": cfg.data.max_docs,
        }
        key = json.loads(json.dumps(key))
        root = Path(cfg.data.cache_dir).expanduser() / "tokens"
        for meta_path in sorted(root.glob("*/meta.json")):
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == key:
                return int(meta["train"]["tokens"]), str(meta_path.parent)
        return None, f"no token cache under {root} matches {run_dir}'s data config"
    except Exception as e:  # noqa: BLE001 - optional information: any failure is a note
        return None, f"corpus size not found ({type(e).__name__}: {e})"


def epochs(out_dir: Path, main: list[dict]) -> dict:
    """How many passes over the training split the largest D makes (repeated data bends L(D))."""
    if not main:
        return {"note": "no runs"}
    n, where = corpus_tokens(out_dir, main[0]["name"])
    D = max(r["D"] for r in main)
    if n is None:
        return {"max_D": D, "note": where}
    return {"corpus_train_tokens": n, "max_D": D, "max_epochs": D / n, "cache": where}
