"""The RULER section of report.md: scores per task and length ± standard error, their mean over
tasks, and the paired per-sample difference to each reference."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..analysis.display import (
    fmt_interval,
    fmt_pct,
    fmt_points,
    format_number,
    markdown_table,
    plural,
    reference_display,
    varying,
)
from ..analysis.stats import BOOTSTRAP_RESAMPLES, REFERENCE_METHOD
from ..report import SERIES, lengths_of, row_label, series_grid, unmatched_references
from ..results import read_table
from .analysis import ALL_TASKS, TASK_ORDER, ruler_differences, ruler_means, ruler_scores

REFERENCE = REFERENCE_METHOD
fmt_length = format_number
FIGURE_CAPTIONS = {
    "ruler": "RULER score by task and context length, per method (n: samples per cell).",
    "ruler_mean": "RULER mean score over tasks vs context length (dashed: original context L).",
}
TABLES = ("ruler",)


def _ruler_section(ruler: pd.DataFrame, samples: pd.DataFrame, seed: int,
                   references: Sequence[str] = (REFERENCE,)) -> list[str]:
    scores = ruler_scores(ruler)
    keys = [c for c in SERIES if c in scores.columns]
    show = varying(scores, ["model", "original_ctx"])
    lengths = lengths_of(scores)
    means = ruler_means(scores)
    ns = set(scores["n"].dropna().astype(int))
    uniform_n = len(ns) == 1

    def score_text(r) -> str:
        if r is None:
            return "—"
        text = fmt_pct(r["score"])
        if not pd.isna(r["stderr"]):
            text += f" ± {fmt_pct(r['stderr'])}"
        return text if uniform_n else f"{text} (n={int(r['n'])})"

    mean_rows = [[row_label(k, show)] + ["—" if r is None else f"{fmt_pct(r['mean_score'])} ({int(r['n_tasks'])})"
                                         for r in cells] for k, cells in series_grid(means, keys, lengths)]
    task_rows = [[row_label(k, show), k["task"]] + [score_text(r) for r in cells]
                 for k, cells in series_grid(scores, keys + ["task"], lengths, TASK_ORDER)]
    n_text = f"n = {plural(ns.pop(), 'sample')} per cell" if uniform_n else "n samples per cell as shown"
    lines = ["## RULER", "",
             "- Score (%): the mean over a cell's samples of the task's own per-sample metric (RULER's "
             f"string_match_all, lm-eval's RULER tasks with the model's tokenizer) ± its standard error; {n_text}.",
             "- Mean: the unweighted mean of the task scores at that length (tasks counted in brackets).", "",
             markdown_table(["method"] + [fmt_length(x) for x in lengths], mean_rows), "",
             markdown_table(["method", "task"] + [fmt_length(x) for x in lengths], task_rows,
                            align=["l", "l"] + ["r"] * len(lengths)), ""]
    differences = {reference: ruler_differences(samples, reference, seed=seed) if not samples.empty
                   else pd.DataFrame() for reference in references}
    for reference, table in differences.items():
        lines += _ruler_difference_table(table, reference, keys, lengths, show)
    return lines + (unmatched_references(differences, "RULER") if not samples.empty else [])

def _ruler_difference_table(differences: pd.DataFrame, reference: str, keys: Sequence[str],
                            lengths: Sequence[float], show: Sequence[str]) -> list[str]:
    if differences.empty:
        return []
    pooled = differences[differences["task"] == ALL_TASKS]
    reference = reference_display(reference)

    def text(r) -> str:
        if r is None:
            return "—"
        interval = fmt_interval(r["difference_ci_low"], r["difference_ci_high"], fmt_points)
        return fmt_points(r["difference"]) + (interval if r["n"] >= 2 else "") + f" (n={int(r['n'])})"

    rows = [[row_label(k, show)] + [text(r) for r in cells] for k, cells in series_grid(pooled, keys, lengths)]
    return [
        f"Difference to {reference} on the same samples:", "",
        f"- Difference: the method's per-sample score − {reference}'s on the same RULER prompt (lm-eval "
        "generates the same prompts for every method), averaged over the paired samples of all tasks at "
        "that length, in percentage points; per task in `ruler.analysis.ruler_differences`.",
        "- Brackets: 95 % paired percentile bootstrap interval over those samples "
        f"({BOOTSTRAP_RESAMPLES} seeded resamples).", "",
        markdown_table(["method"] + [fmt_length(x) for x in lengths], rows), ""]


def report_section(results_dir: Path, seed: int, references: Sequence[str]) -> list[str]:
    """The RULER section (none when the folder has no RULER rows)."""
    ruler = read_table(results_dir, "ruler")
    if ruler.empty:
        return []
    return _ruler_section(ruler, read_table(results_dir, "ruler_samples"), seed, references)
