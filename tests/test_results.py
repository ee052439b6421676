"""Result tables: the append-only store and the manifest (aggregation: test_tables.py)."""
import json
import math

import pandas as pd
import pytest

from evalharness.perplexity.analysis import aggregate_perplexity
from evalharness.results import SCHEMAS, Manifest, ResultStore


def doc_row(doc_id, length, tokens, nll_sum, window_nll_sum=None, n_windows=3, method="yarn", factor=2.0,
            window_bos="every"):
    window_nll_sum = n_windows * nll_sum / tokens if window_nll_sum is None else window_nll_sum
    return dict(model="m", method=method, factor=factor, original_ctx=64, dataset="d", doc_id=doc_id,
                doc_tokens=1000, protocol="sliding", window_bos=window_bos, context_length=length, stride=16,
                scored_tokens=tokens, nll_sum=nll_sum, n_windows=n_windows, window_nll_sum=window_nll_sum,
                ppl=math.exp(nll_sum / tokens), ppl_paper=math.exp(window_nll_sum / n_windows))


def test_aggregate_is_token_weighted_and_the_authors_mean_over_all_windows():
    docs = pd.DataFrame([doc_row("a", 128, 100, 200.0, window_nll_sum=6.0, n_windows=3),
                         doc_row("b", 128, 300, 300.0, window_nll_sum=1.0, n_windows=1)])
    (row,) = aggregate_perplexity(docs).to_dict("records")
    assert row["n_docs"] == 2 and row["scored_tokens"] == 400 and row["n_windows"] == 4
    assert row["ppl"] == pytest.approx(math.exp(500 / 400))  # not the mean of exp(2) and exp(1)
    # the authors: exp(mean of the 4 window losses) = exp((6 + 1) / 4), not a mean over documents
    assert row["ppl_paper"] == pytest.approx(math.exp(7 / 4))
    assert row["ppl_paper"] != pytest.approx((math.exp(2.0) + math.exp(1.0)) / 2)
    assert row["ppl_ci_low"] <= row["ppl"] <= row["ppl_ci_high"]
    assert list(aggregate_perplexity(docs).columns) == SCHEMAS["perplexity"]


def test_window_bos_is_part_of_the_cell(tmp_path):
    store = ResultStore(tmp_path)
    store.append("perplexity_docs", [doc_row("a", 128, 100, 200.0, window_bos="first")])
    assert store.cell_key("perplexity_docs", doc_row("a", 128, 1, 1.0, window_bos="every")) not in store.done(
        "perplexity_docs")
    store.append("perplexity_docs", [doc_row("a", 128, 100, 150.0, window_bos="every")])
    table = aggregate_perplexity(store.read("perplexity_docs"))
    assert sorted(table["window_bos"]) == ["every", "first"] and (table["n_docs"] == 1).all()


OLD_DOCS_CSV = """model,method,factor,original_ctx,dataset,doc_id,doc_tokens,protocol,context_length,stride,\
scored_tokens,nll_sum,n_windows,ppl,ppl_window_mean
m,base,1,64,d,a,1000,truncated,128,0,127,254.0,1,7.389056099,7.389056099
m,base,1,64,d,b,1000,sliding,128,32,1000,1500.0,3,4.48168907,4.0
""".replace("\\\n", "")


