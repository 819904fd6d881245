"""Checkpoints of the whole train state with orbax, and loading a run directory back.

Orbax writes each step into a temporary directory and renames it when complete, so a save
interrupted by SIGKILL never replaces or corrupts the previous checkpoint; on restart the
half-written directory is ignored. Checkpoints restore onto any mesh: the target shardings
come from the restoring run, not from the files.

Orbax keeps no checksum of the array bytes (a flipped bit restores silently), so once a save
has finished, process 0 writes the SHA-256 of each of its files into `<step>/lm_digest.json`,
and a restore checks them first. `restore_latest` falls back to the newest checkpoint that
reads cleanly and moves each newer, unreadable one aside to `<step>.corrupt` for inspection.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from lm import config as config_lib
from lm.data.tokenizer import load_tokenizer
from lm.training import sharding, train
from lm.util.files import atomic_write

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


def latest_step(run_dir: str | Path) -> int | None:
    """The step of a run directory's newest finished checkpoint (None while it has none)."""
    mgr = manager(run_dir, read_only=True)
    try:
        step = mgr.latest_step()
    finally:
        mgr.close()
    return None if step is None else int(step)


DIGEST_FILE = "lm_digest.json"
CORRUPT_SUFFIX = ".corrupt"

# Steps this process saved whose digests are not written yet, per manager.
_UNSEALED: weakref.WeakKeyDictionary[ocp.CheckpointManager, list[int]] = weakref.WeakKeyDictionary()


class CheckpointError(ValueError):
    """No usable checkpoint where one was asked for; the message is one line."""


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def step_dir(mgr: ocp.CheckpointManager, step: int) -> Path:
    return Path(mgr.directory) / str(step)


def _digests(d: Path) -> dict[str, str]:
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != DIGEST_FILE:
            with p.open("rb") as f:
                out[p.relative_to(d).as_posix()] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def _seal(mgr: ocp.CheckpointManager) -> None:
    """Digest the finished saves of this process (never a checkpoint found on disk: its bytes
    may already be bad). Process 0 writes them; orbax commits a step only once every process
    has written its part."""
    steps = _UNSEALED.pop(mgr, [])
    if jax.process_index() != 0:
        return
    for step in steps:
        d = step_dir(mgr, step)
        if not d.is_dir():  # already rotated out by keep_ckpts
            continue
        # On failure no digest is left: the checkpoint stays usable, only unverified.
        atomic_write(d / DIGEST_FILE, json.dumps(_digests(d), indent=0, sort_keys=True))


def _save_failed(mgr: ocp.CheckpointManager, step: int | None, e: Exception) -> CheckpointError:
    what = "a checkpoint" if step is None else f"checkpoint step {step}"
    return CheckpointError(
        f"cannot save {what} in {mgr.directory}: {_one_line(e)}; the finished "
        "checkpoints before it are intact: fix the cause (e.g. free disk space), then rerun the "
        "same command to resume"
    )


def _check_space(mgr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Refuse a save the disk cannot hold, before orbax starts it: its own failure midway
    prints pages of tracebacks from its threads. The estimate is the arrays' raw bytes (zstd
    gains little on weights) plus orbax's metadata."""
    need = int(1.1 * sum(getattr(a, "nbytes", 0) for a in jax.tree.leaves(state))) + (256 << 10)
    free = shutil.disk_usage(mgr.directory).free
    if free < need:
        raise CheckpointError(
            f"cannot save checkpoint step {step} in {mgr.directory}: {free / 1e6:.1f} MB free, "
            f"about {need / 1e6:.1f} MB needed; the finished checkpoints before it are intact: "
            "free disk space, then rerun the same command to resume"
        )


