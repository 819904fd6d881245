"""`lm sample`, `lm inspect`, `lm embed-sim` and `lm export`: using a trained model.

`--run` takes a run directory or a model file written by `lm export` (lm.inference.load).
Arguments are checked before jax is imported or a checkpoint read; bad ones end with one line
on stderr and exit status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from lm.cli.common import UsageError
from lm.data.tokenizer import ByteTokenizer, HFTokenizer, SentencePieceTokenizer
from lm.inference import export
from lm.inference.load import need_transformer, open_run
from lm.inference.numpy_runner import decoder, read_model_file, stream_text
from lm.inference.request import (
    DEFAULT_NEW_TOKENS,
    RequestError,
    SamplingParams,
    check_fits,
    new_token_budget,
)

CONTEXT_HELP = (
    "Context: the prompt's tokens plus BOS plus --max-new-tokens must fit in the model's "
    "max_seq_len (its context length; bigram runs have no limit). Without --max-new-tokens, "
    f"as many tokens as fit are generated, up to {DEFAULT_NEW_TOKENS}; an explicit value "
    "that does not fit, or a prompt that alone fills the context, is an error."
)
RUN_HELP = "run directory (its latest checkpoint), or a model file from `lm export`"


def read_prompt(args) -> str:
    """--prompt, or standard input when it is '-' (read once, kept in args.prompt)."""
    if args.prompt == "-":
        args.prompt = sys.stdin.read()
    return args.prompt


def _encode(tok, prompt: str) -> list[int]:
    """BOS, then the prompt's tokens (an empty prompt is just BOS, as documents begin)."""
    try:
        return [tok.bos_id, *tok.encode(prompt)]
    except ValueError as e:  # text with lone surrogates has no UTF-8 form
        raise UsageError(f"--prompt: {e}") from None


# ---------------------------------------------------------------- sample


def check_sampling(args) -> SamplingParams:
    """The flags' SamplingParams; a bad value is one line naming its flag (before anything is
    loaded), e.g. `--top-p 0.0: must be in (0, 1]`."""
    try:
        sp = SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p)
    except RequestError as e:
        raise UsageError(e.for_flag()) from None
    if args.num_samples < 1:
        raise UsageError(f"--num-samples {args.num_samples}: must be >= 1")
    return sp


def cmd_sample(args) -> int:
    sp = check_sampling(args)
    cfg, tok, load = open_run(args.run)
    prompt = _encode(tok, read_prompt(args))
    limit = None if cfg.kind == "bigram" else cfg.model.max_seq_len
    try:
        n = new_token_budget(len(prompt), limit, args.max_new_tokens, bos=True)
    except RequestError as e:
        raise UsageError(e.for_flag()) from None
    params = load()
    import jax  # lazy: jax loads only when a command runs

    from lm.inference import sampling  # lazy: as jax

    for i in range(args.num_samples):
        key = jax.random.fold_in(jax.random.PRNGKey(args.seed), i)
        if args.num_samples > 1:
            print(f"{'' if i == 0 else chr(10)}--- sample {i + 1} of {args.num_samples} ---")
        if cfg.kind == "bigram":  # the table samples in one on-device scan; nothing to stream
            new = sampling.generate_bigram(params["bigram"], prompt, key, n, sp, eos_id=tok.eos_id)
            chunks: Any = [new]
        else:
            stream = sampling.stream_generate(params, cfg.model, [prompt], key, n, sp,
                                              eos_id=tok.eos_id, pad_id=tok.pad_id,
                                              chunk_size=8)  # fmt: skip
            chunks = (rows[0] for rows in stream)
        print(args.prompt, end="", flush=True)
        for text in stream_text(decoder(tok), chunks):
            print(text, end="", flush=True)
        print()
    return 0


# ---------------------------------------------------------------- inspect, embed-sim, export


