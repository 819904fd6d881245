"""Corpora as documents, documents as one token stream per split, batches as pure functions.

A source (`lm.data.sources`, what data.source names) yields (doc_id, text) documents. Each
document goes to the train or validation split by a hash of its id (`lm.data.corpus.is_val`), so
the split never depends on reading order or on which other documents exist. `prepare_data`
tokenizes the corpus once into two flat token files (each document framed as BOS ... EOS),
cached under cfg.cache_dir and memory-mapped afterwards.
`batch_at` draws a batch as a pure function of (seed, step): resuming or adding hosts needs
no iterator state, and every host agrees on the global batch.

`iter_documents`, `corpus_fingerprint` (from `lm.data.sources`), `is_val`, `TokenData` and
`AlignedExamples` (from `lm.data.corpus`) are re-exported here.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from lm.config import DataConfig
from lm.data.corpus import AlignedExamples, TokenData, digest, is_val
from lm.data.sources import corpus_fingerprint, iter_documents, source_for
from lm.data.tokenizer import Tokenizer

FORMAT_VERSION = 2  # bump when the token cache layout changes
_BATCH_CHARS = 4_000_000  # text tokenized per call: bounds memory, amortizes thread start-up


# ---------------------------------------------------------------- tokenized corpus


def _aligned_rows(tokens: np.ndarray, seq_len: int) -> np.ndarray | None:
    """[n, width] examples when `tokens` is AlignedExamples, else None."""
    width = getattr(tokens, "example_width", None)
    if width is None:
        return None
    if seq_len + 1 != width:
        raise ValueError(
            f"train.seq_len={seq_len}: the task's examples are {width} tokens, so it must be "
            f"{width - 1}"
        )
    return np.asarray(tokens).reshape(-1, width)


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def _open_cache(d: Path) -> TokenData:
    try:
        meta = json.loads((d / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        counts = {s: int(meta[s]["tokens"]) for s in ("train", "val")}
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{d}/meta.json: unreadable; delete {d} to rebuild it") from None
    arrays = {}
    for split, n in counts.items():
        p = d / f"{split}.bin"
        size = p.stat().st_size if p.is_file() else -1
        if size != n * dtype.itemsize:
            raise ValueError(
                f"{p}: {size} bytes where meta.json says {n} tokens; delete {d} to rebuild it"
            )
        # np.memmap cannot map an empty file
        arrays[split] = np.memmap(p, dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
    return TokenData(
        train=arrays["train"],
        val=arrays["val"],
        train_bytes=int(meta["train"]["bytes"]),
        val_bytes=int(meta["val"]["bytes"]),
        vocab_size=int(meta["vocab_size"]),
        path=d,
    )


def _tokenize_into(
    d: Path, cfg: DataConfig, tok: Tokenizer, workers: int | None, progress: bool
) -> dict:
    from tqdm import tqdm

    dtype = _token_dtype(tok.vocab_size)
    bos, eos = np.array([tok.bos_id], dtype), np.array([tok.eos_id], dtype)
    stats = {s: {"docs": 0, "tokens": 0, "bytes": 0} for s in ("train", "val")}
    threads = workers or os.cpu_count() or 1
    with (
        open(d / "train.bin", "wb") as f_train,
        open(d / "val.bin", "wb") as f_val,
        tqdm(
            desc=f"tokenizing {cfg.source}",
            unit="B",
            unit_scale=True,
            disable=not progress,
            mininterval=1.0,
        ) as bar,
    ):
        files = {"train": f_train, "val": f_val}
        texts: list[str] = []
        splits: list[str] = []

        def flush() -> None:
            arrays = tok.encode_batch(texts, num_threads=threads)
            for split in ("train", "val"):
                parts, n_bytes = [], 0
                for text, s, a in zip(texts, splits, arrays, strict=True):
                    if s == split:
                        parts += [bos, a, eos]
                        n_bytes += len(text.encode("utf-8"))
                if not parts:
                    continue
                block = np.concatenate(parts).astype(dtype, copy=False)
                files[split].write(block.tobytes())
                st = stats[split]
                st["docs"] += len(parts) // 3
                st["tokens"] += len(block)
                st["bytes"] += n_bytes
                bar.update(n_bytes)
            texts.clear()
            splits.clear()

        size = 0
        for doc_id, text in iter_documents(cfg):
            texts.append(text)
            splits.append("val" if is_val(doc_id, cfg.val_fraction) else "train")
            size += len(text)
            if size >= _BATCH_CHARS:
                flush()
                size = 0
        if texts:
            flush()
    return {"dtype": dtype.name, **stats}


def _remove_abandoned(root: Path, max_age_s: float = 86400.0) -> None:
    """Delete temporary builds that a killed process left behind.

    A build counts as abandoned once none of its files has changed for a day; a live one
    appends to its files continuously, so it is never mistaken for one.
    """
    now = time.time()
    for tmp in root.glob(".tmp-*"):
        try:
            last = max([tmp.stat().st_mtime, *(p.stat().st_mtime for p in tmp.iterdir())])
        except OSError:  # removed meanwhile by its owner
            continue
        if now - last > max_age_s:
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_data(
    cfg: DataConfig, tok: Tokenizer, workers: int | None = None, progress: bool = True
) -> TokenData:
    """Tokenize the corpus once into cfg.cache_dir and memory-map it; later calls just map it.

    The cache is keyed by the corpus fingerprint, the tokenizer's identity, val_fraction and
    max_docs. It is built in a temporary directory renamed into place when complete, so an
    interrupted build leaves no half-written cache under the real key. `workers`: threads
    for sentencepiece (default: all cores); the byte tokenizer needs none.
    """
    source = source_for(cfg)
    if not source.cached:  # generated in memory (a synthetic task): nothing to cache
        return source.token_data(tok)
    key = {
        "format": FORMAT_VERSION,
        "corpus": source.fingerprint(),
        "tokenizer": tok.identity,
        "val_fraction": cfg.val_fraction,
        "max_docs": cfg.max_docs,
    }
    root = Path(cfg.cache_dir).expanduser() / "tokens"
    final = root / digest(key, 12)
    if (final / "meta.json").is_file():
        return _open_cache(final)
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root)
    tmp = root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        stats = _tokenize_into(tmp, cfg, tok, workers, progress)
        if stats["train"]["tokens"] == 0:
            n = stats["val"]["docs"]
            raise ValueError(
                f"data.source={cfg.source!r}: no training documents "
                + (f"({n} read, all in the validation split)" if n else
                   "(no text found: binary files are skipped)")
            )  # fmt: skip
        meta = {
            **stats,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
            "source": cfg.source,
            "key": key,
            "seconds": round(time.perf_counter() - t0, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same key first; its files are equivalent.
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _open_cache(final)


# ---------------------------------------------------------------- batches


def batch_at(
    tokens: np.ndarray,
    seed: int,
    step: int,
    batch_size: int,
    seq_len: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """int32 [batch_size // process_count, seq_len + 1]: this host's rows of step's batch.

    Window starts are uniform over the stream and a pure function of (seed, step); every
    host draws the same global batch and keeps its contiguous block of rows.
    """
    n_starts = len(tokens) - seq_len  # starts 0 .. len - (seq_len + 1)
    if seq_len < 1 or n_starts < 1:
        raise ValueError(
            f"a split of {len(tokens)} tokens holds no window of seq_len+1={seq_len + 1} tokens"
        )
    if seed < 0 or step < 0:
        raise ValueError(f"seed={seed}, step={step}: must be >= 0")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} not divisible by {process_count} processes")
    rows = _aligned_rows(tokens, seq_len)
    if rows is not None:  # whole examples: draw example indices instead of window starts
        picks = np.random.default_rng([seed, step]).integers(0, len(rows), size=batch_size)
        per = batch_size // process_count
        return rows[picks[process_index * per : (process_index + 1) * per]].astype(np.int32)
    starts = np.random.default_rng([seed, step]).integers(0, n_starts, size=batch_size)
    per = batch_size // process_count
    mine = starts[process_index * per : (process_index + 1) * per]
    # np.asarray drops the memmap subclass so the gather returns a plain array.
    return np.asarray(tokens)[mine[:, None] + np.arange(seq_len + 1)].astype(np.int32)


def val_windows(tokens: np.ndarray, n_windows: int, seq_len: int) -> np.ndarray:
    """int32 [n_windows, seq_len + 1]: fixed, non-overlapping windows spread evenly over
    `tokens`, the first at its start and the last at its end."""
    width = seq_len + 1
    if n_windows < 1 or seq_len < 1:
        raise ValueError(f"n_windows={n_windows}, seq_len={seq_len}: must be >= 1")
    rows = _aligned_rows(tokens, seq_len)
    if rows is not None:  # the first n examples (their order is already random)
        if len(rows) < n_windows:
            raise ValueError(
                f"validation split has {len(rows)} examples, fewer than train.eval_windows="
                f"{n_windows}; lower it or raise data.task_val_examples"
            )
        return rows[:n_windows].astype(np.int32)
    if len(tokens) < n_windows * width:
        raise ValueError(
            f"validation split has {len(tokens)} tokens, fewer than {n_windows} windows of "
            f"{width}; lower train.eval_windows or train.seq_len, or raise data.val_fraction"
        )
    # Gaps of (len - width) / (n - 1) >= width, so windows never overlap.
    starts = np.arange(n_windows) * (len(tokens) - width) // max(n_windows - 1, 1)
    return np.asarray(tokens)[starts[:, None] + np.arange(width)].astype(np.int32)


__all__ = [
    "AlignedExamples",
    "TokenData",
    "batch_at",
    "corpus_fingerprint",
    "is_val",
    "iter_documents",
    "prepare_data",
    "val_windows",
]
