"""`lm train` for `kind: bigram`: count the training split into the bigram table, score it on
the validation windows every Transformer run is scored on, and write the run directory as any
run does (config, tokenizer, metrics.jsonl), with the table as bigram.npy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lm.config import Config, ConfigError
from lm.data import dataset
from lm.data.tokenizer import save_tokenizer
from lm.model import bigram
from lm.training.loop import unigram_entropy
from lm.training.rundir import (
    MetricsLog,
    check_run_dir,
    get_tokenizer,
    has_tokenizer,
    prepare_run_dir,
)
from lm.util import dirlock


def train_run(cfg: Config, run_dir: str | Path, print_fn=print) -> dict:
    """Count, score and write the bigram run in `run_dir` (a rerun counts again: it takes
    seconds). Returns the scores, with the table and the tokenizer."""
    run_dir = Path(run_dir)
    # As lm.training.loop.train_run: the inputs are checked before anything is written to run_dir.
    check_run_dir(cfg, run_dir)
    tok = get_tokenizer(cfg, run_dir, save=False)
    try:
        tokens = dataset.prepare_data(cfg.data, tok, progress=True)
        windows = dataset.val_windows(tokens.val, cfg.train.eval_windows, cfg.train.seq_len)
    except ValueError as e:
        why = str(e)
        src = f"data.source={cfg.data.source!r}: "
        raise ConfigError(why if why.startswith("data.") else src + why) from None
    with dirlock.hold(run_dir, warn=print_fn):
        return _train_locked(cfg, run_dir, tok, tokens, windows, print_fn)


def _train_locked(cfg: Config, run_dir: Path, tok, tokens, windows, print_fn) -> dict:
    prepare_run_dir(cfg, run_dir)
    if not has_tokenizer(run_dir):
        save_tokenizer(tok, run_dir)
    V = tok.vocab_size
    logp = bigram.fit(tokens.train, V, cfg.bigram.add_k)
    np.save(run_dir / bigram.TABLE_FILE, logp, allow_pickle=False)
    vl, se, bpb = bigram.evaluate(logp, windows, tok.token_bytes())
    t = np.asarray(tokens.train, np.int64)
    train_loss = float(-logp[t[:-1], t[1:]].astype(np.float64).mean())
    log = MetricsLog(run_dir, resume_step=-1)
    n = len(tokens.train)
    log.write({"step": 1, "tokens": n, "train_loss": train_loss})
    log.write({"step": 1, "tokens": n, "val_loss": vl, "val_loss_se": se, "val_bpb": bpb})
    log.close()
    uni = unigram_entropy(tokens.train, tokens.val, V)
    print_fn(
        f"bigram (add-{cfg.bigram.add_k}) on {n:,} tokens: val_loss {vl:.4f} ± {se:.4f} "
        f"nats/token ({bpb:.4f} bits/byte) vs unigram entropy {uni:.4f}"
    )
    summary = {
        "val_loss": vl,
        "val_loss_se": se,
        "val_bpb": bpb,
        "train_loss": train_loss,
        "unigram_entropy": uni,
    }
    (run_dir / "bigram.json").write_text(json.dumps(summary, indent=1))
    return summary | {"table": logp, "tokenizer": tok}
