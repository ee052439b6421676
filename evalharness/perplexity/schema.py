"""The result tables of the perplexity tasks: their columns, the columns that identify a cell, and
the upgrade of tables written before a column existed."""
import math

import pandas as pd

from ..columns import KEY_COLUMNS, KEY_RANGES

SCHEMAS: dict[str, list[str]] = {
    "perplexity_docs": KEY_COLUMNS + [
        "dataset", "doc_id", "doc_tokens", "protocol", "window_bos", "context_length", "stride", "scored_tokens",
        "nll_sum", "n_windows", "window_nll_sum", "ppl", "ppl_paper",
    ],
    "perplexity": KEY_COLUMNS + [
        "dataset", "protocol", "window_bos", "context_length", "stride", "n_docs", "scored_tokens", "n_windows",
        "ppl", "ppl_paper", "ppl_ci_low", "ppl_ci_high",
    ],
    "perplexity_positions_docs": KEY_COLUMNS + [
        "dataset", "doc_id", "protocol", "window_bos", "context_length", "stride", "bucket_width",
        "position_start", "position_end", "tokens", "nll_sum", "mean_nll",
    ],
    "perplexity_positions": KEY_COLUMNS + [
        "dataset", "protocol", "window_bos", "context_length", "stride", "bucket_width",
        "position_start", "position_end", "n_docs", "tokens", "nll_sum", "mean_nll",
    ],
}

# exp of a mean of NLLs ≥ 0 is ≥ 1; lengths ≥ 2 (BOS + one scored token)
_COMMON = {**KEY_RANGES, "context_length": (2, None), "stride": (0, None)}
VALUE_RANGES: dict[str, dict[str, tuple]] = {
    "perplexity_docs": {**_COMMON, "doc_tokens": (1, None), "scored_tokens": (1, None), "nll_sum": (0, None),
                        "n_windows": (1, None), "ppl": (1, None), "ppl_paper": (1, None)},
    "perplexity": {**_COMMON, "n_docs": (1, None), "scored_tokens": (1, None), "n_windows": (1, None),
                   "ppl": (1, None), "ppl_paper": (1, None), "ppl_ci_low": (1, None), "ppl_ci_high": (1, None)},
    "perplexity_positions_docs": {**_COMMON, "tokens": (0, None), "nll_sum": (0, None), "mean_nll": (0, None)},
    "perplexity_positions": {**_COMMON, "n_docs": (1, None), "tokens": (0, None), "nll_sum": (0, None),
                             "mean_nll": (0, None)},
}

CELL_COLUMNS: dict[str, list[str]] = {
    "perplexity_docs": KEY_COLUMNS + ["dataset", "doc_id", "protocol", "window_bos", "context_length", "stride"],
    "perplexity_positions_docs": KEY_COLUMNS + ["dataset", "doc_id", "protocol", "window_bos", "context_length",
                                                "stride", "bucket_width", "position_start"],
}


def upgrade(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Tables written before a column existed, in today's terms: a missing `window_bos` is `first`
    (BOS only at the document start, the one placement there was); an old per-document
    `ppl_window_mean` (exp of the mean of the document's window mean NLLs) is today's per-document
    `ppl_paper`, and n_windows · ln of it the `window_nll_sum`. An old aggregate's
    `ppl_window_mean` (a mean over documents of per-document values) has no successor: dropped."""
    if "window_bos" not in frame.columns and "protocol" in frame.columns:
        frame.insert(frame.columns.get_loc("protocol") + 1, "window_bos", "first")
    if "ppl_window_mean" in frame.columns:
        if table == "perplexity_docs" and "ppl_paper" not in frame.columns:
            old = frame["ppl_window_mean"].astype(float)
            frame["window_nll_sum"] = frame["n_windows"].astype(float) * old.map(math.log)
            frame["ppl_paper"] = old
        frame = frame.drop(columns="ppl_window_mean")
    return frame
