"""`lm import-hf` and `lm export-hf`: Hugging Face Llama / GPT-2 model directories in and out
(lm.interop.hf). A field we cannot reproduce is an HFError, one line, before any weight is read."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from lm import config
from lm.cli.common import add_set_option, check_out_dir
from lm.data.tokenizer import load_tokenizer
from lm.interop import hf


def cmd_import(args) -> int:
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on every save
    check_out_dir(args.out)
    run_dir = hf.import_hf(args.path, args.out, args.set)
    m = config.load(run_dir / "config.yaml").model
    tok = load_tokenizer(run_dir)
    print(
        f"imported {args.path} -> {run_dir}: {m.n_layers} layers, d_model {m.d_model}, "
        f"{m.n_heads} heads ({m.kv_heads} kv), vocab {m.vocab_size}, context {m.max_seq_len}; "
        f"{tok.backend} tokenizer ({tok.vocab_size} tokens)"
    )
    print(f'try: lm sample --run {run_dir} --prompt "Hello"')
    return 0


def cmd_export(args) -> int:
    logging.getLogger("absl").setLevel(logging.ERROR)
    out = hf.export_hf(args.run, args.out, args.step)
    arch = json.loads((out / hf.CONFIG_JSON).read_text())["architectures"][0]
    print(f"wrote {out}: {arch} ({', '.join(sorted(os.listdir(out)))})")
    print(f"load it: transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def add_parsers(sub: Any) -> None:
    """Register import-hf and export-hf on the `lm` subparsers."""
    i = sub.add_parser(
        "import-hf",
        help="a local Hugging Face Llama/GPT-2 model directory -> a run directory",
        description="Read a Hugging Face model directory (config.json, model.safetensors or "
        "shards with model.safetensors.index.json, tokenizer.model or tokenizer.json) of a "
        "Llama-family model (RoPE incl. linear/llama3 scaling, RMSNorm, SwiGLU, GQA, tied or "
        "untied) or GPT-2, and write a run directory (config.yaml, tokenizer, a step-0 "
        "checkpoint) for lm sample, inspect, eval and train. Unsupported config fields stop "
        "it with one line naming the field, before any weight is read.",
        epilog="Fine-tune: set the training keys here (e.g. --set data.source=my.txt "
        "train.steps=200 train.lr=1e-4), then `lm train --out DIR`; or branch runs off it with "
        "`lm train --init-from DIR --out NEW --set ...`. tokenizer.json needs the tokenizers "
        "package: pip install 'lm[convert]'.",
    )
    i.add_argument("path", help="Hugging Face model directory (local)")
    i.add_argument("--out", required=True, help="run directory to create")
    add_set_option(
        i,
        "config overrides for the run (data.*, train.*; model.compute_dtype/param_dtype/"
        "remat/scan_layers)",
    )
    i.set_defaults(func=cmd_import)

    x = sub.add_parser(
        "export-hf",
        help="a run's checkpoint -> a Hugging Face model directory transformers loads",
        description="Write a run's checkpoint as config.json, model.safetensors, "
        "generation_config.json and the tokenizer files: GPT2LMHeadModel for layernorm + "
        "learned positions + gelu models, LlamaForCausalLM for rmsnorm + rope + swiglu.",
    )
    x.add_argument("--run", required=True, help="run directory")
    x.add_argument("--out", required=True, help="directory to write")
    x.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    x.set_defaults(func=cmd_export)
