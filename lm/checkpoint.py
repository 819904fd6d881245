"""Checkpoints of the whole train state with orbax, and loading a run directory back.

Orbax writes each step into a temporary directory and renames it when complete, so a save
interrupted by SIGKILL never replaces or corrupts the previous checkpoint; on restart the
half-written directory is ignored. Checkpoints restore onto any mesh: the target shardings
come from the restoring run, not from the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from lm import config as config_lib
from lm import sharding, train

CKPT_DIR = "checkpoints"
CONFIG_FILE = "config.yaml"


def manager(run_dir: str | Path, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    if read_only:  # orbax warns at length that a read-only manager will not save
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(Path(run_dir).absolute() / CKPT_DIR, options=opts)


def save(mgr: ocp.CheckpointManager, step: int, state: Any) -> None:
    mgr.save(step, args=ocp.args.StandardSave(state), force=True)


def restore(mgr: ocp.CheckpointManager, step: int, abstract: Any, shardings: Any) -> Any:
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return mgr.restore(step, args=ocp.args.StandardRestore(target))


def load_run(run_dir: str | Path, step: int | None = None, mesh=None):
    """(config, params, tokenizer) of a run directory's latest (or given) checkpoint."""
    from lm.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    cfg = config_lib.load(run_dir / CONFIG_FILE)
    tok = load_tokenizer(run_dir)
    mgr = manager(run_dir, read_only=True)
    step = mgr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint yet (train it first)")
    mesh = mesh or sharding.make_mesh(config_lib.MeshConfig())
    opt = train.make_optimizer(cfg)
    abstract, shardings = train.state_specs(cfg, opt, mesh)
    state = restore(mgr, step, abstract, shardings)
    mgr.close()
    return cfg, state["params"], tok
