"""lm: decoder-only language models and their scaling laws, in JAX.

The packages, each importing only those listed before it (tests/test_layout.py checks):

    config     a run as one frozen dataclass tree
    util       atomic writes, one process per directory, safetensors headers, fonts
    hardware   the machine's matmul peak, native precision and XLA settings
    data       tokenizers, document sources, the token cache, batch_at(seed, step)
    model      the Transformer, its kernels, RoPE, FLOP counts, the bigram baseline
    training   loss, optimizer, train step, shardings, checkpoints, the run loop
    inference  opening a run, sampling, the batching engine, inspection, model files
    serving    the OpenAI-compatible server with its inspector page, terminal chat
    interop    Hugging Face checkpoints in and out
    scaling    sweeps, scaling-law fits, reports
    cli        the `lm` command
"""
