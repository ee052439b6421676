"""The result tables of the RULER task: its columns, and the columns that identify a cell."""
from ..columns import KEY_COLUMNS

SCHEMAS: dict[str, list[str]] = {
    "ruler_samples": KEY_COLUMNS + ["task", "context_length", "doc_id", "score"],
    "ruler": KEY_COLUMNS + ["task", "context_length", "score", "n", "stderr"],
}

CELL_COLUMNS: dict[str, list[str]] = {
    "ruler_samples": KEY_COLUMNS + ["task", "context_length", "doc_id"],
    "ruler": KEY_COLUMNS + ["task", "context_length"],
}
