"""Tests for evalharness.corpora: sources, selection, token cache, Debian corpora, HF offline."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_byte_tokenizer

from evalharness import cli, corpora, hub
from evalharness.corpora import (
    CORPORA,
    CorpusError,
    Document,
    TokenizedDoc,
    available_corpora,
    check_token_ids,
    dataset_label,
    iter_documents,
    load_corpus,
    parse_hf_spec,
    tokenizer_fingerprint,
)
from evalharness.models import BYTE_VOCAB_SIZE, build_byte_tokenizer
from evalharness.options import parse_lengths
from evalharness.perplexity.task import PERPLEXITY, load_documents

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fixtures


class SpyTokenizer:
    """Wraps a tokenizer and counts how many texts it was asked to encode."""

    def __init__(self, inner):
        self.inner = inner
        self.texts_encoded = 0

    def __call__(self, text, **kwargs):
        self.texts_encoded += 1 if isinstance(text, str) else len(text)
        return self.inner(text, **kwargs)

    def encode(self, text, **kwargs):
        self.texts_encoded += 1
        return self.inner.encode(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def byte_tok():
    return make_byte_tokenizer()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


@pytest.fixture
def txt_folder(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    files = {"b.txt": "bravo " * 10, "a.txt": "alpha héllo\r\nwörld", "sub/c.txt": "x" * 300}
    for rel, text in files.items():
        (root / rel).write_bytes(text.encode("utf-8"))
    (root / "ignored.md").write_text("not a txt file")
    return root, files


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ----------------------------------------------------------- byte tokenizer


def test_byte_tokenizer_is_one_token_per_byte(byte_tok):
    text = "héllo wörld\n\t€"
    ids = byte_tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == nbytes(text) == 18
    assert byte_tok.decode(ids) == text
    assert byte_tok.bos_token_id == 256


# ------------------------------------------------------------ local sources


def test_txt_folder_documents(txt_folder):
    root, files = txt_folder
    docs = list(iter_documents(f"local:{root}"))
    assert [d.doc_id for d in docs] == ["a.txt", "b.txt", "sub/c.txt"]
    assert all(isinstance(d, Document) for d in docs)
    assert {d.doc_id: d.text for d in docs} == files  # exact bytes, \r\n kept


def test_txt_folder_token_counts_are_byte_lengths(txt_folder, byte_tok, cache):
    root, files = txt_folder
    docs = load_corpus(f"local:{root}", byte_tok, cache_dir=cache)
    assert [d.doc_id for d in docs] == ["a.txt", "b.txt", "sub/c.txt"]
    for doc in docs:
        assert isinstance(doc, TokenizedDoc)
        assert doc.ids.dtype == torch.int64 and doc.ids.dim() == 1
        assert doc.ids.numel() == nbytes(files[doc.doc_id])
        assert byte_tok.decode(doc.ids.tolist()) == files[doc.doc_id]
    assert byte_tok.bos_token_id not in docs[0].ids.tolist()  # no special tokens


def test_jsonl_documents_and_text_field(tmp_path, byte_tok, cache):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"text": "first", "body": "one body"},
        {"text": "second doc", "body": "two"},
    ])
    with path.open("a") as fh:
        fh.write("\n")
        fh.write(json.dumps({"text": "after blank", "body": "three!"}) + "\n")
    docs = list(iter_documents(f"local:{path}"))
    assert [(d.doc_id, d.text) for d in docs] == [("0", "first"), ("1", "second doc"), ("3", "after blank")]
    body = load_corpus(f"local:{path}", byte_tok, text_field="body", cache_dir=cache)
    assert [(d.doc_id, d.ids.numel()) for d in body] == [("0", 8), ("1", 3), ("3", 6)]
    default = load_corpus(f"local:{path}", byte_tok, cache_dir=cache)
    assert [d.ids.numel() for d in default] == [5, 10, 11]


def test_parquet_documents_and_text_field(tmp_path, byte_tok, cache):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["aa", "bbbb", "c"], "content": ["zé", "y", "xxxx"]}).to_parquet(path)
    docs = list(iter_documents(f"local:{path}", text_field="content"))
    assert [(d.doc_id, d.text) for d in docs] == [("0", "zé"), ("1", "y"), ("2", "xxxx")]
    toks = load_corpus(f"local:{path}", byte_tok, cache_dir=cache)
    assert [(d.doc_id, d.ids.numel()) for d in toks] == [("0", 2), ("1", 4), ("2", 1)]
    toks = load_corpus(f"local:{path}", byte_tok, text_field="content", cache_dir=cache)
    assert [d.ids.numel() for d in toks] == [3, 1, 4]


def test_missing_field_names_field_and_existing_fields(tmp_path):
    jsonl = write_jsonl(tmp_path / "d.jsonl", [{"body": "x", "title": "t"}])
    with pytest.raises(CorpusError, match=r"'content'.*'body', 'title'"):
        list(iter_documents(f"local:{jsonl}", text_field="content"))
    with pytest.raises(CorpusError, match=r"'text'.*'body'"):  # default field
        iter_documents(f"local:{jsonl}")  # raises at call time, not on first next()
    pq = tmp_path / "d.parquet"
    pd.DataFrame({"body": ["x"], "n": [1]}).to_parquet(pq)
    with pytest.raises(CorpusError, match=r"'text'.*'body', 'n'"):
        iter_documents(f"local:{pq}")
    with pytest.raises(CorpusError, match=r"row 1 in .*not text"):
        iter_documents(f"local:{pq}", text_field="n")


def test_text_field_rejected_for_whole_file_corpora(txt_folder):
    root, _ = txt_folder
    with pytest.raises(CorpusError, match=r"text_field='body'.*only valid for"):
        iter_documents(f"local:{root}", text_field="body")


def test_bad_local_paths(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CorpusError, match=r"does not exist.*\.jsonl"):
        iter_documents(f"local:{missing}")
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    with pytest.raises(CorpusError, match="neither a folder nor"):
        iter_documents(f"local:{other}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match="contains no .txt files"):
        iter_documents(f"local:{empty}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(CorpusError, match="line 2 .*not an object"):  # lines named from 1
        list(iter_documents(f"local:{bad}"))


def test_unknown_corpus_lists_valid_names():
    with pytest.raises(CorpusError) as err:
        iter_documents("wikitext")
    msg = str(err.value)
    assert "'wikitext'" in msg and "local:PATH" in msg
    for name in ("govreport", "proofpile", "pg19", "coq-stdlib", "debian-policy"):
        assert name in msg
    assert isinstance(err.value, ValueError)


def test_registry():
    assert available_corpora() == sorted(CORPORA)
    assert {"govreport", "proofpile", "pg19", "coq-stdlib", "debian-policy"} <= set(available_corpora())
    for source in CORPORA.values():
        assert isinstance(source.describe(), str) and source.describe()
    assert "tau/scrolls" in CORPORA["govreport"].describe()


# ---------------------------------------------------------------- selection


@pytest.fixture
def sized_jsonl(tmp_path):
    """40 docs; doc i has (i * 7) % 50 + 1 bytes."""
    lengths = [(i * 7) % 50 + 1 for i in range(40)]
    path = write_jsonl(tmp_path / "sized.jsonl", [{"text": "y" * n} for n in lengths])
    return f"local:{path}", lengths


def test_min_tokens_filter_and_first_n_order(sized_jsonl, byte_tok, cache):
    name, lengths = sized_jsonl
    qualified = [str(i) for i, n in enumerate(lengths) if n >= 30]
    docs = load_corpus(name, byte_tok, min_tokens=30, cache_dir=cache)
    assert [d.doc_id for d in docs] == qualified
    assert all(d.ids.numel() >= 30 for d in docs)
    first3 = load_corpus(name, byte_tok, min_tokens=30, n_docs=3, cache_dir=cache)
    assert [d.doc_id for d in first3] == qualified[:3]
    assert len(load_corpus(name, byte_tok, cache_dir=cache)) == 40
    assert len(load_corpus(name, byte_tok, min_tokens=50, n_docs=100, cache_dir=cache)) == lengths.count(50)


def test_seeded_sample(sized_jsonl, byte_tok, cache):
    name, lengths = sized_jsonl
    qualified = [str(i) for i, n in enumerate(lengths) if n >= 10]
    picks = {}
    for seed in range(5):
        ids = [d.doc_id for d in load_corpus(name, byte_tok, min_tokens=10, sample=6, seed=seed, cache_dir=cache)]
        again = [d.doc_id for d in load_corpus(name, byte_tok, min_tokens=10, sample=6, seed=seed, cache_dir=cache)]
        assert ids == again  # deterministic for a seed
        assert len(ids) == 6 and set(ids) <= set(qualified)
        assert ids == sorted(ids, key=int)  # source order
        picks[seed] = tuple(ids)
    assert len(set(picks.values())) > 1  # differs across seeds
    assert picks[0] != tuple(qualified[:6])
    everything = load_corpus(name, byte_tok, min_tokens=10, sample=1000, cache_dir=cache)
    assert [d.doc_id for d in everything] == qualified


def test_nothing_qualifies_error(sized_jsonl, byte_tok, cache):
    name, lengths = sized_jsonl
    with pytest.raises(CorpusError) as err:
        load_corpus(name, byte_tok, min_tokens=51, cache_dir=cache)
    msg = str(err.value)
    assert "40 documents" in msg and f"longest has {max(lengths)} tokens" in msg and "min_tokens=51" in msg


@pytest.mark.parametrize("kwargs", [{"min_tokens": -1}, {"n_docs": 0}, {"sample": 0}])
def test_invalid_selection_arguments(sized_jsonl, byte_tok, cache, kwargs):
    with pytest.raises(CorpusError, match=next(iter(kwargs))):
        load_corpus(sized_jsonl[0], byte_tok, cache_dir=cache, **kwargs)


# -------------------------------------------------------------------- cache


def test_second_call_uses_cache(txt_folder, byte_tok, cache):
    root, _ = txt_folder
    spy = SpyTokenizer(byte_tok)
    first = load_corpus(f"local:{root}", spy, cache_dir=cache)
    assert spy.texts_encoded == 3
    second = load_corpus(f"local:{root}", spy, min_tokens=21, cache_dir=cache)  # a.txt has 20
    assert spy.texts_encoded == 3  # not tokenized again
    assert [d.doc_id for d in second] == ["b.txt", "sub/c.txt"]
    assert torch.equal(second[1].ids, first[2].ids)
    files = list((cache / "tokens").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"
    assert files[0].name.endswith(f"-{tokenizer_fingerprint(byte_tok)}.pt")
    blob = torch.load(files[0], weights_only=True)
    assert blob["doc_ids"] == ["a.txt", "b.txt", "sub/c.txt"]  # all docs, before filtering


def test_same_folder_spelled_differently_shares_cache(txt_folder, byte_tok, cache, monkeypatch):
    root, _ = txt_folder
    spy = SpyTokenizer(byte_tok)
    load_corpus(f"local:{root}", spy, cache_dir=cache)
    monkeypatch.chdir(root.parent)
    load_corpus("local:docs/", spy, cache_dir=cache)
    assert spy.texts_encoded == 3


def test_cache_keyed_by_tokenizer(txt_folder, byte_tok, cache):
    root, files = txt_folder
    load_corpus(f"local:{root}", SpyTokenizer(byte_tok), cache_dir=cache)
    other = SpyTokenizer(make_byte_tokenizer(reverse=True))
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(byte_tok)
    docs = load_corpus(f"local:{root}", other, cache_dir=cache)
    assert other.texts_encoded == 3
    assert other.inner.decode(docs[0].ids.tolist()) == files["a.txt"]
    assert len(list((cache / "tokens").iterdir())) == 2


def test_cache_invalidated_by_file_change(txt_folder, byte_tok, cache):
    root, _ = txt_folder
    spy = SpyTokenizer(byte_tok)
    load_corpus(f"local:{root}", spy, cache_dir=cache)
    (root / "b.txt").write_text("changed", encoding="utf-8")  # size changes
    docs = load_corpus(f"local:{root}", spy, cache_dir=cache)
    assert spy.texts_encoded == 6
    assert [d.ids.numel() for d in docs if d.doc_id == "b.txt"] == [7]
    stat = (root / "a.txt").stat()
    os.utime(root / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # mtime only
    load_corpus(f"local:{root}", spy, cache_dir=cache)
    assert spy.texts_encoded == 9
    load_corpus(f"local:{root}", spy, cache_dir=cache)
    assert spy.texts_encoded == 9
    assert not [p for p in (cache / "tokens").iterdir() if p.name.endswith(".tmp")]


def test_corrupt_cache_is_rebuilt(txt_folder, byte_tok, cache):
    root, _ = txt_folder
    spy = SpyTokenizer(byte_tok)
    load_corpus(f"local:{root}", spy, cache_dir=cache)
    (path,) = (cache / "tokens").iterdir()
    path.write_bytes(b"garbage")
    docs = load_corpus(f"local:{root}", spy, cache_dir=cache)
    assert spy.texts_encoded == 6 and len(docs) == 3
    assert torch.load(path, weights_only=True)["doc_ids"] == ["a.txt", "b.txt", "sub/c.txt"]


def test_default_cache_dir(monkeypatch, tmp_path, txt_folder, byte_tok):
    monkeypatch.delenv("EVALHARNESS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert corpora.default_cache_dir() == tmp_path / "xdg" / "evalharness"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert corpora.default_cache_dir() == tmp_path / "home" / ".cache" / "evalharness"
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "eh"))
    root, _ = txt_folder
    load_corpus(f"local:{root}", byte_tok)
    assert len(list((tmp_path / "eh" / "tokens").glob("local_docs-default-*.pt"))) == 1


def test_tokenizer_fingerprint(byte_tok):
    fp = tokenizer_fingerprint(byte_tok)
    assert fp == tokenizer_fingerprint(make_byte_tokenizer()) and len(fp) == 16
    assert fp != tokenizer_fingerprint(make_byte_tokenizer(reverse=True))

    class Slow:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return dict(self.vocab)

    assert tokenizer_fingerprint(Slow({"a": 0, "b": 1})) == tokenizer_fingerprint(Slow({"b": 1, "a": 0}))
    assert tokenizer_fingerprint(Slow({"a": 0, "b": 1})) != tokenizer_fingerprint(Slow({"a": 1, "b": 0}))
    with pytest.raises(CorpusError, match="neither backend_tokenizer nor get_vocab"):
        tokenizer_fingerprint(object())


def test_long_document_warning_suppressed(tmp_path, cache):
    tok = make_byte_tokenizer(model_max_length=16)
    (tmp_path / "long").mkdir()
    (tmp_path / "long" / "d.txt").write_text("z" * 100)
    docs = load_corpus(f"local:{tmp_path / 'long'}", tok, cache_dir=cache)
    assert docs[0].ids.numel() == 100
    key = "sequence-length-is-longer-than-the-specified-maximum"
    assert key not in tok.deprecation_warnings  # the too-long warning never fired
    tok("z" * 100)  # control: a plain call does fire it
    assert key in tok.deprecation_warnings


# ------------------------------------------------------------ Debian corpora


def dpkg_installed(package: str) -> bool:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    except OSError:
        return False
    return out.returncode == 0 and "install ok installed" in out.stdout


@pytest.mark.skipif(not dpkg_installed("libcoq-stdlib"), reason="needs `apt-get install -y libcoq-stdlib`")
def test_coq_stdlib(byte_tok, cache):
    docs = list(iter_documents("coq-stdlib"))
    ids = [d.doc_id for d in docs]
    assert len(docs) >= 100 and ids == sorted(ids)
    assert all(i.endswith(".v") for i in ids)
    assert "theories/Init/Prelude.v" in ids and "theories/Lists/List.v" in ids
    lists = docs[ids.index("theories/Lists/List.v")].text
    assert "Inductive" in lists or "Lemma" in lists
    long_docs = load_corpus("coq-stdlib", byte_tok, min_tokens=16384, cache_dir=cache)
    expected = [d.doc_id for d in docs if len(d.text.encode("utf-8")) >= 16384]
    assert [d.doc_id for d in long_docs] == expected and len(expected) >= 50
    print(f"coq-stdlib: {len(docs)} docs, {len(expected)} with >= 16384 byte tokens")


@pytest.mark.skipif(not dpkg_installed("debian-policy"), reason="needs `apt-get install -y debian-policy`")
def test_debian_policy(byte_tok, cache):
    docs = list(iter_documents("debian-policy"))
    ids = [d.doc_id for d in docs]
    assert ids == sorted(ids) and "policy.txt.gz" in ids
    assert all(i.endswith((".txt.gz", ".txt")) for i in ids)
    assert not any(".html/" in i for i in ids)  # Sphinx _sources duplicates skipped
    policy = docs[ids.index("policy.txt.gz")].text
    assert len(policy) > 400_000 and "Debian Policy Manual" in policy
    big = load_corpus("debian-policy", byte_tok, min_tokens=400_000, cache_dir=cache)
    assert "policy.txt.gz" in [d.doc_id for d in big]


def test_missing_debian_package_message(monkeypatch, tmp_path):
    monkeypatch.setattr(corpora.DebianPolicySource, "doc_dir", tmp_path / "absent")
    with pytest.raises(CorpusError, match=r"apt-get install -y debian-policy"):
        iter_documents("debian-policy")
    monkeypatch.setattr(corpora, "_dpkg_listed_files", lambda package: [])
    monkeypatch.setattr(corpora.CoqStdlibSource, "fallback_roots", (str(tmp_path / "absent"),))
    with pytest.raises(CorpusError, match=r"apt-get install -y libcoq-stdlib"):
        iter_documents("coq-stdlib")


# ----------------------------------------------------------- HF datasets


@pytest.mark.parametrize("name, dataset_id", [("pg19", "emozilla/pg19-test"), ("govreport", "tau/scrolls"),
                                              ("proofpile", "hoskinson-center/proof-pile")])
def test_hf_corpus_offline_fails_fast(monkeypatch, byte_tok, cache, name, dataset_id):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(CorpusError) as err:
        load_corpus(name, byte_tok, cache_dir=cache)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert dataset_id in msg and "not in the local HF cache" in msg and "local:PATH" in msg
    if name == "govreport":
        assert "ccdv/govreport-summarization" in msg


def test_hf_unreachable_hub_without_offline_env_fails_fast(monkeypatch):
    """Online config + unreachable hub: forced offline mode, no retry waits, flags restored."""
    import datasets
    from huggingface_hub import constants as hub_constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    before = datasets.config.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(CorpusError, match=r"emozilla/pg19-test.*can't be reached \(no connection"):
        iter_documents("pg19")
    assert time.monotonic() - start < 10
    assert datasets.config.HF_HUB_OFFLINE is before is False  # forced offline mode was restored
    assert hub_constants.HF_HUB_OFFLINE is False


def test_hf_cached_tokens_work_offline(monkeypatch, byte_tok, cache):
    """A token cache hit needs neither the dataset nor the hub."""
    fp = tokenizer_fingerprint(byte_tok)
    key = corpora._corpus_key("pg19", CORPORA["pg19"], None)
    table = corpora._tokenize_corpus([Document("test/0", "abc"), Document("test/1", "hello")], byte_tok)
    corpora._save_cache(corpora._cache_file(cache, key, fp), table, fp)
    docs = load_corpus("pg19", byte_tok, min_tokens=4, cache_dir=cache)
    assert [(d.doc_id, d.ids.numel()) for d in docs] == [("test/1", 5)]


def test_import_does_not_load_datasets():
    code = "import sys, evalharness.corpora; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_hf_documents_from_loaded_dataset(monkeypatch, byte_tok, cache):
    """The HF path with a stand-in load_dataset: fallback order, doc ids, fields."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, *, split, streaming):
        calls.append((path, name, split, streaming))
        if path == "tau/scrolls":
            raise RuntimeError("Dataset scripts are no longer supported, but found scrolls.py")
        return datasets.Dataset.from_dict({"report": ["r0", "report one"], "summary": ["s", "ss"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    docs = list(iter_documents("govreport"))
    assert calls == [("tau/scrolls", "gov_report", "test", False),
                     ("ccdv/govreport-summarization", None, "test", False)]
    assert [(d.doc_id, d.text) for d in docs] == [("test/0", "r0"), ("test/1", "report one")]
    assert [d.text for d in iter_documents("govreport", text_field="summary")] == ["s", "ss"]
    with pytest.raises(CorpusError, match=r"'input'.*'report', 'summary'"):
        iter_documents("govreport", text_field="input")
    toks = load_corpus("govreport", byte_tok, min_tokens=3, cache_dir=cache)
    assert [(d.doc_id, d.ids.numel()) for d in toks] == [("test/1", 10)]


def test_hf_non_connection_error_is_reported(monkeypatch):
    import datasets

    def broken(path, name=None, *, split, streaming):
        raise ValueError(f"bad split {split}")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    with pytest.raises(CorpusError, match=r"could not load HF dataset 'emozilla/pg19-test'.*ValueError: bad split "
                                           "test"):
        iter_documents("pg19")


# ----
# `--dataset hf:OWNER/NAME[:SPLIT]`: any hub dataset, text or the authors' stored `input_ids`, selected as
# the authors select (tokenized_len >= min, then the first N); datasets' refusal of script-based datasets.


PROOFPILE_TOKENIZED = "emozilla/proofpile-test-tokenized"


SCRIPT_REFUSAL = "Dataset scripts are no longer supported, but found {}.py"


def tokenized_rows(lengths, seed=0):
    """Rows in the layout of the authors' tokenized sets (their eval/perplexity.py `tokenize` step: the
    text's columns plus input_ids, attention_mask and tokenized_len = len(input_ids))."""
    rng = random.Random(seed)
    rows = []
    for n in lengths:
        ids = [rng.randrange(3, BYTE_VOCAB_SIZE) for _ in range(n)]
        rows.append({"text": f"doc of {n} tokens", "meta": "{}", "input_ids": ids, "attention_mask": [1] * n,
                     "tokenized_len": n})
    return rows


class RefusingTokenizer:
    """Stored ids must be used as they are: encoding fails the test."""

    def get_vocab(self):
        return {"a": 0}

    def __call__(self, *args, **kwargs):
        raise AssertionError("the corpus was re-tokenized")

    encode = __call__


@pytest.fixture
def fake_hub(monkeypatch):
    """`datasets.load_dataset` answered from memory: `fake_hub(rows)` serves those rows for any hub id and
    records each call as (path, config, split); the json/parquet builders that read local copies stay real."""
    import datasets

    calls = []
    real_load_dataset = datasets.load_dataset

    def install(rows=None, error=None):
        def load_dataset(path, name=None, *, split, streaming=False, **kwargs):
            if path in ("json", "parquet"):
                return real_load_dataset(path, name, split=split, **kwargs)
            calls.append((path, name, split))
            if error is not None:
                raise error(path) if callable(error) else error
            return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]})

        monkeypatch.setattr(datasets, "load_dataset", load_dataset)
        monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
        return calls

    return install


