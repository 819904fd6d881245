import os
import sys
import time
from pathlib import Path

import chex
import numpy as np
import pytest

from lm.config import DataConfig
from lm.data.dataset import (
    TokenData,
    batch_at,
    corpus_fingerprint,
    is_val,
    iter_documents,
    prepare_data,
    val_windows,
)
from lm.data.tokenizer import ByteTokenizer, train_sentencepiece


def _write_corpus(root: Path, n: int = 40) -> dict[str, str]:
    """A small directory corpus with nested files; returns {doc_id: text}."""
    docs = {}
    for i in range(n):
        rel = f"pkg{i % 3}/mod_{i:02d}.py"
        text = f"# module {i} ▁ é 日本\ndef f_{i}(x):\n    return x * {i}  \n" * (1 + i % 4)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
        docs[rel] = text
    return docs


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "corpus"
    return root, _write_corpus(root)


def _cfg(tmp_path: Path, source: str, **kw) -> DataConfig:
    return DataConfig(source=source, cache_dir=str(tmp_path / "cache"), **kw)


# ---------------------------------------------------------------- split


def test_is_val_is_stable_and_near_the_fraction():
    ids = [f"doc/{i}.py" for i in range(20_000)]
    flags = [is_val(d, 0.1) for d in ids]
    assert flags == [is_val(d, 0.1) for d in ids]
    assert 0.09 < np.mean(flags) < 0.11
    # the validation set grows monotonically with the fraction
    assert all(is_val(d, 0.2) for d, f in zip(ids, flags, strict=True) if f)
    # pinned: a change here would silently reshuffle every existing split
    assert [is_val(f"doc/{i}.py", 0.5) for i in range(12)] == [
        True, False, False, True, True, False, True, False, True, False, True, False
    ]  # fmt: skip


def _texts(tokens: np.ndarray) -> list[str]:
    """The documents of a byte-tokenized split: each BOS (257) ... EOS (258)."""
    t = np.asarray(tokens)
    starts, ends = np.flatnonzero(t == 257), np.flatnonzero(t == 258)
    assert len(starts) == len(ends) and np.all(starts < ends)
    pairs = zip(starts, ends, strict=True)
    return [bytes(t[a + 1 : b].astype(np.uint8)).decode() for a, b in pairs]


def test_split_is_by_id_not_position(tmp_path, corpus):
    root, docs = corpus
    cfg = _cfg(tmp_path, str(root), val_fraction=0.3)
    data = prepare_data(cfg, ByteTokenizer(), progress=False)
    order = [d for d, _ in iter_documents(cfg)]
    assert order == sorted(docs)
    assert _texts(data.train) == [docs[d] for d in order if not is_val(d, 0.3)]
    assert _texts(data.val) == [docs[d] for d in order if is_val(d, 0.3)]
    assert data.val_bytes == sum(len(docs[d].encode()) for d in order if is_val(d, 0.3)) > 0
    assert data.train_bytes == sum(len(docs[d].encode()) for d in order if not is_val(d, 0.3))
    # Documents inserted before and among the others shift every position but move no
    # existing document between splits.
    new = {"aaa_new.py": "first = 1\n", "pkg1/mod_00a.py": "middle = 2\n"}
    for rel, text in new.items():
        (root / rel).write_text(text)
    again = prepare_data(cfg, ByteTokenizer(), progress=False)
    assert again.path != data.path
    assert set(_texts(data.val)) <= set(_texts(again.val))
    assert set(_texts(data.train)) <= set(_texts(again.train))
    assert set(_texts(again.val)) | set(_texts(again.train)) == {*docs.values(), *new.values()}


# ---------------------------------------------------------------- sources


def test_stdlib_source():
    cfg = DataConfig(source="stdlib", max_docs=25)
    docs = list(iter_documents(cfg))
    assert len(docs) == 25
    ids = [d for d, _ in docs]
    assert ids == sorted(ids) and all(d.endswith(".py") for d in ids)
    assert not any("site-packages" in d or d.startswith("/") for d in ids)
    assert corpus_fingerprint(cfg) == corpus_fingerprint(cfg)


