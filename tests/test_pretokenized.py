"""Pre-tokenized corpora: an `input_ids` column is used as it is (no re-tokenization), and ids
outside the model's vocabulary are refused before any forward."""
import json
import random

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from evalharness import cli
from evalharness.corpora import CorpusError, TokenizedDoc, check_token_ids, load_corpus
from evalharness.models import build_byte_tokenizer

pytestmark = pytest.mark.usefixtures("isolated_cache")

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


class RefusingTokenizer:
    """A tokenizer that must not encode: stored ids are used as they are (it has a vocabulary, so
    the token cache can fingerprint it)."""

    def get_vocab(self):
        return {"a": 0}

    def __call__(self, *args, **kwargs):
        raise AssertionError("the corpus was re-tokenized")

    encode = __call__


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_input_ids_are_used_as_they_are(tmp_path):
    ids = [[5, 6, 7, 8], [9, 10], [300, 2, 3]]
    path = write_jsonl(tmp_path / "tok.jsonl", [{"text": "ignored", "input_ids": i} for i in ids])
    docs = load_corpus(f"local:{path}", RefusingTokenizer())
    assert [d.doc_id for d in docs] == ["0", "1", "2"]
    assert [d.ids.tolist() for d in docs] == ids  # no BOS added here: the protocols add it
    assert [d.ids.tolist() for d in load_corpus(f"local:{path}", RefusingTokenizer(), min_tokens=3)] == [ids[0], ids[2]]


def test_parquet_input_ids_are_used_as_they_are(tmp_path):
    ids = [[5, 6, 7, 8], [9, 10, 11]]
    pq.write_table(pa.table({"input_ids": ids, "tokenized_len": [4, 3]}), tmp_path / "tok.parquet")
    docs = load_corpus(f"local:{tmp_path / 'tok.parquet'}", RefusingTokenizer())
    assert [d.ids.tolist() for d in docs] == ids


def test_a_hub_copy_with_input_ids(tmp_path):
    """`proofpile=DIR` pointing at a copy of a pre-tokenized set (emozilla/proofpile-test-tokenized layout)."""
    ids = [[5, 6, 7, 8], [9, 10, 11]]
    write_jsonl(tmp_path / "test.jsonl", [{"text": "x", "input_ids": i, "tokenized_len": len(i)} for i in ids])
    docs = load_corpus(f"proofpile={tmp_path}", RefusingTokenizer())
    assert [(d.doc_id, d.ids.tolist()) for d in docs] == [("test/0", ids[0]), ("test/1", ids[1])]


def test_an_explicit_text_field_tokenizes_the_text(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "tok.jsonl", [{"text": "the cat", "input_ids": [1, 2]}])
    (doc,) = load_corpus(f"local:{path}", tokenizer, text_field="text")
    assert doc.ids.tolist() == stored_ids(tokenizer, ["the cat"])[0]


@pytest.mark.parametrize("bad", [[1, "2"], "1 2 3", [1.5, 2], [True, 3]])
def test_ids_that_are_not_integer_lists_are_refused(tmp_path, bad):
    path = write_jsonl(tmp_path / "tok.jsonl", [{"input_ids": [1, 2]}, {"input_ids": bad}])
    with pytest.raises(CorpusError, match="'input_ids' of document 1 is not a list of integer token ids"):
        load_corpus(f"local:{path}", RefusingTokenizer())


def test_check_token_ids():
    docs = [TokenizedDoc("a", torch.tensor([0, 5, 9])), TokenizedDoc("b", torch.tensor([3, 10]))]
    check_token_ids(docs[:1], 10, "c")
    with pytest.raises(CorpusError, match="document b of corpus 'c' holds token id 10, outside the model's "
                                          "vocabulary 0…9"):
        check_token_ids(docs, 10, "c")
    with pytest.raises(CorpusError, match="token id -1"):
        check_token_ids([TokenizedDoc("n", torch.tensor([-1, 2]))], 10, "c")


def cli_args(dataset, out, *extra):
    return ["--model", "random:tiny", "--method", "base,yarn", "--factor", "2", "--dataset", dataset,
            "--lengths", "64,128", "--out", str(out), "--no-progress", "--no-plots", *extra]


def test_stored_ids_give_the_numbers_of_the_text(tmp_path, texts, tokenizer):
    """The same documents as text and as stored ids (made by the model's tokenizer without special
    tokens): identical NLL sums, truncated and sliding (BOS added by the protocol in both)."""
    text_file = write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in texts])
    ids_file = write_jsonl(tmp_path / "ids.jsonl", [{"input_ids": i} for i in stored_ids(tokenizer, texts)])
    for extra in ([], ["--protocol", "sliding", "--stride", "32"]):
        frames = []
        for name, path in (("text", text_file), ("ids", ids_file)):
            out = tmp_path / f"{name}{len(extra)}"
            assert cli.main(cli_args(f"local:{path}", out, *extra)) == cli.EXIT_OK
            frames.append(pd.read_csv(out / "perplexity_docs.csv").drop(columns="dataset"))
        pd.testing.assert_frame_equal(frames[0], frames[1])


def test_ids_outside_the_vocabulary_are_refused_before_any_forward(tmp_path, capsys):
    from evalharness.models import BYTE_VOCAB_SIZE

    rows = [{"input_ids": list(range(3, 203))}, {"input_ids": list(range(3, 202)) + [BYTE_VOCAB_SIZE + 7]}]
    path = write_jsonl(tmp_path / "ids.jsonl", rows)
    out = tmp_path / "out"
    assert cli.main(cli_args(f"local:{path}", out)) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err == (f"error: document 1 of corpus 'local:{path}' holds token id {BYTE_VOCAB_SIZE + 7}, outside the "
                   f"model's vocabulary 0…{BYTE_VOCAB_SIZE - 1}; its input_ids were made for another tokenizer.")
    assert not (out / "perplexity_docs.csv").exists()
