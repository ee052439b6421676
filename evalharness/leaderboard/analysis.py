"""The leaderboard tables: the paper's task order and names, each task's headline metric, the
unweighted mean over tasks and the change from a reference series (values as lm-eval reports them)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..analysis.display import SERIES_COLUMNS, ordered_groups
from ..analysis.stats import pair_with_reference
from .protocol import PAPER_TASKS

TASK_NAMES = {
    "arc_challenge": "ARC-c",
    "hellaswag": "HellaSwag",
    "mmlu": "MMLU",
    "truthfulqa_mc2": "TruthfulQA",
}

TASK_ORDER = list(TASK_NAMES)

def task_sort_key(task: str) -> tuple:
    """The paper's Table 3 order (ARC-c, HellaSwag, MMLU, TruthfulQA; offline `_local` mirrors
    with their task), other tasks after it."""
    name = str(task).removesuffix("_local")
    return (TASK_ORDER.index(name) if name in TASK_ORDER else len(TASK_ORDER), str(task))

def task_display(task: str) -> str:
    """`arc_challenge` → `ARC-c`, `arc_challenge_local` → `ARC-c (local)`; others unchanged."""
    name = str(task)
    local = name.endswith("_local") and name.removesuffix("_local") in TASK_NAMES
    name = name.removesuffix("_local") if local else name
    return TASK_NAMES.get(name, name) + (" (local)" if local else "")

def without_subtasks(leaderboard: pd.DataFrame) -> pd.DataFrame:
    """The rows of group-level tasks only: a task named `<other task in the table>_<suffix>` (an MMLU
    subject beside `mmlu_local`) is a subtask, kept in the CSV but left out of summaries."""
    tasks = set(leaderboard["task"].astype(str))
    subtask = [any(t != g and t.startswith(g + "_") for g in tasks) for t in leaderboard["task"].astype(str)]
    return leaderboard[[not s for s in subtask]]

def leaderboard_columns(leaderboard: pd.DataFrame) -> list[tuple[str, str]]:
    """The (task, metric) pairs of a leaderboard table in the paper's order."""
    return sorted({(t, m) for t, m in zip(leaderboard["task"], leaderboard["metric"])},
                  key=lambda tm: task_sort_key(tm[0]) + (tm[1],))

# Metric of a task's headline number when lm-eval reports several and the task is not one of the
# paper's (whose headline metrics are `leaderboard.protocol.PAPER_TASKS`'): the first one it has.
HEADLINE_PREFERENCE = ("acc_norm", "acc", "exact_match")

def headline_metric(task: str, metrics) -> str:
    """The one metric of `task` that its leaderboard mean counts: the paper's Table-3 metric for its
    four tasks (`_local` mirrors included: ARC-c and HellaSwag acc_norm, MMLU acc_macro, TruthfulQA
    MC2 acc), else the task's only metric, else the first of `HEADLINE_PREFERENCE` it has, else its
    first metric in sorted order."""
    metrics = sorted({str(m) for m in metrics})
    paper = PAPER_TASKS.get(str(task).removesuffix("_local"))
    if paper and paper[1] in metrics:
        return paper[1]
    if len(metrics) == 1:
        return metrics[0]
    return next((m for m in HEADLINE_PREFERENCE if m in metrics), metrics[0])

def leaderboard_headline(leaderboard: pd.DataFrame) -> pd.DataFrame:
    """The rows of each series' headline numbers: group-level tasks only (`without_subtasks`), and
    of each task the one metric `headline_metric` picks (the paper's four numbers for its tasks)."""
    frame = without_subtasks(leaderboard)
    if frame.empty:
        return frame
    keys = [c for c in SERIES_COLUMNS if c in frame.columns]
    keep = pd.Series(False, index=frame.index)
    for _, group in ordered_groups(frame, keys):
        for task, rows_of_task in group.groupby("task", sort=False):
            metric = headline_metric(task, rows_of_task["metric"])
            keep[rows_of_task.index[rows_of_task["metric"] == metric]] = True
    return frame[keep]

def leaderboard_means(leaderboard: pd.DataFrame) -> pd.DataFrame:
    """Per series: `mean` = the unweighted mean over its tasks of each task's headline metric
    (`headline_metric`: one number per task, so a task reporting acc and acc_norm, or MMLU's
    acc_macro and acc_weighted, counts once) and `n_tasks` (how many tasks), in display order."""
    keys = [c for c in SERIES_COLUMNS if c in leaderboard.columns]
    rows = []
    for key, group in ordered_groups(leaderboard, keys):
        values = []
        for task, rows_of_task in group.groupby("task", sort=False):
            metric = headline_metric(task, rows_of_task["metric"])
            value = pd.to_numeric(rows_of_task.loc[rows_of_task["metric"] == metric, "value"], errors="coerce")
            values.extend(value.dropna().tolist())
        mean = float(np.mean(values)) if values else math.nan
        rows.append({**key, "mean": mean, "n_tasks": len(values)})
    return pd.DataFrame(rows, columns=keys + ["mean", "n_tasks"])

def leaderboard_deltas(leaderboard: pd.DataFrame, reference: str = "base") -> pd.DataFrame:
    """Per series other than `reference` and (task, metric): `delta` = value − the reference's
    value on the same task and metric (same run and model); NaN where the reference lacks it."""
    keys = [c for c in SERIES_COLUMNS if c in leaderboard.columns]
    columns = keys + ["task", "metric", "value", "reference", "reference_value", "delta"]
    join = [c for c in ("run", "model") if c in leaderboard.columns] + ["task", "metric"]
    out = pair_with_reference(leaderboard.assign(value=pd.to_numeric(leaderboard["value"], errors="coerce")),
                              reference, join, {"value": "reference_value"}, "task", how="left")
    if out is None:
        return pd.DataFrame(columns=columns)
    out["reference"] = reference
    out["delta"] = out["value"] - out["reference_value"]
    return out[columns].reset_index(drop=True)


# A metric in words where lm-eval's name hides what it is (TruthfulQA MC2's score is lm-eval's `acc`).
METRIC_WORDS = {("truthfulqa_mc2", "acc"): "MC2", ("mmlu", "acc_macro"): "acc (macro)",
                ("mmlu", "acc_weighted"): "acc (weighted)"}


def metric_words(task: str, metric: str) -> str:
    """How figures and the report name `metric` of `task` (a local mirror named as its hub task)."""
    return METRIC_WORDS.get((str(task).removesuffix("_local"), metric), metric)
