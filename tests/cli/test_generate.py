"""`lm sample` end to end on tiny runs (a Transformer and a bigram), and one clear line with
exit status 2 for every bad request."""

import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from tiny import tiny_cfg

from lm import cli
from lm.data.tokenizer import load_tokenizer
from lm.inference import export, sampling
from lm.inference.request import GREEDY
from lm.model import bigram
from lm.training import checkpoint, counting, loop

ROOT = Path(__file__).resolve().parents[2]
# what the `lm` script runs (`python -m lm.cli` would import lm.cli twice, as __main__ too)
LM = "import sys; from lm.cli import main; sys.exit(main())"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    loop.train_run(tiny_cfg(tmp), tmp / "run", progress=False, print_fn=lambda *_: None)
    counting.train_run(tiny_cfg(tmp, "kind=bigram"), tmp / "bigram", print_fn=lambda *_: None)
    # a run directory that was set up but never checkpointed
    (tmp / "fresh").mkdir()
    for name in ("config.yaml", "tokenizer.json"):
        shutil.copy(tmp / "run" / name, tmp / "fresh" / name)
    return tmp


def _lm(*args):
    r = subprocess.run(
        [sys.executable, "-c", LM, *map(str, args)], capture_output=True, timeout=300, cwd=ROOT
    )
    # decoded by hand: text=True would also turn a generated "\r" into "\n"
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
    return r


def test_sample_streams_the_models_text(runs):
    run = runs / "run"
    cfg, params, tok = checkpoint.load_run(run)
    prompt = [tok.bos_id, *tok.encode("def ")]
    greedy = sampling.generate(
        params, cfg.model, [prompt], jax.random.fold_in(jax.random.PRNGKey(0), 0), 20, GREEDY,
        eos_id=tok.eos_id, pad_id=tok.pad_id,
    )[0]  # fmt: skip
    r = _lm("sample", "--run", run, "--prompt", "def ", "--temperature", "0",
            "--max-new-tokens", "20")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "def " + tok.decode(greedy) + "\n"


def test_sample_options_in_process(runs, tmp_path, capsys):
    run = str(runs / "run")
    base = ["sample", "--run", run, "--max-new-tokens", "12", "--seed", "3"]
    assert cli.main([*base, "--num-samples", "2", "--top-k", "5", "--top-p", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "--- sample 1 of 2 ---" in out and "--- sample 2 of 2 ---" in out
    # an empty prompt is BOS alone; the default length fills the context, at most 200
    assert cli.main(["sample", "--run", run, "--min-p", "0.05"]) == 0
    assert capsys.readouterr().out.strip()
    # an exported file samples exactly as its run directory
    export.export(run, tmp_path / "m.lm")
    assert cli.main([*base, "--prompt", "import"]) == 0
    from_run = capsys.readouterr().out
    assert cli.main([*base, "--prompt", "import", "--run", str(tmp_path / "m.lm")]) == 0
    assert capsys.readouterr().out == from_run and from_run.startswith("import")


def test_sample_a_bigram_run(runs, capsys):
    table = bigram.load(runs / "bigram")
    tok = load_tokenizer(runs / "bigram")
    prompt = [tok.bos_id, *tok.encode("import")]
    key = jax.random.fold_in(jax.random.PRNGKey(0), 0)
    want = sampling.generate_bigram(table, prompt, key, 30, GREEDY, eos_id=tok.eos_id)
    args = ["sample", "--run", str(runs / "bigram"), "--prompt", "import"]
    assert cli.main([*args, "--temperature", "0", "--max-new-tokens", "30"]) == 0
    assert capsys.readouterr().out == "import" + tok.decode(want) + "\n"
    # no context limit for a bigram: more tokens than a Transformer's max_seq_len is fine
    assert cli.main([*args, "--max-new-tokens", "300"]) == 0


BAD = {
    "top-p zero": (["--top-p", "0"], "--top-p"),
    "top-p above one": (["--top-p", "1.5"], "--top-p"),
    "top-k zero": (["--top-k", "0"], "--top-k"),
    "negative temperature": (["--temperature", "-0.5"], "--temperature"),
    "min-p one": (["--min-p", "1"], "--min-p"),
    "no samples": (["--num-samples", "0"], "--num-samples"),
    "too many tokens": (["--max-new-tokens", "40"], "--max-new-tokens"),
    "zero tokens": (["--max-new-tokens", "0"], "--max-new-tokens"),
    "prompt longer than the context": (["--prompt", "x" * 40], "max_seq_len"),
    "unknown run": (["--run", "{tmp}/nowhere"], "nowhere"),
    "no checkpoint": (["--run", "{tmp}/fresh"], "no checkpoint"),
    "not a run directory": (["--run", "{tmp}/cache"], "not a run directory"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_requests_are_one_line(runs, case, capsys):
    extra, culprit = BAD[case]
    extra = [a.replace("{tmp}", str(runs)) for a in extra]
    args = ["sample", "--run", str(runs / "run"), *extra]
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], lines
    assert captured.out == ""


def test_bad_requests_in_a_real_process(runs):
    for extra in (["--top-p", "2"], ["--prompt", "y" * 64]):
        r = _lm("sample", "--run", runs / "run", *extra)
        assert r.returncode == 2 and r.stdout == "", r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr


def test_transformer_only_commands_refuse_a_bigram(runs, capsys):
    for cmd in (["inspect"], ["embed-sim", "if"]):
        assert cli.main([*cmd, "--run", str(runs / "bigram")]) == 2
        assert "bigram" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys):
    for cmd in ("sample", "inspect", "embed-sim", "export"):
        with pytest.raises(SystemExit) as e:
            cli.build_parser().parse_args([cmd, "--help"])
        assert e.value.code == 0
        assert "--run" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["sample", "--help"])
    assert "max_seq_len" in capsys.readouterr().out.replace("\n", " ")
