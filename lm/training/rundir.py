"""A run directory: what `lm train` keeps there, and the checks before it writes there.

Layout of a run directory:
  config.yaml          the resolved config (a rerun must match it)
  tokenizer.model|json the tokenizer, so the run is self-contained
  metrics.jsonl        one JSON object per line: train lines and eval lines (see README)
  tb/                  TensorBoard events
  checkpoints/<step>/  orbax checkpoints of the whole state

Running the same command on an existing run directory resumes from its latest checkpoint, so
the config must match the saved one (`check_run_dir`), and a directory whose checkpoints are
gone but whose metrics went further is refused (`check_resumable`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
from flax.traverse_util import flatten_dict

from lm import config as config_lib
from lm.config import Config, ConfigError
from lm.data.tokenizer import (
    BYTE_FILE,
    SP_FILE,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
)
from lm.training import checkpoint
from lm.util.files import atomic_write

METRICS_FILE = "metrics.jsonl"


class RunDirError(ValueError):
    """A run directory in a state training must not touch; the message is one line."""


def check_run_dir(cfg: Config, run_dir: Path) -> bool:
    """Check cfg against the run directory's saved config, writing nothing. True when the
    directory holds one (a resume). Only the keys marked resumable in lm.config may differ."""
    saved_path = run_dir / checkpoint.CONFIG_FILE
    if not saved_path.is_file():
        return False
    saved = flatten_dict(config_lib.to_dict(config_lib.load(saved_path)), sep=".")
    now = flatten_dict(config_lib.to_dict(cfg), sep=".")
    if saved.get("model.compute_dtype") == "auto":  # written by lm import-hf: a run takes any
        saved["model.compute_dtype"] = now.get("model.compute_dtype")
    resumable = config_lib.resumable_keys()
    for k in sorted(set(saved) | set(now)):
        if k not in resumable and saved.get(k) != now.get(k):
            raise ConfigError(
                f"{k}={now.get(k)!r} differs from {saved.get(k)!r} in {saved_path}; "
                "use a new --out directory (or the same config) to resume"
            )
    return True


def saved_compute_dtype(run_dir: Path) -> str | None:
    """The model.compute_dtype a run directory's config.yaml records (None without one): a
    resumed run keeps it whatever "auto" would pick on this machine."""
    path = run_dir / checkpoint.CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return config_lib.read_yaml(path).get("model", {}).get("compute_dtype")
    except (ValueError, AttributeError):
        return None  # check_run_dir names what is wrong with it


def prepare_run_dir(cfg: Config, run_dir: Path) -> bool:
    """Write the config, or check it against the saved one. True when resuming.

    Every process checks; only process 0 writes (hosts may share the run directory)."""
    resuming = check_run_dir(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        atomic_write(run_dir / checkpoint.CONFIG_FILE, config_lib.dump(cfg))
    return resuming


def has_tokenizer(run_dir: Path) -> bool:
    return (run_dir / SP_FILE).is_file() or (run_dir / BYTE_FILE).is_file()


def get_tokenizer(cfg: Config, run_dir: Path, save: bool = True) -> Tokenizer:
    """The run directory's tokenizer; when it has none yet, cfg's, built (and with `save`,
    saved there). A damaged tokenizer file is an error, never silently replaced: the weights
    belong to it."""
    if has_tokenizer(run_dir):
        try:
            return load_tokenizer(run_dir)
        except ValueError as e:
            raise RunDirError(str(e)) from None
    try:
        tok = build_tokenizer(cfg.data)
    except ValueError as e:  # no text to train on, a vocabulary the corpus cannot fill, ...
        raise ConfigError(str(e)) from None
    if save and jax.process_index() == 0:
        save_tokenizer(tok, run_dir)
    return tok


def _metric_steps(path: Path) -> list[int]:
    steps = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill mid-write
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                steps.append(rec["step"])
    return steps


def check_resumable(cfg: Config, run_dir: Path, start: int, restart: bool) -> None:
    """Refuse to train a run directory from `start` (0, or --init-from's step) when its
    checkpoints are gone but its metrics show it got further: starting over would silently
    replace that history. With `restart`, the old metrics.jsonl is kept under a new name and
    training starts over.

    "Gone" is certain when checkpoints/ is missing (train_run creates it before writing any
    metrics line), or when the metrics pass 2 x train.ckpt_every beyond the start: by then a
    save has finished (each save waits for the one before), so a run killed before its first
    checkpoint is not mistaken for one whose checkpoints were deleted."""
    metrics = run_dir / METRICS_FILE
    ckpts = run_dir / checkpoint.CKPT_DIR
    saved = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
    if saved:
        if restart:
            raise RunDirError(
                f"--restart: {ckpts} holds checkpoints (the latest, step {max(saved)}); rerun "
                "without --restart to resume from it, or train in a new --out directory"
            )
        return
    steps = _metric_steps(metrics)
    if restart:
        if metrics.exists() and jax.process_index() == 0:
            dest, k = metrics.with_name(metrics.name + ".before-restart"), 1
            while dest.exists():
                k += 1
                dest = metrics.with_name(f"{metrics.name}.before-restart-{k}")
            metrics.rename(dest)
        return
    if steps and (not ckpts.is_dir() or max(steps) > start + 2 * cfg.train.ckpt_every):
        raise RunDirError(
            f"{run_dir}: metrics.jsonl goes to step {max(steps)} but no checkpoint is left in "
            f"{ckpts} to resume from; rerun with --restart to train again from step {start} "
            "(metrics.jsonl is then kept as metrics.jsonl.before-restart)"
        )


def copy_metrics(src_dir: Path, run_dir: Path, upto: int) -> None:
    """Start `run_dir`'s metrics.jsonl with `src_dir`'s lines up to step `upto` (a branch
    continues its trunk's history); nothing when the source has none."""
    src = src_dir / METRICS_FILE
    if src.is_file():
        lines = src.read_text().splitlines()
        keep = [x for x in lines if x.strip() and json.loads(x).get("step", 0) <= upto]
        atomic_write(run_dir / METRICS_FILE, "".join(x + "\n" for x in keep))


class MetricsLog:
    """Append-only metrics.jsonl (+ TensorBoard). On resume, lines after the restored step
    are dropped: the resumed run writes them again, identically."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool = True):
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill mid-write
                if rec.get("step", 0) <= resume_step:
                    keep.append(line)
            atomic_write(self.path, "".join(k + "\n" for k in keep))
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1)
        except ImportError:
            self.tb = None

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, rec["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def logged(self) -> list[dict[str, Any]]:
        """The lines written so far (none when disabled)."""
        if not (self.enabled and self.path.is_file()):
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines()]
