"""Shared by the scripts in experiments/: arguments, machine description, metrics, figures."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parser(description: str, config: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", default=str(REPO / config), help=f"(default {config})")
    ap.add_argument("--out", required=True, help="output directory (runs, figures, RESULT.md)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    return ap


def machine() -> str:
    import jax

    from lm.hardware.peak import cpu_model

    cpu = cpu_model()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, {cores} cores available, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, {time.strftime('%Y-%m-%d')}"
    )


def metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train lines, eval lines) of a run's metrics.jsonl."""
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return [r for r in recs if "train_loss" in r], [r for r in recs if "val_loss" in r]


def figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure  # Agg, no display

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def quiet():
    """No orbax read-only chatter when experiments load their checkpoints."""
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