def test_old_result_folders_stay_readable_and_resumable(tmp_path):
    """Folders written before `window_bos`/`ppl_paper`: a missing window_bos is `first`, the old
    per-document window mean is today's per-document ppl_paper, and their cells still count as done."""
    (tmp_path / "perplexity_docs.csv").write_text(OLD_DOCS_CSV)
    (tmp_path / "perplexity.csv").write_text("model,method,factor,original_ctx,dataset,protocol,context_length,"
                                             "stride,n_docs,scored_tokens,ppl,ppl_window_mean,ppl_ci_low,"
                                             "ppl_ci_high\nm,base,1,64,d,truncated,128,0,1,127,7.39,7.39,7.39,7.39\n")
    store = ResultStore(tmp_path)
    docs = store.read("perplexity_docs")
    assert list(docs["window_bos"]) == ["first", "first"] and "ppl_window_mean" not in docs
    assert docs["ppl_paper"].tolist() == pytest.approx([7.389056099, 4.0])
    assert docs["window_nll_sum"].tolist() == pytest.approx([2.0, 3 * math.log(4.0)])
    old_cell = doc_row("a", 128, 1, 1.0, window_bos="first") | dict(model="m", method="base", factor=1,
                                                                     protocol="truncated", stride=0)
    assert store.cell_key("perplexity_docs", old_cell) in store.done("perplexity_docs")
    assert "ppl_paper" not in store.read("perplexity") and "window_bos" in store.read("perplexity")
    aggregated = aggregate_perplexity(docs).set_index("protocol")
    assert aggregated.loc["sliding", "ppl_paper"] == pytest.approx(4.0)
    assert aggregated.loc["truncated", "ppl_paper"] == pytest.approx(aggregated.loc["truncated", "ppl"])
    store.append("perplexity_docs", [doc_row("c", 128, 100, 200.0)])  # rewriting upgrades the file
    assert list(store.read("perplexity_docs").columns) == SCHEMAS["perplexity_docs"]


def test_store_appends_replaces_cells_and_round_trips(tmp_path):
    store = ResultStore(tmp_path)
    store.append("perplexity_docs", [doc_row("a", 128, 100, 200.0), doc_row("a", 256, 200, 380.0)])
    store.append("perplexity_docs", [doc_row("b", 128, 100, 150.0)])
    assert len(store.read("perplexity_docs")) == 3
    done = store.done("perplexity_docs")
    assert store.cell_key("perplexity_docs", doc_row("a", 256, 1, 1.0)) in done
    assert store.cell_key("perplexity_docs", doc_row("a", 512, 1, 1.0)) not in done
    assert store.cell_key("perplexity_docs", doc_row("a", 256, 1, 1.0, factor=4.0)) not in done
    store.append("perplexity_docs", [doc_row("a", 128, 100, 210.0)])  # the same cell again replaces it
    frame = store.read("perplexity_docs")
    assert len(frame) == 3
    assert frame.loc[(frame.doc_id == "a") & (frame.context_length == 128), "nll_sum"].item() == 210.0
    assert list(frame.columns) == SCHEMAS["perplexity_docs"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_numeric_doc_ids_stay_strings(tmp_path):
    store = ResultStore(tmp_path)
    store.append("perplexity_docs", [doc_row("007", 128, 100, 200.0)])
    assert store.cell_key("perplexity_docs", doc_row("007", 128, 1, 1.0)) in store.done("perplexity_docs")


def test_manifest_records_cells_and_survives_reload(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.start(["run_eval.py"], {"seed": 0}, {"note": "x"})
    manifest.cell("c1", "done")
    manifest.cell("c2", "failed", error="OutOfMemoryError: boom")
    manifest.finish()
    again = Manifest(tmp_path)
    assert set(again.failed_cells()) == {"c2"}
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["runs"][0]["environment"]["torch"]
    assert data["runs"][0]["end"] is not None


def test_a_table_or_manifest_that_cannot_be_read_is_one_sentence(tmp_path):
    from evalharness.results import ResultFolderError, read_manifest

    (tmp_path / "perplexity.csv").mkdir()  # read_bytes raises IsADirectoryError, as an unreadable file would
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(ResultFolderError, match=r"perplexity\.csv cannot be read \(Is a directory\); fix its "):
        ResultStore(tmp_path).read("perplexity")
    with pytest.raises(ResultFolderError, match=r"manifest\.json cannot be read \(Is a directory\); fix its "):
        read_manifest(tmp_path / "manifest.json")
