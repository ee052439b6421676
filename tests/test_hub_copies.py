"""Local copies of the named hub corpora (`--dataset proofpile=DIR`): same field, ids and selection as the hub."""
import json
import random

import pandas as pd
import pytest
from conftest import make_byte_tokenizer

from evalharness import cli, corpora, hub
from evalharness.corpora import CorpusError, dataset_label, iter_documents
from evalharness.options import parse_lengths
from evalharness.perplexity.task import PERPLEXITY, load_documents


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


@pytest.fixture
def byte_tok():
    return make_byte_tokenizer()


def fake_hub(monkeypatch, name, rows=None):
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
        fake_hub(patch, name, rows)
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


def write_copy(folder, rows, layout):
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
    folder = write_copy(tmp_path / "copy", rows, layout)
    spec = f"{corpus}={folder}"
    expected_docs = hub_documents(monkeypatch, corpus, rows)
    assert expected_docs == [(f"test/{i}", row[field]) for i, row in enumerate(rows)]
    assert [(d.doc_id, d.text) for d in iter_documents(spec)] == expected_docs

    lengths = [len(row[field].encode()) for row in rows]
    for flags, chosen in SELECTIONS.values():
        with monkeypatch.context() as patch:
            fake_hub(patch, corpus, rows)
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
