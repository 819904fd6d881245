"""The data-source interface (lm.data.sources): every kind of data.source resolves to a Source that
checks itself, yields documents or token data, fingerprints itself and says which tokenizer it
fixes; a new kind can be registered."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lm import config
from lm.config import ConfigError, DataConfig
from lm.data import dataset, sources
from lm.data.sources import FileSource, HFSource, Source, StdlibSource, TaskSource, source_for
from lm.data.tasks import SymbolTokenizer
from lm.data.tokenizer import ByteTokenizer, build_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry, so registrations made in a test end with it."""
    monkeypatch.setattr(sources, "KINDS", dict(sources.KINDS))


def _corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(6):
        (root / f"d{i}.txt").write_text(f"document {i}\n" * 20)
    return root


def _load(*overrides: str) -> config.Config:
    return config.load(None, list(overrides))


def _config_error(*overrides: str, source: str | None = None) -> str:
    """The ConfigError for `overrides`, or for data.source=`source` as a YAML file has it."""
    with pytest.raises(ConfigError) as e:
        if source is None:
            _load(*overrides)
        else:  # not through --set, where "hf:" would read as a mapping
            config.from_dict({"data": {"source": source}})
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- resolving


def test_each_built_in_kind_resolves(tmp_path):
    root = _corpus(tmp_path)
    cases = {
        "stdlib": (StdlibSource, "stdlib"),
        str(root): (FileSource, "files"),
        str(root / "d0.txt"): (FileSource, "files"),
        str(root / "*.txt"): (FileSource, "files"),
        "hf:roneneldan/TinyStories": (HFSource, "hf"),
        "hf:json:sub": (HFSource, "hf"),
        "task:sort": (TaskSource, "task"),
        "task:add": (TaskSource, "task"),
    }
    for spec, (cls, kind) in cases.items():
        src = source_for(DataConfig(source=spec))
        assert type(src) is cls and src.kind == kind and src.source == spec
        assert src.cached == (kind != "task")
        src.check()  # each is a valid source as given
        if kind == "task":
            assert isinstance(src.tokenizer(), SymbolTokenizer)
            assert src.example_width() == (14 if spec == "task:sort" else 20)
        else:
            assert src.tokenizer() is None and src.example_width() is None


def test_documents_fingerprints_and_token_data_go_through_the_source(tmp_path):
    root = _corpus(tmp_path)
    cfg = DataConfig(source=str(root), cache_dir=str(tmp_path / "cache"), max_docs=4)
    src = source_for(cfg)
    assert list(dataset.iter_documents(cfg)) == list(src.documents())[:4]
    assert dataset.corpus_fingerprint(cfg) == src.fingerprint()
    assert src.fingerprint() != source_for(DataConfig(source=str(root / "d0.txt"))).fingerprint()
    task = DataConfig(source="task:sort", task_train_examples=64, task_val_examples=8)
    td = dataset.prepare_data(task, build_tokenizer(task))
    assert td.train.example_width == 14 and len(td.train) == 64 * 14
    with pytest.raises(ValueError, match=r"^data.source='task:sort': generates token data"):
        list(dataset.iter_documents(task))
    with pytest.raises(ValueError, match=r"^data.source='.*': is tokenized into"):
        src.token_data(ByteTokenizer())


def test_a_source_fixes_the_tokenizer_or_leaves_it_to_data_tokenizer():
    sort = DataConfig(source="task:sort", task_symbols=4)
    assert build_tokenizer(sort) == SymbolTokenizer("ABCD", sep=" ")
    assert build_tokenizer(DataConfig(source="stdlib")) == ByteTokenizer()


# ---------------------------------------------------------------- one-line errors


@pytest.mark.parametrize("spec", ["task:foo", "task:", "task:sort:x"])
def test_an_unknown_task_names_data_source(spec):
    with pytest.raises(ValueError) as e:
        source_for(DataConfig(source=spec))
    assert str(e.value) == f"data.source={spec!r}: unknown task (known: task:sort, task:add)"
    assert _config_error(source=spec).startswith(f"data.source={spec!r}: unknown task")


@pytest.mark.parametrize(
    "spec, why",
    [
        ("/no/such/corpus", "no such file or directory"),
        ("/no/such/*.txt", "glob matches no file"),
        ("hf:", "expected hf:NAME or hf:NAME:CONFIG"),
        ("hf::config", "expected hf:NAME or hf:NAME:CONFIG"),
        ("~no-such-user-here/corpus", "cannot expand its ~"),
    ],
)
def test_a_bad_source_is_one_line_naming_data_source(spec, why):
    msg = _config_error(source=spec)
    assert msg.startswith(f"data.source={spec!r}: ") and why in msg


