"""The result table of the passkey task: its columns, and the columns that identify a cell."""
from ..columns import BOOL, KEY_COLUMNS, KEY_RANGES

SCHEMAS: dict[str, list[str]] = {
    "passkey": KEY_COLUMNS + [
        "context_length", "prompt_tokens", "depth", "trial", "seed", "scoring", "passkey", "continuation", "correct",
        "key_forced_argmax",
    ],
}

VALUE_RANGES: dict[str, dict[str, tuple | str]] = {
    "passkey": {**KEY_RANGES, "context_length": (2, None), "prompt_tokens": (1, None), "depth": (0, 1),
                "trial": (0, None), "correct": BOOL},
}

CELL_COLUMNS: dict[str, list[str]] = {
    "passkey": KEY_COLUMNS + ["context_length", "depth", "trial", "seed", "scoring"],
}