def save(mgr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Start an (asynchronous) save; the previous one is finished and digested first. A
    failed save (a full disk, say) raises CheckpointError, one line: orbax only ever renames
    a complete checkpoint into place, so nothing saved before is touched."""
    finish(mgr)
    _check_space(mgr, step, state)
    try:
        mgr.save(step, args=ocp.args.StandardSave(state), force=True)
    except Exception as e:  # tensorstore reports a full disk as a ValueError, orbax as others
        raise _save_failed(mgr, step, e) from None
    _UNSEALED.setdefault(mgr, []).append(int(step))


def finish(mgr: ocp.CheckpointManager) -> None:
    """Wait for the pending save and write its digest: call before closing the manager."""
    pending = _UNSEALED.get(mgr) or [None]
    try:
        mgr.wait_until_finished()
        _seal(mgr)
    except Exception as e:
        _UNSEALED.pop(mgr, None)
        raise _save_failed(mgr, pending[-1], e) from None


def close(mgr: ocp.CheckpointManager) -> None:
    finish(mgr)
    try:
        mgr.close()
    except Exception as e:
        raise _save_failed(mgr, None, e) from None


def verify(d: Path) -> str | None:
    """Why checkpoint directory `d` is damaged, or None when its files match their digests
    (or it has none: saved by an older version, or killed between its save and its digest)."""
    f = d / DIGEST_FILE
    if not f.is_file():
        return None
    try:
        want = json.loads(f.read_text())
        if not isinstance(want, dict):
            raise ValueError
    except (OSError, ValueError):
        return f"{DIGEST_FILE} is unreadable"
    got = _digests(d)
    for name in sorted(want):
        if got.get(name) != want[name]:
            return f"{name} {'is missing' if name not in got else 'differs from its digest'}"
    return None


def restore(mgr: ocp.CheckpointManager, step: int, abstract: Any, shardings: Any) -> Any:
    """The state at `step`, checked against its digests; CheckpointError when unreadable."""
    d = step_dir(mgr, step)
    why = verify(d)
    if why is None:
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        try:
            return mgr.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # orbax and tensorstore raise many types, with pages of text
            why = _one_line(e)
    raise CheckpointError(f"checkpoint {d} is unreadable: {why}")


def restore_latest(
    mgr: ocp.CheckpointManager,
    abstract: Any,
    shardings: Any,
    warn: Callable[[str], None],
    move_aside: bool = True,
) -> tuple[Any, int | None]:
    """(state, step) of the newest checkpoint that reads cleanly, or (None, None) when there
    is none at all. Each newer, damaged one is reported through `warn` in one line and, with
    `move_aside` (process 0 of a run that will save again), renamed to `<step>.corrupt`, so
    it is kept but never chosen again. When none reads, raises CheckpointError and renames
    nothing (the fault may lie elsewhere, e.g. too little memory)."""
    bad: list[tuple[int, str]] = []
    for step in sorted(mgr.all_steps(), reverse=True):
        try:
            state = restore(mgr, step, abstract, shardings)
        except CheckpointError as e:
            bad.append((step, str(e).rpartition(" is unreadable: ")[2]))
            continue
        for b, why in bad:
            src = step_dir(mgr, b)
            where = "left in place"
            if move_aside:
                dest, k = src.with_name(src.name + CORRUPT_SUFFIX), 1
                while dest.exists():
                    k += 1
                    dest = src.with_name(f"{src.name}{CORRUPT_SUFFIX}-{k}")
                src.rename(dest)
                where = f"moved to {dest.name} for inspection"
            warn(f"warning: checkpoint {src} is unreadable ({why}); {where}; using step {step}")
        if bad and move_aside:
            mgr.reload()
        return state, step
    if bad:
        step, why = bad[0]
        raise CheckpointError(
            f"no checkpoint in {mgr.directory} reads cleanly (the newest, step {step}: {why})"
        )
    return None, None


def load_run(run_dir: str | Path, step: int | None = None, mesh=None):
    """(config, params, tokenizer) of a run directory's latest (or given) checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    cfg = config_lib.load(run_dir / CONFIG_FILE)
    tok = load_tokenizer(run_dir)
    mgr = manager(run_dir, read_only=True)
    if step is not None and step not in mgr.all_steps():
        raise FileNotFoundError(f"{run_dir}: no checkpoint of step {step}")
    mesh = mesh or sharding.make_mesh(config_lib.MeshConfig())
    lay = train.layout(cfg, mesh)
    try:
        if step is None:  # the newest that reads; nothing is renamed by a reader
            warn = lambda s: print(s, file=sys.stderr)  # noqa: E731
            state, step = restore_latest(mgr, lay.abstract, lay.shardings, warn, move_aside=False)
            if step is None:
                raise FileNotFoundError(f"{run_dir}: no checkpoint yet (train it first)")
        else:
            state = restore(mgr, step, lay.abstract, lay.shardings)
    finally:
        mgr.close()
    return cfg, state["params"], tok
