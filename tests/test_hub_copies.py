"""Local copies of the named hub corpora (`--dataset proofpile=DIR`): same field, ids and selection as the hub."""
import json

import pandas as pd
import pytest
from conftest import make_byte_tokenizer

from evalharness import cli, corpora, hub
from evalharness.corpora import CorpusError, dataset_label, iter_documents, load_corpus

# Rows in each dataset's hub layout; the text field differs per dataset (SCROLLS: `input`).
HUB_ROWS = {
    "proofpile": [{"text": "short", "meta": "{}"}, {"text": "a longer proof " * 20, "meta": "{}"},
                  {"text": "lemma " * 30, "meta": "{}"}],
    "govreport": [{"id": "g0", "input": "report " * 25, "output": "sum"}, {"id": "g1", "input": "tiny", "output": "s"},
                  {"id": "g2", "input": "the agency " * 12, "output": "s2"}],
    "pg19": [{"short_book_title": "A", "publication_date": 1900, "url": "u", "text": "chapter one " * 15},
             {"short_book_title": "B", "publication_date": 1901, "url": "v", "text": "b" * 8}],
}


@pytest.fixture
def byte_tok():
    return make_byte_tokenizer()


def hub_documents(monkeypatch, name):
    """What the hub path yields for these rows: datasets.load_dataset stood in by the same rows in memory."""
    import datasets

    rows = HUB_ROWS[name]
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, config=None, *, split, streaming: datasets.Dataset.from_list(rows))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    docs = [(d.doc_id, d.text) for d in iter_documents(name)]
    monkeypatch.undo()
    return docs


def write_copy(folder, name, fmt):
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(HUB_ROWS[name])
    if fmt == "jsonl":
        (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HUB_ROWS[name]))
    else:  # a hub snapshot: parquet shards in a sub-folder
        (folder / "data").mkdir()
        half = len(frame) // 2
        frame.iloc[:half].to_parquet(folder / "data" / "test-00000-of-00002.parquet", index=False)
        frame.iloc[half:].to_parquet(folder / "data" / "test-00001-of-00002.parquet", index=False)
    return folder


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("name", sorted(HUB_ROWS))
def test_local_copy_yields_the_hub_documents(tmp_path, monkeypatch, name, fmt):
    expected = hub_documents(monkeypatch, name)
    folder = write_copy(tmp_path / name, name, fmt)
    got = [(d.doc_id, d.text) for d in iter_documents(f"{name}={folder}")]
    assert got == expected
    assert [doc_id for doc_id, _ in got] == [f"test/{i}" for i in range(len(HUB_ROWS[name]))]


def test_local_copy_selection_matches_hub(tmp_path, monkeypatch, byte_tok):
    folder = write_copy(tmp_path / "gr", "govreport", "jsonl")
    local = load_corpus(f"govreport={folder}", byte_tok, min_tokens=50, cache_dir=tmp_path / "cache")
    expected = [(doc_id, len(text.encode())) for doc_id, text in hub_documents(monkeypatch, "govreport")
                if len(text.encode()) >= 50]
    assert [(d.doc_id, d.ids.numel()) for d in local] == expected == [("test/0", 175), ("test/2", 132)]


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
