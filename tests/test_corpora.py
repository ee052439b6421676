"""Tests for evalharness.corpora: sources, selection, token cache, Debian corpora, HF offline."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_byte_tokenizer

from evalharness import corpora, hub
from evalharness.corpora import (
    CORPORA,
    CorpusError,
    Document,
    TokenizedDoc,
    available_corpora,
    iter_documents,
    load_corpus,
    tokenizer_fingerprint,
)

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