def write_copy(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.usefixtures("isolated_cache")
@pytest.mark.parametrize("spec, dataset_id, config, split, label", [
    ("hf:emozilla/proofpile-test-tokenized", PROOFPILE_TOKENIZED, None, "test", PROOFPILE_TOKENIZED),
    ("hf:emozilla/proofpile-test-tokenized:test", PROOFPILE_TOKENIZED, None, "test", PROOFPILE_TOKENIZED),
    ("hf:emozilla/proofpile-test-tokenized-mistral:train", "emozilla/proofpile-test-tokenized-mistral", None,
     "train", "emozilla/proofpile-test-tokenized-mistral:train"),
    ("hf:tau/scrolls:gov_report:validation", "tau/scrolls", "gov_report", "validation",
     "tau/scrolls:gov_report:validation"),
])
def test_spec_syntax_and_label(spec, dataset_id, config, split, label):
    parsed = parse_hf_spec(spec)
    assert (parsed.dataset_id, parsed.config, parsed.split, parsed.field) == (dataset_id, config, split, "text")
    assert dataset_label(spec) == label


@pytest.mark.usefixtures("isolated_cache")
@pytest.mark.parametrize("spec", ["hf:", "hf:proofpile", "hf:a/b:", "hf:a/b::test", "hf:a/b:c:d:e", "hf:a/b/c",
                                  "hf:/b", "hf:a/b:te st"])
def test_bad_spec_is_one_sentence(spec):
    with pytest.raises(CorpusError) as err:
        corpora.get_corpus(spec)
    assert str(err.value) == (f"dataset {spec!r} is not hf:OWNER/NAME, hf:OWNER/NAME:SPLIT or "
                              "hf:OWNER/NAME:CONFIG:SPLIT (e.g. hf:emozilla/proofpile-test-tokenized-mistral:train).")


@pytest.mark.usefixtures("isolated_cache")
def test_hf_ids_equal_the_same_rows_from_a_local_copy(tmp_path, fake_hub):
    rows = tokenized_rows([90, 300, 40, 260, 500])
    calls = fake_hub(rows)
    folder = write_copy(tmp_path / "copy", rows)
    chosen = {}
    for name, selection in (("all", {}), ("first", {"min_tokens": 250, "n_docs": 2}),
                            ("sample", {"min_tokens": 100, "sample": 2, "seed": 3})):
        hf = load_corpus(f"hf:{PROOFPILE_TOKENIZED}", RefusingTokenizer(), **selection)
        local = load_corpus(f"proofpile={folder}", RefusingTokenizer(), **selection)
        assert [(d.doc_id, d.ids.tolist()) for d in hf] == [(d.doc_id, d.ids.tolist()) for d in local]
        chosen[name] = [d.doc_id for d in hf]
    assert chosen["all"] == [f"test/{i}" for i in range(5)]
    assert chosen["first"] == ["test/1", "test/3"]  # lengths 90, 300, 40, 260, 500: the first two >= 250
    assert calls[0] == (PROOFPILE_TOKENIZED, None, "test")


# 279 is one of the lengths: the filter keeps a document of exactly min_tokens, as tokenized_len >= min does
@pytest.mark.usefixtures("isolated_cache")
@pytest.mark.parametrize("min_tokens, samples", [(0, None), (128, 3), (128, 50), (279, 3), (500, 1)])
def test_selection_is_the_authors(fake_hub, min_tokens, samples):
    """The authors' eval/perplexity.py: `filter(tokenized_len >= dataset_min_tokens)` then `[:samples]`, done
    here with datasets' own filter and slicing on the same rows; the harness must pick the same documents
    (row index = doc id) in the same order, with the same ids."""
    import datasets

    rng = random.Random(7)
    lengths = [rng.randrange(60, 600) for _ in range(12)]  # 391, 214, 464, 109, 134, 156, 434, 119, 579, ...
    rows = tokenized_rows(lengths, seed=1)
    fake_hub(rows)
    reference = datasets.Dataset.from_dict({"row": list(range(len(rows))),
                                            "input_ids": [r["input_ids"] for r in rows],
                                            "tokenized_len": [r["tokenized_len"] for r in rows]})
    chosen = reference.filter(lambda x: x["tokenized_len"] >= min_tokens)
    chosen = chosen[:samples] if samples else chosen[:]
    got = load_corpus(f"hf:{PROOFPILE_TOKENIZED}", RefusingTokenizer(), min_tokens=min_tokens, n_docs=samples)
    assert [d.doc_id for d in got] == [f"test/{r}" for r in chosen["row"]]
    assert [d.ids.tolist() for d in got] == chosen["input_ids"]


@pytest.mark.usefixtures("isolated_cache")
def test_cli_reads_the_same_numbers_and_names_the_dataset_by_its_id(tmp_path, fake_hub):
    rows = tokenized_rows([200, 150, 260])
    fake_hub(rows)
    folder = write_copy(tmp_path / "copy", rows)
    frames = {}
    for name, spec in (("hf", f"hf:{PROOFPILE_TOKENIZED}"), ("copy", f"proofpile={folder}")):
        out = tmp_path / name
        argv = ["--model", "random:tiny", "--method", "base,yarn", "--factor", "2", "--dataset", spec,
                "--lengths", "64,128", "--min-tokens", "150", "--docs", "2", "--out", str(out), "--no-progress",
                "--no-plots"]
        assert cli.main(argv) == cli.EXIT_OK
        frames[name] = pd.read_csv(out / "perplexity_docs.csv")
    assert set(frames["hf"]["dataset"]) == {PROOFPILE_TOKENIZED}
    assert sorted(set(frames["hf"]["doc_id"])) == ["test/0", "test/1"]
    pd.testing.assert_frame_equal(frames["hf"].drop(columns="dataset"), frames["copy"].drop(columns="dataset"))


@pytest.mark.usefixtures("isolated_cache")
def test_hf_text_dataset_is_tokenized(fake_hub):
    texts = ["the first document " * 5, "short", "a third one, longer than the second " * 3]
    calls = fake_hub([{"text": t, "body": t.upper()} for t in texts])
    tokenizer = build_byte_tokenizer()
    docs = load_corpus("hf:someone/books:train", tokenizer, min_tokens=10)
    expected = [(f"train/{i}", tokenizer(t, add_special_tokens=False)["input_ids"]) for i, t in enumerate(texts)
                if len(t.encode()) >= 10]
    assert [(d.doc_id, d.ids.tolist()) for d in docs] == expected
    assert set(calls) == {("someone/books", None, "train")}
    assert [d.text for d in iter_documents("hf:someone/books:en:test", text_field="body")] == [t.upper()
                                                                                              for t in texts]
    assert calls[-1] == ("someone/books", "en", "test")
    with pytest.raises(CorpusError, match=r"text field 'input' is not in HF dataset 'someone/books'.*'text', 'body'"):
        iter_documents("hf:someone/books", text_field="input")


@pytest.mark.usefixtures("isolated_cache")
def test_hf_dataset_offline_is_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CorpusError) as err:
        iter_documents(f"hf:{PROOFPILE_TOKENIZED}")
    assert str(err.value) == (f"corpus 'hf:{PROOFPILE_TOKENIZED}' needs HF dataset '{PROOFPILE_TOKENIZED}' (split "
                              "'test'), which is not in the local HF cache and the hub can't be reached "
                              "(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set); download it on a machine with network "
                              "access, or use local:PATH.")


