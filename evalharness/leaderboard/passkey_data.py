"""Rows of the passkey_local task: the YaRN paper's passkey prompts (`evalharness.passkey.engine.build_prompt`)
as jsonl records."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Sequence

from ..passkey.engine import build_prompt


def passkey_documents(tokenizer, lengths: Sequence[int], trials: int = 5, seed: int = 0) -> list[dict]:
    """Rows for the passkey_local task: the prompts of `evalharness.passkey.engine.build_prompt` (the
    paper's text, at most `length` tokens with BOS, seeded 5-digit keys) at a uniformly random
    depth per trial, as in the paper."""
    rng = random.Random(seed)
    docs = []
    for length in lengths:
        for trial in range(trials):
            prompt = build_prompt(tokenizer, int(length), round(rng.random(), 6), seed=seed, trial=trial)
            docs.append({"prompt": prompt.text, "passkey": str(prompt.passkey), "context_length": int(length),
                         "prompt_tokens": prompt.prompt_tokens, "depth": prompt.depth, "trial": trial, "seed": seed})
    return docs


def write_jsonl(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
