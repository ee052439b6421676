"""The result table of the leaderboard task: its columns, and the columns that identify a cell."""
from ..columns import KEY_COLUMNS

SCHEMAS: dict[str, list[str]] = {
    "leaderboard": KEY_COLUMNS + ["task", "metric", "value", "stderr", "num_fewshot", "n_samples"],
}

CELL_COLUMNS: dict[str, list[str]] = {
    "leaderboard": KEY_COLUMNS + ["task", "metric"],
}