def cmd_inspect(args) -> int:
    args.num_samples = 1
    sp = check_sampling(args)
    cfg, tok, load = open_run(args.run)
    need_transformer(cfg, args.run, "inspect")
    prompt = _encode(tok, read_prompt(args))
    try:
        check_fits(len(prompt), cfg.model.max_seq_len, prompt="--prompt", bos=True)
    except RequestError as e:
        raise UsageError(str(e)) from None
    out = Path(args.out) if args.out else _default_out(args.run, "inspect")
    from lm.inference import inspection  # lazy: jax loads only when a command runs

    inspection.explain(cfg, load(), tok, args.prompt, sp, args.seed, out, args.tokens,
                       stages=args.stages)  # fmt: skip
    return 0


def _default_out(run: str, name: str) -> Path:
    p = Path(run)
    return p / name if p.is_dir() else p.with_name(f"{p.stem}-{name}")


def cmd_embed_sim(args) -> int:
    cfg, tok, load = open_run(args.run)
    need_transformer(cfg, args.run, "compare")
    for w in args.words:
        if not w or not tok.encode(w):
            raise UsageError(f"word {w!r}: encodes to no tokens")
    from lm.inference import inspection  # lazy: jax loads only when a command runs

    png = Path(args.out) if args.out else _default_out(args.run, "embed_sim") / "pca.png"
    result = inspection.embedding_similarity(load(), tok, args.words, png)
    if args.json:
        print(json.dumps(result))
        return 0
    print("cosine similarity of token embeddings (mean over each word's tokens):")
    print(inspection.format_similarity(result))
    note = byte_vocab_note(tok, args.words)
    if note:
        print(note)
    ev = result["explained_variance"]
    print(f"PCA scatter ({ev[0]:.0%} + {ev[1]:.0%} of the variance): {result['png']}")
    return 0


def byte_vocab_note(tok, words: list[str]) -> str | None:
    """On a vocabulary of bytes (or of single symbols), a word's vector is the mean of its
    letters' rows, so the similarity measures shared letters, not meaning: say so."""
    single = all(len(tok.encode(w)) == len(w.encode("utf-8")) for w in words)
    if isinstance(tok, ByteTokenizer) or single:
        return (
            "note: this vocabulary is bytes, so each word is the mean of its letters' (UTF-8 "
            "bytes') embeddings: the similarity measures shared letters, not meaning. A "
            "sentencepiece run (data.tokenizer=bpe) has whole-word tokens to compare."
        )
    return None


def cmd_export(args) -> int:
    if Path(args.run).is_file():
        raise UsageError(f"--run {args.run}: is a file already; export needs a run directory")
    cfg, tok, _ = open_run(args.run)  # the checks sample makes: a checkpoint or table exists
    if not isinstance(tok, ByteTokenizer | SentencePieceTokenizer):
        # the numpy runner reimplements only these two tokenizers, so the file would not run
        hint = "; use lm export-hf for imported models" if isinstance(tok, HFTokenizer) else ""
        raise UsageError(
            f"--run {args.run}: its tokenizer is a {type(tok).__name__}; a model file carries "
            f"byte or sentencepiece tokenizers only{hint}"
        )
    logging.getLogger("absl").setLevel(logging.ERROR)
    path = export.export(Path(args.run), args.out)
    meta, tensors = read_model_file(path)  # read it back: what was written must load
    n = sum(v.size for k, v in tensors.items() if k != "tokenizer.proto")
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {cfg.kind}, {n:,} parameters, "
        f"{meta['tokenizer']} tokenizer, format {meta['format']} v{meta['format_version']}"
    )
    print(f'run it without jax: python -m lm.inference.numpy_runner {path} "your prompt"')
    return 0


# ---------------------------------------------------------------- parsers


def add_parsers(sub: Any) -> None:
    """Register sample, inspect, embed-sim and export on the `lm` subparsers."""
    for add in (_add_sample, _add_inspect, _add_embed_sim, _add_export):
        add(sub)


