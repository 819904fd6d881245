"""Tokenizers: raw UTF-8 bytes, or a sentencepiece BPE/unigram model trained on the corpus.

Both map any Python string (without lone surrogates, which have no UTF-8 form and are
rejected with a ValueError) to ids and back exactly, and report how many UTF-8 bytes each id
stands for, so that losses convert to bits per byte, which compares across tokenizers.

A sentencepiece model is held as its serialized proto bytes: that is what is saved in a run
directory, hashed to key caches, and pickled to other processes. Nothing here pickles a
tokenizer to disk.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

from lm.data import sources
from lm.data.corpus import doc_hash, is_val
from lm.data.tasks import SymbolTokenizer
from lm.util.files import atomic_write

if TYPE_CHECKING:
    from lm.config import DataConfig

SPACE = "\u2581"  # sentencepiece's whitespace meta symbol '▁'
SP_FILE = "tokenizer.model"
BYTE_FILE = "tokenizer.json"

# Special ids of the models trained here; byte pieces <0x00>..<0xFF> follow as ids 4..259.
SP_PAD, SP_UNK, SP_BOS, SP_EOS = 0, 1, 2, 3

# The trainer skips longer sentences; training text is cut into chunks of at most this many
# characters (4 bytes each at most), so nothing is skipped.
_TRAIN_CHUNK_CHARS = 2048
_MAX_SENTENCE_BYTES = 4 * _TRAIN_CHUNK_CHARS


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    @property
    def identity(self) -> str:
        """A short string that changes whenever the id mapping could; it keys token caches."""
        ...

    def encode(self, text: str) -> list[int]:
        """Ids for `text`, without BOS or EOS."""
        ...

    def encode_batch(
        self, texts: Sequence[str], num_threads: int | None = None
    ) -> list[np.ndarray]:
        """`encode` over many texts, in parallel where the tokenizer can; int arrays."""
        ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """A readable piece per id, for showing how text was split."""
        ...

    def token_bytes(self) -> np.ndarray:
        """int64 [vocab_size]: UTF-8 bytes each id contributes when decoded; 0 for specials."""
        ...


def _ids(ids: Iterable[int]) -> list[int]:
    return [int(i) for i in (ids.tolist() if isinstance(ids, np.ndarray) else ids)]


# ---------------------------------------------------------------- bytes


class ByteTokenizer:
    """Ids 0..255 are the UTF-8 bytes of the text; then pad, bos, eos. Needs no training."""

    vocab_size = 259
    pad_id = 256
    bos_id = 257
    eos_id = 258
    identity = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(
        self, texts: Sequence[str], num_threads: int | None = None
    ) -> list[np.ndarray]:
        # A view of the encoded bytes: no per-byte Python work, so no threads are needed.
        return [np.frombuffer(t.encode("utf-8"), np.uint8) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        ids = _ids(ids)
        if any(not 0 <= i < self.vocab_size for i in ids):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError(f"token id {bad} out of range for the byte tokenizer (0..258)")
        # A sampled id sequence need not be valid UTF-8; replacement keeps decode total and
        # deterministic, and never triggers for ids that came from encode.
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def pieces(self, ids: Iterable[int]) -> list[str]:
        specials = {self.pad_id: "<pad>", self.bos_id: "<s>", self.eos_id: "</s>"}
        out = []
        for i in _ids(ids):
            if i in specials:
                out.append(specials[i])
            elif i == 0x20:
                out.append(SPACE)  # as sentencepiece shows a space, so demos read alike
            elif 0x21 <= i < 0x7F:
                out.append(chr(i))
            elif 0 <= i < 256:
                out.append(f"<0x{i:02X}>")
            else:
                raise ValueError(f"token id {i} out of range for the byte tokenizer (0..258)")
        return out

    def token_bytes(self) -> np.ndarray:
        tb = np.zeros(self.vocab_size, np.int64)
        tb[:256] = 1
        return tb

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash(self.identity)

    def __repr__(self) -> str:
        return "ByteTokenizer()"


# ---------------------------------------------------------------- sentencepiece


class SentencePieceTokenizer:
    """A sentencepiece model, held as serialized proto bytes.

    Exact round trips rest on the training options in `train_sentencepiece` (identity
    normalization, no dummy prefix, whitespace kept, byte fallback) plus one escape:
    sentencepiece writes ' ' as '▁' internally and turns every '▁' back into ' ' when
    decoding, so a literal '▁' in the text would come back as a space. `encode` therefore
    cuts the text at each literal '▁', encodes the parts separately, and emits that character
    as its three UTF-8 byte pieces <0xE2><0x96><0x81>. Byte pieces decode to raw bytes, which
    sentencepiece never reinterprets, so they come back as '▁'. No trained piece contains a
    literal '▁' either, because the trainer gets the text cut at it the same way.
    """

    def __init__(self, proto: bytes):
        import sentencepiece as spm

        try:
            sp = spm.SentencePieceProcessor(model_proto=bytes(proto))
        except Exception as e:  # sentencepiece raises RuntimeError with a multi-line status
            raise ValueError("not a valid sentencepiece model") from e
        self._proto = bytes(proto)
        self._sp = sp
        self.vocab_size = sp.get_piece_size()
        self.pad_id, self.bos_id, self.eos_id = sp.pad_id(), sp.bos_id(), sp.eos_id()
        if min(self.pad_id, self.bos_id, self.eos_id) < 0:
            raise ValueError("sentencepiece model lacks a pad, bos or eos id")
        byte_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        if not all(sp.is_byte(i) for i in byte_ids):
            raise ValueError("sentencepiece model was trained without byte_fallback")
        self._space_ids = np.array([byte_ids[b] for b in SPACE.encode("utf-8")], np.int32)
        probe = "  a\tb\n\n c  \u2581\u00e9"
        if self.decode(self.encode(probe)) != probe:
            raise ValueError(
                "sentencepiece model does not round-trip text exactly (train it with "
                "train_sentencepiece: identity normalization, no dummy prefix)"
            )

    @property
    def proto(self) -> bytes:
        return self._proto

    @property
    def processor(self):
        """The live SentencePieceProcessor, for reading its piece table (lm.data.pieces)."""
        return self._sp

    @property
    def identity(self) -> str:
        return "sp-" + hashlib.blake2b(self._proto, digest_size=8).hexdigest()

    def _raw_encode(self, parts: list[str], num_threads: int | None) -> list[np.ndarray]:
        try:
            return self._sp.encode_as_numpy(parts, num_threads=num_threads or 1)
        except (RuntimeError, TypeError):
            for p in parts:  # a lone surrogate: raise Python's own UnicodeEncodeError
                p.encode("utf-8")
            raise

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0].tolist()

    def encode_batch(
        self, texts: Sequence[str], num_threads: int | None = None
    ) -> list[np.ndarray]:
        parts, counts = [], []
        for t in texts:
            split = t.split(SPACE)
            parts.extend(split)
            counts.append(len(split))
        encoded = self._raw_encode(parts, num_threads)
        out, k = [], 0
        space = self._space_ids
        for n in counts:
            if n == 1:
                out.append(encoded[k])
            else:
                pieces = []
                for j in range(n):
                    if j:
                        pieces.append(space)
                    pieces.append(encoded[k + j])
                out.append(np.concatenate(pieces))
            k += n
        return out

    def decode(self, ids: Iterable[int]) -> str:
        ids = _ids(ids)
        if any(not 0 <= i < self.vocab_size for i in ids):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError(f"token id {bad} out of range for vocab_size {self.vocab_size}")
        return self._sp.decode(ids)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        out = []
        for i in _ids(ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} out of range for vocab_size {self.vocab_size}")
            out.append(self._sp.id_to_piece(i))
        return out

    def token_bytes(self) -> np.ndarray:
        sp = self._sp
        tb = np.zeros(self.vocab_size, np.int64)
        for i in range(self.vocab_size):
            if sp.is_byte(i):
                tb[i] = 1
            elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)):
                tb[i] = len(sp.id_to_piece(i).replace(SPACE, " ").encode("utf-8"))
        return tb

    # Pickle (for worker processes) as the proto bytes, never as a live processor.
    def __reduce__(self):
        return (SentencePieceTokenizer, (self._proto,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SentencePieceTokenizer) and other.proto == self._proto

    def __hash__(self) -> int:
        return hash(self.identity)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={self.vocab_size}, {self.identity})"


def _training_sentences(texts: Iterable[str]) -> Iterator[str]:
    """Documents as trainer sentences: runs of whole lines of at most _TRAIN_CHUNK_CHARS.

    Newlines stay inside the sentences, so the model learns pieces such as ':\\n'; a line
    longer than a chunk is cut; and the text is cut at literal '▁' (see SentencePieceTokenizer).
    """
    limit = _TRAIN_CHUNK_CHARS
    for text in texts:
        for part in text.split(SPACE):
            buf: list[str] = []
            size = 0
            for line in part.splitlines(keepends=True):
                while len(line) > limit:
                    if buf:
                        yield "".join(buf)
                        buf, size = [], 0
                    yield line[:limit]
                    line = line[limit:]
                if size + len(line) > limit and buf:
                    yield "".join(buf)
                    buf, size = [], 0
                buf.append(line)
                size += len(line)
            if buf:
                yield "".join(buf)


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_type: Literal["bpe", "unigram"] = "bpe",
    num_threads: int | None = None,
) -> SentencePieceTokenizer:
    """Train in memory (no files) on `texts`, which are whole documents of any length."""
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type={model_type!r}: must be 'bpe' or 'unigram'")
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_sentences(texts),
            model_writer=out,
            model_type=model_type,
            vocab_size=vocab_size,
            byte_fallback=True,  # every string is encodable: unseen characters become bytes
            normalization_rule_name="identity",  # no NFKC: text comes back byte for byte
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,  # indentation runs become single pieces
            # Without a '▁' piece (text without spaces: Japanese, Chinese) a space would fall
            # back to the bytes of '▁' and decode as '▁', not as a space.
            required_chars=SPACE,
            split_digits=True,
            character_coverage=0.9995,  # rarer characters fall back to bytes
            pad_id=SP_PAD,
            unk_id=SP_UNK,
            bos_id=SP_BOS,
            eos_id=SP_EOS,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            input_sentence_size=0,  # the caller already chose the sample
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        # keep sentencepiece's own sentence, not the source location and check before it
        why = (str(e).strip().splitlines() or [type(e).__name__])[-1].rpartition("] ")[2]
        raise ValueError(
            f"training a {model_type} tokenizer with vocab_size={vocab_size} failed: {why}"
        ) from None
    return SentencePieceTokenizer(_canonical(out.getvalue()))


def _canonical(proto: bytes) -> bytes:
    """The proto with the trainer's thread count, which sentencepiece records but which does
    not change a BPE model, fixed; so machines with different core counts save identical
    models with one identity. (Unigram scores do depend on it slightly, and still differ.)"""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:  # protobuf is missing: identities then merely over-distinguish
        return proto
    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(proto)
    m.trainer_spec.num_threads = 1
    return m.SerializeToString(deterministic=True)


# ---------------------------------------------------------------- imported (Hugging Face)


class HFTokenizer:
    """A tokenizer that came with a Hugging Face checkpoint (`lm import-hf`), kept as it was.

    backend "sentencepiece": the checkpoint's `tokenizer.model`, with the model's own
    normalization (Llama's dummy prefix, no pad piece): unlike `SentencePieceTokenizer` it is
    not required to round-trip every string exactly, since the weights were trained on its
    splits as they are. backend "tokenizers": the checkpoint's `tokenizer.json`, through the
    optional `tokenizers` package (pip install 'lm[convert]'). The special ids come from the
    checkpoint's config. Saved in a run directory as tokenizer.json
    {"kind": "hf", "backend", "bos_id", "eos_id", "pad_id", "data"}, where data is the
    tokenizer.json text or the base64 sentencepiece proto: one file, no pickle.
    """

    def __init__(self, backend: str, data: bytes | str, bos_id: int, eos_id: int, pad_id: int):
        if backend == "sentencepiece":
            import sentencepiece as spm

            self._data = bytes(data)
            try:
                self._sp = spm.SentencePieceProcessor(model_proto=self._data)
            except Exception as e:  # a multi-line RuntimeError status
                raise ValueError("not a valid sentencepiece model") from e
            self.vocab_size = self._sp.get_piece_size()
        elif backend == "tokenizers":
            try:
                from tokenizers import Tokenizer as HFTok
            except ImportError:
                raise ValueError(
                    "a tokenizer.json tokenizer needs the tokenizers package: "
                    "pip install 'lm[convert]'"
                ) from None
            self._data = data if isinstance(data, str) else bytes(data).decode("utf-8")
            try:
                self._tk = HFTok.from_str(self._data)
            except Exception as e:  # tokenizers raises its own Exception subclass
                raise ValueError(f"not a valid tokenizer.json ({str(e).splitlines()[0]})") from e
            self.vocab_size = self._tk.get_vocab_size(with_added_tokens=True)
        else:
            raise ValueError(f"backend={backend!r}: must be 'sentencepiece' or 'tokenizers'")
        self.backend = backend
        for name, i in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if not (isinstance(i, int) and 0 <= i < self.vocab_size):
                raise ValueError(f"{name}={i!r}: not an id of the {self.vocab_size}-token vocab")
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

    @property
    def processor(self):
        """The live SentencePieceProcessor of the "sentencepiece" backend, for reading its
        piece table (lm.data.pieces)."""
        if self.backend != "sentencepiece":
            raise ValueError(f"a {self.backend!r} tokenizer has no sentencepiece processor")
        return self._sp

    @functools.cached_property
    def tokenizer_json(self) -> dict:
        """The "tokenizers" backend's tokenizer.json, parsed once: it can be megabytes, and
        lm.data.pieces reads it for each token it shows."""
        if self.backend != "tokenizers":
            raise ValueError(f"a {self.backend!r} tokenizer has no tokenizer.json")
        return json.loads(self._data)

    @functools.cached_property
    def special_ids(self) -> frozenset[int]:
        """The ids of the tokenizer.json's special added tokens ("tokenizers" backend)."""
        added = self.tokenizer_json.get("added_tokens") or []
        return frozenset(t["id"] for t in added if t.get("special"))

    @property
    def spec(self) -> dict:
        data = self._data
        if self.backend == "sentencepiece":
            import base64

            data = base64.b64encode(self._data).decode("ascii")
        ids = {"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}
        return {"kind": "hf", "backend": self.backend, **ids, "data": data}

    @classmethod
    def from_spec(cls, spec: dict) -> HFTokenizer:
        data = spec["data"]
        if spec["backend"] == "sentencepiece":
            import base64

            data = base64.b64decode(data)
        return cls(spec["backend"], data, spec["bos_id"], spec["eos_id"], spec["pad_id"])

    @property
    def identity(self) -> str:
        raw = self._data if isinstance(self._data, bytes) else self._data.encode("utf-8")
        ids = f"{self.bos_id},{self.eos_id},{self.pad_id}".encode()
        return "hf-" + hashlib.blake2b(raw + ids, digest_size=8).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0].tolist()

    def encode_batch(
        self, texts: Sequence[str], num_threads: int | None = None
    ) -> list[np.ndarray]:
        for t in texts:
            t.encode("utf-8")  # a lone surrogate: Python's own UnicodeEncodeError (a ValueError)
        if self.backend == "sentencepiece":
            ids = self._sp.encode(list(texts), num_threads=num_threads or 1)
        else:
            ids = [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]
        return [np.asarray(i, np.int32) for i in ids]

    def _check(self, ids: list[int]) -> list[int]:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} out of range for vocab_size {self.vocab_size}")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = self._check(_ids(ids))
        if self.backend == "sentencepiece":
            return self._sp.decode(ids)
        return self._tk.decode(ids, skip_special_tokens=False)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        ids = self._check(_ids(ids))
        if self.backend == "sentencepiece":
            return [self._sp.id_to_piece(i) for i in ids]
        return [self._tk.id_to_token(i) for i in ids]

    def token_bytes(self) -> np.ndarray:
        tb = np.zeros(self.vocab_size, np.int64)
        if self.backend == "sentencepiece":
            sp = self._sp
            for i in range(self.vocab_size):
                if sp.is_byte(i):
                    tb[i] = 1
                elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)):
                    tb[i] = len(sp.id_to_piece(i).replace(SPACE, " ").encode("utf-8"))
            return tb
        special = self.special_ids
        # Byte-level BPE (GPT-2) spells each byte as one printable character.
        byte_level = '"ByteLevel"' in json.dumps(self.tokenizer_json.get("decoder"))
        for i in range(self.vocab_size):
            piece = self._tk.id_to_token(i)
            if i in special or piece is None:
                continue
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                tb[i] = 1  # a byte-fallback piece
            elif byte_level:
                tb[i] = len(piece)
            else:
                tb[i] = len(piece.replace(SPACE, " ").encode("utf-8"))
        return tb

    def __reduce__(self):
        return (HFTokenizer.from_spec, (self.spec,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HFTokenizer) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.identity)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.backend}, vocab_size={self.vocab_size}, {self.identity})"


