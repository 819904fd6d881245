"""What every `lm` subcommand module shares: the one-line user error, the `--set` option, the
output-directory check and joining a multi-host run.

They live here, not in lm.cli, because lm.cli imports the subcommand modules (lm.interop.hf,
lm.cli.generate, lm.cli.sweep, ...) to build its parser: were these in lm.cli, every
such module would import lm.cli back, an import cycle. This module imports no other `lm`
module, so anything may import it; lm.cli re-exports its names.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lm import config


class UsageError(Exception):
    """A one-line user error (bad path, bad value): printed without a traceback."""


EPILOG_SET = (
    "Override any config key with --set SECTION.KEY=VALUE (repeatable), "
    "e.g. --set model.d_model=256 train.lr=3e-4. Sections: model, data, train, mesh; "
    "top-level keys: kind (transformer|bigram), preset (gpt2|llama|none)."
)


def add_config_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    """--config FILE and --set KEY=VALUE ..."""
    p.add_argument("--config", required=required, help="YAML config file (see configs/)")
    add_set_option(p, "override config keys, e.g. --set model.d_model=256 train.lr=3e-4")


def load_config(args) -> config.Config:
    """The config of --config with --set applied (lm.config.ConfigError names a bad key)."""
    return config.load(args.config, args.set)


def add_set_option(p: argparse.ArgumentParser, help: str) -> None:
    """`--set KEY=VALUE ...`, repeatable, as every command that takes overrides spells it."""
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help)


def split_set_groups(argv: list[str]) -> list[str]:
    """`--set a=1 b=2 text` as `--set=a=1 --set=b=2 text`: argparse's `nargs="+"` would take
    `text`, the command's positional, as one more override. A group ends at the first word
    that is not KEY=VALUE (no `=`, or blanks before it), or at `--`."""

    def key_value(a: str) -> bool:
        key, eq, _ = a.partition("=")
        return bool(eq) and not a.startswith("-") and not any(c.isspace() for c in key)

    out: list[str] = []
    in_set = False
    for i, a in enumerate(argv):
        if a == "--":
            out += argv[i:]
            break
        if in_set and key_value(a):
            out.append(f"--set={a}")
            continue
        in_set = a == "--set" and i + 1 < len(argv) and key_value(argv[i + 1])
        if not in_set:  # a --set without a KEY=VALUE after it is left for argparse to report
            out.append(a)
    return out


def check_out_dir(path: str | Path, flag: str = "--out") -> None:
    """One line when `path` cannot be (or become) a writable directory: it is a file, lies
    under one, or the nearest directory that exists is not writable. Checked before any
    compute, so a long job never fails at its first save."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a directory")
    q = p
    while not q.exists() and q != q.parent:
        q = q.parent
    if not q.is_dir():
        raise UsageError(f"{flag} {path}: {q} is a file, so no directory can be made under it")
    if not os.access(q, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {q} is not writable")


def add_distributed_options(p: argparse.ArgumentParser) -> None:
    """The multi-host flags that `init_distributed` reads."""
    p.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: jax.distributed.initialize() with autodetection (TPU pods, SLURM)",
    )
    p.add_argument("--coordinator", help="multi-host: coordinator HOST:PORT (or LM_COORDINATOR)")
    p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, help="multi-host: this process's id, 0-based")


def init_distributed(args) -> None:
    """Join a multi-process run before JAX touches a device.

    TPU pod slices and SLURM/GPU clusters are detected by `jax.distributed.initialize()` itself
    (`--distributed`); elsewhere give the coordinator, process count and id as flags or as
    LM_COORDINATOR, LM_NUM_PROCESSES and LM_PROCESS_ID."""
    coord = args.coordinator or os.environ.get("LM_COORDINATOR")
    if coord:
        import jax

        n = args.num_processes or os.environ.get("LM_NUM_PROCESSES")
        i = args.process_id if args.process_id is not None else os.environ.get("LM_PROCESS_ID")
        if n is None or i is None:
            raise UsageError("--coordinator needs --num-processes and --process-id")
        jax.distributed.initialize(coord, num_processes=int(n), process_id=int(i))
    elif args.distributed:
        import jax

        jax.distributed.initialize()