def test_directory_source_skips_hidden_and_binary(tmp_path, corpus):
    root, docs = corpus
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / ".hidden.txt").write_text("secret\n")
    (root / "blob.bin").write_bytes(b"\x89PNG\x00\x00\x01")
    (root / "latin1.txt").write_bytes(b"caf\xe9\n")
    got = dict(iter_documents(_cfg(tmp_path, str(root))))
    assert got == {**docs, "latin1.txt": "caf\ufffd\n"}
    capped = list(iter_documents(_cfg(tmp_path, str(root), max_docs=7)))
    assert len(capped) == 7


def test_glob_source(tmp_path, corpus):
    root, docs = corpus
    (root / "notes.md").write_text("# notes\n")
    got = dict(iter_documents(_cfg(tmp_path, str(root / "**" / "*.py"))))
    assert got == docs
    got = dict(iter_documents(_cfg(tmp_path, str(root / "pkg1" / "*.py"))))
    assert got == {d.removeprefix("pkg1/"): t for d, t in docs.items() if d.startswith("pkg1/")}


def test_single_file_is_cut_into_documents(tmp_path):
    text = "".join(f"line {i}: {'ab ' * (i % 50)}\r\n" for i in range(3000))
    path = tmp_path / "novel.txt"
    path.write_bytes(text.encode())
    docs = list(iter_documents(_cfg(tmp_path, str(path))))
    assert len(docs) > 10
    assert [d for d, _ in docs] == [f"novel.txt#{k}" for k in range(len(docs))]
    assert "".join(t for _, t in docs) == text  # exact, line ends included
    data = prepare_data(
        _cfg(tmp_path, str(path), val_fraction=0.2), ByteTokenizer(), progress=False
    )
    assert len(data.val) > 0 and len(data.train) > len(data.val)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        list(iter_documents(_cfg(tmp_path, str(tmp_path / "nope"))))
    with pytest.raises(ValueError, match="matches no file"):
        list(iter_documents(_cfg(tmp_path, str(tmp_path / "*.nope"))))


def test_fingerprint_tracks_changes(tmp_path, corpus):
    root, _ = corpus
    cfg = _cfg(tmp_path, str(root))
    before = corpus_fingerprint(cfg)
    assert corpus_fingerprint(cfg) == before
    (root / "pkg0" / "mod_00.py").write_text("changed and longer than before\n" * 9)
    assert corpus_fingerprint(cfg) != before
    assert corpus_fingerprint(DataConfig()) != before


