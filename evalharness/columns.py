"""The columns that name a series in every result table (model, method, factor, original context),
and the range every table's number columns hold (`VALUE_RANGES` in a task's schema module)."""

KEY_COLUMNS = ["model", "method", "factor", "original_ctx"]
KEY_RANGES = {"factor": (0, None), "original_ctx": (1, None)}
BOOL = "bool"  # a VALUE_RANGES entry: the column holds True or False
