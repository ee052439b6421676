"""The leaderboard figures: the paper's headline numbers as grouped bars (`figures/leaderboard`) and,
on request, a task group's per-subject scores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis.display import format_number, is_missing, split_label
from ..plots import (
    empty_figure,
    error_bars,
    extra_keys,
    legend,
    new_figure,
    ordered_series,
    save_figure,
    series_label,
    series_style,
    with_model,
)
from ..results import read_table
from .analysis import headline_metric, leaderboard_columns, leaderboard_headline, metric_words, task_display


def _task_text(task: str, metric: str, fewshot=None, n=None) -> str:
    words = metric_words(task, metric)
    text = f"{task_display(task)}\n{words}"
    if not is_missing(fewshot):
        text += f", {format_number(fewshot)}-shot"
    if not is_missing(n):
        text += f"\nn={format_number(n)}"
    return text

def _one_value(frame: pd.DataFrame, column: str):
    values = frame[column].dropna().unique() if column in frame else []
    return values[0] if len(values) == 1 else None

def plot_leaderboard(frame: pd.DataFrame, title: str | None = None) -> Figure:
    """The paper's headline leaderboard numbers (`leaderboard.analysis.leaderboard_headline`: one metric per
    task, subtasks such as MMLU's subjects left out) as grouped bars.

    One group per task, methods side by side in the look of `series_style` with base first (grey,
    hatched) and a dashed base level across each group; error bars ±1 lm-eval standard error.
    Bar heights are the `value`s as stored; the figure is at most 12 inches wide.
    """
    if frame.empty:
        return empty_figure("no leaderboard rows")
    frame = leaderboard_headline(frame).copy()
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    frame["stderr"] = pd.to_numeric(frame.get("stderr"), errors="coerce")
    tasks = leaderboard_columns(frame)
    task_index = {tm: i for i, tm in enumerate(tasks)}
    notes = {}
    for (t, m), g in frame.groupby(["task", "metric"]):
        notes[(t, m)] = (_one_value(g, "num_fewshot"), _one_value(g, "n_samples"))
    extra = extra_keys(frame)
    series = ordered_series(frame, extra)
    n = len(series)
    width = 0.8 / max(n, 1)
    fig, (ax,) = new_figure(1, panel_size=(max(6.0, 1.6 + len(tasks) * (0.9 + 0.3 * n)), 5.0), max_width=12.0)
    for i, (skey, group) in enumerate(series):
        is_base = split_label(skey["method"])[0] == "base"
        xs = [task_index[(t, m)] - 0.4 + width * (i + 0.5) for t, m in zip(group["task"], group["metric"])]
        heights = group["value"].to_numpy(dtype=float)
        errors = group["stderr"].to_numpy(dtype=float)
        style = (dict(color="0.8", hatch="//", edgecolor="0.35") if is_base
                 else dict(color=series_style(skey["method"], skey["factor"])["color"], edgecolor="white"))
        yerr = errors if np.isfinite(errors).any() else None
        ax.bar(xs, heights, width=width * 0.95, yerr=yerr, capsize=2, label=series_label(skey, extra),
               error_kw=dict(elinewidth=0.9, ecolor="0.2", gid="ci"), gid="bars", **style)
        if is_base:
            for (t, m), h in zip(zip(group["task"], group["metric"]), heights):
                centre = task_index[(t, m)]
                ax.hlines(h, centre - 0.45, centre + 0.45, colors="0.35", linestyles="--", linewidth=1,
                          gid="base_reference")
    ax.set_xticks(range(len(tasks)), [_task_text(t, m, *notes.get((t, m), (None, None))) for t, m in tasks])
    ax.set_ylabel("Score (higher is better; bars ±1 standard error)")
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    tops = frame["value"].to_numpy(dtype=float) + np.nan_to_num(frame["stderr"].to_numpy(dtype=float))
    top = np.nanmax(tops) if np.isfinite(tops).any() else 1.0
    ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    legend(ax, ncols=min(n, 4), loc="upper center",
              bbox_to_anchor=(0.5, -0.24))
    default = "leaderboard tasks, the paper's metrics"
    ax.set_title(title or (with_model(default, frame) if "model" not in extra else default))
    return fig

# The optional figures (`plot --optional-figures`): file stem -> the task group whose subjects it shows.
OPTIONAL_FIGURES = {"leaderboard_mmlu_subjects": "mmlu"}


def subject_rows(frame: pd.DataFrame, group: str) -> tuple[str, pd.DataFrame]:
    """The subtask prefix of `group` (`<group>_local_` or `<group>_`) and its subtasks' rows."""
    names = {str(t) for t in frame["task"]}
    parents = [p for p in (f"{group}_local", group) if p in names]
    prefix = (parents[0] if parents else group) + "_"
    return prefix, frame[frame["task"].astype(str).str.startswith(prefix)].copy()


