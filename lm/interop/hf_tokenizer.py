"""Our byte tokenizer as a Hugging Face `tokenizers` tokenizer.json, for `lm export-hf`.

The file is written by hand (no `tokenizers` import): a BPE model with no merges over the 256
byte-level stand-in characters (lm.data.pieces' alphabet, the one the ByteLevel pre-tokenizer
maps bytes to), each given the id of its byte, so id = byte value exactly as in
`ByteTokenizer`; then <pad>, <s>, </s> as special tokens 256, 257, 258. The pre-tokenizer is
ByteLevel without its regex split and without a prefix space, so text becomes its UTF-8 bytes
and nothing else; a post-processor puts <s> first, as every training document starts.
Field names follow the tokenizers library's serialization (tokenizers' docs, "Tokenizer" and
"Components").
"""

from __future__ import annotations

import json

from lm.data.pieces import byte_level_alphabet

SPECIALS = (("<pad>", 256), ("<s>", 257), ("</s>", 258))


def byte_tokenizer_json() -> str:
    vocab = {ch: b for ch, b in byte_level_alphabet().items()}
    added = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for s, i in SPECIALS
    ]  # fmt: skip
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}  # fmt: skip
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [257], "tokens": ["<s>"]}},
        },  # fmt: skip
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
            "merges": [],
        },
    }
    return json.dumps(spec, ensure_ascii=False, indent=1)


def tokenizer_config() -> dict:
    """tokenizer_config.json for the file above."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "clean_up_tokenization_spaces": False,
    }
