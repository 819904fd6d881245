"""The tiny 4-step run that the export, inspect and sample-CLI tests train once per module."""

from lm import config


def tiny_cfg(tmp, *extra):
    return config.load(
        None,
        [
            "model.n_layers=2",
            "model.d_model=32",
            "model.n_heads=2",
            "model.max_seq_len=32",
            "data.max_docs=300",
            f"data.cache_dir={tmp / 'cache'}",
            "train.seq_len=32",
            "train.batch_size=8",
            "train.steps=4",
            "train.warmup_steps=1",
            "train.log_every=4",
            "train.eval_every=4",
            "train.eval_windows=4",
            "train.ckpt_every=4",
            "train.steps_per_call=4",
            "train.peak_flops=1e11",
            *extra,
        ],
    )
