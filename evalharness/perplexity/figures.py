"""The perplexity figures: perplexity against context length (the paper's Figure 1,
`figures/perplexity`), against the YaRN attention factor √(1/t) (`figures/temperature`), and the mean
NLL against token position (`figures/positions`, from `perplexity_positions.csv`: one panel per
(dataset, protocol, window_bos, stride), one line per method × factor at the panel's largest context
length, L marked). Built from the tables only (no torch).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis.display import format_number, is_missing, ordered_groups, reference_display, split_label, varying
from ..method_facts import yarn_mscale
from ..plots import (
    CTX_XLABEL,
    band,
    context_note,
    dot_interval_panel,
    empty_figure,
    extra_keys,
    has_interval,
    legend,
    length_axis,
    length_series,
    length_text,
    log_y,
    mark_original_context,
    new_figure,
    ordered_series,
    position_ticks,
    save_figure,
    series_label,
    series_style,
    with_model,
)
from ..results import read_table
from .analysis import (
    has_temperature_sweep,
    load_perplexity,
    perplexity_ratios,
    positions_intervals,
    temperature_sweep,
)

PPL_YLABEL = "Perplexity (lower is better)"

def panel_title_text(key: dict, stride_varies: bool) -> str:
    """A perplexity panel's title: `dataset (protocol[, stride N][, BOS ...])`."""
    dataset = key.get("dataset", "")
    protocol = key.get("protocol", "")
    title = f"{dataset} ({protocol}" if protocol else str(dataset)
    stride = key.get("stride")
    if protocol == "sliding" and stride is not None and not is_missing(stride) and float(stride) > 0:
        title += f", stride {format_number(stride)}"
        if key.get("window_bos") in ("every", "first"):
            title += ", BOS every window" if key["window_bos"] == "every" else ", BOS at start"
    elif stride_varies and stride is not None and not is_missing(stride):
        title += f", stride {format_number(stride)}"
    return title + (")" if protocol else "")

def plot_perplexity(frame: pd.DataFrame, value: str = "ppl", ci: bool = True,
                    ylim: tuple[float, float] | None = None, title: str | None = None) -> Figure:
    """Perplexity against context length (the paper's Figure 1).

    One line per (method, factor) (and per model / run when those vary) in the look of
    `series_style`, log y, markers at the measured lengths and no line across a length a series
    lacks, error bars for the bootstrap interval `ppl_ci_low/high` (`ci`, ppl only), L marked
    (`mark_original_context`); one panel per (dataset, protocol[, window_bos][, stride]), titled
    with the model and data set. A panel with one length is a dot-and-interval plot, one dot per
    series. Non-finite values are left out.

    Args:
        frame: perplexity.csv rows.
        value: the column to draw: `ppl` (token-weighted) or `ppl_paper`.
        ci: draw the bootstrap interval where the table has one.
        ylim: fixed y range.
        title: a figure title.
    """
    if frame.empty:
        return empty_figure("no perplexity rows")
    interval = ("ppl_ci_low", "ppl_ci_high") if ci and value == "ppl" else None
    ylabel = PPL_YLABEL if value == "ppl" else f"{PPL_YLABEL}, {value}"
    return _length_panels(frame, value, interval, ylabel, "bars: 95 % bootstrap interval over documents",
                          ylim=ylim, title=title)


def plot_perplexity_ratio(ratios: pd.DataFrame, title: str | None = None) -> Figure:
    """The paired perplexity ratio to the reference series (`perplexity_ratios`) against context
    length, in the look of `plot_perplexity`: the reference is the line at 1 (gid `reference`),
    error bars the paired bootstrap interval over documents. Differences that the spread between
    documents hides in the perplexity figure show here."""
    if ratios.empty:
        return empty_figure("no series to compare with the reference")
    reference = str(ratios["reference"].iloc[0])
    label = reference_display(reference)
    return _length_panels(ratios, "ratio", ("ratio_ci_low", "ratio_ci_high"),
                          f"Perplexity ratio to {label} (< 1: better)",
                          "bars: 95 % paired bootstrap interval over documents", title=title,
                          reference=f"{label} (= 1)")


