"""A language model is just a file: config, tokenizer and weights in one `model.lm`.

`export(run_dir, out_path)` writes it, `load(path)` reads it back for JAX, and
`python -m lm.inference.numpy_runner model.lm "prompt"` runs it with numpy alone. The format is
safetensors (no pickle, nothing in it ever runs); `lm.inference.numpy_runner` documents the
layout and holds the one reader (its header through `lm.util.tensorfile`), which checks every
size and offset before touching the data, every weight's shape against the config, and a SHA-256
digest of the metadata and weights, so a truncated, corrupted (down to one flipped bit) or
foreign file fails with one `ModelFileError` line. The file is written with
`lm.util.files.atomic_write`: a reader never sees half of it.

Weights are stored as float32 whatever the run's param_dtype (bfloat16 converts exactly, and
numpy has no bfloat16); `load` casts them back. Bigram runs (kind: bigram) export their
log-probability table as the tensor "bigram" [V, V].
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from lm import config as config_lib
from lm.data.tokenizer import ByteTokenizer, SentencePieceTokenizer, load_tokenizer
from lm.inference.numpy_runner import (
    FORMAT,
    MUP_VERSION,
    VERSION,
    ModelFileError,
    digest,
    make_tokenizer,
    read_model_file,
)
from lm.model import bigram
from lm.model import parametrization as mup
from lm.util.files import atomic_write

__all__ = ["ModelFileError", "export", "load", "save"]


def save(out_path: str | Path, cfg: config_lib.Config, params: dict[str, Any], tok) -> Path:
    """Write one model file from in-memory pieces. For a bigram, params is {"bigram": table}.
    Weights are named by their path in params ("layers.wq")."""
    from flax.traverse_util import flatten_dict  # lazy: flax loads jax (1+ s), as `load` says

    flat = flatten_dict(params, sep=".")
    tensors = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    if cfg.kind == "bigram":  # its table is [V, V] for the tokenizer's V; record that V
        V = tensors["bigram"].shape[0]
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=V))
    meta = {
        "format": FORMAT,
        "format_version": MUP_VERSION if mup.is_mup(cfg.model) else VERSION,
        "kind": cfg.kind,
        "config": json.dumps(config_lib.to_dict(cfg)),
    }
    if isinstance(tok, SentencePieceTokenizer):
        meta["tokenizer"] = "sentencepiece"
        tensors["tokenizer.proto"] = np.frombuffer(tok.proto, np.uint8)
    elif isinstance(tok, ByteTokenizer):
        meta["tokenizer"] = "byte"
    else:
        raise TypeError(f"cannot export a {type(tok).__name__}")
    meta["sha256"] = digest(meta, tensors)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, safetensors.numpy.save(tensors, metadata=meta))


def export(run_dir: str | Path, out_path: str | Path) -> Path:
    """Write a run directory's latest checkpoint (or bigram table) as one model file."""
    from lm.training import checkpoint  # lazy: orbax loads only to export a run directory

    run_dir = Path(run_dir)
    cfg_path = run_dir / checkpoint.CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {checkpoint.CONFIG_FILE})")
    cfg = config_lib.load(cfg_path)
    if cfg.kind == "bigram":
        if not (run_dir / bigram.TABLE_FILE).is_file():
            raise FileNotFoundError(f"{run_dir}: no {bigram.TABLE_FILE} yet (train it first)")
        return save(out_path, cfg, {"bigram": bigram.load(run_dir)}, load_tokenizer(run_dir))
    cfg, params, tok = checkpoint.load_run(run_dir)
    return save(out_path, cfg, params, tok)


def load(path: str | Path):
    """(config, params, tokenizer) from a model file; params as lm.model.transformer expects them
    (for a bigram: {"bigram": table}). Raises ModelFileError (one line) on any bad file."""
    meta, tensors = read_model_file(path)
    # after the checks: a bad file fails fast, before jax loads (flax imports it)
    import jax.numpy as jnp
    from flax.traverse_util import unflatten_dict

    try:
        cfg = config_lib.from_dict(meta["config"])
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise ModelFileError(f"{path}: config metadata: {e}") from None
    if cfg.kind != meta["kind"]:
        raise ModelFileError(f"{path}: kind {meta['kind']!r} but the config says {cfg.kind!r}")
    tok = make_tokenizer(meta, tensors)
    dtype = jnp.float32 if cfg.kind == "bigram" else jnp.dtype(cfg.model.param_dtype)
    flat = {k: jnp.asarray(v, dtype) for k, v in tensors.items() if k != "tokenizer.proto"}
    return cfg, unflatten_dict(flat, sep="."), tok
