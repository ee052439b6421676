"""The result tables of the RULER task: its columns, and the columns that identify a cell."""
from ..columns import KEY_COLUMNS, KEY_RANGES

SCHEMAS: dict[str, list[str]] = {
    "ruler_samples": KEY_COLUMNS + ["task", "context_length", "doc_id", "score"],
    "ruler": KEY_COLUMNS + ["task", "context_length", "score", "n", "stderr"],
}

VALUE_RANGES: dict[str, dict[str, tuple]] = {  # lm-eval's RULER scores are fractions
    "ruler_samples": {**KEY_RANGES, "context_length": (1, None), "score": (0, 1)},
    "ruler": {**KEY_RANGES, "context_length": (1, None), "score": (0, 1), "n": (0, None), "stderr": (0, None)},
}

CELL_COLUMNS: dict[str, list[str]] = {
    "ruler_samples": KEY_COLUMNS + ["task", "context_length", "doc_id"],
    "ruler": KEY_COLUMNS + ["task", "context_length"],
}