def _add_sample(sub: Any) -> None:
    s = sub.add_parser(
        "sample",
        help="generate text from a trained run, streamed as it is generated",
        description="Continue a prompt with a trained model (or a bigram run), printing the "
        "text as it is generated. The prompt is preceded by BOS, as documents are in training; "
        "an empty prompt samples a document from its start. Filters apply in the order "
        "temperature, top-k, top-p, min-p.",
        epilog=CONTEXT_HELP,
    )
    s.add_argument("--run", required=True, help=RUN_HELP)
    s.add_argument(
        "--prompt", default="", help="text to continue; '-' reads stdin (default: empty, just BOS)"
    )
    s.add_argument("--temperature", type=float, default=0.8, help="0: greedy (default 0.8)")
    s.add_argument("--top-k", type=int, help="keep the k likeliest tokens (k >= 1)")
    s.add_argument("--top-p", type=float, help="nucleus: the smallest top set with mass >= p")
    s.add_argument("--min-p", type=float, help="keep tokens with prob >= min_p * the top prob")
    s.add_argument(
        "--max-new-tokens",
        type=int,
        help=f"tokens to generate (default: as many as fit, up to {DEFAULT_NEW_TOKENS})",
    )
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--num-samples", type=int, default=1, help="independent samples (default 1)")
    s.set_defaults(func=cmd_sample)


def _add_inspect(sub: Any) -> None:
    i = sub.add_parser(
        "inspect",
        help="walk one next-token prediction step by step, with figures",
        description="Show how the model predicts the token after --prompt: the tokens, the "
        "embedding lookup, each layer's output and attention pattern (heatmap PNGs), the "
        "logits and the top-10 next tokens (table and bar chart), and the greedy choice "
        "against a sampled one (one random draw gives the sampled token and the sampled "
        "continuation; its p is the one it was drawn with), with both continuations and "
        "their ids. Tokens are shown as the text they decode to; a token holding part of a "
        "character shows that character and its bytes, e.g. こ[E3].",
        epilog="The prompt (with BOS) must fit in the model's max_seq_len.",
    )
    i.add_argument("--run", required=True, help=RUN_HELP)
    i.add_argument("--prompt", default="", help="text whose next token to explain ('-': stdin)")
    i.add_argument("--temperature", type=float, default=0.8, help="for the sampled choice")
    i.add_argument("--top-k", type=int, help="for the sampled choice: keep the k likeliest")
    i.add_argument("--top-p", type=float, help="for the sampled choice: nucleus mass p")
    i.add_argument("--min-p", type=float, help="for the sampled choice: min_p * the top prob")
    i.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    i.add_argument("--tokens", type=int, default=40, help="continuation length (default 40)")
    i.add_argument("--out", help="directory for the PNGs (default: RUN/inspect)")
    i.add_argument(
        "--stages",
        action="store_true",
        help="also show every stage (norms, Q/K/V, attention per head, projection, MLP) over "
        "the prompt and its greedy continuation, and the softmax at each output position",
    )
    i.set_defaults(func=cmd_inspect)


def _add_embed_sim(sub: Any) -> None:
    e = sub.add_parser(
        "embed-sim",
        help="cosine similarity of words' token embeddings, and a 2-D PCA plot",
        description="Compare words by the model's input embeddings: each word is the mean of "
        "its tokens' embedding rows. Prints the pairwise cosine similarity matrix and plots the "
        "words on their first two principal components (numpy SVD). On a byte vocabulary a "
        "word's tokens are its letters, so this measures shared letters, and it says so.",
    )
    e.add_argument("--run", required=True, help=RUN_HELP)
    e.add_argument("words", nargs="+", help="words (or any strings) to compare")
    e.add_argument("--out", help="PNG path for the PCA scatter (default: RUN/embed_sim/pca.png)")
    e.add_argument("--json", action="store_true", help="print the numbers as JSON instead")
    e.set_defaults(func=cmd_embed_sim)


def _add_export(sub: Any) -> None:
    x = sub.add_parser(
        "export",
        help="write a run as one self-describing model file (safetensors)",
        description="Write the run's latest checkpoint (or bigram table), its tokenizer and "
        "its config into one safetensors file, no pickle. Run it with numpy alone: "
        "python -m lm.inference.numpy_runner FILE 'prompt'; load it in JAX with "
        "lm.inference.export.load(FILE); or pass it as --run to sample, inspect and embed-sim.",
    )
    x.add_argument("--run", required=True, help="run directory")
    x.add_argument("--out", required=True, help="file to write, e.g. model.lm")
    x.set_defaults(func=cmd_export)