def plot_leaderboard_subjects(frame: pd.DataFrame, group: str = "mmlu") -> Figure:
    """An optional figure (`OPTIONAL_FIGURES`): the per-subject scores of a task group (MMLU's
    subjects, tasks named `<group>[_local]_<subject>`), one row per subject, a dot per method
    with ±1 standard error. Small `--limit` runs have few items per subject: wide bars."""
    prefix, rows = subject_rows(frame, group)
    if rows.empty:
        return empty_figure(f"no {group} subject rows")
    rows = rows[rows["metric"] == headline_metric(prefix, rows["metric"])]
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce")
    rows["stderr"] = pd.to_numeric(rows.get("stderr"), errors="coerce")
    subjects = sorted(rows["task"].unique())
    fig, (ax,) = new_figure(1, panel_size=(7.5, 1.0 + 0.22 * len(subjects)))
    extra = extra_keys(rows)
    series = ordered_series(rows, extra)
    offsets = np.linspace(-0.3, 0.3, len(series)) if len(series) > 1 else [0.0]
    for offset, (skey, part) in zip(offsets, series):
        style = series_style(skey["method"], skey["factor"])
        y = [subjects.index(t) + offset for t in part["task"]]
        ax.plot(part["value"], y, linestyle="none", marker=style["marker"], color=style["color"], markersize=4,
                label=series_label(skey, extra), gid="series")
        error_bars(ax, y, part["value"].to_numpy(dtype=float),
                    (part["value"] - part["stderr"], part["value"] + part["stderr"]), style["color"],
                    horizontal=True)
    ax.set_yticks(range(len(subjects)), [t.removeprefix(prefix).replace("_", " ") for t in subjects],
                  fontsize="small")
    ax.set_ylim(len(subjects) - 0.5, -0.5)  # first subject on top, no empty rows around
    ax.set_xlim(-0.03, 1.03)  # a score of 0 or 1 shows its whole marker
    ax.set_xlabel("Score (bars ±1 standard error)")
    ax.grid(True, axis="x", alpha=0.3)
    # below the axis label, off the data (a figure legend that the constrained layout makes room for)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=len(series), fontsize="small",
               frameon=False)
    sizes = pd.to_numeric(rows.get("n_samples"), errors="coerce").dropna().unique()
    per_subject = f" (n={int(sizes[0])} per subject)" if len(sizes) == 1 else ""
    ax.set_title(with_model(f"{task_display(prefix.rstrip('_'))} by subject{per_subject}", rows))
    return fig


def figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """`leaderboard` (the headline bars) when the folder has leaderboard rows; the written paths."""
    board = read_table(results_dir, "leaderboard")
    return [] if board.empty else save_figure(plot_leaderboard(board), figures_dir / "leaderboard")


def optional_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Each `OPTIONAL_FIGURES` entry whose task group has subtask rows in the folder; the written paths."""
    board = read_table(results_dir, "leaderboard")
    written: list[Path] = []
    for stem, group in OPTIONAL_FIGURES.items():
        if not board.empty and not subject_rows(board, group)[1].empty:
            written += save_figure(plot_leaderboard_subjects(board, group), figures_dir / stem)
    return written