@pytest.mark.usefixtures("isolated_cache")
def test_script_refusal_is_classified():
    refusal = RuntimeError(SCRIPT_REFUSAL.format("proof-pile"))
    try:
        try:
            raise refusal
        except RuntimeError as inner:
            raise ValueError("wrapped") from inner
    except ValueError as outer:
        assert hub.unavailable_reason(outer) == hub.SCRIPT_DATASET
    assert hub.unavailable_reason(RuntimeError("CUDA out of memory")) is None


@pytest.mark.usefixtures("isolated_cache")
def test_script_dataset_names_the_alternatives(fake_hub):
    import datasets

    fake_hub(error=lambda path: RuntimeError(SCRIPT_REFUSAL.format(path.split("/")[1])))
    with pytest.raises(CorpusError) as err:
        iter_documents("proofpile")
    assert str(err.value) == (
        "corpus 'proofpile' needs HF dataset 'hoskinson-center/proof-pile' (split 'test'), which is defined by a "
        f"loading script that datasets {datasets.__version__} no longer runs; use the YaRN authors' pre-tokenized "
        "hf:emozilla/proofpile-test-tokenized (Llama-2 token ids: only for models with the Llama-2 tokenizer), a "
        "local copy proofpile=DIR in the dataset's hub layout or local:PATH (a .jsonl or .parquet file of the split).")
    with pytest.raises(CorpusError, match=r"'tau/scrolls' \(config 'gov_report', split 'test'\) and its fallback "
                                          r"HF dataset 'ccdv/govreport-summarization'.*"
                                          r"hf:emozilla/govreport-test-tokenized.*govreport=DIR"):
        iter_documents("govreport")
    with pytest.raises(CorpusError, match=r"corpus 'hf:someone/old' .* no longer runs; use local:PATH \(a .jsonl "
                                          r"or .parquet file of the split\)\.$"):
        iter_documents("hf:someone/old")