# ---------------------------------------------------------------- saving and loading


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> Path:
    """Write `tokenizer.model` or `tokenizer.json` into `directory`; returns the file."""
    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(tok, SentencePieceTokenizer):
        path, other, data = d / SP_FILE, d / BYTE_FILE, tok.proto
    elif isinstance(tok, ByteTokenizer):
        path, other, data = d / BYTE_FILE, d / SP_FILE, json.dumps({"kind": "byte"}).encode()
    elif hasattr(tok, "spec"):  # a task's symbol tokenizer (lm.data.tasks), also in tokenizer.json
        path, other, data = d / BYTE_FILE, d / SP_FILE, json.dumps(tok.spec).encode()
    else:
        raise TypeError(f"cannot save a {type(tok).__name__}")
    atomic_write(path, data)
    other.unlink(missing_ok=True)  # one tokenizer file per directory, never two that disagree
    return path


def load_tokenizer(directory: str | Path) -> Tokenizer:
    d = Path(directory).expanduser()
    sp_path, byte_path = d / SP_FILE, d / BYTE_FILE
    if sp_path.is_file():
        try:
            return SentencePieceTokenizer(sp_path.read_bytes())
        except ValueError as e:
            raise ValueError(f"{sp_path}: {e}") from None
    if byte_path.is_file():
        try:
            spec = json.loads(byte_path.read_text())
        except (ValueError, UnicodeDecodeError):
            spec = None
        if isinstance(spec, dict) and spec.get("kind") == "symbols":  # a task's (lm.data.tasks)
            try:
                return SymbolTokenizer.from_spec(spec)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{byte_path}: bad symbols tokenizer ({e})") from None
        if isinstance(spec, dict) and spec.get("kind") == "hf":  # from lm import-hf
            try:
                return HFTokenizer.from_spec(spec)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{byte_path}: bad imported tokenizer ({e})") from None
        if spec != {"kind": "byte"}:
            raise ValueError(f'{byte_path}: not a tokenizer file (expected {{"kind": "byte"}})')
        return ByteTokenizer()
    raise ValueError(f"{d}: no {SP_FILE} or {BYTE_FILE} (no tokenizer saved there)")


