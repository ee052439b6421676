"""The leaderboard section of report.md: scores ± lm-eval's standard error, their mean over tasks
and the change from base."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..analysis.display import (
    fmt_pct,
    fmt_points,
    format_number,
    markdown_table,
    method_display,
    ordered_groups,
    varying,
)
from ..analysis.stats import REFERENCE_METHOD
from ..report import SERIES, by_series, row_label, series_id
from ..results import read_table
from .analysis import (
    leaderboard_columns,
    leaderboard_deltas,
    leaderboard_means,
    metric_words,
    task_display,
    without_subtasks,
)

REFERENCE = REFERENCE_METHOD
FIGURE_CAPTIONS = {"leaderboard": "Leaderboard tasks (base hatched, dashed base level).",
                   "leaderboard_mmlu_subjects": "MMLU by subject, ±1 standard error (few items per subject "
                                                "under --limit: wide bars)."}
TABLES = ("leaderboard",)


def _leaderboard_section(leaderboard: pd.DataFrame) -> list[str]:
    frame = without_subtasks(leaderboard).copy()
    for column in ("value", "stderr", "n_samples", "num_fewshot"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    columns = leaderboard_columns(frame)
    keys = [c for c in SERIES if c in frame.columns]
    means = by_series(leaderboard_means(frame), keys)
    deltas = leaderboard_deltas(frame, REFERENCE)
    show = varying(frame, ["model", "original_ctx"])

    def header(task: str, metric: str) -> str:
        part = frame[(frame["task"] == task) & (frame["metric"] == metric)]
        bits = [metric_words(task, metric)]
        shots = set(part["num_fewshot"].dropna()) if "num_fewshot" in part else set()
        if len(shots) == 1:
            bits.append(f"{format_number(shots.pop())}-shot")
        samples = set(part["n_samples"].dropna()) if "n_samples" in part else set()
        if len(samples) == 1:
            bits.append(f"n={format_number(samples.pop())}")
        return f"{task_display(task)} ({', '.join(bits)})"

    rows, incomplete = [], False
    for skey, group in ordered_groups(frame, keys):
        cells = {(r["task"], r["metric"]): r for r in group.to_dict("records")}
        row = [row_label(skey, show)]
        for column in columns:
            r = cells.get(column)
            if r is None:
                row.append("—")
                incomplete = True
                continue
            text = fmt_pct(r["value"])
            if not pd.isna(r.get("stderr")):
                text += f" ± {fmt_pct(r['stderr'])}"
            row.append(text)
        row.append(fmt_pct(means[series_id(skey, keys)]["mean"]))
        rows.append(row)
    lines = ["## Leaderboard", "",
             "- Scores (%) as lm-eval reports them ± lm-eval's standard error; n = samples per task "
             "(a run with `--limit` scores the first n items of each task: a subset, not the full task).",
             "- Mean: the unweighted mean over the tasks a method has of one number per task, the "
             "paper's Table-3 metric (ARC-c and HellaSwag acc_norm, MMLU acc_macro, TruthfulQA MC2 acc; "
             "other tasks acc_norm, else acc)" + (" (— = missing)." if incomplete else "."),
             "", markdown_table(["method"] + [header(t, m) for t, m in columns] + ["mean"], rows), ""]
    if not deltas.empty:
        reference = method_display(REFERENCE)
        rows = []
        for skey, group in ordered_groups(deltas, SERIES):
            cells = {(r["task"], r["metric"]): r["delta"] for r in group.to_dict("records")}
            rows.append([row_label(skey, show)] + [fmt_points(cells.get(c)) for c in columns])
        lines += [f"- Change from {reference}: score − {reference}'s score on the same task, "
                  "in percentage points.",
                  "", markdown_table(["method"] + [header(t, m) for t, m in columns], rows), ""]
    return lines


def report_section(results_dir: Path, seed: int, references: Sequence[str]) -> list[str]:
    """The leaderboard section (none when the folder has no leaderboard rows)."""
    leaderboard = read_table(results_dir, "leaderboard")
    return [] if leaderboard.empty else _leaderboard_section(leaderboard)
