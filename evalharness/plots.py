"""Figures from result tables only (never from live models).

Every function takes a tidy frame with the columns of `results.SCHEMAS` and returns a matplotlib
`Figure`, built on the Agg canvas directly (`Figure` + `FigureCanvasAgg`, no pyplot): nothing
touches the global backend or pyplot's figure registry, so this works headless, in tests and in
notebooks alike, and figures are freed when dropped. `save_figure` writes PNG and PDF.

Every figure draws a (method, factor) series in one look (`series_style`: colour and marker per
method, dashed for dynamic methods, a shade per factor) and names it in words (`series_label`:
`YaRN s=4`, `Dynamic-YaRN, re-rotated KV cache`); titles name the model and the data set; a length
axis has markers at the measured lengths only, no line across a length a series lacks
(`line_with_gaps`), the uncertainty the tables hold as error bars, and L marked
(`mark_original_context`: a dashed line inside the measured range, an arrow at the edge outside it,
never a stretched axis). Artists carry a `gid` so tests and callers can find them: `series` (a data
line), `ci` (error bars), `original_ctx` (L), `annotation` (heatmap cell text), `minimum` /
`formula` (temperature sweep), `base_reference` (dashed base level in the leaderboard bars).

Nothing here imports torch: plotting a results folder needs pandas and matplotlib only.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex, to_rgba
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
from matplotlib.transforms import blended_transform_factory

from . import registry, tables
from .method_facts import METHOD_FACTS, yarn_mscale
from .tables import (
    SCORING_WORDS,
    format_number,
    headline_metric,
    is_missing,
    leaderboard_columns,
    leaderboard_headline,
    method_display,
    ordered_groups,
    passkey_accuracy,
    split_label,
    task_display,
    varying,
)

PPL_YLABEL = "Perplexity (lower is better)"
CTX_XLABEL = "Context window (tokens)"

# One look per method in every figure: a fixed colour and marker per method name, a dashed line
# for the dynamic methods, and the factor s as a fixed shade of the method's colour (s=4 is the
# colour itself, smaller s darker, larger s lighter), so `YaRN s=4` looks the same everywhere.
METHOD_COLORS = {
    "base": "black",
    "pi": "tab:blue",
    "ntk": "tab:orange",
    "ntk-by-parts": "tab:purple",
    "yarn": "tab:red",
    "dynamic-pi": "tab:cyan",
    "dynamic-ntk": "tab:olive",
    "dynamic-yarn": "tab:pink",
    "native": "tab:green",
}
METHOD_MARKERS = {
    "base": "o",
    "pi": "s",
    "ntk": "^",
    "ntk-by-parts": "v",
    "yarn": "D",
    "dynamic-pi": "s",
    "dynamic-ntk": "^",
    "dynamic-yarn": "D",
    "native": "P",
}
_SPARE_COLORS = ["tab:brown", "tab:gray", "darkgoldenrod", "teal", "navy", "crimson", "darkviolet",
                 "slategray", "sienna", "darkcyan"]
_SPARE_MARKERS = ["X", "<", ">", "h", "p", "*"]
HEATMAP_FONT = 9  # annotation size in points: legible at the saved 150 dpi


# ---------------------------------------------------------------------------------------------
# Series, styles and axes
# ---------------------------------------------------------------------------------------------

def _extra_keys(frame: pd.DataFrame) -> list[str]:
    """Columns that tell series apart beyond (method, factor) when they vary: run folder, model."""
    return varying(frame, ["run", "model"])


def series_label(key: dict, extra: Sequence[str] = ()) -> str:
    """A series' label in words: `YaRN s=4`, `Dynamic-YaRN, re-rotated KV cache`, prefixed by the
    values of `extra` columns (run, model) when those vary."""
    label = method_display(key["method"], key.get("factor"))
    scoring = key.get("scoring")
    if scoring in SCORING_WORDS:
        label += f", {SCORING_WORDS[scoring]}"
    prefix = " / ".join(str(key[c]) for c in extra if c != "scoring")
    return f"{prefix}: {label}" if prefix else label


def _ordered_series(frame: pd.DataFrame, extra: Sequence[str]) -> list[tuple[dict, pd.DataFrame]]:
    return ordered_groups(frame, list(extra) + ["method", "factor"])


def _stable_index(text: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % n


def series_style(method: str, factor=None) -> dict:
    """The look of a (method, factor) series in every figure: `color`, `marker`, `linestyle`
    (dashed for dynamic methods). A fixed function of its arguments: same series, same look."""
    name = split_label(str(method))[0]
    color = METHOD_COLORS.get(name) or _SPARE_COLORS[_stable_index(name, len(_SPARE_COLORS))]
    marker = METHOD_MARKERS.get(name) or _SPARE_MARKERS[_stable_index(name, len(_SPARE_MARKERS))]
    facts = METHOD_FACTS.get(name)
    if facts is not None and facts.uses_factor and not is_missing(factor) and float(factor) > 0:
        shade = float(np.clip(0.3 * (math.log2(float(factor)) - 2), -0.45, 0.6))
        rgb = np.array(to_rgba(color)[:3])
        rgb = rgb + (1 - rgb) * shade if shade > 0 else rgb * (1 + shade)
        color = to_hex(rgb)
    dynamic = facts.dynamic if facts is not None else name.startswith("dynamic")
    return {"color": color, "marker": marker, "linestyle": "--" if dynamic else "-"}


def length_text(value, _pos=None) -> str:
    """A token count as axes and titles write it: 4096 → `4k`, 1000 → `1k`, 300 → `300`."""
    value = float(value)
    if value >= 1024 and value % 1024 == 0:
        return f"{int(value // 1024)}k"
    if value >= 1000 and value % 1000 == 0:
        return f"{int(value // 1000)}k"
    return format_number(value)


_length_text = length_text


def _plain_number(value, _pos=None) -> str:
    if value <= 0 or not math.isfinite(value):
        return ""
    return f"{value:.3g}"


def new_figure(n_panels: int, ncols: int | None = None, panel_size=(6.0, 4.2), extra_width: float = 0.0,
               max_width: float | None = None):
    """A constrained-layout figure on the Agg canvas with `n_panels` axes (unused grid cells removed);
    `max_width` (inches) bounds the figure's width."""
    ncols = ncols or min(n_panels, 3)
    nrows = int(math.ceil(n_panels / ncols))
    width = panel_size[0] * ncols + extra_width
    if max_width is not None:
        width = min(width, max_width)
    fig = Figure(figsize=(width, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[n_panels:]:
        fig.delaxes(ax)
    return fig, axes[:n_panels]


def empty_figure(message: str) -> Figure:
    """A figure that says why there is nothing to draw."""
    fig, (ax,) = new_figure(1)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def _single(frame: pd.DataFrame, column: str) -> str | None:
    """The one value of `column` in `frame`, as text, or None when it is absent or varies."""
    if column not in frame or frame[column].nunique() != 1:
        return None
    return str(frame[column].iloc[0])


def _with_model(title: str, frame: pd.DataFrame) -> str:
    model = _single(frame, "model")
    return f"{model}: {title}" if model else title


def line_with_gaps(x: Sequence[float], y: Sequence[float], grid: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a line that breaks where a length of `grid` between its first and last measured
    length is missing: a NaN point there, so no segment spans an unmeasured length."""
    measured = dict(zip((float(v) for v in x), (float(v) for v in y)))
    if not measured:
        return np.array([]), np.array([])
    low, high = min(measured), max(measured)
    xs = [g for g in sorted({float(g) for g in grid} | set(measured)) if low <= g <= high]
    return np.array(xs), np.array([measured.get(g, math.nan) for g in xs])


# ---------------------------------------------------------------------------------------------
# Original context L and length axes
# ---------------------------------------------------------------------------------------------

def mark_original_context(ax, original_ctx: pd.Series, lengths: Sequence[float] | None = None) -> None:
    """Marks each original context L on a length axis (gid `original_ctx`, label "Original context
    L=…"): a dashed vertical line where L lies within the measured `lengths` (with their padding),
    else an arrow at the axis edge pointing towards L, so the axis is never stretched to reach it.
    With `lengths` given, the x limits are set to the measured range plus 5 % padding."""
    contexts = sorted({float(c) for c in original_ctx.dropna()})
    if lengths is not None and len(lengths):
        low, high = min(lengths), max(lengths)
        pad = 0.05 * (high - low) if high > low else 0.1 * high
        ax.set_xlim(low - pad, high + pad)
    low, high = ax.get_xlim()
    for ctx in contexts:
        label = f"Original context L={length_text(ctx)}"
        if lengths is None or low <= ctx <= high:
            ax.axvline(ctx, color="0.35", linestyle="--", linewidth=1.2, zorder=0.5, label=label,
                       gid="original_ctx")
            continue
        right = ctx > high
        transform = blended_transform_factory(ax.transAxes, ax.transAxes)
        text = f"L={length_text(ctx)} →" if right else f"← L={length_text(ctx)}"
        ax.annotate(text, xy=(1.0 if right else 0.0, 0.02), xycoords=transform,
                    ha="right" if right else "left", va="bottom", fontsize="small", color="0.25",
                    gid="original_ctx", bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.6", lw=0.6))


def position_ticks(ax, length: float) -> None:
    """x ticks at multiples of a power of two (at most 9 from 0 to `length`), written as 4k, 8k, …"""
    step = 2 ** max(0, math.ceil(math.log2(max(float(length), 1.0) / 8)))
    ax.xaxis.set_major_locator(FixedLocator(np.arange(0, float(length) + 1, step)))
    ax.xaxis.set_major_formatter(FuncFormatter(length_text))


def length_axis(ax, context_length: pd.Series) -> None:
    """x ticks at the tested lengths (when at most 12), written as 4k, 32k, …"""
    lengths = sorted({float(v) for v in context_length})
    if len(lengths) <= 12:
        ax.xaxis.set_major_locator(FixedLocator(lengths))
    ax.xaxis.set_major_formatter(FuncFormatter(length_text))


def save_figure(fig: Figure, path_without_ext: str | os.PathLike, dpi: int = 150) -> list[Path]:
    """Writes `<path>.png` and `<path>.pdf` (folders created), without a creation date, so the same
    tables give the same files.

    Returns:
        Both paths.
    """
    base = str(path_without_ext)
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = Path(f"{base}.{ext}")
        metadata = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        fig.savefig(path, dpi=dpi, format=ext, metadata=metadata)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Perplexity vs context (the paper's Figure 1)
# ---------------------------------------------------------------------------------------------

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


def _interval(group: pd.DataFrame, low: str, high: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The finite (low, high) columns of `group`, or None when the table has no such interval."""
    if not {low, high} <= set(group.columns):
        return None
    lows = pd.to_numeric(group[low], errors="coerce").to_numpy(dtype=float)
    highs = pd.to_numeric(group[high], errors="coerce").to_numpy(dtype=float)
    if "n_docs" in group:  # a bootstrap over one document is no interval (the report shows none either)
        single = pd.to_numeric(group["n_docs"], errors="coerce").to_numpy(dtype=float) < 2
        lows, highs = np.where(single, np.nan, lows), np.where(single, np.nan, highs)
    return (lows, highs) if np.isfinite(lows).any() and np.isfinite(highs).any() else None


def _error_bars(ax, x, y, interval, color, horizontal: bool = False) -> None:
    """Error bars (gid `ci`) from y to an interval (low, high) around it; missing ends left out."""
    if interval is None:
        return
    low, high = interval
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(low) & np.isfinite(high) & np.isfinite(y)
    if not keep.any():
        return
    x, y = np.asarray(x, dtype=float)[keep], y[keep]
    err = np.vstack([np.clip(y - low[keep], 0, None), np.clip(high[keep] - y, 0, None)])
    kwargs = dict(fmt="none", ecolor=to_rgba(color, 0.6), elinewidth=1.1, capsize=3, label="_ci")
    container = ax.errorbar(y, x, xerr=err, **kwargs) if horizontal else ax.errorbar(x, y, yerr=err, **kwargs)
    for artist in (*container.lines[1], *container.lines[2]):
        artist.set_gid("ci")


def _length_series(ax, group: pd.DataFrame, value: str, grid: Sequence[float], label: str, style: dict,
                   interval: tuple[str, str] | None) -> None:
    """One series against context length: markers at its measured lengths, a line between
    neighbouring measured lengths only, error bars for `interval` where the table has one."""
    group = group.sort_values("context_length")
    x = group["context_length"].astype(float).to_numpy()
    y = group[value].astype(float).to_numpy()
    xs, ys = line_with_gaps(x, y, grid)
    ax.plot(xs, ys, color=style["color"], marker=style["marker"], markersize=5,
            linestyle=style["linestyle"], linewidth=1.6, label=label, gid="series")
    if interval is not None:
        _error_bars(ax, x, y, _interval(group, *interval), style["color"])


def _dot_interval_panel(ax, series: list[tuple[str, dict, pd.DataFrame]], value: str,
                        interval: tuple[str, str] | None) -> None:
    """One length only: a dot per series at its value with its interval, series side by side."""
    for i, (label, style, group) in enumerate(series):
        y = group[value].astype(float).to_numpy()[:1]
        ax.plot([i], y, color=style["color"], marker=style["marker"], markersize=7, linestyle="none",
                label=label, gid="series")
        if interval is not None:
            _error_bars(ax, [i], y, _interval(group.iloc[:1], *interval), style["color"])
    ax.set_xticks(range(len(series)), [label for label, _, _ in series],
                  rotation=30 if len(series) > 6 else 0, ha="right" if len(series) > 6 else "center")
    ax.set_xlim(-0.6, len(series) - 0.4)
    ax.margins(y=0.12)


def _context_note(ax, length: float, original_ctx: pd.Series) -> None:
    """Where a one-length panel lies against L: an annotation (gid `original_ctx`)."""
    contexts = sorted({float(c) for c in original_ctx.dropna()})
    if not contexts:
        return
    text = "; ".join(f"{length_text(length)} = {format_number(round(length / c, 2))}·L (L={length_text(c)})"
                     for c in contexts)
    ax.annotate(text, xy=(0.98, 0.97), xycoords="axes fraction", ha="right", va="top", fontsize="small",
                color="0.25", gid="original_ctx", bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.6", lw=0.6))


def _log_y(ax) -> None:
    ax.set_yscale("log")
    ymin, ymax = ax.get_ylim()
    if ymax / ymin < 100:  # under two decades: label the minor ticks too, in plain numbers
        ax.yaxis.set_minor_formatter(FuncFormatter(_plain_number))
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))


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
    frame = frame.copy()
    if frame.empty:
        return empty_figure("no perplexity rows")
    frame[value] = pd.to_numeric(frame[value], errors="coerce")
    frame = frame[np.isfinite(frame[value]) & (frame[value] > 0)]
    if frame.empty:
        return empty_figure("no finite perplexity values")
    stride_varies = ("stride" in frame
                     and frame.groupby(["dataset", "protocol"])["stride"].nunique().gt(1).any())
    panel_columns = ["dataset", "protocol"] + [c for c in ("window_bos", "stride") if c in frame]
    panels = ordered_groups(frame, panel_columns)
    fig, axes = new_figure(len(panels), ncols=min(len(panels), 2), panel_size=(7.0, 4.8))
    extra = _extra_keys(frame)
    interval = ("ppl_ci_low", "ppl_ci_high") if ci and value == "ppl" else None
    for ax, (key, panel) in zip(axes, panels):
        grid = sorted({float(v) for v in panel["context_length"]})
        series = [(series_label(skey, extra), series_style(skey["method"], skey["factor"]), group)
                  for skey, group in _ordered_series(panel, extra)]
        panel_title = panel_title_text(key, stride_varies)
        if len(grid) == 1:
            _dot_interval_panel(ax, series, value, interval)
            _context_note(ax, grid[0], panel.get("original_ctx", pd.Series(dtype=float)))
            panel_title += f" at {length_text(grid[0])}"
        else:
            for label, style, group in series:
                _length_series(ax, group, value, grid, label, style, interval)
            mark_original_context(ax, panel.get("original_ctx", pd.Series(dtype=float)), grid)
            length_axis(ax, panel["context_length"])
            ax.set_xlabel(CTX_XLABEL)
        _log_y(ax)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_ylabel(PPL_YLABEL if value == "ppl" else f"{PPL_YLABEL}, {value}")
        if "model" not in extra:
            panel_title = _with_model(panel_title, panel)
        ax.set_title(panel_title)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.12)
        bars = "bars: 95 % bootstrap interval over documents" if interval and _has_interval(panel, interval) else None
        if len(grid) > 1:
            ax.legend(fontsize="small", frameon=False, title=bars, title_fontsize="x-small")
        elif bars:
            ax.annotate(bars, xy=(0.02, 0.02), xycoords="axes fraction", fontsize="x-small", color="0.3")
    if title:
        fig.suptitle(title)
    return fig


def _has_interval(frame: pd.DataFrame, interval: tuple[str, str]) -> bool:
    return _interval(frame, *interval) is not None


# ---------------------------------------------------------------------------------------------
# Passkey heatmap
# ---------------------------------------------------------------------------------------------

def _depth_bins(depth: pd.Series, max_bins: int) -> pd.Series:
    values = depth.astype(float)
    if values.nunique() <= max_bins:
        return values
    low, high = values.min(), values.max()
    edges = np.linspace(low, high, max_bins + 1)
    index = np.clip(np.digitize(values, edges[1:-1]), 0, max_bins - 1)
    centres = (edges[:-1] + edges[1:]) / 2
    return pd.Series(centres[index], index=depth.index)


def _depth_text(value: float, fractions: bool) -> str:
    return f"{value:.0%}" if fractions else format_number(round(value, 3))


def _text_color(value: float, cmap) -> str:
    """Black or white, whichever reads better on the colour of `value`."""
    r, g, b, _ = cmap(float(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _mark_context_columns(ax, lengths: Sequence[float], original_ctx: pd.Series) -> None:
    """L on a heatmap's length axis (gid `original_ctx`): a dashed line between the last column
    ≤ L and the first beyond it, or an arrow at the edge when every column lies on one side."""
    for ctx in sorted({float(c) for c in original_ctx.dropna()}):
        inside = sum(1 for x in lengths if x <= ctx)
        text = f"L={length_text(ctx)}"
        if 0 < inside < len(lengths):
            ax.axvline(inside - 0.5, color="black", linestyle="--", linewidth=1.6, gid="original_ctx",
                       label=f"Original context {text}")
            ax.annotate(text, xy=(inside - 0.5, 1.0), xycoords=("data", "axes fraction"), xytext=(0, -3),
                        textcoords="offset points", ha="center", va="top", fontsize="small",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="black", lw=0.6))
        else:
            right = inside == len(lengths)
            ax.annotate(f"{text} →" if right else f"← {text}", xy=(1.0 if right else 0.0, 1.0),
                        xycoords="axes fraction", xytext=(-3 if right else 3, -3), textcoords="offset points",
                        ha="right" if right else "left", va="top", fontsize="small", gid="original_ctx",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="black", lw=0.6))


def _heatmap(ax, values: pd.DataFrame, counts: pd.DataFrame, uniform_n: bool, annotate: bool,
             original_ctx: pd.Series, digits: int = 2):
    """A 0..1 heatmap of `values` (rows × length columns), grey where missing, each cell annotated
    with its value (and n when n varies; gid `annotation`), L marked."""
    cmap = colormaps["RdYlGn"].with_extremes(bad="0.85")
    data = np.ma.masked_invalid(values.to_numpy(dtype=float))
    image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto", interpolation="nearest")
    lengths = [float(c) for c in values.columns]
    ax.set_xticks(range(len(lengths)), [length_text(c) for c in lengths],
                  rotation=45 if len(lengths) > 8 else 0)
    if annotate:
        ns = counts.to_numpy(dtype=float)
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if not np.ma.is_masked(data[i, j]):
                    text = f"{data[i, j]:.{digits}f}" + ("" if uniform_n else f"\nn={int(ns[i, j])}")
                    ax.text(j, i, text, ha="center", va="center", fontsize=HEATMAP_FONT,
                            color=_text_color(data[i, j], cmap), gid="annotation")
    _mark_context_columns(ax, lengths, original_ctx)
    ax.set_xlabel(CTX_XLABEL)
    return image


def _uniform_n(counts: Sequence[pd.DataFrame]) -> int | None:
    values = {int(v) for c in counts for v in c.to_numpy(dtype=float).ravel() if np.isfinite(v)}
    return values.pop() if len(values) == 1 else None


def plot_passkey_heatmap(frame: pd.DataFrame, max_depth_bins: int = 20,
                         annotate: bool | None = None) -> Figure:
    """Passkey accuracy (`tables.passkey_accuracy`) as a context length (x) × depth (y) heatmap.

    One panel per series (method, factor, and the scoring rule, run or model when they vary),
    titled in words (`Dynamic-YaRN, re-rotated KV cache`); a shared colorbar over 0..1; L marked
    between the columns; a figure title with the model and the prompts per cell (n) when every
    cell has the same n, else each annotated cell shows its own n. More than `max_depth_bins`
    distinct depths (random depths) are binned.
    """
    if frame.empty:
        return empty_figure("no passkey rows")
    frame = frame.copy()
    frame["depth"] = _depth_bins(frame["depth"], max_depth_bins)
    acc = passkey_accuracy(frame)
    extra = varying(acc, ["run", "model", "scoring"])
    series = ordered_groups(acc, [c for c in extra if c != "scoring"] + ["method", "factor"]
                            + (["scoring"] if "scoring" in extra else []))
    n_lengths, n_depths = acc["context_length"].nunique(), acc["depth"].nunique()
    panel = (max(3.4, 1.5 + 0.7 * n_lengths), max(2.8, 1.3 + 0.4 * n_depths))
    fig, axes = new_figure(len(series), ncols=min(len(series), 4), panel_size=panel, extra_width=0.9)
    fractions = bool(acc["depth"].max() <= 1.0)
    tables_ = []
    for _, group in series:
        correct = group.pivot_table(index="depth", columns="context_length", values="correct", aggfunc="sum")
        counts = group.pivot_table(index="depth", columns="context_length", values="n", aggfunc="sum")
        tables_.append((correct.sort_index().sort_index(axis=1), counts.sort_index().sort_index(axis=1)))
    uniform_n = _uniform_n([counts for _, counts in tables_])
    image = None
    for ax, (skey, group), (correct, counts) in zip(axes, series, tables_):
        show_numbers = annotate if annotate is not None else counts.size <= 120
        image = _heatmap(ax, correct / counts, counts, uniform_n is not None, show_numbers,
                         group["original_ctx"] if "original_ctx" in group else pd.Series(dtype=float))
        ax.set_yticks(range(counts.shape[0]), [_depth_text(d, fractions) for d in counts.index])
        ax.set_title(series_label(skey, [c for c in extra if c != "scoring"]), fontsize="medium")
        ax.set_ylabel("Passkey depth" + (" (fraction of prompt)" if fractions else ""))
    colorbar = fig.colorbar(image, ax=axes, shrink=0.9)
    colorbar.set_label("Passkey accuracy")
    colorbar.ax.set_gid("colorbar")
    title = "passkey retrieval accuracy" + (f" (n={uniform_n} prompts per cell)" if uniform_n else "")
    fig.suptitle(_with_model(title, acc) if "model" not in extra else title)
    return fig


# ---------------------------------------------------------------------------------------------
# Leaderboard
# ---------------------------------------------------------------------------------------------

METRIC_WORDS = {("truthfulqa_mc2", "acc"): "MC2", ("mmlu", "acc_macro"): "acc (macro)"}


def _task_text(task: str, metric: str, fewshot=None, n=None) -> str:
    words = METRIC_WORDS.get((str(task).removesuffix("_local"), metric), metric)
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
    """The paper's headline leaderboard numbers (`tables.leaderboard_headline`: one metric per
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
    extra = _extra_keys(frame)
    series = _ordered_series(frame, extra)
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
    ax.legend(fontsize="small", frameon=False, ncols=min(n, 4), loc="upper center",
              bbox_to_anchor=(0.5, -0.24))
    default = "leaderboard tasks, the paper's metrics"
    ax.set_title(title or (_with_model(default, frame) if "model" not in extra else default))
    return fig


def plot_leaderboard_subjects(frame: pd.DataFrame, group: str = "mmlu") -> Figure:
    """An optional figure (not drawn by `plot_run`): the per-subject scores of a task group (MMLU's
    subjects, tasks named `<group>[_local]_<subject>`), one row per subject, a dot per method
    with ±1 standard error. Small `--limit` runs have few items per subject: wide bars."""
    names = {str(t) for t in frame["task"]}
    parents = [p for p in (f"{group}_local", group) if p in names]
    prefix = (parents[0] if parents else group) + "_"
    rows = frame[frame["task"].astype(str).str.startswith(prefix)].copy()
    if rows.empty:
        return empty_figure(f"no {group} subject rows")
    rows = rows[rows["metric"] == headline_metric(prefix, rows["metric"])]
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce")
    rows["stderr"] = pd.to_numeric(rows.get("stderr"), errors="coerce")
    subjects = sorted(rows["task"].unique())
    fig, (ax,) = new_figure(1, panel_size=(7.5, 1.0 + 0.22 * len(subjects)))
    extra = _extra_keys(rows)
    series = _ordered_series(rows, extra)
    offsets = np.linspace(-0.3, 0.3, len(series)) if len(series) > 1 else [0.0]
    for offset, (skey, part) in zip(offsets, series):
        style = series_style(skey["method"], skey["factor"])
        y = [subjects.index(t) + offset for t in part["task"]]
        ax.plot(part["value"], y, linestyle="none", marker=style["marker"], color=style["color"], markersize=4,
                label=series_label(skey, extra), gid="series")
        _error_bars(ax, y, part["value"].to_numpy(dtype=float),
                    (part["value"] - part["stderr"], part["value"] + part["stderr"]), style["color"],
                    horizontal=True)
    ax.set_yticks(range(len(subjects)), [t.removeprefix(prefix).replace("_", " ") for t in subjects],
                  fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("Score (bars ±1 standard error)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize="small", frameon=False, loc="lower right")
    ax.set_title(_with_model(f"{task_display(prefix.rstrip('_'))} by subject", rows))
    return fig


# ---------------------------------------------------------------------------------------------
# Attention temperature sweep
# ---------------------------------------------------------------------------------------------

def plot_temperature_sweep(frame: pd.DataFrame, context_length: int | None = None,
                           value: str = "ppl") -> Figure:
    """Perplexity against √(1/t) for several s (`tables.temperature_sweep`).

    One line per s (static-YaRN rows: x read from `yarn:attention_factor=X` labels, 0.1·ln(s)+1
    for plain `yarn`), a star at each line's minimum and a dotted vertical line at the formula
    value 0.1·ln(s)+1; one panel per (dataset, protocol), titled with the model and the length.
    Uses the rows of one context length: `context_length`, or the only one, or the largest one
    every s has.
    """
    length, curves = tables.temperature_sweep(frame, context_length, value)
    if curves.empty:
        return empty_figure("no YaRN rows to sweep" if context_length is None
                            else f"no YaRN rows at context length {context_length}")
    panels = ordered_groups(curves, ["dataset", "protocol"])
    fig, axes = new_figure(len(panels), ncols=min(len(panels), 2), panel_size=(6.4, 4.6))
    extra = _extra_keys(curves)
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
        ax.set_title(_with_model(panel_title, curves) if "model" not in extra else panel_title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------
# RULER
# ---------------------------------------------------------------------------------------------

def plot_ruler_heatmap(frame: pd.DataFrame, annotate: bool | None = None) -> Figure:
    """RULER scores (`tables.ruler_scores`) as a task (y) × context length (x) heatmap per method.

    One panel per (method, factor) (and run / model when they vary) titled in words, a shared
    colorbar over 0..1, grey where a cell has no row, L marked between the columns. Each annotated
    cell shows its score, and its samples n when n varies (else n is in the figure title).
    """
    scores = tables.ruler_scores(frame)
    if scores.empty:
        return empty_figure("no RULER rows")
    extra = _extra_keys(scores)
    series = _ordered_series(scores, extra)
    task_list = sorted(scores["task"].unique(), key=tables.ruler_task_sort_key)
    lengths = sorted({float(x) for x in scores["context_length"]})
    grids = []
    for _, group in series:
        score = group.pivot_table(index="task", columns="context_length", values="score", aggfunc="mean")
        count = group.pivot_table(index="task", columns="context_length", values="n", aggfunc="sum")
        grids.append((score.reindex(index=task_list, columns=lengths), count.reindex(index=task_list, columns=lengths)))
    uniform_n = _uniform_n([count for _, count in grids])
    cell_height = 0.42 if uniform_n else 0.6
    fig, axes = new_figure(len(series), ncols=min(len(series), 3),
                           panel_size=(2.6 + 0.75 * len(lengths), 1.3 + cell_height * len(task_list)),
                           extra_width=0.9)
    image = None
    for index, (ax, (skey, group), (score, count)) in enumerate(zip(axes, series, grids)):
        image = _heatmap(ax, score, count, uniform_n is not None,
                         annotate if annotate is not None else score.size <= 150, group["original_ctx"])
        ax.set_yticks(range(len(task_list)), task_list if index % 3 == 0 else [""] * len(task_list))
        ax.set_title(series_label(skey, extra), fontsize="medium")
    colorbar = fig.colorbar(image, ax=axes, shrink=0.9)
    colorbar.set_label("RULER score (string_match_all)")
    colorbar.ax.set_gid("colorbar")
    title = "RULER score by task and length" + (f" (n={uniform_n} samples per cell)" if uniform_n else "")
    fig.suptitle(_with_model(title, scores) if "model" not in extra else title)
    return fig


def plot_ruler_mean(frame: pd.DataFrame, title: str | None = None) -> Figure:
    """The RULER mean (`tables.ruler_means`: unweighted mean of the task scores) against context
    length, one line per (method, factor) (and run / model when they vary) in the look of
    `series_style`, markers at measured lengths and no line across a missing one, error bars
    ±1 standard error of the mean (`mean_stderr`), L marked (gid `original_ctx`); lines have gid
    `series`."""
    means = tables.ruler_means(tables.ruler_scores(frame))
    if means.empty:
        return empty_figure("no RULER rows")
    means = means.assign(low=means["mean_score"] - means["mean_stderr"],
                         high=means["mean_score"] + means["mean_stderr"])
    extra = _extra_keys(means)
    fig, (ax,) = new_figure(1, panel_size=(7.0, 4.8))
    grid = sorted({float(v) for v in means["context_length"]})
    for skey, group in _ordered_series(means, extra):
        _length_series(ax, group, "mean_score", grid, series_label(skey, extra),
                       series_style(skey["method"], skey["factor"]), ("low", "high"))
    mark_original_context(ax, means["original_ctx"], grid)
    length_axis(ax, means["context_length"])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(CTX_XLABEL)
    ax.set_ylabel("RULER mean score over tasks (higher is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", frameon=False, title="bars: ±1 standard error", title_fontsize="x-small")
    default = "RULER mean score over tasks"
    ax.set_title(title or (_with_model(default, means) if "model" not in extra else default))
    return fig


# ---------------------------------------------------------------------------------------------
# A whole run folder
# ---------------------------------------------------------------------------------------------

def plot_run(results_dir: str | os.PathLike) -> list[Path]:
    """Writes every figure the folder's tables allow to `<dir>/figures/<name>.png|pdf`.

    Each registered task draws its own (`TaskDefinition.figures`), in registry order; missing or
    empty tables are skipped.

    Returns:
        The written paths.
    """
    results_dir = Path(results_dir)
    written: list[Path] = []
    for definition in registry.definitions():
        written += definition.figures(results_dir, results_dir / "figures")
    return written
