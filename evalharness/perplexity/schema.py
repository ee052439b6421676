"""The result tables of the perplexity tasks: their columns, and the columns that identify a cell."""
from ..columns import KEY_COLUMNS

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

CELL_COLUMNS: dict[str, list[str]] = {
    "perplexity_docs": KEY_COLUMNS + ["dataset", "doc_id", "protocol", "window_bos", "context_length", "stride"],
    "perplexity_positions_docs": KEY_COLUMNS + ["dataset", "doc_id", "protocol", "window_bos", "context_length",
                                                "stride", "bucket_width", "position_start"],
}