def test_hf_source_on_a_local_file(tmp_path, monkeypatch):
    # datasets reads these when imported; set them first so no hub is contacted
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    pytest.importorskip("datasets", reason="needs the optional `datasets` package (lm[hf])")
    import json

    rows = [{"id": i, "content": f"document {i}\n  with ▁ and 日本 {i * i}\n"} for i in range(30)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cfg = _cfg(tmp_path, "hf:json", hf_data_files=str(path), text_field="content", max_docs=20)
    docs = list(iter_documents(cfg))
    assert docs == [(str(i), rows[i]["content"]) for i in range(20)]
    data = prepare_data(cfg, ByteTokenizer(), progress=False)
    assert data.train_bytes + data.val_bytes == sum(len(t.encode()) for _, t in docs)
    bad = _cfg(tmp_path, "hf:json", hf_data_files=str(path), text_field="body")
    with pytest.raises(ValueError, match="body.*columns: id, content"):
        list(iter_documents(bad))


def test_hf_source_without_datasets_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install 'lm\[hf\]'"):
        list(iter_documents(_cfg(tmp_path, "hf:roneneldan/TinyStories")))


# ---------------------------------------------------------------- token cache


def test_prepare_data_layout_and_reuse(tmp_path, corpus):
    root, docs = corpus
    cfg = _cfg(tmp_path, str(root))
    data = prepare_data(cfg, ByteTokenizer(), progress=False)
    assert isinstance(data, TokenData)
    assert isinstance(data.train, np.memmap) and data.train.dtype == np.uint16
    assert data.vocab_size == 259 and data.path.parent == tmp_path / "cache" / "tokens"
    assert sorted(p.name for p in data.path.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert np.count_nonzero(data.train == 258) + np.count_nonzero(data.val == 258) == len(docs)
    stamp = (data.path / "train.bin").stat().st_mtime_ns

    class Counting(ByteTokenizer):
        calls = 0

        def encode_batch(self, texts, num_threads=None):
            Counting.calls += 1
            return super().encode_batch(texts, num_threads)

    again = prepare_data(cfg, Counting(), progress=False)  # same identity: "byte"
    assert Counting.calls == 0 and again.path == data.path
    assert (data.path / "train.bin").stat().st_mtime_ns == stamp
    assert np.array_equal(again.train, data.train)
    # a different split or cap is a different cache
    other = prepare_data(_cfg(tmp_path, str(root), val_fraction=0.5), Counting(), progress=False)
    assert Counting.calls == 1 and other.path != data.path


def test_interrupted_build_leaves_no_cache(tmp_path, corpus):
    root, _ = corpus
    cfg = _cfg(tmp_path, str(root))

    class Failing(ByteTokenizer):
        def encode_batch(self, texts, num_threads=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, Failing(), progress=False)
    assert list((tmp_path / "cache" / "tokens").iterdir()) == []
    data = prepare_data(cfg, ByteTokenizer(), progress=False)
    assert len(data.train) > 0


def test_truncated_cache_is_reported(tmp_path, corpus):
    root, _ = corpus
    cfg = _cfg(tmp_path, str(root))
    data = prepare_data(cfg, ByteTokenizer(), progress=False)
    with open(data.path / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match="delete .* to rebuild"):
        prepare_data(cfg, ByteTokenizer(), progress=False)


def test_sentencepiece_corpus(tmp_path, corpus):
    root, docs = corpus
    tok = train_sentencepiece(list(docs.values()) * 3, vocab_size=320, model_type="bpe")
    cfg = _cfg(tmp_path, str(root), val_fraction=0.25)
    data = prepare_data(cfg, tok, workers=2, progress=False)
    assert data.vocab_size == 320 and data.train.dtype == np.uint16
    tb = tok.token_bytes()
    assert int(tb[data.train].sum()) == data.train_bytes
    assert int(tb[data.val].sum()) == data.val_bytes
    # the stream decodes back to the documents, each framed as BOS ... EOS
    pieces = np.split(np.asarray(data.train), np.flatnonzero(data.train == tok.eos_id) + 1)
    pieces = [p for p in pieces if len(p)]
    assert all(p[0] == tok.bos_id and p[-1] == tok.eos_id for p in pieces)
    texts = [tok.decode(p[1:-1]) for p in pieces]
    assert texts == [docs[d] for d in sorted(docs) if not is_val(d, 0.25)]
    assert len(data.train) < data.train_bytes  # it compresses


def test_large_vocab_uses_uint32(tmp_path, corpus):
    root, _ = corpus

    class Wide(ByteTokenizer):
        vocab_size = 70_000
        eos_id = 69_999
        bos_id = 69_998
        identity = "wide-test"

        def encode_batch(self, texts, num_threads=None):
            return [np.frombuffer(t.encode(), np.uint8).astype(np.int64) + 60_000 for t in texts]

    data = prepare_data(_cfg(tmp_path, str(root)), Wide(), progress=False)
    assert data.train.dtype == np.uint32 and data.train.max() == 69_999
    assert data.train.min() >= 60_000


# ---------------------------------------------------------------- batches


def test_batch_at_is_pure_and_varies_by_step():
    tokens = np.arange(10_000, dtype=np.uint16)
    a = batch_at(tokens, seed=3, step=7, batch_size=16, seq_len=32)
    chex.assert_shape(a, (16, 33))
    chex.assert_type(a, np.int32)
    assert np.array_equal(a, batch_at(tokens, seed=3, step=7, batch_size=16, seq_len=32))
    assert not np.array_equal(a, batch_at(tokens, seed=3, step=8, batch_size=16, seq_len=32))
    assert not np.array_equal(a, batch_at(tokens, seed=4, step=7, batch_size=16, seq_len=32))
    assert (np.diff(a, axis=1) == 1).all()  # every row is a contiguous window


def test_batch_at_covers_the_edges():
    tokens = np.arange(10, dtype=np.uint16)
    rows = np.concatenate([batch_at(tokens, 0, s, 8, 8) for s in range(50)])
    assert set(rows[:, 0].tolist()) == {0, 1}  # both possible starts occur; none past the end


def test_multi_host_slices_make_the_global_batch():
    tokens = np.arange(5000, dtype=np.uint16)
    full = batch_at(tokens, 1, 5, batch_size=12, seq_len=8)
    for hosts in (2, 3, 4):
        parts = [
            batch_at(tokens, 1, 5, 12, 8, process_index=i, process_count=hosts)
            for i in range(hosts)
        ]
        chex.assert_shape(parts, (12 // hosts, 9))
        assert np.array_equal(np.concatenate(parts), full)
    with pytest.raises(ValueError, match="divisible"):
        batch_at(tokens, 1, 5, batch_size=12, seq_len=8, process_index=0, process_count=5)


def test_batch_windows_are_corpus_substrings(tmp_path, corpus):
    root, docs = corpus
    data = prepare_data(_cfg(tmp_path, str(root)), ByteTokenizer(), progress=False)
    stream = bytes((np.asarray(data.train) % 256).astype(np.uint8))
    for step in range(5):
        for row in batch_at(data.train, 0, step, 8, 40):
            assert bytes((row % 256).astype(np.uint8)) in stream


def test_batch_at_errors():
    with pytest.raises(ValueError, match="holds no window"):
        batch_at(np.arange(10, dtype=np.uint16), 0, 0, 4, seq_len=10)
    with pytest.raises(ValueError, match=">= 0"):
        batch_at(np.arange(100, dtype=np.uint16), -1, 0, 4, seq_len=10)


def test_batch_at_is_fast_on_a_memmap(tmp_path):
    path = tmp_path / "tokens.bin"
    np.arange(5_000_000, dtype=np.uint32).astype(np.uint16).tofile(path)
    tokens = np.memmap(path, np.uint16, mode="r")
    batch_at(tokens, 0, 0, 64, 64)
    times = []
    for step in range(200):
        t0 = time.perf_counter()
        batch_at(tokens, 0, step, 64, 64)
        times.append(time.perf_counter() - t0)
    # typically ~50 us; the bound is loose because test machines are shared
    assert np.median(times) < 2e-3


def test_val_windows_fixed_and_spread():
    tokens = np.arange(1000, dtype=np.uint16)
    w = val_windows(tokens, n_windows=7, seq_len=15)
    chex.assert_shape(w, (7, 16))
    chex.assert_type(w, np.int32)
    assert np.array_equal(w, val_windows(tokens, 7, 15))
    assert w[0, 0] == 0 and w[-1, -1] == 999
    assert (np.diff(w, axis=1) == 1).all()
    assert (np.diff(w[:, 0]) >= 16).all()  # no overlap
    assert val_windows(tokens, 1, 15)[0, 0] == 0
    exact = val_windows(np.arange(64, dtype=np.uint16), 4, 15)
    assert np.array_equal(exact.ravel(), np.arange(64))
    with pytest.raises(ValueError, match="fewer than 5 windows"):
        val_windows(np.arange(79, dtype=np.uint16), 5, 15)


def test_abandoned_builds_are_cleaned_up(tmp_path, corpus):
    root, _ = corpus
    tokens = tmp_path / "cache" / "tokens"
    old, fresh = tokens / ".tmp-old-1-aaaa", tokens / ".tmp-fresh-2-bbbb"
    for d in (old, fresh):
        d.mkdir(parents=True)
        (d / "train.bin").write_bytes(b"\0" * 10)
    two_days_ago = time.time() - 2 * 86400
    for p in (old / "train.bin", old):
        os.utime(p, (two_days_ago, two_days_ago))
    prepare_data(_cfg(tmp_path, str(root)), ByteTokenizer(), progress=False)
    assert not old.exists() and fresh.exists()  # a build in progress elsewhere is kept
