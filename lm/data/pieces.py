"""Tokens shown as the text they stand for: each id's bytes, grouped into whole characters.

A tokenizer's own pieces are spelled in its internal alphabet: the byte tokenizer writes
`<0xE3>`, sentencepiece writes spaces as '▁' and fallback bytes as `<0xNN>`, and byte-level
BPE (GPT-2, Llama 3) spells every byte as one printable stand-in character, so "こんにちは"
shows as 'ãģĵãĤĵ...'. Here every id is mapped back to the UTF-8 bytes it contributes when
decoded, and those bytes are decoded as one stream, so each token can be shown as the
characters it completes, and a token that holds only part of a character as that character
plus the bytes of it that the token carries: the byte tokenizer's three tokens for 'こ' read
`こ[E3]`, `こ[81]`, `こ[93]`.

`token_bytes(tok, ids)` (None for special tokens), `labels(tok, ids)` (one short label per
token, for tables and figures) and `groups(tok, ids)` (runs of tokens that together make
whole characters, for `lm tokenizer encode`). Works on every tokenizer in lm.data.tokenizer and
lm.inference.task_eval; reads nothing but the tokenizer.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import NamedTuple

from lm.data.tokenizer import ByteTokenizer, HFTokenizer, SentencePieceTokenizer

SPACE = "\u2581"


@functools.cache
def byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's stand-in characters -> bytes.

    The scheme (used by GPT-2 and its descendants' tokenizer.json files): bytes that are
    printable Latin-1 characters other than space stand for themselves; the remaining 68
    bytes, in increasing order, take the code points from 256 up. Reconstructed from that
    description, which is what the `tokenizers` ByteLevel pre-tokenizer implements.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _hex_byte(piece: str) -> int | None:
    """The byte of a fallback piece spelled '<0xNN>', else None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def _byte_level(tok: HFTokenizer) -> bool:
    """Whether an imported tokenizer.json spells bytes in byte-level BPE's alphabet."""
    spec = tok.tokenizer_json
    return '"ByteLevel"' in json.dumps([spec.get("decoder"), spec.get("pre_tokenizer")])


def _sp_bytes(sp, i: int) -> bytes | None:
    if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
        return None
    piece = sp.id_to_piece(i)
    if sp.is_byte(i):
        return bytes([_hex_byte(piece) or 0])
    return piece.replace(SPACE, " ").encode("utf-8")


def token_bytes(tok, ids: Iterable[int]) -> list[bytes | None]:
    """The UTF-8 bytes each id contributes to decoded text; None for a special token (BOS,
    EOS, pad, a control piece) and for ids past the tokenizer's vocabulary."""
    out: list[bytes | None] = []
    byte_level = None  # an imported tokenizer.json's, read at its first id
    for i in (int(x) for x in ids):
        if not 0 <= i < tok.vocab_size or i in (tok.bos_id, tok.eos_id, tok.pad_id):
            out.append(None)
        elif isinstance(tok, ByteTokenizer):
            out.append(bytes([i]) if i < 256 else None)
        elif isinstance(tok, SentencePieceTokenizer):
            out.append(_sp_bytes(tok.processor, i))
        elif isinstance(tok, HFTokenizer) and tok.backend == "sentencepiece":
            out.append(_sp_bytes(tok.processor, i))
        elif isinstance(tok, HFTokenizer):
            if byte_level is None:
                byte_level = _byte_level(tok)
            piece = tok.pieces([i])[0]
            if i in tok.special_ids or piece is None:
                out.append(None)
            elif _hex_byte(piece) is not None:
                out.append(bytes([_hex_byte(piece)]))
            elif byte_level:
                table = byte_level_alphabet()
                if all(c in table for c in piece):
                    out.append(bytes(table[c] for c in piece))
                else:  # an added, non-special token: its text as written
                    out.append(piece.encode("utf-8"))
            else:
                out.append(piece.replace(SPACE, " ").encode("utf-8"))
        else:  # any other tokenizer (a task's symbols): what decoding the id alone gives
            text = tok.decode([i])
            sep = getattr(tok, "sep", "")
            out.append((text[len(sep) :] if sep and text.startswith(sep) else text).encode())
    return out


class _Char(NamedTuple):
    text: str  # one character (U+FFFD for a byte that starts no valid character)
    start: int  # its byte span in the stream
    end: int
    ok: bool = True  # False: a byte that is no (complete) character