def _length_panels(frame: pd.DataFrame, value: str, interval: tuple[str, str] | None, ylabel: str,
                   bars_text: str, ylim: tuple[float, float] | None = None, title: str | None = None,
                   reference: str | None = None) -> Figure:
    """The panels of `plot_perplexity` for any positive `value` column of rows keyed like
    perplexity.csv; `reference`: the label of a horizontal line at 1."""
    frame = frame.copy()
    frame[value] = pd.to_numeric(frame[value], errors="coerce")
    frame = frame[np.isfinite(frame[value]) & (frame[value] > 0)]
    if frame.empty:
        return empty_figure(f"no finite {value} values")
    stride_varies = ("stride" in frame
                     and frame.groupby(["dataset", "protocol"])["stride"].nunique().gt(1).any())
    panel_columns = ["dataset", "protocol"] + [c for c in ("window_bos", "stride") if c in frame]
    panels = ordered_groups(frame, panel_columns)
    fig, axes = new_figure(len(panels), ncols=min(len(panels), 2), panel_size=(7.0, 4.8))
    extra = extra_keys(frame)
    for ax, (key, panel) in zip(axes, panels):
        grid = sorted({float(v) for v in panel["context_length"]})
        series = [(series_label(skey, extra), series_style(skey["method"], skey["factor"]), group)
                  for skey, group in ordered_series(panel, extra)]
        panel_title = panel_title_text(key, stride_varies)
        if reference is not None:
            ax.axhline(1.0, color="black", linewidth=1.4, label=reference, gid="reference", zorder=1)
        if len(grid) == 1:
            dot_interval_panel(ax, series, value, interval)
            context_note(ax, grid[0], panel.get("original_ctx", pd.Series(dtype=float)))
            panel_title += f" at {length_text(grid[0])}"
        else:
            for label, style, group in series:
                length_series(ax, group, value, grid, label, style, interval)
            mark_original_context(ax, panel.get("original_ctx", pd.Series(dtype=float)), grid)
            length_axis(ax, panel["context_length"])
            ax.set_xlabel(CTX_XLABEL)
        log_y(ax)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
        if "model" not in extra:
            panel_title = with_model(panel_title, panel)
        ax.set_title(panel_title)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.12)
        bars = bars_text if interval and has_interval(panel, interval) else None
        if len(grid) > 1:
            legend(ax, title=bars, title_fontsize="x-small")
        elif bars:
            ax.annotate(bars, xy=(0.02, 0.02), xycoords="axes fraction", fontsize="x-small", color="0.3")
    if title:
        fig.suptitle(title)
    return fig


def plot_temperature_sweep(frame: pd.DataFrame, context_length: int | None = None,
                           value: str = "ppl") -> Figure:
    """Perplexity against √(1/t) for several s (`temperature_sweep`).

    One line per s (static-YaRN rows: x read from `yarn:attention_factor=X` labels, 0.1·ln(s)+1
    for plain `yarn`), a star at each line's minimum and a dotted vertical line at the formula
    value 0.1·ln(s)+1; one panel per (dataset, protocol), titled with the model and the length.
    Uses the rows of one context length: `context_length`, or the only one, or the largest one
    every s has.
    """
    length, curves = temperature_sweep(frame, context_length, value)
    if curves.empty:
        return empty_figure("no YaRN rows to sweep" if context_length is None
                            else f"no YaRN rows at context length {context_length}")
    panels = ordered_groups(curves, ["dataset", "protocol"])
    fig, axes = new_figure(len(panels), ncols=min(len(panels), 2), panel_size=(6.4, 4.6))
    extra = extra_keys(curves)
    cmap_colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                   "tab:gray", "tab:olive", "tab:cyan"]
    factor_list = sorted({float(f) for f in curves["factor"]})
    contexts = sorted({float(c) for c in frame["original_ctx"].dropna()}) if "original_ctx" in frame else []
    for ax, (key, panel) in zip(axes, panels):
        groups = ordered_groups(panel, extra + ["factor", "variant"])
        for n, (gkey, group) in enumerate(groups):
            s = float(gkey["factor"])
            if len(groups) == len(factor_list):  # one line per s: YaRN s's own look
                style = series_style("yarn", s)
            else:
                style = {"color": cmap_colors[n % len(cmap_colors)], "marker": "o"}
            color = style["color"]
            x = group["sqrt_inv_t"].to_numpy(dtype=float)
            y = group["value"].to_numpy(dtype=float)
            best = int(np.flatnonzero(group["best"].to_numpy())[0])
            prefix = " / ".join(str(gkey[c]) for c in extra)
            label = f"YaRN s={format_number(s)}"
            if gkey["variant"] != "yarn":
                label += " (" + gkey["variant"].split(":", 1)[1] + ")"
            if prefix:
                label = f"{prefix}: {label}"
            ax.plot(x, y, color=color, marker=style["marker"], markersize=4, linewidth=1.6,
                    label=f"{label}: best {x[best]:.3g}, formula {yarn_mscale(s):.3g}", gid="series")
            ax.plot([x[best]], [y[best]], color=color, marker="*", markersize=14, linestyle="none",
                    markeredgecolor="black", markeredgewidth=0.6, label="_minimum", gid="minimum")
            ax.axvline(yarn_mscale(s), color=color, linestyle=":", linewidth=1.4,
                       label="_formula", gid="formula")
        ax.set_xlabel("√(1/t)  (YaRN attention factor; star: minimum, dotted: 0.1·ln(s)+1)")
        ax.set_ylabel(PPL_YLABEL)
        dataset, protocol = key.get("dataset", ""), key.get("protocol", "")
        where = f"context {length_text(length)}"
        if len(contexts) == 1:
            where += f" (L={length_text(contexts[0])})"
        panel_title = f"{dataset} ({protocol}), {where}"
        ax.set_title(with_model(panel_title, curves) if "model" not in extra else panel_title)
        ax.grid(True, alpha=0.3)
        legend(ax)
    return fig


POSITION_XLABEL = "Token position in the window"
NLL_YLABEL = "Mean NLL per token (lower is better)"


