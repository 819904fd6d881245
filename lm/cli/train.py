"""`lm train` (with `--dry-run`, `--init-from`, `--restart`) and `lm eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm.cli.common import (
    EPILOG_SET,
    UsageError,
    add_config_options,
    add_distributed_options,
    check_out_dir,
    init_distributed,
    load_config,
)
from lm.inference.request import SamplingParams


def cmd_train(args) -> int:
    from lm.training import loop  # lazy: jax loads only when a command runs

    run_dir = Path(args.out)
    if not args.dry_run:
        check_out_dir(run_dir)
    init_from = Path(args.init_from) if args.init_from else None
    if init_from is not None and not (init_from / "config.yaml").is_file():
        raise UsageError(f"--init-from {init_from}: not a run directory (no config.yaml)")
    cfg = _train_config(args, run_dir, init_from)
    if init_from is not None:
        init_from = (init_from, _init_step(init_from, cfg))
    init_distributed(args)
    if args.dry_run:
        from lm.training import dryrun  # lazy: jax loads only when a command runs

        dryrun.report(cfg, print_fn=print)
        return 0
    if cfg.kind == "bigram":
        from lm.training import counting  # lazy: jax loads only when a command runs

        out = counting.train_run(cfg, run_dir)
        if args.sample_tokens > 0:
            _print_bigram_sample(cfg, out["table"], out["tokenizer"], args)
        return 0
    summary = loop.train_run(
        cfg, run_dir, progress=not args.no_progress, init_from=init_from, restart=args.restart
    )
    if args.sample_tokens > 0:
        import jax  # lazy: jax loads only when a command runs

        if jax.process_count() == 1:  # on a pod, sample afterwards with `lm sample`
            _print_sample(summary["config"], summary["state"]["params"], summary["tokenizer"], args)
    return 0


def _train_config(args, run_dir: Path, init_from: Path | None):
    """--config with --set; without --config, the run directory's own config.yaml (a resume)
    or --init-from's, each with --set."""
    from lm import config as config_lib  # lazy: the config module validates through lm.data

    if args.config is not None:
        return load_config(args)
    saved = run_dir / "config.yaml"
    if not saved.is_file() and init_from is not None:  # the source's config, with --set
        saved = init_from / "config.yaml"
    if not saved.is_file():
        raise UsageError(f"--config is required: {run_dir} holds no config.yaml to resume")
    return config_lib.load(saved, args.set)


def _init_step(src: Path, cfg) -> int:
    """The latest checkpoint step of --init-from's run, whose model must be this run's."""
    from lm import config as config_lib  # lazy: the config module validates through lm.data
    from lm.training import checkpoint  # lazy: jax loads only when a command runs

    theirs = config_lib.to_dict(config_lib.load(src / "config.yaml"))["model"]
    ours = config_lib.to_dict(cfg)["model"]
    for k in ours:
        if ours[k] != theirs.get(k) and k not in ("compute_dtype", "remat", "scan_layers"):
            raise UsageError(
                f"model.{k}={ours[k]!r} differs from {theirs.get(k)!r} in --init-from {src}"
            )
    step = checkpoint.latest_step(src)
    if step is None:
        raise UsageError(f"--init-from {src}: no checkpoint yet")
    return step


def _print_sample(cfg, params, tok, args) -> None:
    import jax  # lazy: jax loads only when a command runs

    from lm.inference import sampling  # lazy: jax loads only when a command runs

    prompt = [tok.bos_id, *(tok.encode(args.prompt) if args.prompt else [])]
    n = min(args.sample_tokens, cfg.model.max_seq_len - len(prompt))
    out = sampling.generate(
        params, cfg.model, [prompt], jax.random.PRNGKey(cfg.train.seed), max_new_tokens=n,
        sp=SamplingParams(temperature=args.temperature), eos_id=tok.eos_id,
        pad_id=tok.pad_id,
    )[0]  # fmt: skip
    print(f"--- sample (temperature {args.temperature}, {len(out)} tokens) ---")
    print(args.prompt + tok.decode(out))
    print("---")


def _print_bigram_sample(cfg, table, tok, args) -> None:
    import jax  # lazy: jax loads only when a command runs

    from lm.inference import sampling  # lazy: jax loads only when a command runs

    prompt = [tok.bos_id, *tok.encode(args.prompt)]
    new = sampling.generate_bigram(
        table, prompt, jax.random.PRNGKey(cfg.train.seed), args.sample_tokens,
        SamplingParams(temperature=args.temperature), eos_id=tok.eos_id,
    )  # fmt: skip
    print(f"--- bigram sample (temperature {args.temperature}) ---")
    print(args.prompt + tok.decode(new))


def cmd_eval(args) -> int:
    from lm.training import checkpoint, loop  # lazy: jax loads only when a command runs

    run_dir = Path(args.run)
    if not (run_dir / checkpoint.CONFIG_FILE).is_file():
        raise UsageError(f"--run {run_dir}: not a run directory (no config.yaml)")
    cfg, params, tok = checkpoint.load_run(run_dir, step=args.step)
    n = args.windows or cfg.train.eval_windows
    vl, se, bpb = loop.evaluate_run(cfg, params, tok, n)
    print(f"val_loss {vl:.4f} ± {se:.4f} nats/token, {bpb:.4f} bits/byte ({n} windows)")
    return 0


def add_parsers(sub: Any) -> None:
    """Register train and eval on the `lm` subparsers."""
    t = sub.add_parser(
        "train",
        help="train (or resume) a run",
        description="Train a model from a config; rerun on the same --out to resume.",
        epilog=EPILOG_SET,
    )
    add_config_options(t)
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
