"""`--dataset hf:OWNER/NAME[:SPLIT]`: any hub dataset, text or the authors' stored `input_ids`, selected as
the authors select (tokenized_len >= min, then the first N); datasets' refusal of script-based datasets."""
import json
import random

import pandas as pd
import pytest

from evalharness import cli, corpora, hub
from evalharness.corpora import CorpusError, dataset_label, iter_documents, load_corpus, parse_hf_spec
from evalharness.models import BYTE_VOCAB_SIZE, build_byte_tokenizer

pytestmark = pytest.mark.usefixtures("isolated_cache")

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


# ------------------------------------------------------------------------------------ syntax


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


@pytest.mark.parametrize("spec", ["hf:", "hf:proofpile", "hf:a/b:", "hf:a/b::test", "hf:a/b:c:d:e", "hf:a/b/c",
                                  "hf:/b", "hf:a/b:te st"])
def test_bad_spec_is_one_sentence(spec):
    with pytest.raises(CorpusError) as err:
        corpora.get_corpus(spec)
    assert str(err.value) == (f"dataset {spec!r} is not hf:OWNER/NAME, hf:OWNER/NAME:SPLIT or "
                              "hf:OWNER/NAME:CONFIG:SPLIT (e.g. hf:emozilla/proofpile-test-tokenized-mistral:train).")


# ------------------------------------------------------------------------- stored input_ids


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


# ------------------------------------------------------------------------------------- text


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


# --------------------------------------------------------------------------- failures


def test_hf_dataset_offline_is_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CorpusError) as err:
        iter_documents(f"hf:{PROOFPILE_TOKENIZED}")
    assert str(err.value) == (f"corpus 'hf:{PROOFPILE_TOKENIZED}' needs HF dataset '{PROOFPILE_TOKENIZED}' (split "
                              "'test'), which is not in the local HF cache and the hub can't be reached "
                              "(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set); download it on a machine with network "
                              "access, or use local:PATH.")


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


def test_script_dataset_among_other_failures_keeps_the_details(fake_hub):
    """Only when every candidate is script-based is the failure called a script refusal."""
    fake_hub(error=lambda path: RuntimeError(SCRIPT_REFUSAL.format("scrolls")) if path == "tau/scrolls"
             else ValueError("bad split"))
    with pytest.raises(CorpusError, match=r"could not load .*RuntimeError: Dataset scripts.*ValueError: bad split"):
        iter_documents("govreport")


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