def _without_temperature_variants(frame: pd.DataFrame) -> pd.DataFrame:
    """A temperature sweep's YaRN attention-factor variants are the temperature figure's subject."""
    swept = frame["method"].map(lambda m: "attention_factor" in split_label(str(m))[1])
    return frame[~swept] if (~swept).any() else frame


def plot_nll_by_position(frame: pd.DataFrame, context_length: int | None = None,
                         docs: pd.DataFrame | None = None) -> Figure:
    """Mean NLL per position bucket, one line per method × factor, at `context_length` (default:
    each panel's largest); L marked (gid `original_ctx`: a dashed line inside the window, an
    arrow at the edge beyond it); lines have gid `series`; with the per-document table `docs`, a
    band (gid `interval`) for each drawn series whose bootstrap interval (`positions_intervals`)
    is not degenerate."""
    if frame.empty:
        return empty_figure("no loss-by-position rows")
    frame = _without_temperature_variants(frame.copy())
    for column in ("mean_nll", "position_start", "position_end", "context_length"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    panel_columns = [c for c in ("dataset", "protocol", "window_bos", "stride") if c in frame]
    if docs is not None and not docs.empty:  # the bootstrap only for the lengths the panels draw
        drawn = {context_length or panel["context_length"].max() for _, panel in ordered_groups(frame, panel_columns)}
        docs = docs[pd.to_numeric(docs["context_length"], errors="coerce").isin(drawn)]
        frame = _with_intervals(frame, positions_intervals(docs))
    panels = ordered_groups(frame, panel_columns)
    fig, axes = new_figure(len(panels), ncols=min(len(panels), 2), panel_size=(7.0, 4.8))
    extra = varying(frame, ["run", "model"])
    for ax, (key, panel) in zip(axes, panels):
        length = context_length or panel["context_length"].max()
        panel = panel[panel["context_length"] == length]
        banded = False
        for skey, group in ordered_groups(panel, extra + ["method", "factor"]):
            group = group.sort_values("position_start")
            centre = (group["position_start"] + group["position_end"]) / 2
            style = series_style(skey["method"], skey["factor"])
            ax.plot(centre, group["mean_nll"], color=style["color"], linestyle=style["linestyle"],
                    marker=style["marker"], markersize=3, linewidth=1.5, label=series_label(skey, extra),
                    gid="series")
            if "mean_nll_ci_low" in group and (group["mean_nll_ci_high"] > group["mean_nll_ci_low"]).any():
                band(ax, centre, group["mean_nll_ci_low"], group["mean_nll_ci_high"], style["color"])
                banded = True
        mark_original_context(ax, panel["original_ctx"], [0.0, float(length)])
        position_ticks(ax, float(length))
        ax.set_xlabel(POSITION_XLABEL)
        ax.set_ylabel(NLL_YLABEL)
        width = panel["bucket_width"].iloc[0] if "bucket_width" in panel and len(panel) else None
        title = panel_title_text(key, stride_varies=False)
        title += f", window {length_text(length)}" + (f", buckets of {length_text(width)}" if width else "")
        if "model" not in extra and "model" in panel and panel["model"].nunique() == 1:
            title = f"{panel['model'].iloc[0]}: {title}"
        ax.set_title(title, fontsize="medium")
        ax.grid(True, alpha=0.3)
        if banded:
            legend(ax, title="bands: 95 % bootstrap interval over documents", title_fontsize="x-small")
        else:
            legend(ax)
    return fig


def _with_intervals(frame: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the `mean_nll_ci_low/high` of its rows in `intervals` (NaN where none)."""
    keys = [c for c in intervals.columns if c in frame.columns and not c.startswith("mean_nll_ci")]
    intervals = intervals.copy()
    for column in keys:  # the tables' text and number columns read alike on both sides
        intervals[column] = intervals[column].astype(frame[column].dtype)
    return frame.merge(intervals, on=keys, how="left")


def figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """`perplexity` (static-YaRN attention-factor variants go to `temperature` instead when a sweep
    exists), `perplexity_ratio` (paired ratio to Base, when the run has Base and another series),
    `temperature`, `positions` (NLL vs token position); the written paths."""
    written = []
    ppl = load_perplexity(results_dir)
    if not ppl.empty:
        if has_temperature_sweep(ppl):
            written += save_figure(plot_temperature_sweep(ppl), figures_dir / "temperature")
            swept = ppl["method"].map(
                lambda m: split_label(m)[0] == "yarn" and "attention_factor" in split_label(m)[1])
            if (~swept).any():
                ppl = ppl[~swept]
        written += save_figure(plot_perplexity(ppl), figures_dir / "perplexity")
        ratios = perplexity_ratios(_without_temperature_variants(read_table(results_dir, "perplexity_docs")))
        if not ratios.empty:
            written += save_figure(plot_perplexity_ratio(ratios), figures_dir / "perplexity_ratio")
    positions = read_table(results_dir, "perplexity_positions")
    if not positions.empty:
        docs = read_table(results_dir, "perplexity_positions_docs")
        written += save_figure(plot_nll_by_position(positions, docs=docs), figures_dir / "positions")
    return written