@pytest.mark.usefixtures("isolated_cache")
def test_script_dataset_among_other_failures_keeps_the_details(fake_hub):
    """Only when every candidate is script-based is the failure called a script refusal."""
    fake_hub(error=lambda path: RuntimeError(SCRIPT_REFUSAL.format("scrolls")) if path == "tau/scrolls"
             else ValueError("bad split"))
    with pytest.raises(CorpusError, match=r"could not load .*RuntimeError: Dataset scripts.*ValueError: bad split"):
        iter_documents("govreport")


@pytest.mark.usefixtures("isolated_cache")
def test_cli_script_dataset_exits_2_with_one_sentence(tmp_path, fake_hub, capsys):
    fake_hub(error=RuntimeError(SCRIPT_REFUSAL.format("proof-pile")))
    out = tmp_path / "out"
    code = cli.main(["--model", "random:tiny", "--method", "base", "--dataset", "proofpile", "--lengths", "64",
                     "--out", str(out), "--no-progress", "--no-plots"])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE
    assert err.startswith("error: corpus 'proofpile' needs") and "hf:emozilla/proofpile-test-tokenized" in err
    assert len(err.splitlines()) == 1
    assert not (out / "perplexity_docs.csv").exists()


# ---- Local copies of the named hub corpora (`--dataset proofpile=DIR`): same field, ids and selection as the hub.


