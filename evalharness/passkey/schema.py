"""The result table of the passkey task: its columns, and the columns that identify a cell."""
from ..columns import KEY_COLUMNS

SCHEMAS: dict[str, list[str]] = {
    "passkey": KEY_COLUMNS + [
        "context_length", "prompt_tokens", "depth", "trial", "seed", "scoring", "passkey", "continuation", "correct",
        "key_forced_argmax",
    ],
}

CELL_COLUMNS: dict[str, list[str]] = {
    "passkey": KEY_COLUMNS + ["context_length", "depth", "trial", "seed", "scoring"],
}
