"""Opening a trained model for use: a run directory (its latest checkpoint, or its bigram
table) or a model file written by `lm export`.

`open_run` does the cheap checks first (the files are there, the tokenizer reads) and returns a
`load()` for the weights, so a command can check all its other arguments before paying for
JAX and a checkpoint restore. Problems are a `RunError` with a one-line message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from lm import config as config_lib
from lm.data.tokenizer import Tokenizer, load_tokenizer
from lm.inference import export
from lm.inference.numpy_runner import ModelFileError
from lm.model import bigram


class RunError(ValueError):
    """A run directory or model file that cannot be used as asked; the message is one line."""


class OpenedRun(NamedTuple):
    cfg: config_lib.Config
    tok: Tokenizer
    load: Callable[[], Any]  # -> params ({"bigram": table} for a bigram run)


def has_checkpoint(run: Path) -> bool:
    # orbax names each finished step's directory by its number (unfinished ones are temporary)
    d = run / "checkpoints"
    return d.is_dir() and any(p.name.isdigit() and p.is_dir() for p in d.iterdir())


def open_run(run: str | Path) -> OpenedRun:
    """The config, tokenizer and a weight loader of `run` (a directory or an exported file)."""
    path = Path(run).expanduser()
    if path.is_file():
        try:
            cfg, params, tok = export.load(path)
        except ModelFileError as e:
            raise RunError(str(e)) from None
        return OpenedRun(cfg, tok, lambda: params)
    if not path.is_dir():
        raise RunError(f"--run {run}: no such run directory or model file")
    if not (path / "config.yaml").is_file():
        raise RunError(f"--run {run}: not a run directory (no config.yaml)")
    cfg = config_lib.load(path / "config.yaml")
    try:
        tok = load_tokenizer(path)
    except ValueError as e:
        raise RunError(f"--run {run}: {e}") from None
    if cfg.kind == "bigram":
        return OpenedRun(cfg, tok, _bigram_loader(run, path))
    if not has_checkpoint(path):
        raise RunError(f"--run {run}: no checkpoint yet (train it first)")

    def load_params():
        from lm.training import checkpoint  # lazy: orbax and jax load with the weights

        # orbax logs four warnings about read-only mode on every restore; they are noise here
        logging.getLogger("absl").setLevel(logging.ERROR)
        try:
            return checkpoint.load_run(path)[1]
        except FileNotFoundError as e:
            raise RunError(f"--run {run}: {e}") from None

    return OpenedRun(cfg, tok, load_params)


def _bigram_loader(run: str | Path, path: Path) -> Callable[[], Any]:
    if not (path / bigram.TABLE_FILE).is_file():
        raise RunError(f"--run {run}: no {bigram.TABLE_FILE} (the bigram run has not finished)")

    def load_table():
        try:
            return {"bigram": bigram.load(path)}
        except ValueError as e:
            raise RunError(str(e)) from None

    return load_table


def need_transformer(cfg: config_lib.Config, run: str | Path, what: str) -> None:
    """A RunError unless `run` is a Transformer (a bigram has no layers to inspect or serve)."""
    if cfg.kind != "transformer":
        raise RunError(f"--run {run}: a {cfg.kind} run has no layers or embeddings to {what}")