# ---------------------------------------------------------------- from a config


def tokenizer_sample(cfg: DataConfig) -> list[str]:
    """About cfg.tokenizer_sample_bytes of training-split text, spread over the corpus.

    Documents are taken in order of a hash of their id (a bottom-k sample), so the sample is
    uniform over documents rather than the first files alphabetically, and deterministic. The
    scan stops after 8x the sample size so huge streamed corpora are not read to the end.
    """
    import heapq

    budget = cfg.tokenizer_sample_bytes
    heap: list[tuple[int, str, str]] = []  # max-heap on the hash, via negation
    kept = scanned = 0
    for doc_id, text in sources.iter_documents(cfg):
        if is_val(doc_id, cfg.val_fraction):
            continue
        n = len(text.encode("utf-8"))
        scanned += n
        heapq.heappush(heap, (-doc_hash(doc_id), doc_id, text))
        kept += n
        while kept > budget and len(heap) > 1:
            _, _, dropped = heapq.heappop(heap)
            kept -= len(dropped.encode("utf-8"))
        if scanned >= 8 * budget:
            break
    docs = [text for _, _, text in sorted(heap, reverse=True)]
    if len(docs) == 1 and kept > budget:  # one document larger than the whole budget
        docs = [docs[0].encode("utf-8")[:budget].decode("utf-8", errors="ignore")]
    return docs


