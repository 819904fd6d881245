"""Synthetic tasks as data sources: `data.source: "task:sort"` and `"task:add"`.

The tasks' definitions, symbol tokenizer and example generation (numpy only; `lm.data.sources`
resolves a "task:" source to them). `lm.inference.task_eval` re-exports all of it and adds
`evaluate`, which needs a model.

Each task is a tiny formal language whose examples are generated, not read:
  sort  BOS x1 .. xn y1 .. yn EOS        x: n letters of {A, B, C, ...}, y: x sorted
  add   BOS a + b = c EOS PAD ..          a, b: min..max-digit numbers, c = a + b (digits
                                          least-significant first when data.task_reverse;
                                          with data.task_zero_pad, a and b written with
                                          max digits and c with one more, leading zeros)

Everything here is a pure function of the config and an example index: example i is row
i % BLOCK of a block drawn from `np.random.default_rng([tag, block])`. The held-out split is
chosen by a hash of the example's *input* (the letters, or the pair a, b), so a held-out input
never appears in training, whatever the answer. Examples are stored flat, each padded to one
fixed width, as an `AlignedExamples` array: `data.batch_at` then draws whole examples (row
starts at multiples of the width) instead of arbitrary windows, so position 0 is always BOS and
the learned position embeddings line up with generation from a prompt.

The tokenizer is fixed by the task (`SymbolTokenizer`): one id per symbol, then pad, bos, eos.
It is saved in the run directory as `tokenizer.json`, so `lm sample` / `lm inspect` work on
task runs like any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lm.data.corpus import AlignedExamples, TokenData

if TYPE_CHECKING:
    from lm.config import DataConfig

TASKS = ("sort", "add")
PREFIX = "task:"
BLOCK = 4096  # examples per random block (generation is vectorised per block)
_TAGS = {"sort": 0x5047, "add": 0xADD}  # keep the two tasks' random streams apart
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def task_name(source: str) -> str | None:
    """ "sort" for "task:sort"; None for a source that is not a task."""
    return source[len(PREFIX) :] if source.startswith(PREFIX) else None


# ---------------------------------------------------------------- tokenizer


class SymbolTokenizer:
    """One id per symbol (single characters), then pad, bos, eos.

    `encode` ignores whitespace, so "C B A" and "CBA" are the same three tokens. `decode`
    writes each symbol after `sep` (" " for sort: " A B B"), so a decoded continuation
    printed after its prompt reads as one sequence."""

    def __init__(self, symbols: Sequence[str], sep: str = ""):
        symbols = list(symbols)
        if len(set(symbols)) != len(symbols) or any(len(s) != 1 or s.isspace() for s in symbols):
            raise ValueError(f"symbols {symbols!r}: need distinct, single, non-space characters")
        self.symbols, self.sep = symbols, sep
        self._index = {s: i for i, s in enumerate(symbols)}
        n = len(symbols)
        self.pad_id, self.bos_id, self.eos_id = n, n + 1, n + 2
        self.vocab_size = n + 3

    @property
    def spec(self) -> dict:
        return {"kind": "symbols", "symbols": "".join(self.symbols), "sep": self.sep}

    @classmethod
    def from_spec(cls, spec: dict) -> SymbolTokenizer:
        return cls(list(spec["symbols"]), spec.get("sep", ""))

    @property
    def identity(self) -> str:
        return "symbols-" + json.dumps(self.spec, sort_keys=True)

    def encode(self, text: str) -> list[int]:
        out = []
        for ch in text:
            if ch.isspace():
                continue
            if ch not in self._index:
                raise ValueError(
                    f"{ch!r} is not a symbol of this task (symbols: {''.join(self.symbols)})"
                )
            out.append(self._index[ch])
        return out

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None):
        return [np.asarray(self.encode(t), np.int32) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in (int(x) for x in ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"token id {i} out of range for this task (0..{self.vocab_size - 1})"
                )
            if i < len(self.symbols):
                out.append(self.sep + self.symbols[i])
        return "".join(out)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        names = {self.pad_id: "<pad>", self.bos_id: "<s>", self.eos_id: "</s>"}
        out = []
        for i in (int(x) for x in ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"token id {i} out of range for this task (0..{self.vocab_size - 1})"
                )
            out.append(self.symbols[i] if i < len(self.symbols) else names[i])
        return out

    def token_bytes(self) -> np.ndarray:
        # "bits per byte" on a task counts one byte per symbol written (separators aside)
        tb = np.zeros(self.vocab_size, np.int64)
        tb[: len(self.symbols)] = 1
        return tb

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SymbolTokenizer) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.identity)

    def __repr__(self) -> str:
        return f"SymbolTokenizer({''.join(self.symbols)!r}, sep={self.sep!r})"


def tokenizer_for(cfg: DataConfig) -> SymbolTokenizer:
    name = task_name(cfg.source)
    if name == "sort":
        return SymbolTokenizer(_LETTERS[: cfg.task_symbols], sep=" ")
    if name == "add":
        return SymbolTokenizer(list("0123456789+="), sep="")
    raise ValueError(f"data.source={cfg.source!r}: unknown task (known: {', '.join(TASKS)})")


# ---------------------------------------------------------------- config checks


def check(cfg: DataConfig) -> None:
    """One-line ValueError naming the key for a bad task setting (no compute)."""
    name = task_name(cfg.source)
    if name not in TASKS:
        raise ValueError(f"data.source={cfg.source!r}: unknown task (known: task:sort, task:add)")
    if cfg.tokenizer != "byte":
        raise ValueError(
            f"data.tokenizer={cfg.tokenizer!r}: task sources bring their own symbol tokenizer; "
            "leave data.tokenizer at byte"
        )
    if name == "sort":
        if not 2 <= cfg.task_symbols <= len(_LETTERS):
            raise ValueError(f"data.task_symbols={cfg.task_symbols}: must be in [2, 26]")
        if cfg.task_length < 1:
            raise ValueError(f"data.task_length={cfg.task_length}: must be >= 1")
    else:
        if not 1 <= cfg.task_min_digits <= cfg.task_max_digits:
            raise ValueError(
                f"data.task_min_digits={cfg.task_min_digits}: must be in "
                f"[1, data.task_max_digits={cfg.task_max_digits}]"
            )
        if cfg.task_max_digits > 9:
            raise ValueError(f"data.task_max_digits={cfg.task_max_digits}: must be <= 9")
    if cfg.task_train_examples < 1:
        raise ValueError(f"data.task_train_examples={cfg.task_train_examples}: must be >= 1")
    if cfg.task_val_examples < 1:
        raise ValueError(f"data.task_val_examples={cfg.task_val_examples}: must be >= 1")


def example_width(cfg: DataConfig) -> int:
    """Tokens per example, BOS and EOS included; train.seq_len must be this minus one."""
    if task_name(cfg.source) == "sort":
        return 2 * cfg.task_length + 2
    d = cfg.task_max_digits
    return 1 + d + 1 + d + 1 + (d + 1) + 1


def prompt_length(cfg: DataConfig) -> int | None:
    """Tokens before the answer, BOS included, when fixed (sort); None when it varies (add)."""
    return cfg.task_length + 1 if task_name(cfg.source) == "sort" else None


# ---------------------------------------------------------------- generation


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective, well-mixed hash of uint64 keys."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def is_heldout(keys: np.ndarray, val_fraction: float, tag: int) -> np.ndarray:
    """Whether an input (by its integer key) belongs to the held-out split: a pure function
    of the key, so train and held-out inputs can never overlap."""
    h = _mix64(np.asarray(keys, np.uint64) ^ _mix64(np.uint64(tag)))
    return h < np.uint64(int(val_fraction * 2.0**64))


def _sort_block(cfg: DataConfig, block: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([_TAGS["sort"], block])
    x_NL = rng.integers(0, cfg.task_symbols, size=(BLOCK, cfg.task_length))
    keys = (x_NL * cfg.task_symbols ** np.arange(cfg.task_length)).sum(1)  # base-k number
    return x_NL, keys


def sort_examples(cfg: DataConfig, x_NL: np.ndarray) -> np.ndarray:
    """[N, width] rows BOS x sorted(x) EOS for inputs x_NL [N, L]."""
    tok = tokenizer_for(cfg)
    N = len(x_NL)
    bos = np.full((N, 1), tok.bos_id)
    eos = np.full((N, 1), tok.eos_id)
    return np.concatenate([bos, x_NL, np.sort(x_NL, axis=1), eos], axis=1).astype(np.int32)


def _add_block(cfg: DataConfig, block: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([_TAGS["add"], block])
    lo, hi = cfg.task_min_digits, cfg.task_max_digits
    digits_N2 = rng.integers(lo, hi + 1, size=(BLOCK, 2))
    low = np.where(digits_N2 == 1, 0, 10 ** (digits_N2 - 1))
    ab_N2 = low + (rng.random((BLOCK, 2)) * (10**digits_N2 - low)).astype(np.int64)
    keys = ab_N2[:, 0] * 10**hi + ab_N2[:, 1]
    return ab_N2, keys


def _digits(n: int, width: int = 0) -> list[int]:
    return [int(c) for c in str(int(n)).zfill(width)]


def add_example(cfg: DataConfig, a: int, b: int) -> list[int]:
    """BOS a + b = c EOS, padded to the example width."""
    tok = tokenizer_for(cfg)
    plus, eq = 10, 11
    w = cfg.task_max_digits if cfg.task_zero_pad else 0
    da, db, c = _digits(a, w), _digits(b, w), _digits(a + b, w + 1 if w else 0)
    if cfg.task_reverse:
        c = c[::-1]
    row = [tok.bos_id, *da, plus, *db, eq, *c, tok.eos_id]
    return row + [tok.pad_id] * (example_width(cfg) - len(row))


def _digit_counts(n_N: np.ndarray) -> np.ndarray:
    n_N = np.asarray(n_N, np.int64)
    return np.maximum(1, np.floor(np.log10(np.maximum(n_N, 1))).astype(np.int64) + 1)


def add_examples(cfg: DataConfig, ab_N2: np.ndarray) -> np.ndarray:
    """[N, width] rows of `add_example`, built column-wise in numpy (200k rows in ~0.1 s)."""
    tok = tokenizer_for(cfg)
    ab_N2 = np.asarray(ab_N2, np.int64).reshape(-1, 2)
    N, W = len(ab_N2), example_width(cfg)
    a_N, b_N = ab_N2[:, 0], ab_N2[:, 1]
    c_N = a_N + b_N
    la, lb, lc = _digit_counts(a_N), _digit_counts(b_N), _digit_counts(c_N)
    if cfg.task_zero_pad:
        D = cfg.task_max_digits
        la, lb, lc = np.full(N, D), np.full(N, D), np.full(N, D + 1)
    out = np.full((N, W), tok.pad_id, np.int32)
    rows = np.arange(N)
    out[:, 0] = tok.bos_id
    j = np.arange(cfg.task_max_digits + 1)

    def put(n_N, len_N, start_N, reverse: bool):
        power = j[None] if reverse else len_N[:, None] - 1 - j[None]
        d = (n_N[:, None] // 10 ** np.maximum(power, 0)) % 10
        ok = j[None] < len_N[:, None]
        r, col = np.nonzero(ok)
        out[rows[r], start_N[r] + col] = d[r, col]

    put(a_N, la, np.ones(N, np.int64), False)
    out[rows, 1 + la] = 10  # '+'
    put(b_N, lb, 2 + la, False)
    out[rows, 2 + la + lb] = 11  # '='
    put(c_N, lc, 3 + la + lb, cfg.task_reverse)
    out[rows, 3 + la + lb + lc] = tok.eos_id
    return out


def inputs(cfg: DataConfig, split: str, n: int) -> np.ndarray:
    """The first n inputs of a split, in index order: [n, L] letters (sort) or [n, 2] (add).

    Repeats are allowed (3^6 = 729 sort inputs in all), as in minGPT's sort demo."""
    name = task_name(cfg.source)
    make = _sort_block if name == "sort" else _add_block
    want_val = split == "val"
    got, total, block = [], 0, 0
    while total < n:
        x, keys = make(cfg, block)
        keep = is_heldout(keys, cfg.val_fraction, _TAGS[name]) == want_val
        got.append(x[keep])
        total += int(keep.sum())
        block += 1
        if block > 10_000 and total == 0:
            raise ValueError(f"data.val_fraction={cfg.val_fraction}: the {split} split is empty")
    return np.concatenate(got)[:n]


