import pickle

import chex
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.config import DataConfig
from lm.data.dataset import is_val, iter_documents
from lm.data.tokenizer import (
    SPACE,
    ByteTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_sample,
    train_sentencepiece,
)

# Characters that have broken tokenizers before: sentencepiece's own whitespace symbol,
# control characters, CJK, emoji, combining marks, lookalikes of special pieces.
TRICKY = list(" \t\n\r\x00\x0b\x0c\x1b\x7f\x85\u00a0\u2028\u3000") + [
    SPACE,
    "日本語",
    "😀",
    "👩‍👩‍👧",
    "e\u0301",
    "\ufeff",
    "\ufffd",
    "<s>",
    "</s>",
    "<unk>",
    "<0x41>",
    " \u2047 ",
]
ANY_TEXT = st.lists(
    st.one_of(
        st.characters(exclude_categories=["Cs"]),  # surrogates have no UTF-8 form
        st.sampled_from(TRICKY),
        st.sampled_from(list("ab_ (:)")),
        st.text(max_size=8),
    ),
    max_size=40,
).map("".join)
CASES = [
    "",
    " ",
    "   ",
    "  lead",
    "trail  ",
    "a  b   c",
    "\n",
    "\n\n\n",
    "a\r\nb\rc",
    "\ttab\x0cfeed\x00nul",
    SPACE,
    SPACE * 3,
    f"x {SPACE} y{SPACE}",
    "日本語のテキスト、テスト。",
    "😀🎉 emoji",
    "<s></s><unk><pad><0x41>",
    "def f(x):\n    return x  # comment\n",
    "12345 67.8e-9",
]


@pytest.fixture(scope="module")
def sample() -> list[str]:
    texts, size = [], 0
    for _, text in iter_documents(DataConfig(source="stdlib", max_docs=200)):
        texts.append(text)
        size += len(text)
        if size > 300_000:
            break
    return [*texts, "日本語のテキストです。絵文字も 😀 あります。" * 3]


@pytest.fixture(scope="module")
def sp_tok(sample) -> SentencePieceTokenizer:
    return train_sentencepiece(sample, vocab_size=512, model_type="bpe")


@pytest.fixture(params=["byte", "sp"])
def tok(request, sp_tok) -> Tokenizer:
    return ByteTokenizer() if request.param == "byte" else sp_tok


def _check_roundtrip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert not {tok.bos_id, tok.eos_id, tok.pad_id} & set(ids)
    assert tok.decode(ids) == text
    assert int(tok.token_bytes()[np.array(ids, dtype=np.int64)].sum()) == len(text.encode())


@pytest.mark.parametrize("text", CASES)
def test_roundtrip_cases(tok, text):
    _check_roundtrip(tok, text)


@settings(max_examples=150, deadline=None)
@given(text=ANY_TEXT)
def test_roundtrip_any_unicode_byte(text):
    _check_roundtrip(ByteTokenizer(), text)


@settings(max_examples=250, deadline=None)
@given(text=ANY_TEXT)
def test_roundtrip_any_unicode_sentencepiece(sp_tok, text):
    _check_roundtrip(sp_tok, text)


def test_encode_batch_matches_encode(tok):
    arrays = tok.encode_batch(CASES, num_threads=2)
    assert [a.tolist() for a in arrays] == [tok.encode(t) for t in CASES]


def test_space_symbol_is_escaped_as_bytes(sp_tok):
    # '▁' must come back as itself, not as the space sentencepiece uses it for
    ids = sp_tok.encode(f"a{SPACE}b c")
    assert sp_tok.pieces(ids)[1:4] == ["<0xE2>", "<0x96>", "<0x81>"]
    assert sp_tok.decode(ids) == f"a{SPACE}b c"


