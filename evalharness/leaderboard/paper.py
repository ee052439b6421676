"""Leaderboard metrics next to the YaRN paper's published lm-eval numbers (the `compare` subcommand's
leaderboard part).

Contract: `compare(run, model, folder)` puts each `leaderboard.csv` metric next to the published
lm-eval number of the same model, task and metric (`arc_challenge` acc_norm, `hellaswag` acc_norm,
`mmlu` acc_macro, `truthfulqa_mc2` acc; offline mirrors `*_local` count as their task); `differs`
names the run's `num_fewshot` against the published shots, and its `n_samples` against the full
evaluation set (`subset n=50 of 1172`), the published row's `n_samples`.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..paper import differs_text, is_known, method_text, model_key, published, setting_difference, with_rel_diff

TABLE = "leaderboard"
PUBLISHED = "leaderboard"


def leaderboard_differences(row: pd.Series, ref: pd.Series) -> list[str]:
    """How one `leaderboard.csv` row's evaluation differs from the published one `ref`: the shots,
    and the examples evaluated against the full set (`subset n=50 of 1172` under `--limit`)."""
    found = setting_difference("shots", row.get("num_fewshot"), int(ref["num_fewshot"]))
    full, n = int(ref["n_samples"]), row.get("n_samples")
    if not is_known(n):
        found.append("n unknown")
    elif int(n) < full:
        found.append(f"subset n={int(n)} of {full}")
    elif int(n) != full:
        found.append(f"n={int(n)} (paper {full})")
    return found


def compare(run: pd.DataFrame, model: str | None = None, folder: Path | None = None) -> pd.DataFrame:
    """Rows of `leaderboard.csv` next to the published lm-eval number of the same task and metric;
    `setting` names the run's own shot count."""
    paper = published(TABLE)
    paper["key"] = paper["model"].map(model_key)
    rows = []
    for _, row in run.iterrows():
        task = str(row["task"]).removesuffix("_local")
        match = paper[(paper.key == model_key(model or row["model"])) & (paper.task == task)
                      & (paper.metric == row["metric"])]
        if match.empty:
            continue
        ref = match.iloc[0]
        shots = row.get("num_fewshot")
        setting = f"{task} ({int(float(shots))}-shot)" if is_known(shots) else f"{task} (shots unknown)"
        rows.append(dict(table=TABLE, model=ref["model"], method=method_text(row["method"], row["factor"]),
                         setting=setting, metric=row["metric"], run=float(row["value"]), paper=float(ref["value"]),
                         differs=differs_text(leaderboard_differences(row, ref)), paper_source=ref["source"]))
    return with_rel_diff(rows)


def mismatch_reason(run: pd.DataFrame, paper: pd.DataFrame) -> str:
    """Why no published number (`paper`: the published rows of the run's model) matches the run's
    `leaderboard.csv`: the tasks and metrics each has (one clause)."""
    mine = {(str(t).removesuffix("_local"), str(m)) for t, m in zip(run["task"], run["metric"])}
    theirs = {(str(t), str(m)) for t, m in zip(paper["task"], paper["metric"])}
    return (f"leaderboard numbers are published for {', '.join(f'{t} {m}' for t, m in sorted(theirs))}, this run "
            f"has {', '.join(f'{t} {m}' for t, m in sorted(mine))}")
