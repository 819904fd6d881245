"""Corpora as documents, documents as one token stream per split, batches as pure functions.

A source yields (doc_id, text) documents. Each document goes to the train or validation
split by a hash of its id, so the split never depends on reading order or on which other
documents exist. `prepare_data` tokenizes the corpus once into two flat token files (each
document framed as BOS ... EOS), cached under cfg.cache_dir and memory-mapped afterwards.
`batch_at` draws a batch as a pure function of (seed, step): resuming or adding hosts needs
no iterator state, and every host agrees on the global batch.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm.config import DataConfig
from lm.tokenizer import Tokenizer

FORMAT_VERSION = 2  # bump when the token cache layout changes
_READER_VERSION = 1  # bump when how a source becomes documents changes; keys every cache
_FILE_CHUNK_CHARS = 8192  # a single-file source is cut into documents of about this size
_SNIFF_BYTES = 8192  # a NUL byte this early marks a binary file, skipped in directories
_BATCH_CHARS = 4_000_000  # text tokenized per call: bounds memory, amortizes thread start-up
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


# ---------------------------------------------------------------- sources


def _stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        files.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return root, sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _is_glob(source: str) -> bool:
    return any(c in source for c in "*?[")


def _walk(directory: Path) -> list[Path]:
    """Files under `directory`, skipping hidden entries (.git, .venv) and caches."""
    out = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS]
        out.extend(Path(dirpath, f) for f in filenames if not f.startswith("."))
    return out


def _local_files(source: str) -> tuple[Path, list[Path]]:
    """(root the doc ids are relative to, files in a fixed order) for a path or glob."""
    src = os.path.expanduser(source)
    if _is_glob(source):
        parts = Path(src).parts
        fixed = []
        for part in parts:
            if _is_glob(part):
                break
            fixed.append(part)
        root = Path(*fixed) if fixed else Path(".")
        files: list[Path] = []
        for m in globlib.glob(src, recursive=True):
            p = Path(m)
            files.extend(_walk(p) if p.is_dir() else [p] if p.is_file() else [])
        files = list(dict.fromkeys(files))
    elif os.path.isdir(src):
        root, files = Path(src), _walk(Path(src))
    elif os.path.isfile(src):
        root, files = Path(src).parent, [Path(src)]
    else:
        raise ValueError(f"data.source={source!r}: no such file or directory")
    if not files:
        raise ValueError(f"data.source={source!r}: matches no file")
    return root, sorted(files, key=lambda p: os.path.relpath(p, root))


def _file_documents(root: Path, files: list[Path], sniff: bool) -> Iterator[tuple[str, str]]:
    for p in files:
        data = p.read_bytes()
        if sniff and b"\0" in data[:_SNIFF_BYTES]:
            continue
        rel = Path(os.path.relpath(p, root)).as_posix()
        text = data.decode("utf-8", errors="replace")
        if len(files) > 1:
            yield rel, text
            continue
        # A lone file (say a novel) as one document would land wholly in one split, so it
        # is cut at line ends into pieces that are split like documents.
        buf: list[str] = []
        size = k = 0
        for line in text.splitlines(keepends=True):
            buf.append(line)
            size += len(line)
            if size >= _FILE_CHUNK_CHARS:
                yield f"{rel}#{k}", "".join(buf)
                buf, size, k = [], 0, k + 1
        if buf:
            yield f"{rel}#{k}", "".join(buf)


def _parse_hf(source: str) -> tuple[str, str | None]:
    name, _, config = source[len("hf:") :].partition(":")
    if not name:
        raise ValueError(f"data.source={source!r}: expected hf:NAME or hf:NAME:CONFIG")
    return name, config or None


def _hf_documents(cfg: DataConfig) -> Iterator[tuple[str, str]]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"data.source={cfg.source!r} needs the Hugging Face `datasets` package: "
            "pip install 'lm[hf]'"
        ) from None
    name, config = _parse_hf(cfg.source)
    kwargs = {}
    if cfg.hf_data_files:
        kwargs["data_files"] = os.path.expanduser(cfg.hf_data_files)
    # Streaming reads rows as they arrive: nothing is downloaded or converted up front, and
    # max_docs stops the read early. Our own hash split replaces the dataset's splits.
    ds = datasets.load_dataset(name, config, split="train", streaming=True, **kwargs)
    for i, row in enumerate(ds):
        if cfg.text_field not in row:
            raise ValueError(
                f"data.text_field={cfg.text_field!r}: not a column of {cfg.source} "
                f"(columns: {', '.join(map(str, row))})"
            )
        text = row[cfg.text_field]
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(
                f"data.text_field={cfg.text_field!r}: holds {type(text).__name__}, not text"
            )
        yield str(i), text


def iter_documents(cfg: DataConfig) -> Iterator[tuple[str, str]]:
    """(doc_id, text) for every document of cfg.source, in a fixed order, at most max_docs.

    "stdlib": the interpreter's standard library .py files (site-packages excluded), ids
    relative to its directory. A directory or glob: its text files (hidden entries and
    files with NUL bytes skipped), ids relative to the directory. A single file: cut into
    ~8 KiB pieces at line ends, ids "name#k". "hf:NAME[:CONFIG]": the dataset's train split
    streamed, cfg.text_field of each row, ids the row numbers. Text is decoded as UTF-8,
    invalid bytes replaced.
    """
    src = cfg.source
    if src == "stdlib":
        root, files = _stdlib_files()
        docs = _file_documents(root, files, sniff=False)
    elif src.startswith("hf:"):
        docs = _hf_documents(cfg)
    else:
        root, files = _local_files(src)
        docs = _file_documents(root, files, sniff=True)
    for n, doc in enumerate(docs):
        if cfg.max_docs is not None and n >= cfg.max_docs:
            return
        yield doc


def _digest(obj: object, size: int = 16) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=size).hexdigest()


def corpus_fingerprint(cfg: DataConfig) -> str:
    """A hex digest that changes when the documents could; cheap (no file is read).

    Files: resolved paths, sizes and mtimes. stdlib: Python version, stdlib path, relative
    paths and sizes (no mtimes, so hosts with the same install agree). hf: the name, config,
    data files (with sizes and mtimes of those that are local) and text field; a remote
    dataset that changes under the same name is not noticed.
    """
    src = cfg.source
    desc: dict[str, object] = {"reader": _READER_VERSION}
    if src == "stdlib":
        root, files = _stdlib_files()
        desc |= {
            "kind": "stdlib",
            "python": sys.version,
            "root": str(root),
            "files": [[p.relative_to(root).as_posix(), p.stat().st_size] for p in files],
        }
    elif src.startswith("task:"):  # generated: the task's settings are the corpus
        task = {k: v for k, v in dataclasses.asdict(cfg).items() if k.startswith("task_")}
        desc |= {"kind": "task", "source": src, "val_fraction": cfg.val_fraction, **task}
    elif src.startswith("hf:"):
        name, config = _parse_hf(src)
        local = []
        if cfg.hf_data_files:
            for m in sorted(globlib.glob(os.path.expanduser(cfg.hf_data_files), recursive=True)):
                st = os.stat(m)
                local.append([os.path.abspath(m), st.st_size, st.st_mtime_ns])
        desc |= {
            "kind": "hf",
            "name": name,
            "config": config,
            "data_files": cfg.hf_data_files,
            "local": local,
            "text_field": cfg.text_field,
        }
    else:
        _, files = _local_files(src)
        stats = []
        for p in files:
            st = p.stat()
            stats.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        desc |= {"kind": "files", "files": stats}
    return _digest(desc)


# ---------------------------------------------------------------- split


def _doc_hash(doc_id: str) -> int:
    # blake2b, not hash(): Python salts str hashes per process.
    raw = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "big")


def is_val(doc_id: str, val_fraction: float) -> bool:
    """Whether the document belongs to the validation split: a pure function of its id."""
    return _doc_hash(doc_id) < val_fraction * 2.0**64


# ---------------------------------------------------------------- tokenized corpus


class AlignedExamples(np.ndarray):
    """A split made of fixed-width examples (synthetic tasks, `lm.tasks`), stored flat.

    It stays 1-D so that code written for token streams (lengths, unigram counts) works on it
    unchanged; `batch_at` and `val_windows` see `example_width` and return whole examples,
    each starting at a multiple of the width, instead of windows at arbitrary offsets."""

    def __new__(cls, flat: np.ndarray, example_width: int):
        obj = np.asarray(flat).reshape(-1).view(cls)
        if example_width < 2 or len(obj) % example_width:
            raise ValueError(f"{len(obj)} tokens are not whole examples of {example_width}")
        obj.example_width = int(example_width)
        return obj

    def __array_finalize__(self, obj):
        self.example_width = getattr(obj, "example_width", None)


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


@dataclass(frozen=True)
class TokenData:
    """A tokenized corpus: each split is every document's tokens framed as BOS ... EOS.

    BOS starts each document so that generation from an empty prompt (BOS alone) begins
    where documents begin."""

    train: np.ndarray  # 1-D memmap, uint16 (uint32 past 65536 ids)
    val: np.ndarray
    train_bytes: int  # UTF-8 bytes of the text behind each split, for bits per byte
    val_bytes: int
    vocab_size: int
    path: Path  # the cache directory; meta.json there describes it


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
    if cfg.source.startswith("task:"):  # generated in memory, nothing to cache
        from lm import tasks

        return tasks.token_data(cfg, tok)
    key = {
        "format": FORMAT_VERSION,
        "corpus": corpus_fingerprint(cfg),
        "tokenizer": tok.identity,
        "val_fraction": cfg.val_fraction,
        "max_docs": cfg.max_docs,
    }
    root = Path(cfg.cache_dir).expanduser() / "tokens"
    final = root / _digest(key, 12)
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