def _words(seed, n):
    rng = random.Random(seed)
    vocabulary = "the proof of a lemma holds for every agency report chapter".split()
    return " ".join(rng.choice(vocabulary) for _ in range(n))


# Rows in each dataset's hub layout (the text field differs per dataset: SCROLLS `input`, ccdv `report`),
# text lengths spread around the selections below; the other string fields are longer or shorter than the
# text, so reading the wrong field changes the selection.
HUB_ROWS = {
    "proofpile": [{"text": _words(i, n), "meta": {"file": f"books/{i}.tex"}}
                  for i, n in enumerate([3, 30, 14, 45, 22, 9, 26])],
    "govreport": [{"id": f"g{i}", "input": _words(10 + i, n), "output": _words(20 + i, 40 - n)}
                  for i, n in enumerate([25, 2, 12, 35, 18, 30])],
    "pg19": [{"short_book_title": _words(30 + i, 40 - n), "publication_date": 1900 + i, "url": f"u{i}",
              "text": _words(40 + i, n)} for i, n in enumerate([15, 1, 33, 20, 27, 11])],
}


TEXT_FIELD = {"proofpile": "text", "govreport": "input", "pg19": "text"}


# What datasets.load_dataset is called with on the hub path: (dataset id, config) of the first hub spec.
HUB_DATASET = {"proofpile": ("hoskinson-center/proof-pile", None), "govreport": ("tau/scrolls", "gov_report"),
               "pg19": ("emozilla/pg19-test", None)}


