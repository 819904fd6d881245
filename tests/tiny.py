"""The tiny run that the export, inspect and sample-CLI tests train once per module, the tiny
base run the sweep tests build their sweeps on, and the XLA flag their subprocesses run with."""

from lm import config

# XLA_FLAGS for the `lm` and worker subprocesses that tests start on these tiny models: XLA:CPU's
# LLVM optimizations off. Their time is compiling (cold, ~20 s a process), which this cuts ~3x;
# what those tests compare (losses across meshes, processes, resumes) is compiled alike.
FAST_XLA_FLAGS = "--xla_backend_optimization_level=0"


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


def tiny_sweep_base(tmp) -> dict:
    """A sweep file's `base`: 32-token windows, batch 8, 300 documents of the embedded corpus."""
    return {
        "preset": "gpt2",
        "model": {"vocab_size": 259, "max_seq_len": 32, "bias": False},
        "data": {"max_docs": 300, "cache_dir": str(tmp / "cache")},
        "train": {"seq_len": 32, "batch_size": 8, "steps_per_call": 4, "log_every": 4,
                  "ckpt_every": 1000, "peak_flops": 1e11},
    }  # fmt: skip
