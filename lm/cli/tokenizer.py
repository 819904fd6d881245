"""`lm tokenizer train | encode | decode`: how text becomes tokens. No jax is imported."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lm.cli.common import EPILOG_SET, UsageError, add_config_options, check_out_dir, load_config
from lm.data.pieces import format_groups
from lm.data.tokenizer import ByteTokenizer, build_tokenizer, load_tokenizer, save_tokenizer


def _tokenizer_from(args):
    if args.run:
        return load_tokenizer(Path(args.run))
    if args.config or args.set:
        return _build_tokenizer(load_config(args).data)
    return ByteTokenizer()


def _build_tokenizer(data_cfg):
    try:
        return build_tokenizer(data_cfg)
    except ValueError as e:  # no text, or a vocabulary the corpus cannot fill
        raise UsageError(str(e)) from None


def cmd_train(args) -> int:
    cfg = load_config(args)
    if cfg.data.tokenizer == "byte":
        raise UsageError("data.tokenizer='byte' needs no training; set bpe or unigram")
    check_out_dir(args.out)
    tok = _build_tokenizer(cfg.data)
    path = save_tokenizer(tok, Path(args.out))
    print(f"{cfg.data.tokenizer} tokenizer, {tok.vocab_size} tokens -> {path}")
    return 0


def cmd_encode(args) -> int:
    tok = _tokenizer_from(args)
    if args.text == "-":
        try:
            text = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"stdin: not UTF-8 text (byte {e.start})") from None
    else:
        text = args.text
    try:
        ids = tok.encode(text)
    except UnicodeEncodeError as e:  # an argument byte that was not UTF-8 arrives as one
        raise UsageError(
            f"text: character {e.start} is a lone surrogate ({text[e.start]!r}), which has no "
            "UTF-8 form; pass UTF-8 text"
        ) from None
    for line in format_groups(tok, text, ids):  # ids grouped into whole characters
        print(line)
    return 0


def cmd_decode(args) -> int:
    tok = _tokenizer_from(args)
    try:
        ids = [int(x) for x in " ".join(args.ids).replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"ids {' '.join(args.ids)!r}: expected integers") from None
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise UsageError(f"id {bad[0]}: outside the vocabulary [0, {tok.vocab_size})")
    print(tok.decode(ids))
    return 0


DESCRIPTIONS = {
    "encode": "Show how text becomes tokens: one line per token with its id, the "
    "tokenizer's own piece and the text it stands for; tokens that only together make a "
    "character (a character's UTF-8 bytes, with the byte tokenizer) share one line.",
    "decode": "Turn token ids back into text.",
}


def add_parsers(sub: Any) -> None:
    """Register `tokenizer` (train, encode, decode) on the `lm` subparsers."""
    tk = sub.add_parser(
        "tokenizer",
        help="train a tokenizer, or show how text becomes tokens",
        description="Train a sentencepiece tokenizer from a config's corpus, or encode and "
        "decode text with a run's tokenizer, a config's, or the byte tokenizer.",
    )
    tsub = tk.add_subparsers(dest="tok_command", required=True)
    tt = tsub.add_parser(
        "train",
        help="train a sentencepiece tokenizer (data.tokenizer=bpe|unigram)",
        description="Train the config's sentencepiece tokenizer (data.tokenizer=bpe|unigram, "
        "data.tokenizer_vocab pieces, on about data.tokenizer_sample_bytes of the training "
        "split) and write it to --out/tokenizer.model. Training runs also do this themselves, "
        "cached in data.cache_dir.",
        epilog=EPILOG_SET,
    )
    add_config_options(tt)
    tt.add_argument("--out", required=True, help="directory to write tokenizer.model into")
    tt.set_defaults(func=cmd_train)
    for name, fn, help_ in (
        ("encode", cmd_encode, "text -> pieces and ids"),
        ("decode", cmd_decode, "ids -> text"),
    ):
        q = tsub.add_parser(name, help=help_, description=DESCRIPTIONS[name],
                            epilog="Tokenizer: --run DIR, a config, or bytes.")  # fmt: skip
        q.add_argument("--run", help="use this run directory's tokenizer")
        add_config_options(q)
        if name == "encode":
            q.add_argument("text", help="text to encode ('-' reads stdin)")
        else:
            q.add_argument("ids", nargs="+", help="token ids (space or comma separated)")
        q.set_defaults(func=fn)