def distinct_sort_inputs(cfg: DataConfig, split: str) -> np.ndarray:
    """Every possible sort input of a split, once each: [n, L] (3^6 = 729 in all)."""
    import itertools

    k, L = cfg.task_symbols, cfg.task_length
    every = np.asarray(list(itertools.product(range(k), repeat=L)), np.int64).reshape(-1, L)
    held = is_heldout((every * k ** np.arange(L)).sum(1), cfg.val_fraction, _TAGS["sort"])
    return every[held == (split == "val")]


def examples(cfg: DataConfig, x: np.ndarray) -> np.ndarray:
    """Token rows [N, width] for task inputs as returned by `inputs`."""
    if task_name(cfg.source) == "sort":
        return sort_examples(cfg, x)
    return add_examples(cfg, x)


def answer(cfg: DataConfig, x_row: np.ndarray) -> list[int]:
    """The answer tokens (EOS included) that should follow the prompt for one input."""
    tok = tokenizer_for(cfg)
    if task_name(cfg.source) == "sort":
        return [*np.sort(x_row).tolist(), tok.eos_id]
    row = add_example(cfg, int(x_row[0]), int(x_row[1]))
    start = row.index(11) + 1
    return row[start : row.index(tok.eos_id) + 1]


def prompt(cfg: DataConfig, x_row: np.ndarray) -> list[int]:
    """BOS and the input tokens, up to the point where the answer starts."""
    tok = tokenizer_for(cfg)
    if task_name(cfg.source) == "sort":
        return [tok.bos_id, *np.asarray(x_row).tolist()]
    row = add_example(cfg, int(x_row[0]), int(x_row[1]))
    return row[: row.index(11) + 1]