# A copy of govreport's fallback hub dataset (ccdv/govreport-summarization: field `report`).
CCDV_ROWS = [{"report": row["input"], "summary": row["output"]} for row in HUB_ROWS["govreport"]]


def fake_hub_hub_copies(monkeypatch, name, rows=None):
    """Make the hub path of `name` load `rows` (default: HUB_ROWS[name]) from memory: datasets.load_dataset
    answers for the corpus' first hub spec (or, for the ccdv rows, only for govreport's fallback spec);
    every other call (the json/parquet builders a local copy uses) goes to the real function."""
    import datasets

    real_load = datasets.load_dataset
    wanted = ("ccdv/govreport-summarization", None) if rows is CCDV_ROWS else HUB_DATASET[name]
    rows = HUB_ROWS[name] if rows is None else rows

    def load_dataset(path, *args, **kwargs):
        if path in ("json", "parquet"):
            return real_load(path, *args, **kwargs)
        config = args[0] if args else kwargs.get("name")
        if (path, config) != wanted:
            raise FileNotFoundError(f"{path} is not in this test's hub")
        assert kwargs["split"] == "test"
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")


def hub_documents(monkeypatch, name, rows=None):
    """(doc id, text) of what the hub path yields for these rows."""
    with monkeypatch.context() as patch:
        fake_hub_hub_copies(patch, name, rows)
        return [(d.doc_id, d.text) for d in iter_documents(name)]