def _chars(data: bytes) -> list[_Char]:
    """Decode `data` one character at a time, keeping each character's byte span; a byte
    that starts no valid sequence is one U+FFFD of one byte."""
    out, k = [], 0
    while k < len(data):
        lead = data[k]
        n = 1 if lead < 0x80 else 2 if lead >> 5 == 6 else 3 if lead >> 4 == 14 else 4
        try:
            out.append(_Char(data[k : k + n].decode("utf-8"), k, k + n))
        except UnicodeDecodeError:
            n = 1
            out.append(_Char("\ufffd", k, k + 1, ok=False))
        k += n
    return out


def visible(text: str) -> str:
    """Text with whitespace and control characters made visible, for a one-line label."""
    names = {" ": SPACE, "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return "".join(
        names.get(c, f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in text
    )


def labels(tok, ids: Iterable[int]) -> list[str]:
    """One label per id: the characters it holds; a token holding part of a character is
    that character with the token's bytes of it in hex (`こ[E3]`), and a byte whose
    character the ids do not complete is its hex alone (`[E3]`); specials keep their piece
    (`<s>`). Spaces show as '▁', newlines as '\\n'."""
    ids = [int(i) for i in ids]
    raw = token_bytes(tok, ids)
    stream = b"".join(b for b in raw if b)
    chars = _chars(stream)
    out, pos, c = [], 0, 0
    for i, b in zip(ids, raw, strict=True):
        if b is None:
            out.append(tok.pieces([i])[0] if 0 <= i < tok.vocab_size else f"<unused {i}>")
            continue
        start, end = pos, pos + len(b)
        pos = end
        while c < len(chars) and chars[c].end <= start:
            c += 1
        parts, k = [], c
        while k < len(chars) and chars[k].start < end:
            ch = chars[k]
            if not ch.ok:  # a byte of a character cut off by the end of the ids
                parts.append(f"[{stream[ch.start : ch.end].hex().upper()}]")
            elif ch.start >= start and ch.end <= end:
                parts.append(visible(ch.text))
            else:  # the character straddles this token's edge: name it and our share
                share = stream[max(ch.start, start) : min(ch.end, end)]
                parts.append(f"{visible(ch.text)}[{share.hex(' ').upper()}]")
            k += 1
        out.append("".join(parts) if parts else "")
    return out


class Group(NamedTuple):
    ids: list[int]
    pieces: list[str]  # the tokenizer's own spelling
    text: str  # the whole characters these tokens make ("" for a special token)
    nbytes: int


def groups(tok, ids: Iterable[int]) -> list[Group]:
    """Consecutive ids merged until their bytes end on a character boundary: one group per
    token where tokens hold whole characters, one per character where a character takes
    several tokens (the byte tokenizer's 3 ids for 'こ' are one group)."""
    ids = [int(i) for i in ids]
    raw = token_bytes(tok, ids)
    stream = b"".join(b for b in raw if b)
    ends = {ch.end for ch in _chars(stream)} | {0}
    out: list[Group] = []
    cur: list[int] = []
    start = pos = 0

    def flush():
        nonlocal cur, start
        if cur:
            data = stream[start:pos]
            text = data.decode("utf-8", errors="replace")
            out.append(Group(cur, tok.pieces(cur), text, len(data)))
        cur, start = [], pos

    for i, b in zip(ids, raw, strict=True):
        if b is None:
            flush()
            out.append(Group([i], tok.pieces([i]), "", 0))
            continue
        cur.append(i)
        pos += len(b)
        if pos in ends:
            flush()
    flush()
    return out


def format_groups(tok, text: str, ids: list[int]) -> list[str]:
    """`lm tokenizer encode`'s table: one line per group of ids that make whole characters."""
    gs = groups(tok, ids)
    lines = [f"{len(text.encode('utf-8'))} bytes -> {len(ids)} tokens ({len(text)} characters)"]
    width = max([len(" ".join(map(str, g.ids))) for g in gs] + [3])
    lines.append(f"{'ids':>{width}}  {'piece(s)':<24} text")
    for g in gs:
        pieces = " ".join(repr(p) if len(g.ids) == 1 else p for p in g.pieces)
        note = ""
        if len(g.ids) > 1 and len(g.text) == 1:
            note = f"  ({g.nbytes} bytes of one character, {len(g.ids)} tokens)"
        elif len(g.ids) > 1:
            note = f"  ({len(g.ids)} tokens together)"
        shown = repr(g.text) if g.text or g.pieces else ""
        lines.append(f"{' '.join(map(str, g.ids)):>{width}}  {pieces:<24} {shown}{note}")
    lines.append("ids: " + " ".join(map(str, ids)))
    return lines


def next_label(tok, context: list[int], i: int) -> str:
    """The label of candidate next token `i` after `context`: the character it would
    complete or start there (`こ[93]` after E3 81)."""
    return labels(tok, [*context[-4:], i])[-1]