def token_data(cfg: DataConfig, tok) -> TokenData:
    """Both splits as `AlignedExamples` (what `data.prepare_data` returns for tasks)."""
    check(cfg)
    if tok != tokenizer_for(cfg):
        raise ValueError(f"tokenizer {tok!r} is not {cfg.source}'s {tokenizer_for(cfg)!r}")
    width = example_width(cfg)
    splits = {}
    for split, n in (("train", cfg.task_train_examples), ("val", cfg.task_val_examples)):
        rows = examples(cfg, inputs(cfg, split, n))
        splits[split] = AlignedExamples(rows.reshape(-1), width)
    nbytes = {s: int((a < len(tok.symbols)).sum()) for s, a in splits.items()}
    return TokenData(
        train=splits["train"],
        val=splits["val"],
        train_bytes=nbytes["train"],
        val_bytes=nbytes["val"],
        vocab_size=tok.vocab_size,
        path=Path(cfg.cache_dir).expanduser(),
    )


__all__ = [
    "BLOCK",
    "PREFIX",
    "TASKS",
    "SymbolTokenizer",
    "add_example",
    "add_examples",
    "answer",
    "check",
    "distinct_sort_inputs",
    "example_width",
    "examples",
    "inputs",
    "is_heldout",
    "prompt",
    "prompt_length",
    "sort_examples",
    "task_name",
    "token_data",
    "tokenizer_for",
]