def _json_lines(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def _halves(rows):
    half = len(rows) // 2
    return [rows[:half], rows[half:]]


# The layouts HubCopySource accepts for split `test` (`_split_files`; README: `test.jsonl`, `.json`,
# `.parquet`, shards `test-*.parquet`), each file-name form and format at least once: `test.<ext>` and
# shards `test-*`/`test_*`, at the top of the folder or in a sub-folder (a hub snapshot's `data/`), as
# JSON lines, a JSON array or Parquet.
LAYOUTS = {
    "test.jsonl": lambda rows: {"test.jsonl": _json_lines(rows)},
    "test.json-lines": lambda rows: {"test.json": _json_lines(rows)},
    "test.json-array": lambda rows: {"test.json": json.dumps(rows)},
    "test.parquet": lambda rows: {"test.parquet": rows},
    "data/test-*.parquet": lambda rows: {f"data/test-0000{i}-of-00002.parquet": part
                                         for i, part in enumerate(_halves(rows))},
    "test_*.jsonl": lambda rows: {f"test_{i}.jsonl": _json_lines(part)
                                  for i, part in enumerate(_halves(rows))},
}


def write_copy_hub_copies(folder, rows, layout):
    """A local copy of `rows` in one of LAYOUTS (Parquet files written with pandas, as the hub's are)."""
    for relative, content in LAYOUTS[layout](rows).items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            pd.DataFrame(content).to_parquet(path, index=False)
        else:
            path.write_text(content)
    return folder


# CLI selections with the documents they must select, computed here from the byte lengths (1 byte = 1
# token; --lengths 64 alone means --min-tokens 63 = 64 minus BOS under the truncated protocol).
SELECTIONS = {
    "lengths-default-min": (["--lengths", "64"],
                            lambda lengths: [i for i, n in enumerate(lengths) if n >= 63]),
    "min-tokens+docs": (["--lengths", "64", "--min-tokens", "100", "--docs", "2"],
                        lambda lengths: [i for i, n in enumerate(lengths) if n >= 100][:2]),
    "min-tokens+sample": (["--lengths", "64", "--min-tokens", "70", "--sample", "2", "--seed", "3"],
                          lambda lengths: sorted(random.Random(3).sample(
                              [i for i, n in enumerate(lengths) if n >= 70], 2))),
}


def cli_documents(spec, flags, tokenizer):
    """(dataset label, [(doc id, token ids)]) as `run_eval.py --dataset SPEC FLAGS` selects them."""
    args = cli.parse_args(["--model", "random:tiny", "--tasks", "perplexity", "--dataset", spec, *flags])
    docs = load_documents(PERPLEXITY.options(args), parse_lengths(args.lengths), tokenizer, bos=tokenizer.bos_token_id,
                          seed=args.seed)
    return dataset_label(args.dataset), [(d.doc_id, d.ids.tolist()) for d in docs]


# Each dataset in each layout, and a copy of govreport's fallback dataset (its field: `report`).
CASES = [(name, layout) for name in sorted(HUB_ROWS) for layout in sorted(LAYOUTS)]


CASES.append(("govreport-ccdv", "data/test-*.parquet"))


@pytest.mark.parametrize(("name", "layout"), CASES)
def test_local_copy_selects_what_the_hub_selects(tmp_path, monkeypatch, byte_tok, name, layout):
    """Every dataset in every accepted layout: the same documents (ids, text, order) as the hub path on
    the same rows, and under --min-tokens/--docs/--sample the same selection (ids, tokens, order) and
    the same dataset label; the selections are also checked against the byte lengths."""
    corpus, rows, field = ((name, HUB_ROWS[name], TEXT_FIELD[name]) if name in HUB_ROWS
                           else ("govreport", CCDV_ROWS, "report"))
    folder = write_copy_hub_copies(tmp_path / "copy", rows, layout)
    spec = f"{corpus}={folder}"
    expected_docs = hub_documents(monkeypatch, corpus, rows)
    assert expected_docs == [(f"test/{i}", row[field]) for i, row in enumerate(rows)]
    assert [(d.doc_id, d.text) for d in iter_documents(spec)] == expected_docs

    lengths = [len(row[field].encode()) for row in rows]
    for flags, chosen in SELECTIONS.values():
        with monkeypatch.context() as patch:
            fake_hub_hub_copies(patch, corpus, rows)
            patch.setenv("EVALHARNESS_CACHE", str(tmp_path / "hub-cache"))
            from_hub = cli_documents(corpus, flags, byte_tok)
        monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "copy-cache"))
        from_copy = cli_documents(spec, flags, byte_tok)
        assert from_copy == from_hub
        label, docs = from_copy
        assert label == corpus
        assert [doc_id for doc_id, _ in docs] == [f"test/{i}" for i in chosen(lengths)]
        assert 0 < len(docs) < len(rows)
        assert all(ids == byte_tok.encode(rows[int(doc_id[5:])][field], add_special_tokens=False)
                   for doc_id, ids in docs)


def test_labels_and_errors(tmp_path):
    assert dataset_label("proofpile=/x/y") == "proofpile"
    assert dataset_label("local:/a=b") == "local:/a=b"
    assert dataset_label("coq-stdlib") == "coq-stdlib"
    with pytest.raises(CorpusError, match="only a Hugging Face corpus"):
        corpora.get_corpus(f"coq-stdlib={tmp_path}")
    with pytest.raises(CorpusError, match="is not a folder"):
        corpora.get_corpus(f"pg19={tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no file for split 'test'"):
        list(iter_documents(f"pg19={tmp_path / 'empty'}"))
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "test.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(CorpusError, match=r"no field 'text'.*'body'"):
        list(iter_documents(f"pg19={tmp_path / 'wrong'}"))


def test_tables_name_the_dataset_not_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "pp"
    folder.mkdir()
    words = "the cat sat on a mat and the dog ran far away".split()
    rows = [{"text": " ".join(words[(i * 3 + j) % len(words)] for j in range(200)), "meta": "{}"} for i in range(2)]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    code = cli.main(["--model", "random:tiny", "--method", "base", "--dataset", f"proofpile={folder}",
                     "--lengths", "64,128", "--docs", "2", "--out", str(out), "--no-plots", "--no-progress"])
    assert code == 0
    docs = pd.read_csv(out / "perplexity_docs.csv")
    assert set(docs["dataset"]) == {"proofpile"}
    assert sorted(set(docs["doc_id"])) == ["test/0", "test/1"]


# ----
# Pre-tokenized corpora: an `input_ids` column is used as it is (no re-tokenization), and ids
# outside the model's vocabulary are refused before any forward.


WORDS = "the cat sat on a mat and the dog ran far away from home".split()