def test_specials_and_sizes(sp_tok):
    b = ByteTokenizer()
    assert (b.vocab_size, b.pad_id, b.bos_id, b.eos_id) == (259, 256, 257, 258)
    assert sp_tok.vocab_size == 512
    assert len({sp_tok.pad_id, sp_tok.bos_id, sp_tok.eos_id}) == 3
    for t in (b, sp_tok):
        tb = t.token_bytes()
        chex.assert_shape(tb, (t.vocab_size,))
        chex.assert_type(tb, np.int64)
        assert tb[[t.pad_id, t.bos_id, t.eos_id]].tolist() == [0, 0, 0]
        assert isinstance(t, Tokenizer)


def test_sentencepiece_compresses_code(sp_tok):
    text = "def function(self, value):\n        return self.value\n"
    assert len(sp_tok.encode(text)) < len(text.encode()) / 2


def test_byte_decode_is_total_and_skips_specials():
    b = ByteTokenizer()
    assert b.decode([0xFF, 0x41, b.eos_id, 0xC3]) == "\ufffdA\ufffd"
    assert b.decode([b.bos_id, 0x68, 0x69, b.pad_id]) == "hi"
    with pytest.raises(ValueError, match="out of range"):
        b.decode([259])


def test_decode_accepts_numpy(tok):
    ids = np.array(tok.encode("hello world"), dtype=np.uint16)
    assert tok.decode(ids) == "hello world"


def test_surrogates_are_rejected(tok):
    with pytest.raises(ValueError):
        tok.encode("a\ud800b")


def test_pieces(tok):
    ids = tok.encode("ab c\n")
    pieces = tok.pieces(ids)
    assert len(pieces) == len(ids) and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces).replace(SPACE, " ").replace("<0x0A>", "\n") == "ab c\n"


def test_save_load_roundtrip(tmp_path, tok):
    path = save_tokenizer(tok, tmp_path / "run")
    assert path.name == ("tokenizer.json" if tok.identity == "byte" else "tokenizer.model")
    loaded = load_tokenizer(tmp_path / "run")
    assert type(loaded) is type(tok) and loaded.identity == tok.identity and loaded == tok
    for text in CASES:
        assert loaded.encode(text) == tok.encode(text)