def test_task_settings_are_checked_by_the_source():
    base = ["data.source=task:sort", "train.seq_len=13", "model.max_seq_len=14"]
    assert _load(*base).data.source == "task:sort"
    assert _config_error(*base, "data.task_symbols=30").startswith("data.task_symbols=30")
    assert _config_error(*base, "data.tokenizer=bpe").startswith("data.tokenizer='bpe'")
    assert _config_error(*base[:2], "train.seq_len=12").startswith("train.seq_len=12")
    msg = _config_error(*base, "model.vocab_size=5")
    assert msg.startswith("model.vocab_size=5") and "task:sort tokenizer's 6 tokens" in msg


# ---------------------------------------------------------------- registering a kind


class MemorySource(Source):
    """Documents held in the source string itself: "mem:a|b|c", one document per part."""

    kind = "mem"

    def check(self):
        if not self.source[len("mem:") :]:
            raise ValueError(f"data.source={self.source!r}: no documents after mem:")

    def documents(self):
        for i, text in enumerate(self.source[len("mem:") :].split("|")):
            yield f"doc{i}", text * 50

    def describe(self):
        return {"kind": "mem", "source": self.source}


class CountingSource(Source):
    """Generated data in a tokenizer of its own: the split is the numbers 0..9, over and over."""

    kind = "count"
    cached = False

    def tokenizer(self):
        return SymbolTokenizer("0123456789")

    def token_data(self, tok):
        a = np.tile(np.arange(10, dtype=np.int32), 8)
        return dataset.TokenData(a, a[:20], len(a), 20, tok.vocab_size, Path(self.cfg.cache_dir))


def test_a_registered_source_is_used_everywhere(tmp_path, registry):
    sources.register("mem:", MemorySource)
    spec = "mem:" + "|".join(f"text {i} " for i in range(30))
    cfg = _load(f"data.source={spec}", f"data.cache_dir={tmp_path / 'cache'}")
    assert type(source_for(cfg.data)) is MemorySource
    docs = list(dataset.iter_documents(cfg.data))
    assert len(docs) == 30 and docs[0] == ("doc0", "text 0 " * 50)
    td = dataset.prepare_data(cfg.data, ByteTokenizer(), progress=False)
    assert td.path.parent == tmp_path / "cache" / "tokens"
    assert td.train_bytes + td.val_bytes == sum(len(t) for _, t in docs)
    assert dataset.prepare_data(cfg.data, ByteTokenizer(), progress=False).path == td.path  # cached
    assert _config_error(source="mem:") == "data.source='mem:': no documents after mem:"


def test_a_registered_generated_source_fixes_its_tokenizer(tmp_path, registry):
    sources.register("count", CountingSource)
    cfg = _load("data.source=count", "model.vocab_size=13")
    tok = build_tokenizer(cfg.data)
    assert tok == SymbolTokenizer("0123456789")
    td = dataset.prepare_data(cfg.data, tok)
    assert list(td.train[:12]) == [*range(10), 0, 1]
    # an exact name is not a prefix: "counting" is still a (missing) path
    assert "no such file" in _config_error("data.source=counting")
    # validation sizes the model for the source's tokenizer, not data.tokenizer's
    assert _load("data.source=count", "data.tokenizer=bpe").data.tokenizer == "bpe"
    msg = _config_error("data.source=count", "model.vocab_size=12")
    assert msg.startswith("model.vocab_size=12") and "count tokenizer's 13 tokens" in msg


def test_register_refuses_a_taken_name_and_a_blank_one(registry):
    with pytest.raises(ValueError, match="already registered"):
        sources.register("hf:", MemorySource)
    with pytest.raises(ValueError, match="non-empty"):
        sources.register("", MemorySource)
    sources.register("hf:", MemorySource, replace=True)
    assert type(source_for(DataConfig(source="hf:x"))) is MemorySource


def test_the_longest_scheme_wins(registry):
    sources.register("task:mem:", MemorySource)
    assert type(source_for(DataConfig(source="task:mem:a"))) is MemorySource
    assert type(source_for(DataConfig(source="task:sort"))) is TaskSource


# ---------------------------------------------------------------- import structure


def test_validating_a_task_config_imports_no_model_data_or_tokenizer():
    """lm.config reaches the sources only through modules that never import it back."""
    code = (
        "import sys\n"
        "from lm import config\n"
        "config.load(None, ['data.source=task:add', 'train.seq_len=19', 'model.max_seq_len=20'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('lm.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    want = ["lm.config", "lm.data", "lm.data.corpus", "lm.data.sources", "lm.data.tasks"]
    assert out.strip() == str(want)
