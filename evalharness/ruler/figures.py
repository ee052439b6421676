"""The RULER figures: scores as a task × length heatmap per method (`figures/ruler`) and the mean
over tasks against length (`figures/ruler_mean`)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..analysis.display import plural
from ..plots import (
    CTX_XLABEL,
    common_n,
    empty_figure,
    extra_keys,
    heatmap,
    legend,
    length_axis,
    length_series,
    mark_original_context,
    new_figure,
    ordered_series,
    save_figure,
    series_label,
    series_style,
    with_model,
)
from ..results import read_table
from . import analysis


def plot_ruler_heatmap(frame: pd.DataFrame, annotate: bool | None = None) -> Figure:
    """RULER scores (`analysis.ruler_scores`) as a task (y) × context length (x) heatmap per method.

    One panel per (method, factor) (and run / model when they vary) titled in words, a shared
    colorbar over 0..1, grey where a cell has no row, L marked between the columns. Each annotated
    cell shows its score, and its samples n when n varies (else n is in the figure title).
    """
    scores = analysis.ruler_scores(frame)
    if scores.empty:
        return empty_figure("no RULER rows")
    extra = extra_keys(scores)
    series = ordered_series(scores, extra)
    task_list = sorted(scores["task"].unique(), key=analysis.ruler_task_sort_key)
    lengths = sorted({float(x) for x in scores["context_length"]})
    grids = []
    for _, group in series:
        score = group.pivot_table(index="task", columns="context_length", values="score", aggfunc="mean")
        count = group.pivot_table(index="task", columns="context_length", values="n", aggfunc="sum")
        grids.append((score.reindex(index=task_list, columns=lengths), count.reindex(index=task_list, columns=lengths)))
    uniform_n = common_n([count for _, count in grids])
    cell_height = 0.42 if uniform_n else 0.6
    fig, axes = new_figure(len(series), ncols=min(len(series), 3),
                           panel_size=(2.6 + 0.75 * len(lengths), 1.3 + cell_height * len(task_list)),
                           extra_width=0.9)
    image = None
    for index, (ax, (skey, group), (score, count)) in enumerate(zip(axes, series, grids)):
        image = heatmap(ax, score, count, uniform_n is not None,
                         annotate if annotate is not None else score.size <= 150, group["original_ctx"])
        ax.set_yticks(range(len(task_list)), task_list if index % 3 == 0 else [""] * len(task_list))
        ax.set_title(series_label(skey, extra), fontsize="medium")
    colorbar = fig.colorbar(image, ax=axes, shrink=0.9)
    colorbar.set_label("RULER score (string_match_all)")
    colorbar.ax.set_gid("colorbar")
    title = "RULER score by task and length" + (f" (n={plural(uniform_n, 'sample')} per cell)" if uniform_n else "")
    fig.suptitle(with_model(title, scores) if "model" not in extra else title)
    return fig

def plot_ruler_mean(frame: pd.DataFrame, title: str | None = None) -> Figure:
    """The RULER mean (`analysis.ruler_means`: unweighted mean of the task scores) against context
    length, one line per (method, factor) (and run / model when they vary) in the look of
    `series_style`, markers at measured lengths and no line across a missing one, error bars
    ±1 standard error of the mean (`mean_stderr`), L marked (gid `original_ctx`); lines have gid
    `series`."""
    means = analysis.ruler_means(analysis.ruler_scores(frame))
    if means.empty:
        return empty_figure("no RULER rows")
    means = means.assign(low=means["mean_score"] - means["mean_stderr"],
                         high=means["mean_score"] + means["mean_stderr"])
    extra = extra_keys(means)
    fig, (ax,) = new_figure(1, panel_size=(7.0, 4.8))
    grid = sorted({float(v) for v in means["context_length"]})
    for skey, group in ordered_series(means, extra):
        length_series(ax, group, "mean_score", grid, series_label(skey, extra),
                       series_style(skey["method"], skey["factor"]), ("low", "high"))
    mark_original_context(ax, means["original_ctx"], grid)
    length_axis(ax, means["context_length"])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(CTX_XLABEL)
    ax.set_ylabel("RULER mean score over tasks (higher is better)")
    ax.grid(True, alpha=0.3)
    legend(ax, title="bars: ±1 standard error", title_fontsize="x-small")
    default = "RULER mean score over tasks"
    ax.set_title(title or (with_model(default, means) if "model" not in extra else default))
    return fig


def figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """`ruler` and `ruler_mean` when the folder has RULER rows; the written paths."""
    ruler = read_table(results_dir, "ruler")
    if ruler.empty:
        return []
    return (save_figure(plot_ruler_heatmap(ruler), figures_dir / "ruler")
            + save_figure(plot_ruler_mean(ruler), figures_dir / "ruler_mean"))
