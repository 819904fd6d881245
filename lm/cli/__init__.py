"""The `lm` command line: one module per command group, each a thin layer over the library.

    train.py      lm train (--dry-run, --init-from, --restart), lm eval
    tokenizer.py  lm tokenizer train | encode | decode
    generate.py   lm sample, inspect, embed-sim, export
    serve.py      lm serve, lm chat
    hf.py         lm import-hf, export-hf
    sweep.py      lm sweep run | plan
    scaling.py    lm scaling fit | plot
    common.py     what they share: UsageError, --config/--set, --out checks, multi-host flags

Building the parser imports no jax: a command imports the library it needs when it runs, so
`lm --help` and bad-argument errors answer at once. The library raises its own one-line
errors (ConfigError, CheckpointError, ...); `main` prints them and exits with status 2 before
any compute, 1 for a diverged run, 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

from lm.cli import generate, hf, scaling, serve, sweep, tokenizer, train
from lm.cli.common import UsageError, split_set_groups
from lm.config import ConfigError
from lm.hardware import xla_env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lm", description="Decoder-only language models in JAX.")
    sub = p.add_subparsers(dest="command", required=True)
    # the order `lm --help` lists them in
    for module in (train, tokenizer, scaling, sweep, hf, generate, serve):
        module.add_parsers(sub)
    return p


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions whose message is already the one line a user needs (exit status 2)."""
    # lazy: these live beside jax-using code, imported only once a command has run
    from lm.inference.load import RunError
    from lm.inference.numpy_runner import ModelFileError
    from lm.interop.hf import HFError
    from lm.training.checkpoint import CheckpointError
    from lm.training.rundir import RunDirError
    from lm.util.dirlock import Busy

    return (ConfigError, UsageError, CheckpointError, RunDirError, ModelFileError, Busy,
            RunError, HFError)  # fmt: skip


def _os_error(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split())


def main(argv: list[str] | None = None) -> int:
    xla_env.configure()  # before any command imports jax, which reads its settings then
    argv = split_set_groups(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e.args[0] if len(e.args) == 1 else _os_error(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a permission, a directory where a file should be
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        from lm.training.loop import TrainingDiverged  # lazy: as in user_errors

        if isinstance(e, user_errors()):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, TrainingDiverged):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
