import math
from collections import Counter

import jax
import numpy as np
import pytest

from lm import config
from lm.inference import sampling
from lm.inference.request import GREEDY
from lm.model import bigram
from lm.training import counting


def test_fit_matches_counting_by_hand():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 5, 400)
    V, k = 5, 0.5
    logp = bigram.fit(tokens, V, k)
    pairs = Counter(zip(tokens[:-1].tolist(), tokens[1:].tolist(), strict=True))
    firsts = Counter(tokens[:-1].tolist())
    for a in range(V):
        for b in range(V):
            want = math.log((pairs[(a, b)] + k) / (firsts[a] + k * V))
            assert logp[a, b] == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, rtol=1e-5)


def test_a_deterministic_chain_is_learned_and_greedy_follows_it():
    tokens = np.tile(np.arange(6), 200)  # 0 1 2 3 4 5 0 1 ...
    logp = bigram.fit(tokens, 8, 1e-3)
    windows = np.stack([tokens[i : i + 9] for i in range(0, 60, 9)])
    loss, se, bpb = bigram.evaluate(logp, windows, np.ones(8, np.int64))
    assert loss < 0.01 and bpb == pytest.approx(loss / math.log(2))
    out = sampling.generate_bigram(logp, [3], jax.random.PRNGKey(0), 8, GREEDY)
    assert out == [4, 5, 0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="prompt"):
        sampling.generate_bigram(logp, [], jax.random.PRNGKey(0), 3)


def test_bigram_run_beats_unigram_and_writes_the_contract(tmp_path):
    cfg = config.load(
        None,
        [
            "kind=bigram",
            "data.max_docs=300",
            f"data.cache_dir={tmp_path / 'cache'}",
            "train.seq_len=64",
            "model.max_seq_len=64",
            "train.eval_windows=32",
        ],
    )
    out = counting.train_run(cfg, tmp_path / "run", print_fn=lambda *_: None)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"val_bpb"' in lines[1]
    assert out["val_loss"] < out["unigram_entropy"] - 0.5
    np.testing.assert_array_equal(bigram.load(tmp_path / "run"), out["table"])
