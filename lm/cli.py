"""The `lm` command line. Each subcommand is a thin layer over library functions.

Bad input ends with one line on stderr naming the culprit and exit status 2, before any compute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Re-exported: the helpers the subcommand modules share live in lm.cliutil, which imports no
# other lm module, so those modules need not import this one (which imports them).
from lm.cliutil import (  # noqa: F401
    UsageError,
    add_distributed_options,
    add_set_option,
    check_out_dir,
    init_distributed,
    split_set_groups,
)

EPILOG_SET = (
    "Override any config key with --set SECTION.KEY=VALUE (repeatable), "
    "e.g. --set model.d_model=256 train.lr=3e-4. Sections: model, data, train, mesh; "
    "top-level keys: kind (transformer|bigram), preset (gpt2|llama|none)."
)


def _config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", required=required, help="YAML config file (see configs/)")
    add_set_option(p, "override config keys, e.g. --set model.d_model=256 train.lr=3e-4")


def _load_config(args):
    from lm import config

    return config.load(args.config, args.set)


# ---------------------------------------------------------------- train / eval


def cmd_train(args) -> int:
    from lm import config as config_lib
    from lm import loop

    run_dir = Path(args.out)
    if not args.dry_run:
        check_out_dir(run_dir)
    init_from = None
    if args.init_from:
        init_from = Path(args.init_from)
        if not (init_from / "config.yaml").is_file():
            raise UsageError(f"--init-from {init_from}: not a run directory (no config.yaml)")
    if args.config is None:
        saved = run_dir / "config.yaml"
        if not saved.is_file() and init_from is not None:  # the source's config, with --set
            saved = init_from / "config.yaml"
        if not saved.is_file():
            raise UsageError(f"--config is required: {run_dir} holds no config.yaml to resume")
        cfg = config_lib.load(saved, args.set)
    else:
        cfg = _load_config(args)
    if init_from is not None:
        init_from = (init_from, _init_step(init_from, cfg))
    init_distributed(args)
    if args.dry_run:
        from lm import dryrun

        dryrun.report(cfg, print_fn=print)
        return 0
    if cfg.kind == "bigram":
        import jax

        from lm import bigram

        out = bigram.train_run(cfg, run_dir)
        if args.sample_tokens > 0:
            tok = out["tokenizer"]
            prompt = [tok.bos_id, *tok.encode(args.prompt)]
            new = bigram.generate(
                out["table"], prompt, jax.random.PRNGKey(cfg.train.seed), args.sample_tokens,
                temperature=args.temperature, eos_id=tok.eos_id,
            )  # fmt: skip
            print(f"--- bigram sample (temperature {args.temperature}) ---")
            print(args.prompt + tok.decode(new))
        return 0
    summary = loop.train_run(
        cfg, run_dir, progress=not args.no_progress, init_from=init_from, restart=args.restart
    )
    if args.sample_tokens > 0:
        import jax

        if jax.process_count() == 1:  # on a pod, sample afterwards with `lm sample`
            _print_sample(summary["config"], summary["state"]["params"], summary["tokenizer"], args)
    return 0


def _init_step(src: Path, cfg) -> int:
    """The latest checkpoint step of --init-from's run, whose model must be this run's."""
    from lm import checkpoint
    from lm import config as config_lib

    theirs = config_lib.to_dict(config_lib.load(src / "config.yaml"))["model"]
    ours = config_lib.to_dict(cfg)["model"]
    for k in ours:
        if ours[k] != theirs.get(k) and k not in ("compute_dtype", "remat", "scan_layers"):
            raise UsageError(
                f"model.{k}={ours[k]!r} differs from {theirs.get(k)!r} in --init-from {src}"
            )
    mgr = checkpoint.manager(src, read_only=True)
    step = mgr.latest_step()
    mgr.close()
    if step is None:
        raise UsageError(f"--init-from {src}: no checkpoint yet")
    return int(step)


def _print_sample(cfg, params, tok, args) -> None:
    import jax

    from lm import sampling

    prompt = tok.encode(args.prompt) if args.prompt else []
    prompt = [tok.bos_id, *prompt]
    n = min(args.sample_tokens, cfg.model.max_seq_len - len(prompt))
    out = sampling.generate(
        params,
        cfg.model,
        [prompt],
        jax.random.PRNGKey(cfg.train.seed),
        max_new_tokens=n,
        temperature=args.temperature,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
    )[0]
    print(f"--- sample (temperature {args.temperature}, {len(out)} tokens) ---")
    print(args.prompt + tok.decode(out))
    print("---")


def cmd_eval(args) -> int:
    import numpy as np

    from lm import checkpoint, data, loop, sharding, train

    run_dir = Path(args.run)
    if not (run_dir / checkpoint.CONFIG_FILE).is_file():
        raise UsageError(f"--run {run_dir}: not a run directory (no config.yaml)")
    cfg, params, tok = checkpoint.load_run(run_dir, step=args.step)
    n = args.windows or cfg.train.eval_windows
    tokens = data.prepare_data(cfg.data, tok, progress=False)
    windows = data.val_windows(tokens.val, n, cfg.train.seq_len)
    token_bytes = np.zeros(cfg.model.vocab_size, np.int32)
    token_bytes[: tok.vocab_size] = tok.token_bytes()
    mesh = sharding.make_mesh(cfg.mesh)
    vl, se, bpb = loop.evaluate(
        train.make_eval_step(cfg, mesh), params, windows, token_bytes, cfg.train.batch_size
    )
    print(f"val_loss {vl:.4f} ± {se:.4f} nats/token, {bpb:.4f} bits/byte ({n} windows)")
    return 0


# ---------------------------------------------------------------- tokenizer


def _tokenizer_from(args):
    from lm.tokenizer import ByteTokenizer, load_tokenizer

    if args.run:
        return load_tokenizer(Path(args.run))
    if args.config or args.set:
        return _build_tokenizer(_load_config(args).data)
    return ByteTokenizer()


def _build_tokenizer(data_cfg):
    from lm.tokenizer import build_tokenizer

    try:
        return build_tokenizer(data_cfg)
    except ValueError as e:  # no text, or a vocabulary the corpus cannot fill
        raise UsageError(str(e)) from None


def cmd_tok_train(args) -> int:
    from lm.tokenizer import save_tokenizer

    cfg = _load_config(args)
    if cfg.data.tokenizer == "byte":
        raise UsageError("data.tokenizer='byte' needs no training; set bpe or unigram")
    check_out_dir(args.out)
    tok = _build_tokenizer(cfg.data)
    path = save_tokenizer(tok, Path(args.out))
    print(f"{cfg.data.tokenizer} tokenizer, {tok.vocab_size} tokens -> {path}")
    return 0


def cmd_tok_encode(args) -> int:
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
    from lm.pieces import format_groups  # ids grouped into whole characters

    for line in format_groups(tok, text, ids):
        print(line)
    return 0


def cmd_tok_decode(args) -> int:
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


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lm", description="Decoder-only language models in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train (or resume) a run",
        description="Train a model from a config; rerun on the same --out to resume.",
        epilog=EPILOG_SET,
    )
    _config_args(t)
    t.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    t.add_argument("--dry-run", action="store_true", help="compile and report memory/FLOPs only")
    t.add_argument(
        "--restart",
        action="store_true",
        help="train from the start in an --out whose metrics.jsonl shows earlier training but "
        "whose checkpoints are gone (without it such a directory is refused); the old "
        "metrics.jsonl is kept as metrics.jsonl.before-restart",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--sample-tokens", type=int, default=200, help="tokens to sample at the end (0: none)"
    )
    t.add_argument("--prompt", default="", help="prompt for the final sample")
    t.add_argument(
        "--init-from",
        metavar="RUN",
        help="start a new --out run from RUN's latest checkpoint (its state and step; e.g. a "
        "run written by lm import-hf, to fine-tune); without --config, RUN's config + --set",
    )
    t.add_argument("--temperature", type=float, default=0.8, help="for the final sample")
    add_distributed_options(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval",
        help="validation loss and bits/byte of a run's checkpoint",
        description="Score a checkpoint on the run's validation split: the mean loss "
        "(nats/token) over --windows windows of train.seq_len tokens, its standard error "
        "over windows, and bits per byte (comparable across tokenizers). The windows are fixed, "
        "spread evenly over the split; with the default --windows they are the ones "
        "training evaluates on.",
    )
    e.add_argument("--run", required=True, help="run directory")
    e.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    e.add_argument("--windows", type=int, default=None, help="validation windows (default: config)")
    e.set_defaults(func=cmd_eval)

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
    _config_args(tt)
    tt.add_argument("--out", required=True, help="directory to write tokenizer.model into")
    tt.set_defaults(func=cmd_tok_train)
    descriptions = {
        "encode": "Show how text becomes tokens: one line per token with its id, the "
        "tokenizer's own piece and the text it stands for; tokens that only together make a "
        "character (a character's UTF-8 bytes, with the byte tokenizer) share one line.",
        "decode": "Turn token ids back into text.",
    }
    for name, fn, help_ in (
        ("encode", cmd_tok_encode, "text -> pieces and ids"),
        ("decode", cmd_tok_decode, "ids -> text"),
    ):
        q = tsub.add_parser(name, help=help_, description=descriptions[name],
                            epilog="Tokenizer: --run DIR, a config, or bytes.")  # fmt: skip
        q.add_argument("--run", help="use this run directory's tokenizer")
        _config_args(q)
        if name == "encode":
            q.add_argument("text", help="text to encode ('-' reads stdin)")
        else:
            q.add_argument("ids", nargs="+", help="token ids (space or comma separated)")
        q.set_defaults(func=fn)

    _add_optional(sub)
    return p


def _add_optional(sub) -> None:
    """Subcommands whose modules live beside the core (sampling, scaling, ...)."""
    try:
        from lm.scaling.commands import add_fit_parser
    except ImportError:
        add_fit_parser = None
    if add_fit_parser is not None:
        sc = sub.add_parser(
            "scaling",
            help="fit and plot scaling laws from runs",
            description="Fit scaling laws to a results.csv (lm scaling fit) or write a "
            "sweep's report, fits and plots (lm scaling plot).",
        )
        ssub = sc.add_subparsers(dest="scaling_command", required=True)
        add_fit_parser(ssub)
        try:
            from lm.scaling.report import add_plot_parser
        except ImportError:
            add_plot_parser = None
        if add_plot_parser is not None:
            add_plot_parser(ssub)
    from lm.scaling.sweep_cli import add_sweep_parser

    add_sweep_parser(sub)
    from lm.hf import add_parsers as add_hf_parsers

    add_hf_parsers(sub)
    try:
        from lm.sampling_cli import add_parsers
        from lm.serve_cli import add_parsers as add_serve_parsers
    except ImportError:
        add_parsers = add_serve_parsers = None
    if add_parsers is not None:
        add_parsers(sub)
        add_serve_parsers(sub)  # serve and chat, after sample, inspect, embed-sim and export


def loop_errors():
    from lm.loop import TrainingDiverged

    return (TrainingDiverged,)


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions whose message is already the one line a user needs (exit status 2)."""
    from lm.checkpoint import CheckpointError
    from lm.loop import RunDirError
    from lm.run import ModelFileError
    from lm.runlock import Busy

    return (CheckpointError, RunDirError, ModelFileError, Busy)


def _os_error(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split())


def main(argv: list[str] | None = None) -> int:
    from lm.xla_env import configure

    configure()
    argv = split_set_groups(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    from lm.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e.args[0] if len(e.args) == 1 else _os_error(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a permission, a directory where a file should be
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 2
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except loop_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Through the package, so `python -m lm.cli` runs the module the `lm` script runs, not a
    # second copy of it named __main__.
    from lm.cli import main as _main

    sys.exit(_main())
