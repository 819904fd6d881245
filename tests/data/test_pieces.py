"""Tokens shown as the text they decode to (lm.data.pieces), for every kind of tokenizer, and the
byte tokenizer's tokenizer.json for Hugging Face (lm.interop.hf_tokenizer)."""

import json
import re

import pytest

from lm.data import pieces
from lm.data.tokenizer import ByteTokenizer, HFTokenizer, train_sentencepiece

TEXT = "こんにちは、世界 ok\n"


def _strip_bytes(labels):
    """Labels back to text: drop each partial character's [hex] and keep it once."""
    out, prev = [], None
    for lab in labels:
        m = re.fullmatch(r"(.)\[[0-9A-F ]+\]", lab)
        if m:
            if m.group(1) != prev:
                out.append(m.group(1))
            prev = m.group(1)
        else:
            out.append(lab)
            prev = None
    return "".join(out)


def test_byte_tokens_are_grouped_into_characters():
    tok = ByteTokenizer()
    ids = [tok.bos_id, *tok.encode(TEXT)]
    labels = pieces.labels(tok, ids)
    assert labels[:4] == ["<s>", "こ[E3]", "こ[81]", "こ[93]"]
    assert labels[-4:] == ["▁", "o", "k", "\\n"]
    assert _strip_bytes(labels[1:]) == pieces.visible(TEXT)
    groups = pieces.groups(tok, tok.encode(TEXT))
    assert [g.text for g in groups] == list(TEXT)
    assert groups[0].ids == [0xE3, 0x81, 0x93] and groups[0].nbytes == 3
    lines = pieces.format_groups(tok, TEXT, tok.encode(TEXT))
    assert (
        lines[0]
        == f"{len(TEXT.encode())} bytes -> {len(TEXT.encode())} tokens ({len(TEXT)} characters)"
    )
    assert any(line.split()[:3] == ["227", "129", "147"] and "'こ'" in line for line in lines)
    # a character cut off by the end of the ids shows its bytes alone
    assert pieces.labels(tok, tok.encode("aこ")[:2]) == ["a", "[E3]"]
    assert pieces.next_label(tok, tok.encode("aこ")[:3], 0x93) == "こ[93]"


def test_sentencepiece_byte_fallback_reads_as_characters():
    tok = train_sentencepiece(["def foo(self):\n    return self.x\n"] * 50, 300, "bpe", 1)
    ids = tok.encode(TEXT)
    assert any(p.startswith("<0x") for p in tok.pieces(ids))  # kana are fallback bytes here
    labels = pieces.labels(tok, ids)
    assert "こ[E3]" in labels
    assert _strip_bytes(labels) == pieces.visible(TEXT)
    assert "".join(g.text for g in pieces.groups(tok, ids)) == TEXT


def test_byte_level_bpe_pieces_are_shown_decoded():
    tokenizers = pytest.importorskip("tokenizers", reason="needs the convert extra")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tk.train_from_iterator(["こんにちは、世界", "こんにちは", "hello world"] * 20, trainer)
    tok = HFTokenizer("tokenizers", tk.to_str(), 0, 0, 0)
    ids = tok.encode("こんにちは、世界")
    raw = "".join(tok.pieces(ids))
    assert "ã" in raw  # the tokenizer's own alphabet, which nobody can read
    labels = pieces.labels(tok, ids)
    assert _strip_bytes(labels) == "こんにちは、世界"
    assert any(lab.startswith("こんにち") for lab in labels)  # a merged piece, whole characters


def test_byte_tokenizer_json_encodes_bytes_exactly():
    tokenizers = pytest.importorskip("tokenizers", reason="needs the convert extra")
    from lm.interop.hf_tokenizer import byte_tokenizer_json

    spec = byte_tokenizer_json()
    tk = tokenizers.Tokenizer.from_str(spec)
    text = "a b\tc\n\x00é😀こんにちは"
    enc = tk.encode(text)
    assert enc.ids == [257, *text.encode("utf-8")]
    assert tk.decode(enc.ids) == text
    assert len(json.loads(spec)["model"]["vocab"]) == 256
