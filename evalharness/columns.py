"""The columns that name a series in every result table (model, method, factor, original context)."""

KEY_COLUMNS = ["model", "method", "factor", "original_ctx"]