def build_tokenizer(cfg: DataConfig) -> Tokenizer:
    """The tokenizer the source fixes (a task's symbols), else the one cfg.tokenizer names;
    bpe/unigram are trained once and cached."""
    source = sources.source_for(cfg)
    fixed = source.tokenizer()
    if fixed is not None:
        return fixed
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    key = {
        "corpus": source.fingerprint(),
        "kind": cfg.tokenizer,
        "vocab": cfg.tokenizer_vocab,
        "sample_bytes": cfg.tokenizer_sample_bytes,
        # these change which documents form the training split the sample is drawn from
        "val_fraction": cfg.val_fraction,
        "max_docs": cfg.max_docs,
        "version": 2,  # bump when the training options above change
    }
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=10).hexdigest()
    d = (
        Path(cfg.cache_dir).expanduser()
        / "tokenizers"
        / f"{cfg.tokenizer}{cfg.tokenizer_vocab}-{digest}"
    )
    if (d / SP_FILE).is_file():
        return load_tokenizer(d)
    docs = tokenizer_sample(cfg)
    if not docs:
        raise ValueError(f"data.source={cfg.source!r}: no training documents to fit a tokenizer on")
    tok = train_sentencepiece(docs, cfg.tokenizer_vocab, cfg.tokenizer)
    save_tokenizer(tok, d)
    (d / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True))
    return tok


__all__ = [
    "SPACE",
    "ByteTokenizer",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
    "save_tokenizer",
    "tokenizer_sample",
    "train_sentencepiece",
]
