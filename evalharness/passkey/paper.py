"""The passkey context next to the YaRN paper's Table 5 (the `compare` subcommand's passkey part).

Contract: `compare(run, model, folder)` puts each series' effective passkey context
(`passkey.analysis.passkey_effective_context`) next to the published one of the same model; `differs`
names how the series' grid differs from the authors' (`PAPER_TASK_FILE`,
`tasks/yarn-paper/passkey.yaml`): its lengths and its prompts per length (depths × trials).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import taskfiles
from ..options import parse_lengths
from ..paper import differs_text, method_text, model_key, published, with_rel_diff
from .analysis import passkey_accuracy, passkey_effective_context

TABLE = "passkey"
PUBLISHED = "passkey"
# The task file of the authors' evaluation behind the published numbers (module doc).
PAPER_TASK_FILE = "yarn-paper/passkey"


def paper_passkey() -> tuple[tuple[int, ...], int]:
    """The authors' passkey grid from its task file: (lengths, prompts per length = depths × trials)."""
    fields = taskfiles.load(PAPER_TASK_FILE).fields
    return tuple(parse_lengths(str(fields["lengths"]))), int(fields["depths"]) * int(fields["trials"])


def passkey_differences(prompts_per_length: pd.Series) -> list[str]:
    """How a series' passkey grid (`prompts_per_length`: prompts indexed by context length) differs
    from the paper's (`paper_passkey`: 10 prompts at each of 8k…128k step 8k)."""
    found = []
    paper_lengths, paper_prompts = paper_passkey()
    lengths = tuple(int(n) for n in prompts_per_length.index)
    if lengths != paper_lengths:
        step = paper_lengths[1] - paper_lengths[0] if len(paper_lengths) > 1 else 0
        found.append(f"lengths {', '.join(map(str, lengths))} (paper {paper_lengths[0]}…{paper_lengths[-1]} "
                     f"step {step})")
    counts = sorted({int(n) for n in prompts_per_length})
    if counts != [paper_prompts]:
        shown = "–".join(map(str, (counts[0], counts[-1]))) if len(counts) > 1 else str(counts[0])
        found.append(f"prompts/length {shown} (paper {paper_prompts})")
    return found


def compare(run: pd.DataFrame, model: str | None = None, folder: Path | None = None) -> pd.DataFrame:
    """The run's passkey context (per method) next to the paper's Table 5."""
    paper = published(TABLE)
    paper["key"] = paper["model"].map(model_key)
    per_length, effective = passkey_accuracy(run, by=("context_length",)), passkey_effective_context(run)
    series = [c for c in effective.columns if c in per_length.columns]  # the series' identifying columns
    rows = []
    for _, row in effective.iterrows():
        match = paper[(paper.key == model_key(model or row["model"])) & (paper.metric == "passkey_context")]
        if match.empty:
            continue
        ref = match.iloc[0]
        mine = per_length[(per_length[series].astype(str) == row[series].astype(str)).all(axis=1)]
        differs = passkey_differences(mine.set_index(mine["context_length"].astype(float))["n"].sort_index())
        rows.append(dict(table=TABLE, model=ref["model"], method=method_text(row["method"], row["factor"]),
                         setting=f"lengths ≤ {int(row['max_length_tested'])}", metric="passkey_context",
                         run=float(row["effective_context"]), paper=float(ref["value"]),
                         differs=differs_text(differs), paper_source=ref["source"]))
    return with_rel_diff(rows)


def mismatch_reason(run: pd.DataFrame, paper: pd.DataFrame) -> str | None:
    """Why no published passkey context (`paper`: the published rows of the run's model) matches:
    None when one is published (then the model names differ), else that none is."""
    return None if (paper["metric"] == "passkey_context").any() else "no passkey context is published"