@pytest.fixture(scope="module")
def texts():
    return [" ".join(random.Random(i).choice(WORDS) for _ in range(120 + 30 * i)) for i in range(3)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def stored_ids(tokenizer, texts):
    """What the authors' tokenize step stores: the tokenizer's ids without special tokens."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


class RefusingTokenizer_pretokenized:
    """A tokenizer that must not encode: stored ids are used as they are (it has a vocabulary, so
    the token cache can fingerprint it)."""

    def get_vocab(self):
        return {"a": 0}

    def __call__(self, *args, **kwargs):
        raise AssertionError("the corpus was re-tokenized")

    encode = __call__


def write_jsonl_pretokenized(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli_args(dataset, out, *extra):
    return ["--model", "random:tiny", "--method", "base,yarn", "--factor", "2", "--dataset", dataset,
            "--lengths", "64,128", "--out", str(out), "--no-progress", "--no-plots", *extra]


@pytest.mark.usefixtures("isolated_cache")
def test_jsonl_input_ids_are_used_as_they_are(tmp_path):
    ids = [[5, 6, 7, 8], [9, 10], [300, 2, 3]]
    path = write_jsonl_pretokenized(tmp_path / "tok.jsonl", [{"text": "ignored", "input_ids": i} for i in ids])
    docs = load_corpus(f"local:{path}", RefusingTokenizer_pretokenized())
    assert [d.doc_id for d in docs] == ["0", "1", "2"]
    assert [d.ids.tolist() for d in docs] == ids  # no BOS added here: the protocols add it
    assert [d.ids.tolist()
            for d in load_corpus(f"local:{path}", RefusingTokenizer_pretokenized(), min_tokens=3)] == [ids[0], ids[2]]


@pytest.mark.usefixtures("isolated_cache")
def test_parquet_input_ids_are_used_as_they_are(tmp_path):
    ids = [[5, 6, 7, 8], [9, 10, 11]]
    pq.write_table(pa.table({"input_ids": ids, "tokenized_len": [4, 3]}), tmp_path / "tok.parquet")
    docs = load_corpus(f"local:{tmp_path / 'tok.parquet'}", RefusingTokenizer_pretokenized())
    assert [d.ids.tolist() for d in docs] == ids


@pytest.mark.usefixtures("isolated_cache")
def test_a_hub_copy_with_input_ids(tmp_path):
    """`proofpile=DIR` pointing at a copy of a pre-tokenized set (emozilla/proofpile-test-tokenized layout)."""
    ids = [[5, 6, 7, 8], [9, 10, 11]]
    write_jsonl_pretokenized(tmp_path / "test.jsonl",
                             [{"text": "x", "input_ids": i, "tokenized_len": len(i)} for i in ids])
    docs = load_corpus(f"proofpile={tmp_path}", RefusingTokenizer_pretokenized())
    assert [(d.doc_id, d.ids.tolist()) for d in docs] == [("test/0", ids[0]), ("test/1", ids[1])]


@pytest.mark.usefixtures("isolated_cache")
def test_an_explicit_text_field_tokenizes_the_text(tmp_path, tokenizer):
    path = write_jsonl_pretokenized(tmp_path / "tok.jsonl", [{"text": "the cat", "input_ids": [1, 2]}])
    (doc,) = load_corpus(f"local:{path}", tokenizer, text_field="text")
    assert doc.ids.tolist() == stored_ids(tokenizer, ["the cat"])[0]


@pytest.mark.usefixtures("isolated_cache")
@pytest.mark.parametrize("bad", [[1, "2"], "1 2 3", [1.5, 2], [True, 3]])
def test_ids_that_are_not_integer_lists_are_refused(tmp_path, bad):
    path = write_jsonl_pretokenized(tmp_path / "tok.jsonl", [{"input_ids": [1, 2]}, {"input_ids": bad}])
    with pytest.raises(CorpusError, match="'input_ids' of document 1 is not a list of integer token ids"):
        load_corpus(f"local:{path}", RefusingTokenizer_pretokenized())


@pytest.mark.usefixtures("isolated_cache")
def test_check_token_ids():
    docs = [TokenizedDoc("a", torch.tensor([0, 5, 9])), TokenizedDoc("b", torch.tensor([3, 10]))]
    check_token_ids(docs[:1], 10, "c")
    with pytest.raises(CorpusError, match="document b of corpus 'c' holds token id 10, outside the model's "
                                          "vocabulary 0…9"):
        check_token_ids(docs, 10, "c")
    with pytest.raises(CorpusError, match="token id -1"):
        check_token_ids([TokenizedDoc("n", torch.tensor([-1, 2]))], 10, "c")


@pytest.mark.usefixtures("isolated_cache")
def test_stored_ids_give_the_numbers_of_the_text(tmp_path, texts, tokenizer):
    """The same documents as text and as stored ids (made by the model's tokenizer without special
    tokens): identical NLL sums, truncated and sliding (BOS added by the protocol in both)."""
    text_file = write_jsonl_pretokenized(tmp_path / "text.jsonl", [{"text": t} for t in texts])
    ids_file = write_jsonl_pretokenized(tmp_path / "ids.jsonl",
                                        [{"input_ids": i} for i in stored_ids(tokenizer, texts)])
    for extra in ([], ["--protocol", "sliding", "--stride", "32"]):
        frames = []
        for name, path in (("text", text_file), ("ids", ids_file)):
            out = tmp_path / f"{name}{len(extra)}"
            assert cli.main(cli_args(f"local:{path}", out, *extra)) == cli.EXIT_OK
            frames.append(pd.read_csv(out / "perplexity_docs.csv").drop(columns="dataset"))
        pd.testing.assert_frame_equal(frames[0], frames[1])


@pytest.mark.usefixtures("isolated_cache")
def test_ids_outside_the_vocabulary_are_refused_before_any_forward(tmp_path, capsys):
    from evalharness.models import BYTE_VOCAB_SIZE

    rows = [{"input_ids": list(range(3, 203))}, {"input_ids": list(range(3, 202)) + [BYTE_VOCAB_SIZE + 7]}]
    path = write_jsonl_pretokenized(tmp_path / "ids.jsonl", rows)
    out = tmp_path / "out"
    assert cli.main(cli_args(f"local:{path}", out)) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err == (f"error: document 1 of corpus 'local:{path}' holds token id {BYTE_VOCAB_SIZE + 7}, outside the "
                   f"model's vocabulary 0…{BYTE_VOCAB_SIZE - 1}; its input_ids were made for another tokenizer.")
    assert not (out / "perplexity_docs.csv").exists()


@pytest.mark.usefixtures("isolated_cache")
def test_a_local_folder_mixing_txt_and_table_files_is_refused(tmp_path, byte_tok):
    """`local:DIR` reads a folder of .txt files; one that also holds a .jsonl (or .parquet) names it and
    says how to read it, instead of silently reading the .txt files only."""
    from evalharness.corpora import CorpusError, load_corpus

    (tmp_path / "a.txt").write_text("the lemma holds " * 20)
    (tmp_path / "rows.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(CorpusError, match=r"holds rows\.jsonl besides its \.txt files; give the file itself"):
        load_corpus(f"local:{tmp_path}", byte_tok)
    (tmp_path / "rows.jsonl").unlink()
    assert [d.doc_id for d in load_corpus(f"local:{tmp_path}", byte_tok)] == ["a.txt"]
