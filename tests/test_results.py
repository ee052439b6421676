"""Result tables: the append-only store and the manifest (aggregation: test_tables.py)."""
import json
import math

from evalharness.results import SCHEMAS, Manifest, ResultStore


def doc_row(doc_id, length, tokens, nll_sum, window_mean=None, method="yarn", factor=2.0):
    return dict(model="m", method=method, factor=factor, original_ctx=64, dataset="d", doc_id=doc_id,
                doc_tokens=1000, protocol="sliding", context_length=length, stride=16, scored_tokens=tokens,
                nll_sum=nll_sum, n_windows=3, ppl=math.exp(nll_sum / tokens),
                ppl_window_mean=window_mean or math.exp(nll_sum / tokens))


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
