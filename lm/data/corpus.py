"""Reading text corpora as documents, the hash split, and the arrays a tokenized corpus is.

The pieces every data source shares, in a module that imports no other `lm` module, so the source
interface (`lm.data.sources`), the token cache (`lm.data.dataset`), the tokenizers
(`lm.data.tokenizer`) and the synthetic tasks (`lm.data.tasks`) can all use them without importing
one another:

- documents of local files, globs and directories (`local_files`, `file_documents`), of the
  interpreter's standard library (`stdlib_files`), and of a Hugging Face dataset
  (`hf_documents`), each as (doc_id, text);
- the train/validation split of a document, a pure function of its id (`is_val`);
- `TokenData`, both splits of a tokenized corpus, and `AlignedExamples`, a split made of
  fixed-width examples.

Which of these readers a `data.source` uses is for `lm.data.sources` to say.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lm.config import DataConfig

READER_VERSION = 1  # bump when how a source becomes documents changes; keys every cache
FILE_CHUNK_CHARS = 8192  # a single-file source is cut into documents of about this size
SNIFF_BYTES = 8192  # a NUL byte this early marks a binary file, skipped in directories
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def digest(obj: object, size: int = 16) -> str:
    """A hex digest of a JSON-able object (keys sorted): what caches are keyed by."""
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=size).hexdigest()


# ---------------------------------------------------------------- files


def stdlib_files() -> tuple[Path, list[Path]]:
    """The interpreter's standard library .py files (site-packages excluded), in a fixed
    order, and the directory their ids are relative to."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        files.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return root, sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_glob(source: str) -> bool:
    return any(c in source for c in "*?[")


def _walk(directory: Path) -> list[Path]:
    """Files under `directory`, skipping hidden entries (.git, .venv) and caches."""
    out = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS]
        out.extend(Path(dirpath, f) for f in filenames if not f.startswith("."))
    return out


def local_files(source: str) -> tuple[Path, list[Path]]:
    """(root the doc ids are relative to, files in a fixed order) for a path or glob."""
    src = os.path.expanduser(source)
    if is_glob(source):
        parts = Path(src).parts
        fixed = []
        for part in parts:
            if is_glob(part):
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


def file_documents(root: Path, files: list[Path], sniff: bool) -> Iterator[tuple[str, str]]:
    """(doc_id, text) per file, ids relative to `root`; a lone file is cut into pieces of
    about FILE_CHUNK_CHARS at line ends, ids "name#k". `sniff`: skip files with a NUL byte
    early on (binary). Text is decoded as UTF-8, invalid bytes replaced."""
    for p in files:
        data = p.read_bytes()
        if sniff and b"\0" in data[:SNIFF_BYTES]:
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
            if size >= FILE_CHUNK_CHARS:
                yield f"{rel}#{k}", "".join(buf)
                buf, size, k = [], 0, k + 1
        if buf:
            yield f"{rel}#{k}", "".join(buf)


# ---------------------------------------------------------------- Hugging Face datasets


def parse_hf(source: str) -> tuple[str, str | None]:
    """("NAME", "CONFIG" or None) for "hf:NAME[:CONFIG]"."""
    name, _, config = source[len("hf:") :].partition(":")
    if not name:
        raise ValueError(f"data.source={source!r}: expected hf:NAME or hf:NAME:CONFIG")
    return name, config or None


def hf_documents(cfg: DataConfig) -> Iterator[tuple[str, str]]:
    """(row number, cfg.text_field of the row) for the dataset's train split, streamed."""
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"data.source={cfg.source!r} needs the Hugging Face `datasets` package: "
            "pip install 'lm[hf]'"
        ) from None
    name, config = parse_hf(cfg.source)
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


# ---------------------------------------------------------------- split


def doc_hash(doc_id: str) -> int:
    """A 64-bit hash of a document id, the same in every process."""
    # blake2b, not hash(): Python salts str hashes per process.
    raw = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "big")


def is_val(doc_id: str, val_fraction: float) -> bool:
    """Whether the document belongs to the validation split: a pure function of its id."""
    return doc_hash(doc_id) < val_fraction * 2.0**64


# ---------------------------------------------------------------- tokenized corpus


class AlignedExamples(np.ndarray):
    """A split made of fixed-width examples (synthetic tasks, lm.data.tasks), stored flat.

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


__all__ = [
    "READER_VERSION",
    "AlignedExamples",
    "TokenData",
    "digest",
    "doc_hash",
    "file_documents",
    "hf_documents",
    "is_val",
    "local_files",
    "parse_hf",
    "stdlib_files",
]
