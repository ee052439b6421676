"""Result tables: aggregation against hand computations, the append-only store, the manifest."""
import json
import math

import pandas as pd
import pytest

from evalharness.results import (
    SCHEMAS,
    Manifest,
    ResultStore,
    aggregate_perplexity,
    bootstrap_ppl_interval,
)


def doc_row(doc_id, length, tokens, nll_sum, window_mean=None, method="yarn", factor=2.0):
    return dict(model="m", method=method, factor=factor, original_ctx=64, dataset="d", doc_id=doc_id,
                doc_tokens=1000, protocol="sliding", context_length=length, stride=16, scored_tokens=tokens,
                nll_sum=nll_sum, n_windows=3, ppl=math.exp(nll_sum / tokens),
                ppl_window_mean=window_mean or math.exp(nll_sum / tokens))


def test_aggregate_is_token_weighted_and_keeps_the_authors_mean():
    docs = pd.DataFrame([doc_row("a", 128, 100, 200.0, window_mean=7.0), doc_row("b", 128, 300, 300.0, window_mean=3.0)])
    (row,) = aggregate_perplexity(docs).to_dict("records")
    assert row["n_docs"] == 2 and row["scored_tokens"] == 400
    assert row["ppl"] == pytest.approx(math.exp(500 / 400))  # not the mean of exp(2) and exp(1)
    assert row["ppl_window_mean"] == pytest.approx(5.0)
    assert row["ppl_ci_low"] <= row["ppl"] <= row["ppl_ci_high"]
    assert list(aggregate_perplexity(docs).columns) == SCHEMAS["perplexity"]


def test_bootstrap_is_seeded_and_sensible():
    nll, tokens = [100.0, 250.0, 90.0, 400.0], [100, 100, 100, 100]
    first = bootstrap_ppl_interval(nll, tokens, seed=0)
    assert first == bootstrap_ppl_interval(nll, tokens, seed=0)
    many_nll, many_tokens = [100.0 + 13.7 * i for i in range(12)], [100 + 7 * i for i in range(12)]
    assert bootstrap_ppl_interval(many_nll, many_tokens, seed=0) != bootstrap_ppl_interval(many_nll, many_tokens, seed=1)
    low, high = first
    assert math.exp(0.9) <= low < math.exp(840 / 400) < high <= math.exp(4.0)
    assert bootstrap_ppl_interval([50.0], [25], seed=0) == (math.exp(2), math.exp(2))


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