def test_saving_replaces_the_other_kind(tmp_path, sp_tok):
    save_tokenizer(sp_tok, tmp_path)
    save_tokenizer(ByteTokenizer(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


def test_pickles_as_proto(sp_tok):
    blob = pickle.dumps(sp_tok)
    assert len(blob) < len(sp_tok.proto) + 1000
    again = pickle.loads(blob)
    assert again.encode("héllo ▁ wörld") == sp_tok.encode("héllo ▁ wörld")


@pytest.mark.parametrize(
    "name, content",
    [
        ("tokenizer.model", b"\x00definitely not a sentencepiece proto"),
        ("tokenizer.model", b""),
        ("tokenizer.json", b'{"kind": "bpe"}'),
        ("tokenizer.json", b"{not json"),
    ],
)
def test_corrupt_tokenizer_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=name) as e:
        load_tokenizer(tmp_path)
    assert "\n" not in str(e.value)


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.model or tokenizer.json"):
        load_tokenizer(tmp_path)


def test_unigram_trains_and_roundtrips(sample):
    tok = train_sentencepiece(sample[:5], vocab_size=400, model_type="unigram")
    for text in CASES:
        _check_roundtrip(tok, text)


_JA_WORDS = (
    "私 は 日本語 を 勉強 して います 東京 の 天気 が 良い です 今日 明日 学校 "
    "に 行き ました 友達 と 一緒 電車 で 本 読む 食べ 猫 犬 かわいい 新しい 会社 "
    "仕事 時間 朝 夜 雨 降って 駅 前 ラーメン コーヒー 飲み たい 春 夏 秋 冬 山 "
    "川 海 図書館 先生 学生 昨日 週末 映画 音楽 好き 大きい 小さい 古い 町 店 "
    "買い物 料理 作り 京都 大阪 北海道 桜 花 見"
).split()


def _japanese(lines: int, seed: int = 0) -> str:
    """Ordinary Japanese prose as a file holds it: sentences of words with no spaces between."""
    import random

    r = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [r.choice(_JA_WORDS) for _ in range(r.randint(4, 14))]
        out.append("".join(words) + r.choice("。。。、！？"))
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_japanese_without_spaces_trains_and_roundtrips(model_type):
    """A corpus with no spaces gives the trainer no '▁' piece; a space must still come back as
    a space, not as the bytes of '▁'."""
    tok = train_sentencepiece([_japanese(1500)], 400, model_type, num_threads=1)
    held_out = _japanese(40, seed=1)
    ids = tok.encode(held_out)
    assert tok.decode(ids) == held_out and len(ids) < len(held_out.encode()) / 2
    for text in [*CASES, "日本語 と English が 混ざった　文章", " 先頭と末尾の空白 ", "a\u3000b"]:
        _check_roundtrip(tok, text)


def test_japanese_tokenizer_through_the_cli(tmp_path, capsys):
    from lm import cli

    (tmp_path / "ja.txt").write_text(_japanese(1500), encoding="utf-8")
    argv = ["tokenizer", "train", "--out", str(tmp_path / "tok"), "--set"]
    argv += [f"data.source={tmp_path / 'ja.txt'}", "data.tokenizer=bpe"]
    argv += [
        "data.tokenizer_vocab=400",
        "model.vocab_size=400",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    assert cli.main(argv) == 0, capsys.readouterr().err
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.vocab_size == 400
    _check_roundtrip(tok, "今日は 雨です。\n明日は　晴れ。")


def test_too_small_vocab_is_a_clear_error():
    texts = ["".join(chr(c) for c in range(0x4E00, 0x4E00 + 400)) * 3]
    with pytest.raises(ValueError, match="vocab_size=260") as e:
        train_sentencepiece(texts, vocab_size=260, model_type="bpe")
    assert "\n" not in str(e.value)


def test_build_tokenizer_trains_once(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 30)
    cfg = DataConfig(
        source=str(corpus),
        tokenizer="bpe",
        tokenizer_vocab=300,
        tokenizer_sample_bytes=50_000,
        cache_dir=str(tmp_path / "cache"),
    )
    assert isinstance(build_tokenizer(DataConfig(cache_dir=str(tmp_path))), ByteTokenizer)
    first = build_tokenizer(cfg)
    assert first.vocab_size == 300

    def no_training(*a, **k):
        raise AssertionError("trained again instead of using the cache")

    monkeypatch.setattr("lm.data.tokenizer.train_sentencepiece", no_training)
    assert build_tokenizer(cfg) == first
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 1


def test_bpe_model_is_the_same_for_any_thread_count(sample):
    # so machines with different core counts share one identity, hence one token cache
    one = train_sentencepiece(sample[:10], vocab_size=400, model_type="bpe", num_threads=1)
    two = train_sentencepiece(sample[:10], vocab_size=400, model_type="bpe", num_threads=2)
    assert one.proto == two.proto and one.identity == two.identity


def test_tokenizer_sample_is_train_only_and_within_budget(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = {f"d{i:03d}.txt": f"document number {i}\n" * 50 for i in range(200)}
    for name, text in docs.items():
        (corpus / name).write_text(text)
    cfg = DataConfig(source=str(corpus), val_fraction=0.2, tokenizer_sample_bytes=60_000)
    sample = tokenizer_sample(cfg)
    train = {t for d, t in docs.items() if not is_val(d, 0.2)}
    assert set(sample) <= train and len(set(sample)) == len(sample)
    assert 50_000 < sum(len(t) for t in sample) <= 60_000
    assert tokenizer_sample(cfg) == sample
    # spread over the corpus, not the alphabetically first documents
    firsts = sorted(train)[: len(sample)]
    assert set(sample) != set(firsts)
